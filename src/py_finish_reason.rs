//! `lmrs._core.FinishReason`: the one enum of why a request ended, from the core to every API
//! (each API maps it to its own words in one place).

use pyo3::prelude::*;

use crate::sequence::FinishReason;

/// Why a request finished (`UpdateResult.tolist()` gives these; `finish_reasons` holds their
/// integer values). Each API maps them to its own words in one place.
#[pyclass(module = "lmrs._core", name = "FinishReason", eq, eq_int, frozen, hash)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PyFinishReason {
    /// EOS or a stop token id.
    #[pyo3(name = "STOP")]
    Stop = 1,
    /// A length limit, or a compute-only request (embedding, session update or end) is done.
    #[pyo3(name = "LENGTH")]
    Length = 2,
    /// The session turn was refused before inference: it would reach session_len.
    #[pyo3(name = "REFUSED")]
    Refused = 3,
    /// Aborted: client gone, cancelled (`stop: true`), or timed out.
    #[pyo3(name = "ABORT")]
    Abort = 4,
    /// A stop string was found.
    #[pyo3(name = "STOP_STRING")]
    StopString = 5,
    /// The request failed; its message says why.
    #[pyo3(name = "ERROR")]
    Error = 6,
}

impl From<FinishReason> for PyFinishReason {
    fn from(r: FinishReason) -> Self {
        match r {
            FinishReason::Stop => PyFinishReason::Stop,
            FinishReason::Length => PyFinishReason::Length,
            FinishReason::Refused => PyFinishReason::Refused,
            FinishReason::Abort => PyFinishReason::Abort,
            FinishReason::StopString => PyFinishReason::StopString,
            FinishReason::Error => PyFinishReason::Error,
        }
    }
}

impl From<PyFinishReason> for FinishReason {
    fn from(r: PyFinishReason) -> Self {
        FinishReason::from_code(r as u8).expect("the two enums have the same values")
    }
}

#[pymethods]
impl PyFinishReason {
    /// Lower-case name for statistics, metrics and logs ("stop", "length", "refused", "abort",
    /// "stop_string", "error").
    #[getter]
    fn label(&self) -> &'static str {
        FinishReason::from(*self).label()
    }

    /// The reason of an integer value from `UpdateResult.finish_reasons` (None for 0).
    #[staticmethod]
    fn from_code(code: u8) -> Option<PyFinishReason> {
        FinishReason::from_code(code).map(Into::into)
    }

    /// Every reason, in value order.
    #[staticmethod]
    fn all() -> Vec<PyFinishReason> {
        FinishReason::ALL.iter().map(|&r| r.into()).collect()
    }
}
