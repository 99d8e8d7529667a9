//! GGUF weights kept quantized, as plain functions of `lmrs._core` (used by
//! `lmrs.kernels.gguf_cpu`): packing a tensor's GGUF bytes into the tiled layout, row copies,
//! exact dequantization of rows, the product for any number of rows and the output head's
//! refinement from quantized rows.
//!
//! Types are `ggml_type` codes (`gguf.GGMLQuantizationType`); buffers are addresses with their
//! byte lengths (checked here against the shapes), tensors addresses with strides in elements
//! and dtype codes (0 = float32, 1 = bfloat16, 2 = float16) as in `py_kernels`. Every call
//! releases the GIL while it computes; a bad argument raises ValueError.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::cpu_kernels::gguf_dequant_bf16::{dequantize_t_bf16, DequantTArgs};
use crate::cpu_kernels::gguf_gemm_bf16;
use crate::cpu_kernels::gguf_layout::{gguf_row_bytes, packed_bytes, GgufType};
use crate::cpu_kernels::gguf_matmul::{gguf_matmul, GgufMatmulArgs};
use crate::cpu_kernels::gguf_rows::{
    copy_rows, dequantize_rows, pack, refine_top_logits_quant, unpack_rows, QuantRefineArgs,
};
use crate::cpu_kernels::slice_from;
use crate::py_args::{checked, nonnull, run, MatmulOperands};

fn gguf_type(code: u32) -> PyResult<GgufType> {
    checked(GgufType::from_ggml(code))
}

/// A tiled [n, k] weight's buffer length, checked against its type and shape.
fn check_packed_len(t: GgufType, n: usize, k: usize, packed_len: usize) -> PyResult<()> {
    let want = checked(packed_bytes(t, n, k))?;
    if packed_len != want {
        return Err(PyValueError::new_err(format!(
            "packed buffer has {packed_len} bytes, a {} [{n}, {k}] weight needs {want}",
            t.name()
        )));
    }
    Ok(())
}

/// The ggml type codes kept quantized.
#[pyfunction]
fn cpu_gguf_types() -> Vec<u32> {
    GgufType::ALL.iter().map(|t| t.ggml_code()).collect()
}

/// Bytes of a tiled [n, k] weight of ggml type `ty`.
#[pyfunction]
fn cpu_gguf_packed_bytes(ty: u32, n: usize, k: usize) -> PyResult<usize> {
    checked(packed_bytes(gguf_type(ty)?, n, k))
}

/// Bytes of one row of a [n, k] tensor of ggml type `ty` in a GGUF file.
#[pyfunction]
fn cpu_gguf_row_bytes(ty: u32, k: usize) -> PyResult<usize> {
    let t = gguf_type(ty)?;
    if k == 0 || k % t.block_values() != 0 {
        return Err(PyValueError::new_err(format!(
            "a {} row needs a positive multiple of {} values, got {k}",
            t.name(),
            t.block_values()
        )));
    }
    Ok(gguf_row_bytes(t, k))
}

/// Pack the GGUF bytes of a [n, k] tensor (`raw`, `raw_len` bytes) into `packed`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_gguf_pack(
    py: Python<'_>,
    ty: u32,
    raw: usize,
    raw_len: usize,
    n: usize,
    k: usize,
    packed: usize,
    packed_len: usize,
    threads: usize,
) -> PyResult<()> {
    let t = gguf_type(ty)?;
    let (raw, packed) = (nonnull(raw, "raw")?, nonnull(packed, "packed")?);
    run(py, move || unsafe {
        let raw = slice_from::<u8>(raw, raw_len);
        let packed = std::slice::from_raw_parts_mut(packed as *mut u8, packed_len);
        pack(t, raw, n, k, packed, threads)
    })
}

/// The GGUF bytes of rows `rows` (int64 [count]) of a tiled [n, k] weight into `raw`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_gguf_unpack_rows(
    py: Python<'_>,
    ty: u32,
    packed: usize,
    packed_len: usize,
    n: usize,
    k: usize,
    rows: usize,
    count: usize,
    raw: usize,
    raw_len: usize,
) -> PyResult<()> {
    let t = gguf_type(ty)?;
    let (packed, raw) = (nonnull(packed, "packed")?, nonnull(raw, "raw")?);
    run(py, move || unsafe {
        let rows = slice_from::<i64>(rows, count);
        let packed = slice_from::<u8>(packed, packed_len);
        let raw = std::slice::from_raw_parts_mut(raw as *mut u8, raw_len);
        unpack_rows(t, packed, n, k, rows, raw)
    })
}

/// Rows `rows` (int64 [count]) of the tiled [src_n, k] weight `src` become rows dst_row0.. of the
/// tiled [dst_n, k] weight `dst` (a different buffer).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_gguf_copy_rows(
    py: Python<'_>,
    ty: u32,
    k: usize,
    src: usize,
    src_len: usize,
    src_n: usize,
    rows: usize,
    count: usize,
    dst: usize,
    dst_len: usize,
    dst_n: usize,
    dst_row0: usize,
) -> PyResult<()> {
    let t = gguf_type(ty)?;
    let (src, dst) = (nonnull(src, "src")?, nonnull(dst, "dst")?);
    if src == dst {
        return Err(PyValueError::new_err("copy_rows needs distinct buffers"));
    }
    run(py, move || unsafe {
        let rows = slice_from::<i64>(rows, count);
        let src = slice_from::<u8>(src, src_len);
        let dst = std::slice::from_raw_parts_mut(dst as *mut u8, dst_len);
        copy_rows(t, k, src, src_n, rows, dst, dst_n, dst_row0)
    })
}

/// Rows `rows` (int64 [count]) of a tiled [n, k] weight dequantized exactly into float32 `out`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_gguf_dequantize_rows(
    py: Python<'_>,
    ty: u32,
    packed: usize,
    packed_len: usize,
    n: usize,
    k: usize,
    rows: usize,
    count: usize,
    out: usize,
    out_stride: usize,
    threads: usize,
) -> PyResult<()> {
    let t = gguf_type(ty)?;
    if count == 0 {
        return Ok(());
    }
    check_packed_len(t, n, k, packed_len)?;
    let (packed, out) = (nonnull(packed, "packed")?, nonnull(out, "out")?);
    let rows = nonnull(rows, "rows")?;
    run(py, move || unsafe {
        let rows = slice_from::<i64>(rows, count);
        dequantize_rows(t, packed, n, k, rows, out, out_stride, threads)
    })
}

/// out [m, n] = x [m, k] @ W.T (+ bias, float32 [n]) with W a tiled weight of type `ty`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_gguf_matmul(
    py: Python<'_>,
    ty: u32,
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
    let t = gguf_type(ty)?;
    if m == 0 {
        return Ok(());
    }
    let ops = MatmulOperands::check(x, x_dtype, out, out_dtype, packed)?;
    let a = GgufMatmulArgs {
        ty: t,
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
    run(py, move || unsafe { gguf_matmul(&a) })
}

/// Let bfloat16 products of 4-bit and Q8_0 weights at more than 8 rows take 8-bit activations on
/// AVX512-VNNI (True) or not (False, the default); returns whether such a product takes them now
/// (the CPU has AVX512-VNNI and the path is on).
#[pyfunction]
fn cpu_gguf_int8_activations(on: bool) -> bool {
    crate::cpu_kernels::gguf_gemm_i8::set_enabled(on);
    on && crate::cpu_kernels::gguf_gemm_i8::vnni()
}

/// How many products took 8-bit activations since the process started.
#[pyfunction]
fn cpu_gguf_int8_products() -> usize {
    crate::cpu_kernels::gguf_gemm_i8::products()
}

/// Recompute each row's `k` largest logits exactly from float32 hidden states and the tiled
/// [vocab, hidden_size] table of type `ty`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_gguf_refine_top_logits(
    py: Python<'_>,
    ty: u32,
    rows: usize,
    vocab: usize,
    hidden_size: usize,
    logits: usize,
    logits_stride: usize,
    hidden: usize,
    hidden_stride: usize,
    packed: usize,
    k: usize,
    threads: usize,
) -> PyResult<()> {
    let t = gguf_type(ty)?;
    if rows == 0 {
        return Ok(());
    }
    let a = QuantRefineArgs {
        ty: t,
        rows,
        vocab,
        hidden_size,
        logits: nonnull(logits, "logits")?,
        logits_stride,
        hidden: nonnull(hidden, "hidden")?,
        hidden_stride,
        packed: nonnull(packed, "packed")?,
        k,
        threads,
    };
    run(py, move || unsafe { refine_top_logits_quant(&a) })
}

/// Tiles [tile0, tile1) of a tiled [n, k] weight dequantized to bfloat16 and transposed into
/// `out` [k, out_stride] (columns 0 .. the tiles' outputs), for a dense GEMM x @ out.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cpu_gguf_dequantize_t_bf16(
    py: Python<'_>,
    ty: u32,
    packed: usize,
    packed_len: usize,
    n: usize,
    k: usize,
    tile0: usize,
    tile1: usize,
    out: usize,
    out_stride: usize,
    threads: usize,
) -> PyResult<()> {
    let t = gguf_type(ty)?;
    let want = packed_bytes(t, n, k).map_err(PyValueError::new_err)?;
    if packed_len != want {
        return Err(PyValueError::new_err(format!(
            "packed buffer has {packed_len} bytes, a {} [{n}, {k}] weight needs {want}",
            t.name()
        )));
    }
    let a = DequantTArgs {
        ty: t,
        n,
        k,
        tile0,
        tile1,
        packed: nonnull(packed, "packed")?,
        out: nonnull(out, "out")?,
        out_stride,
        threads,
    };
    run(py, move || unsafe { dequantize_t_bf16(&a) })
}

/// Whether this CPU has AMX bfloat16 tiles (oneDNN's bfloat16 GEMM runs on them).
#[pyfunction]
fn cpu_has_amx_bf16() -> bool {
    crate::cpu_kernels::simd::amx_bf16_detected()
}

/// Whether this CPU has AVX-512 with VNNI (the 8-bit activation products).
#[pyfunction]
fn cpu_has_avx512_vnni() -> bool {
    crate::cpu_kernels::gguf_gemm_i8::vnni()
}

/// Run the bfloat16 large-batch kernel with emulated `vdpbf16ps` on AVX-512 CPUs without
/// AVX512-BF16 (True), or only natively (False); for tests.
#[pyfunction]
fn cpu_gguf_emulate_bf16(on: bool) {
    gguf_gemm_bf16::set_emulation(on)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cpu_gguf_int8_activations, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_int8_products, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_has_avx512_vnni, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_types, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_packed_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_row_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_pack, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_unpack_rows, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_copy_rows, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_dequantize_rows, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_refine_top_logits, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_emulate_bf16, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gguf_dequantize_t_bf16, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_has_amx_bf16, m)?)?;
    Ok(())
}
