//! The Python surface of `grammar/`: `GrammarVocab`, `Grammar` (compiled, shared), `GrammarMatcher` (one
//! per sequence), `fill_next_token_bitmasks` (a step's masks in one call) and `apply_token_bitmask_cpu`. Every call that computes
//! (vocabulary build, compile, masks, commits) releases the GIL. Failures raise `GrammarError`
//! (a `ValueError`).

use std::sync::Arc;

use numpy::{PyReadonlyArray2, PyReadwriteArray2, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::grammar::{
    self, fill_masks, mask_logits_row, CompiledGrammar, GrammarKind, GrammarMatcher, GrammarVocab,
};

create_exception!(
    lmrs._core,
    GrammarError,
    PyValueError,
    "A grammar, vocabulary or matcher operation failed (invalid grammar, rejected token, bad argument)."
);

fn err(e: grammar::GrammarError) -> PyErr {
    GrammarError::new_err(e.to_string())
}

/// The mask buffer as `u32` words: a C-contiguous int32 numpy array `[rows, words]`.
fn mask_slice<'a>(
    mask: &'a mut PyReadwriteArray2<'_, i32>,
    words: usize,
) -> PyResult<&'a mut [u32]> {
    let shape = mask.shape();
    if shape[1] != words {
        return Err(GrammarError::new_err(format!(
            "bitmask has {} words per row; this vocabulary needs {words}",
            shape[1]
        )));
    }
    let s = mask
        .as_slice_mut()
        .map_err(|_| GrammarError::new_err("bitmask must be a C-contiguous int32 array"))?;
    // SAFETY: i32 and u32 have the same size and alignment; every bit pattern is valid for both.
    Ok(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u32, s.len()) })
}

/// A model's vocabulary for grammars, built once: `GrammarVocab(token_bytes, special_ids, eos_ids,
/// vocab_size)`. `token_bytes[i]`: the bytes token i decodes to; `special_ids`: control tokens (never
/// matched by grammar text); `eos_ids`: tokens that end a sequence; `vocab_size`: the logits width.
#[pyclass(module = "lmrs._core", frozen, name = "GrammarVocab")]
pub struct PyGrammarVocab {
    inner: Arc<GrammarVocab>,
}

#[pymethods]
impl PyGrammarVocab {
    #[new]
    fn new(
        py: Python<'_>,
        token_bytes: Vec<Vec<u8>>,
        special_ids: Vec<u32>,
        eos_ids: Vec<u32>,
        vocab_size: usize,
    ) -> PyResult<Self> {
        let v = py
            .detach(|| GrammarVocab::new(&token_bytes, &special_ids, &eos_ids, vocab_size))
            .map_err(err)?;
        Ok(PyGrammarVocab { inner: Arc::new(v) })
    }

    /// Mask width in tokens (the logits width).
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// int32 words per mask row: ceil(vocab_size / 32).
    #[getter]
    fn mask_words(&self) -> usize {
        grammar::mask_words(self.inner.vocab_size())
    }

    #[getter]
    fn eos_ids(&self) -> Vec<u32> {
        self.inner.eos_ids().to_vec()
    }
}

/// A compiled grammar, immutable and shared by every sequence that uses it:
/// `Grammar.compile(vocab, kind, source)` with kind "json_schema", "regex" or "lark".
#[pyclass(module = "lmrs._core", frozen, name = "Grammar")]
pub struct PyGrammar {
    inner: Arc<CompiledGrammar>,
}

#[pymethods]
impl PyGrammar {
    #[staticmethod]
    fn compile(py: Python<'_>, vocab: &PyGrammarVocab, kind: &str, source: &str) -> PyResult<Self> {
        let kind = GrammarKind::parse(kind).map_err(err)?;
        let vocab = vocab.inner.clone();
        let source = source.to_string();
        let g = py
            .detach(move || CompiledGrammar::compile(&vocab, kind, &source))
            .map_err(err)?;
        Ok(PyGrammar { inner: Arc::new(g) })
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind().name()
    }

    /// Seconds `compile` took (parse, lexer, first mask).
    #[getter]
    fn compile_seconds(&self) -> f64 {
        self.inner.compile_time().as_secs_f64()
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab().vocab_size()
    }

    /// A fresh matcher at the start of this grammar.
    fn matcher(&self) -> PyGrammarMatcher {
        PyGrammarMatcher {
            inner: GrammarMatcher::new(&self.inner),
        }
    }
}

/// One sequence's state in a grammar. Before sampling: `fill_next_token_bitmask(mask, row)`; after:
/// `commit(token)` (EOS included).
#[pyclass(module = "lmrs._core", name = "GrammarMatcher")]
pub struct PyGrammarMatcher {
    inner: GrammarMatcher,
}

#[pymethods]
impl PyGrammarMatcher {
    #[new]
    fn new(grammar: &PyGrammar) -> Self {
        grammar.matcher()
    }

    /// Write the allowed next tokens into row `row` of `bitmask` (int32 [rows, mask_words]). On a
    /// matcher error the row allows only EOS and GrammarError is raised.
    fn fill_next_token_bitmask(
        &mut self,
        py: Python<'_>,
        mut bitmask: PyReadwriteArray2<'_, i32>,
        row: usize,
    ) -> PyResult<()> {
        let words = grammar::mask_words(self.inner.vocab_size());
        let rows = bitmask.shape()[0];
        if row >= rows {
            return Err(GrammarError::new_err(format!(
                "row {row} is out of range ({rows} rows)"
            )));
        }
        let all = mask_slice(&mut bitmask, words)?;
        let out = &mut all[row * words..(row + 1) * words];
        let inner = &mut self.inner;
        py.detach(move || inner.fill_mask(out)).map_err(err)
    }

    /// Advance by a sampled token; a token the grammar does not allow raises GrammarError.
    fn commit(&mut self, py: Python<'_>, token: u32) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(move || inner.commit(token)).map_err(err)
    }

    /// Commit several tokens (rebuilding a matcher for a sequence that already has output).
    fn commit_tokens(&mut self, py: Python<'_>, tokens: Vec<u32>) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(move || tokens.iter().try_for_each(|&t| inner.commit(t)))
            .map_err(err)
    }

    /// Undo the last `n` commits.
    fn rollback(&mut self, n: usize) -> PyResult<()> {
        self.inner.rollback(n).map_err(err)
    }

    /// Back to the start of the grammar.
    fn reset(&mut self) {
        self.inner.reset()
    }

    /// The output so far is complete (EOS is allowed).
    fn is_accepting(&mut self) -> bool {
        self.inner.is_accepting()
    }

    /// The grammar is finished (only EOS can follow) or failed.
    fn is_stopped(&self) -> bool {
        self.inner.is_stopped()
    }

    /// The error that stopped the matcher, or None.
    fn error(&self) -> Option<String> {
        self.inner.error()
    }

    /// Tokens committed since the start.
    #[getter]
    fn num_tokens(&self) -> usize {
        self.inner.num_tokens()
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
}

/// Fill a step's masks: `matchers[i]` writes row `rows[i]` of `bitmask` (int32 [rows, mask_words]),
/// on up to `threads` threads, without the GIL. Returns, per matcher, None or its error message (that
/// row then allows only EOS).
#[pyfunction]
#[pyo3(signature = (matchers, bitmask, rows, threads = 1))]
fn fill_next_token_bitmasks(
    py: Python<'_>,
    mut matchers: Vec<PyRefMut<'_, PyGrammarMatcher>>,
    mut bitmask: PyReadwriteArray2<'_, i32>,
    rows: Vec<usize>,
    threads: usize,
) -> PyResult<Vec<Option<String>>> {
    let Some(first) = matchers.first() else {
        return Ok(Vec::new());
    };
    let vocab = first.inner.vocab_size();
    if let Some(m) = matchers.iter().find(|m| m.inner.vocab_size() != vocab) {
        return Err(GrammarError::new_err(format!(
            "matchers of different vocabularies ({vocab} and {}) in one call",
            m.inner.vocab_size()
        )));
    }
    let words = grammar::mask_words(vocab);
    let out = mask_slice(&mut bitmask, words)?;
    let mut refs: Vec<&mut GrammarMatcher> = matchers.iter_mut().map(|m| &mut m.inner).collect();
    let res = py
        .detach(move || fill_masks(&mut refs, out, words, &rows, threads))
        .map_err(err)?;
    Ok(res.into_iter().map(|e| e.map(|e| e.to_string())).collect())
}

/// `-inf` into float32 CPU logits (numpy `[S, V]`, rows contiguous) wherever the int32 bitmask
/// (`[R, words]`) forbids a token: mask row `i` applies to logits row `rows[i]` (default: row `i`).
#[pyfunction]
#[pyo3(signature = (logits, bitmask, rows = None))]
fn apply_token_bitmask_cpu(
    py: Python<'_>,
    mut logits: PyReadwriteArray2<'_, f32>,
    bitmask: PyReadonlyArray2<'_, i32>,
    rows: Option<Vec<usize>>,
) -> PyResult<()> {
    let (n_mask, words) = (bitmask.shape()[0], bitmask.shape()[1]);
    let n_rows = logits.shape()[0];
    let rows: Vec<usize> = rows.unwrap_or_else(|| (0..n_mask).collect());
    if rows.len() != n_mask {
        return Err(GrammarError::new_err(format!(
            "{n_mask} mask rows but {} row indices",
            rows.len()
        )));
    }
    if let Some(&r) = rows.iter().find(|&&r| r >= n_rows) {
        return Err(GrammarError::new_err(format!(
            "row {r} is out of range ({n_rows} rows)"
        )));
    }
    let mask = bitmask
        .as_slice()
        .map_err(|_| GrammarError::new_err("bitmask must be a C-contiguous int32 array"))?;
    // SAFETY: same size and alignment; every bit pattern is valid for both types.
    let mask: &[u32] =
        unsafe { std::slice::from_raw_parts(mask.as_ptr() as *const u32, mask.len()) };
    let mut view = logits.as_array_mut();
    let mut row_slices: Vec<&mut [f32]> = Vec::with_capacity(rows.len());
    let mut all: Vec<Option<&mut [f32]>> = view.outer_iter_mut().map(|r| r.into_slice()).collect();
    for &r in &rows {
        let row = all[r].take().ok_or_else(|| {
            GrammarError::new_err(format!(
                "logits row {r} is named twice or is not contiguous"
            ))
        })?;
        row_slices.push(row);
    }
    py.detach(move || {
        for (i, row) in row_slices.into_iter().enumerate() {
            mask_logits_row(row, &mask[i * words..(i + 1) * words])?;
        }
        Ok(())
    })
    .map_err(err)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGrammarVocab>()?;
    m.add_class::<PyGrammar>()?;
    m.add_class::<PyGrammarMatcher>()?;
    m.add_function(wrap_pyfunction!(fill_next_token_bitmasks, m)?)?;
    m.add_function(wrap_pyfunction!(apply_token_bitmask_cpu, m)?)?;
    m.add("GrammarError", m.py().get_type::<GrammarError>())?;
    Ok(())
}
