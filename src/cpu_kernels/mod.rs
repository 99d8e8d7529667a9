//! CPU kernels for the model forward pass on the CPU (the `lmrs.kernels.cpu` backend): paged
//! attention straight from the block table, fused residual-add + RMSNorm, RoPE fused with the
//! K/V cache write, SiLU-and-multiply and the output-head refinement.
//!
//! Every kernel reads and writes caller-owned memory (torch tensors, by raw pointer) whose shapes
//! and dtypes the Python wrapper checks; each kernel re-checks the indices it follows (block ids,
//! slots, positions, sequence lengths) so bad metadata gives an error, never a stray read or write.
//! Arithmetic is float32 whatever the storage dtype (bfloat16, float16 or float32).
//!
//! Each kernel has one generic body over [`simd::Isa`], compiled twice: with AVX-512 (picked at
//! run time when the CPU has it) and with portable 16-lane arrays (any x86-64, or other targets).
//! Large calls split their rows over threads (`parallel`).
//!
//! GGUF weights kept quantized (`gguf_*`): `gguf_layout` (formats and the tiled layout),
//! `gguf_rows` (packing, row permutation / concatenation, exact dequantization, the output
//! head's refinement), `gguf_decode` (codes to vectors) and `gguf_matmul` (the product for any
//! number of rows: streaming, then `gguf_gemm` / `gguf_gemm_bf16` for larger batches) and
//! `gguf_dequant_bf16` (tiles to a transposed bfloat16 scratch for oneDNN's GEMM on AMX machines).
//! `decoder_program` runs a whole decoder forward pass (these kernels, layer after layer) in one call.

pub mod activation;
pub mod attention;
pub mod decoder_program;
pub mod elem;
pub mod gguf_decode;
pub mod gguf_dequant_bf16;
pub mod gguf_gemm;
pub mod gguf_gemm_bf16;
pub mod gguf_gemm_i8;
pub mod gguf_gemv_bf16;
pub mod gguf_layout;
pub mod gguf_matmul;
pub mod gguf_pairs_bf16;
pub mod gguf_panels;
pub mod gguf_rows;
pub mod isa_select;
pub mod logits;
pub mod norm;
pub mod parallel;
pub mod quant_matmul;
pub mod rope;
pub mod simd;

#[cfg(test)]
mod gguf_tests;
#[cfg(test)]
mod tests;

/// Storage dtype of a tensor, as passed from Python (the codes of `lmrs.kernels.cpu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32 = 0,
    BF16 = 1,
    F16 = 2,
}

impl DType {
    pub fn from_code(code: u32) -> Result<DType, String> {
        match code {
            0 => Ok(DType::F32),
            1 => Ok(DType::BF16),
            2 => Ok(DType::F16),
            _ => Err(format!(
                "unknown dtype code {code} (0 = float32, 1 = bfloat16, 2 = float16)"
            )),
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

/// A raw pointer that may cross threads: kernels hand each thread disjoint rows of it.
#[derive(Clone, Copy)]
pub struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Build a shared slice from a caller's pointer; an empty slice for `len == 0` (any pointer).
///
/// # Safety
/// `ptr` must point to `len` readable elements that stay valid and unwritten for `'a`.
pub unsafe fn slice_from<'a, T>(ptr: usize, len: usize) -> &'a [T] {
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(ptr as *const T, len)
}

/// Dispatch a generic kernel body on the storage dtype: `$body` is instantiated with `$t` bound
/// to `f32`, `simd::Bf16` or `simd::F16`.
#[macro_export]
macro_rules! with_elem {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            $crate::cpu_kernels::DType::F32 => {
                type $t = f32;
                $body
            }
            $crate::cpu_kernels::DType::BF16 => {
                type $t = $crate::cpu_kernels::simd::Bf16;
                $body
            }
            $crate::cpu_kernels::DType::F16 => {
                type $t = $crate::cpu_kernels::simd::F16;
                $body
            }
        }
    };
}
