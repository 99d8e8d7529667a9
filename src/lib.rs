//! lmrs core: the paged KV block allocator with prefix caching, the session table and the
//! continuous-batching scheduler, exposed to Python as `lmrs._core.Core`.

mod admission;
pub mod block_hash;
pub mod block_pool;
pub mod cpu_kernels;
pub mod grammar;
pub mod id_map;
pub mod invariants;
pub mod kv_cache_manager;
pub mod plan;
mod py_args;
mod py_core;
mod py_decoder_program;
mod py_finish_reason;
mod py_gguf_kernels;
mod py_grammar;
mod py_kernels;
pub mod schedule_step;
pub mod scheduler;
pub mod seq_table;
pub mod sequence;
pub mod session;
pub mod spec_decode;
pub mod update_step;

#[cfg(test)]
mod tests;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py_core::register(m)?;
    py_kernels::register(m)?;
    py_grammar::register(m)?;
    py_decoder_program::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
