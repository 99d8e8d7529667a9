//! Argument checks shared by the kernel bindings (`py_kernels`, `py_gguf_kernels`): dtype codes,
//! non-null addresses, kernel errors as ValueError, and running a kernel without the GIL.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::cpu_kernels::DType;

/// A kernel-side check's message as the ValueError Python sees.
pub(crate) fn checked<T>(r: Result<T, String>) -> PyResult<T> {
    r.map_err(PyValueError::new_err)
}

/// A dtype code (0 = float32, 1 = bfloat16, 2 = float16).
pub(crate) fn dtype(code: u32) -> PyResult<DType> {
    checked(DType::from_code(code))
}

/// An address that must not be null (`what` names the argument in the error).
pub(crate) fn nonnull(addr: usize, what: &str) -> PyResult<usize> {
    if addr == 0 {
        return Err(PyValueError::new_err(format!("{what} is a null pointer")));
    }
    Ok(addr)
}

/// Run a kernel without the GIL; its error message becomes a ValueError.
pub(crate) fn run<F: FnOnce() -> Result<(), String> + Send>(py: Python<'_>, f: F) -> PyResult<()> {
    py.detach(f).map_err(PyValueError::new_err)
}

/// The checked operands of a product with a packed weight: x [m, k] and out [m, n] with their
/// dtypes, and the packed weight (both quantized matmul bindings take them alike).
pub(crate) struct MatmulOperands {
    /// x's address (non-null)
    pub(crate) x: usize,
    pub(crate) x_dtype: DType,
    /// out's address (non-null)
    pub(crate) out: usize,
    pub(crate) out_dtype: DType,
    /// the packed weight's address (non-null)
    pub(crate) packed: usize,
}

impl MatmulOperands {
    pub(crate) fn check(x: usize, x_dtype: u32, out: usize, out_dtype: u32, packed: usize) -> PyResult<Self> {
        Ok(MatmulOperands {
            x: nonnull(x, "x")?,
            x_dtype: dtype(x_dtype)?,
            out: nonnull(out, "out")?,
            out_dtype: dtype(out_dtype)?,
            packed: nonnull(packed, "packed")?,
        })
    }
}
