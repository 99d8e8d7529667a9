//! One sequence's position in its grammar, the batched mask computation of a step, and masks applied
//! to CPU logits.

use std::sync::Arc;

use llguidance::Matcher;

use super::{mask_words, CompiledGrammar, GrammarError};

/// A sequence's grammar state. Commit every token the sequence samples (EOS included); `fill_mask`
/// before each sample. A matcher in an error state (an internal llguidance failure) allows only EOS,
/// so the sequence can end cleanly.
pub struct GrammarMatcher {
    inner: Matcher,
    grammar: Arc<CompiledGrammar>,
    num_tokens: usize,
    // EOS tokens committed after the grammar had stopped (llguidance takes no tokens then; they are
    // counted here so that `rollback` stays exact)
    eos_after_stop: usize,
}

impl GrammarMatcher {
    pub fn new(grammar: &Arc<CompiledGrammar>) -> Self {
        GrammarMatcher {
            inner: grammar.new_matcher(),
            grammar: grammar.clone(),
            num_tokens: 0,
            eos_after_stop: 0,
        }
    }

    pub fn grammar(&self) -> &Arc<CompiledGrammar> {
        &self.grammar
    }

    /// Mask width in tokens.
    pub fn vocab_size(&self) -> usize {
        self.grammar.vocab().vocab_size()
    }

    /// Tokens committed since the start (what `rollback` can undo).
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Write the allowed next tokens into `out` (`ceil(vocab_size / 32)` words). A finished grammar
    /// allows only EOS; a matcher in an error state allows only EOS and returns the error.
    pub fn fill_mask(&mut self, out: &mut [u32]) -> Result<(), GrammarError> {
        let words = mask_words(self.vocab_size());
        if out.len() != words {
            return Err(GrammarError::BadArgument(format!(
                "mask row has {} words; this vocabulary needs {words}",
                out.len()
            )));
        }
        match self.inner.compute_mask_or_eos() {
            Ok(mask) => {
                let src = mask.as_slice();
                let n = src.len().min(words);
                out[..n].copy_from_slice(&src[..n]);
                out[n..].fill(0);
                Ok(())
            }
            Err(e) => {
                self.eos_only(out);
                Err(GrammarError::Matcher(e.to_string()))
            }
        }
    }

    fn eos_only(&self, out: &mut [u32]) {
        out.fill(0);
        for &eos in self.grammar.vocab().eos_ids() {
            out[eos as usize / 32] |= 1 << (eos % 32);
        }
    }

    /// Advance by one sampled token. A token the grammar does not allow is an error
    /// (`TokenRejected`) and leaves the matcher as it was.
    pub fn commit(&mut self, token: u32) -> Result<(), GrammarError> {
        if token as usize >= self.vocab_size() {
            return Err(GrammarError::BadArgument(format!(
                "token id {token} is outside the vocabulary ({})",
                self.vocab_size()
            )));
        }
        if let Some(e) = self.inner.get_error() {
            return Err(GrammarError::Matcher(e));
        }
        if self.inner.is_stopped() && self.grammar.vocab().eos_ids().contains(&token) {
            // the mask of a finished grammar is EOS only; sampling it ends the sequence
            self.num_tokens += 1;
            self.eos_after_stop += 1;
            return Ok(());
        }
        match self.inner.try_consume_tokens(&[token]) {
            Ok(1) => {
                self.num_tokens += 1;
                Ok(())
            }
            Ok(_) => Err(GrammarError::TokenRejected {
                token,
                reason: "the grammar does not allow it here".into(),
            }),
            Err(e) => Err(GrammarError::Matcher(e.to_string())),
        }
    }

    /// Put the matcher in its error state (tests of the error path).
    #[cfg(test)]
    pub(crate) fn force_error(&mut self) {
        let _ = self.inner.test_trigger_lexer_error();
    }

    /// Undo the last `n` commits (speculative tokens that were not accepted, or a stop string cut).
    pub fn rollback(&mut self, n: usize) -> Result<(), GrammarError> {
        if n > self.num_tokens {
            return Err(GrammarError::BadArgument(format!(
                "cannot roll back {n} tokens; only {} were committed",
                self.num_tokens
            )));
        }
        let virtual_eos = n.min(self.eos_after_stop);
        let real = n - virtual_eos;
        if real > 0 {
            self.inner
                .rollback(real)
                .map_err(|e| GrammarError::Matcher(e.to_string()))?;
        }
        self.eos_after_stop -= virtual_eos;
        self.num_tokens -= n;
        Ok(())
    }

    /// Back to the start of the grammar.
    pub fn reset(&mut self) {
        self.inner = self.grammar.new_matcher();
        self.num_tokens = 0;
        self.eos_after_stop = 0;
    }

    /// Whether the output so far is a complete sentence of the grammar (EOS would be allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.inner.is_accepting().unwrap_or(false)
    }

    /// Whether the grammar is finished (EOS committed, or nothing else can follow) or failed.
    pub fn is_stopped(&self) -> bool {
        self.inner.is_stopped()
    }

    pub fn error(&self) -> Option<String> {
        self.inner.get_error()
    }
}

/// Fill the masks of many sequences: `matchers[i]` writes row `rows[i]` of `out` (`rows x words`
/// words, row-major). Rows not named are left as they are. Work is split over up to `threads` threads.
/// Returns one entry per matcher: its error, if any (its row then allows only EOS).
pub fn fill_masks(
    matchers: &mut [&mut GrammarMatcher],
    out: &mut [u32],
    words: usize,
    rows: &[usize],
    threads: usize,
) -> Result<Vec<Option<GrammarError>>, GrammarError> {
    if rows.len() != matchers.len() {
        return Err(GrammarError::BadArgument(format!(
            "{} matchers but {} rows",
            matchers.len(),
            rows.len()
        )));
    }
    if words == 0 || out.len() % words != 0 {
        return Err(GrammarError::BadArgument(format!(
            "mask of {} words is not a whole number of rows of {words}",
            out.len()
        )));
    }
    let mut slots: Vec<Option<&mut [u32]>> = out.chunks_mut(words).map(Some).collect();
    let mut work: Vec<(&mut GrammarMatcher, &mut [u32])> = Vec::with_capacity(matchers.len());
    for (m, &row) in matchers.iter_mut().zip(rows) {
        let slot = slots.get_mut(row).and_then(Option::take).ok_or_else(|| {
            GrammarError::BadArgument(format!("row {row} is out of range or named twice"))
        })?;
        work.push((&mut **m, slot));
    }
    let threads = threads.clamp(1, work.len().max(1));
    if threads == 1 {
        return Ok(work
            .into_iter()
            .map(|(m, row)| m.fill_mask(row).err())
            .collect());
    }
    let per = work.len().div_ceil(threads);
    let mut results: Vec<Option<GrammarError>> = Vec::with_capacity(work.len());
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        let mut rest = work;
        while !rest.is_empty() {
            let tail = rest.split_off(per.min(rest.len()));
            let chunk = std::mem::replace(&mut rest, tail);
            let len = chunk.len();
            let handle = s.spawn(move || {
                chunk
                    .into_iter()
                    .map(|(m, row)| m.fill_mask(row).err())
                    .collect::<Vec<_>>()
            });
            handles.push((len, handle));
        }
        for (len, h) in handles {
            match h.join() {
                Ok(r) => results.extend(r),
                Err(_) => results.extend(
                    (0..len).map(|_| Some(GrammarError::Matcher("mask thread panicked".into()))),
                ),
            }
        }
    });
    Ok(results)
}

/// Mask one row of logits in place. `mask` has at least `ceil(logits.len() / 32)` words.
pub fn mask_logits_row(logits: &mut [f32], mask: &[u32]) -> Result<(), GrammarError> {
    let words = mask_words(logits.len());
    if mask.len() < words {
        return Err(GrammarError::BadArgument(format!(
            "mask row has {} words; {} logits need {words}",
            mask.len(),
            logits.len()
        )));
    }
    for (chunk, &bits) in logits.chunks_mut(32).zip(mask) {
        match bits {
            u32::MAX => {}
            0 => chunk.fill(f32::NEG_INFINITY),
            _ => {
                // branchless (mixed words have unpredictable bits): keep x where the bit is set
                let ninf = f32::NEG_INFINITY.to_bits();
                for (i, x) in chunk.iter_mut().enumerate() {
                    let keep = ((bits >> i) & 1).wrapping_neg();
                    *x = f32::from_bits((x.to_bits() & keep) | (ninf & !keep));
                }
            }
        }
    }
    Ok(())
}
