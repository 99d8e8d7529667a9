//! The CPU kernels as plain functions of `lmrs._core` (used by `lmrs.kernels.cpu`).
//!
//! Arguments are tensor addresses (`t.data_ptr()`), sizes, strides in elements and dtype codes
//! (0 = float32, 1 = bfloat16, 2 = float16). The Python wrapper checks shapes, dtypes and
//! contiguity before calling; the kernels check the indices they follow. Every call releases the
//! GIL while it computes. A bad argument raises ValueError.

use pyo3::prelude::*;

use crate::cpu_kernels::activation::{gated_act_and_mul, GateAct, GatedActArgs};
use crate::cpu_kernels::attention::{paged_attention, supported_head_dim, AttnArgs};
use crate::cpu_kernels::logits::{refine_top_logits, RefineArgs};
use crate::cpu_kernels::norm::{rms_norm, NormArgs};
use crate::cpu_kernels::quant_matmul::{
    packed_bytes, q4_pack, q8_pack, q_matmul, QFormat, QMatmulArgs,
};
use crate::cpu_kernels::rope::{cache_write, rotary_embedding, CacheArgs, RopeArgs};
use crate::cpu_kernels::simd;
use crate::py_args::{checked, dtype, nonnull, run, MatmulOperands};

/// RMSNorm of `x` into `out`; with `residual` (float32, non-zero address) first residual += x in
/// place and normalize the residual.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_rms_norm(
    py: Python<'_>,
    rows: usize,
    hidden: usize,
    x: usize,
    x_stride: usize,
    x_dtype: u32,
    residual: usize,
    residual_stride: usize,
    weight: usize,
    weight_dtype: u32,
    out: usize,
    out_stride: usize,
    out_dtype: u32,
    eps: f32,
    threads: usize,
) -> PyResult<()> {
    let a = NormArgs {
        rows,
        hidden,
        x: nonnull(x, "x")?,
        x_stride,
        x_dtype: dtype(x_dtype)?,
        residual,
        residual_stride,
        weight: nonnull(weight, "weight")?,
        weight_dtype: dtype(weight_dtype)?,
        out: nonnull(out, "out")?,
        out_stride,
        out_dtype: dtype(out_dtype)?,
        eps,
        threads,
    };
    run(py, move || unsafe { rms_norm(&a) })
}

/// Rotate q [tokens, q_heads, D] and k [tokens, k_heads, D] in place by their positions; with a
/// non-zero `k_cache`, k goes rotated into the paged cache at `slots` instead, and v with it.
/// Only the first `rotary_dim` (None: D) dimensions of each head rotate; `cos_sin` has that many
/// columns.
#[pyfunction]
#[pyo3(signature = (tokens, head_dim, is_neox, dtype_code, positions, cos_sin, max_positions,
    q, q_stride, q_heads, k, k_stride, k_heads, v=0, v_stride=0, slots=0, k_cache=0, v_cache=0,
    num_slots=0, cache_dtype=None, threads=0, rotary_dim=None))]
#[allow(clippy::too_many_arguments)]
fn cpu_rotary_embedding(
    py: Python<'_>,
    tokens: usize,
    head_dim: usize,
    is_neox: bool,
    dtype_code: u32,
    positions: usize,
    cos_sin: usize,
    max_positions: usize,
    q: usize,
    q_stride: usize,
    q_heads: usize,
    k: usize,
    k_stride: usize,
    k_heads: usize,
    v: usize,
    v_stride: usize,
    slots: usize,
    k_cache: usize,
    v_cache: usize,
    num_slots: usize,
    cache_dtype: Option<u32>,
    threads: usize,
    rotary_dim: Option<usize>,
) -> PyResult<()> {
    if tokens == 0 {
        return Ok(());
    }
    let cache = if k_cache != 0 {
        Some(CacheArgs {
            v: nonnull(v, "v")?,
            v_stride,
            slots: nonnull(slots, "slot_mapping")?,
            k_cache,
            v_cache: nonnull(v_cache, "v_cache")?,
            num_slots,
            dtype: dtype(cache_dtype.unwrap_or(dtype_code))?,
        })
    } else {
        None
    };
    let a = RopeArgs {
        tokens,
        head_dim,
        rotary_dim: rotary_dim.unwrap_or(head_dim),
        is_neox,
        dtype: dtype(dtype_code)?,
        positions: nonnull(positions, "positions")?,
        cos_sin: nonnull(cos_sin, "cos_sin_cache")?,
        max_positions,
        q: if q_heads > 0 { nonnull(q, "q")? } else { 0 },
        q_stride,
        q_heads,
        k: nonnull(k, "k")?,
        k_stride,
        k_heads,
        cache,
        threads,
    };
    run(py, move || unsafe { rotary_embedding(&a) })
}

/// Write key / value [tokens, kv_heads, D] into the paged caches at `slots` (negative: skipped).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_reshape_and_cache(
    py: Python<'_>,
    tokens: usize,
    head_dim: usize,
    kv_heads: usize,
    dtype_code: u32,
    cache_dtype: u32,
    k: usize,
    k_stride: usize,
    v: usize,
    v_stride: usize,
    slots: usize,
    k_cache: usize,
    v_cache: usize,
    num_slots: usize,
    threads: usize,
) -> PyResult<()> {
    if tokens == 0 {
        return Ok(());
    }
    let a = RopeArgs {
        tokens,
        head_dim,
        rotary_dim: head_dim,
        is_neox: true,
        dtype: dtype(dtype_code)?,
        positions: 0,
        cos_sin: 0,
        max_positions: 0,
        q: 0,
        q_stride: 0,
        q_heads: 0,
        k: nonnull(k, "key")?,
        k_stride,
        k_heads: kv_heads,
        cache: Some(CacheArgs {
            v: nonnull(v, "value")?,
            v_stride,
            slots: nonnull(slots, "slot_mapping")?,
            k_cache: nonnull(k_cache, "k_cache")?,
            v_cache: nonnull(v_cache, "v_cache")?,
            num_slots,
            dtype: dtype(cache_dtype)?,
        }),
        threads,
    };
    run(py, move || unsafe { cache_write(&a) })
}

/// Paged attention of every row (decode and prefill) into `out`; optionally with a sliding window
/// (0: none) and a score soft-cap (0: none).
#[pyfunction]
#[pyo3(signature = (dtype_code, cache_dtype, num_tokens, q, q_stride, out, out_stride, q_heads,
    kv_heads, head_dim, k_cache, v_cache, num_blocks, block_size, block_table, bt_stride,
    max_blocks, seq_lens, query_start_loc, rows, scale, threads, sliding_window=0, soft_cap=0.0))]
#[allow(clippy::too_many_arguments)]
fn cpu_paged_attention(
    py: Python<'_>,
    dtype_code: u32,
    cache_dtype: u32,
    num_tokens: usize,
    q: usize,
    q_stride: usize,
    out: usize,
    out_stride: usize,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    k_cache: usize,
    v_cache: usize,
    num_blocks: usize,
    block_size: usize,
    block_table: usize,
    bt_stride: usize,
    max_blocks: usize,
    seq_lens: usize,
    query_start_loc: usize,
    rows: usize,
    scale: f32,
    threads: usize,
    sliding_window: usize,
    soft_cap: f32,
) -> PyResult<()> {
    if rows == 0 || num_tokens == 0 {
        return Ok(());
    }
    let a = AttnArgs {
        dtype: dtype(dtype_code)?,
        cache_dtype: dtype(cache_dtype)?,
        num_tokens,
        q: nonnull(q, "q")?,
        q_stride,
        out: nonnull(out, "out")?,
        out_stride,
        q_heads,
        kv_heads,
        head_dim,
        k_cache: nonnull(k_cache, "k_cache")?,
        v_cache: nonnull(v_cache, "v_cache")?,
        num_blocks,
        block_size,
        block_table: nonnull(block_table, "block_table")?,
        bt_stride,
        max_blocks,
        seq_lens: nonnull(seq_lens, "seq_lens")?,
        query_start_loc: nonnull(query_start_loc, "query_start_loc")?,
        rows,
        scale,
        sliding_window,
        soft_cap,
        threads,
    };
    run(py, move || unsafe { paged_attention(&a) })
}

/// Recompute each row's `k` largest logits exactly from float32 hidden states and head weights.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_refine_top_logits(
    py: Python<'_>,
    rows: usize,
    vocab: usize,
    hidden_size: usize,
    logits: usize,
    logits_stride: usize,
    hidden: usize,
    hidden_stride: usize,
    head: usize,
    k: usize,
    threads: usize,
) -> PyResult<()> {
    if rows == 0 {
        return Ok(());
    }
    let a = RefineArgs {
        rows,
        vocab,
        hidden_size,
        logits: nonnull(logits, "logits")?,
        logits_stride,
        hidden: nonnull(hidden, "hidden")?,
        hidden_stride,
        head: nonnull(head, "head")?,
        k,
        threads,
    };
    run(py, move || unsafe { refine_top_logits(&a) })
}

fn qformat(bits: u32) -> PyResult<QFormat> {
    checked(QFormat::from_bits(bits))
}

/// Bytes of a `bits`-bit packed [n, k] weight.
#[pyfunction]
fn cpu_quant_bytes(bits: u32, n: usize, k: usize) -> PyResult<usize> {
    checked(packed_bytes(qformat(bits)?, n, k))
}

/// Quantize a contiguous float32 [n, k] weight into `packed` (bytes, sized by
/// `cpu_quant_bytes`); returns the largest reconstruction error relative to its group's scale (0
/// for weights that came from GGUF Q4_0 / Q4_1 / Q8_0).
#[pyfunction]
fn cpu_quant_pack(
    py: Python<'_>,
    bits: u32,
    w: usize,
    n: usize,
    k: usize,
    packed: usize,
) -> PyResult<f32> {
    let fmt = qformat(bits)?;
    let nb = checked(packed_bytes(fmt, n, k))?;
    let (w, packed) = (nonnull(w, "w")?, nonnull(packed, "packed")?);
    Ok(py.detach(move || unsafe {
        let w = std::slice::from_raw_parts(w as *const f32, n * k);
        let packed = std::slice::from_raw_parts_mut(packed as *mut u8, nb);
        match fmt {
            QFormat::Q4 => q4_pack(w, n, k, packed),
            QFormat::Q8 => q8_pack(w, n, k, packed),
        }
    }))
}

/// out [m, n] = x [m, k] @ W.T (+ bias, float32 [n]) with W packed by `cpu_quant_pack`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_quant_matmul(
    py: Python<'_>,
    bits: u32,
    m: usize,
    n: usize,
    k: usize,
    x: usize,
    x_stride: usize,
    x_dtype: u32,
    out: usize,
    out_stride: usize,
    out_dtype: u32,
    packed: usize,
    bias: usize,
    threads: usize,
) -> PyResult<()> {
    let fmt = qformat(bits)?;
    if m == 0 {
        return Ok(());
    }
    let ops = MatmulOperands::check(x, x_dtype, out, out_dtype, packed)?;
    let a = QMatmulArgs {
        fmt,
        m,
        n,
        k,
        x: ops.x,
        x_stride,
        x_dtype: ops.x_dtype,
        out: ops.out,
        out_stride,
        out_dtype: ops.out_dtype,
        packed: ops.packed,
        bias,
        threads,
    };
    run(py, move || unsafe { q_matmul(&a) })
}

/// Whether `paged_attention` has a kernel for this head dim.
#[pyfunction]
fn cpu_attention_supports_head_dim(head_dim: usize) -> bool {
    supported_head_dim(head_dim)
}

/// The instruction set the kernels use now: "avx512bf16", "avx512" or "portable".
#[pyfunction]
fn cpu_kernels_isa() -> &'static str {
    simd::isa_name()
}

/// Run the kernels' parallel parts on the process's OpenMP team: `gomp_parallel` is the address
/// of libgomp's `GOMP_parallel` as loaded by PyTorch (0: scoped threads instead). Returns whether
/// an OpenMP team is in use.
///
/// The address must come from the libgomp loaded in this process (it is called as that function).
#[pyfunction]
fn cpu_kernels_use_openmp(gomp_parallel: usize) -> bool {
    unsafe { crate::cpu_kernels::parallel::set_openmp(gomp_parallel) };
    crate::cpu_kernels::parallel::uses_openmp()
}

/// Ask the kernel for transparent huge pages on [addr, addr + bytes) (madvise MADV_HUGEPAGE, on
/// the 2 MiB-aligned part): big streams (weights, KV caches) then take far fewer TLB misses.
/// Best before the memory is first written. Returns whether the advice was taken.
#[pyfunction]
fn cpu_advise_hugepages(addr: usize, bytes: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_HUGEPAGE: i32 = 14;
        const HUGE: usize = 2 << 20;
        let start = addr.div_ceil(HUGE) * HUGE;
        let end = (addr + bytes) / HUGE * HUGE;
        if end <= start {
            return false;
        }
        // only changes how the kernel backs these pages; the memory stays the caller's
        unsafe { madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (addr, bytes);
        false
    }
}

/// Force the portable kernels (True) or pick by CPU again (False); for tests.
#[pyfunction]
fn cpu_kernels_force_portable(on: bool) {
    simd::set_force_portable(on)
}

// ---- gated activations (SwiGLU, GeGLU) ---------------------------------------------------------

/// out [rows, I] = act(x[:, :I]) * x[:, I:] with act 0 = silu, 1 = gelu (tanh approximation).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_gated_act_and_mul(
    py: Python<'_>,
    act: u32,
    rows: usize,
    inter: usize,
    x: usize,
    x_stride: usize,
    out: usize,
    out_stride: usize,
    dtype_code: u32,
    threads: usize,
) -> PyResult<()> {
    let act = checked(GateAct::from_code(act))?;
    if rows == 0 || inter == 0 {
        return Ok(());
    }
    let a = GatedActArgs {
        act,
        rows,
        inter,
        x: nonnull(x, "x")?,
        x_stride,
        out: nonnull(out, "out")?,
        out_stride,
        dtype: dtype(dtype_code)?,
        threads,
    };
    run(py, move || unsafe { gated_act_and_mul(&a) })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cpu_rms_norm, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_rotary_embedding, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_reshape_and_cache, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gated_act_and_mul, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_paged_attention, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_refine_top_logits, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_attention_supports_head_dim, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_quant_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_quant_pack, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_quant_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_kernels_isa, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_kernels_force_portable, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_kernels_use_openmp, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_advise_hugepages, m)?)?;
    // GGUF weights kept quantized: their own block of functions
    crate::py_gguf_kernels::register(m)?;
    Ok(())
}
