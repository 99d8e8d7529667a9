//! The model's vocabulary as llguidance sees it: a token trie over each token's bytes, built once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::ParserFactory;

use super::GrammarError;

/// Token table + llguidance parser factory for one model. Shared (`Arc`) by every compiled grammar.
pub struct GrammarVocab {
    factory: ParserFactory,
    vocab_size: usize,
    eos_ids: Vec<u32>,
}

impl GrammarVocab {
    /// `tokens[i]`: the bytes token `i` decodes to (byte-level BPE: the raw bytes; an empty entry for
    /// an id with no text). `special_ids`: tokens that are control tokens (`<|im_end|>`): they never
    /// match grammar text and are addressed by id (`<[2]>` in Lark). `eos_ids`: the tokens that end a
    /// sequence; the mask allows them once the grammar is complete. `vocab_size`: the mask width (the
    /// model's logits width, which may exceed `tokens.len()`; the extra ids are never allowed).
    pub fn new(
        tokens: &[Vec<u8>],
        special_ids: &[u32],
        eos_ids: &[u32],
        vocab_size: usize,
    ) -> Result<Self, GrammarError> {
        if tokens.len() > vocab_size {
            return Err(GrammarError::InvalidVocab(format!(
                "{} tokens do not fit a vocabulary of {vocab_size}",
                tokens.len()
            )));
        }
        if vocab_size == 0 || vocab_size > u32::MAX as usize / 2 {
            return Err(GrammarError::InvalidVocab(format!(
                "vocab_size {vocab_size} is out of range"
            )));
        }
        if eos_ids.is_empty() {
            return Err(GrammarError::InvalidVocab(
                "at least one EOS token id is needed".into(),
            ));
        }
        for &id in special_ids.iter().chain(eos_ids) {
            if id as usize >= tokens.len() {
                return Err(GrammarError::InvalidVocab(format!(
                    "token id {id} is outside the token table ({} tokens)",
                    tokens.len()
                )));
            }
        }
        let mut words: Vec<Vec<u8>> = tokens.to_vec();
        words.resize(vocab_size, Vec::new());
        for &id in special_ids.iter().chain(eos_ids) {
            let w = &mut words[id as usize];
            if w.first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER) {
                w.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
            }
        }
        let info = TokRxInfo::new(vocab_size as u32, eos_ids[0]);
        let built = catch_unwind(AssertUnwindSafe(|| {
            let trie = TokTrie::from(&info, &words).with_eos_tokens(eos_ids);
            let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
            ParserFactory::new_simple(&env)
        }));
        let mut factory = match built {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Err(GrammarError::InvalidVocab(e.to_string())),
            Err(_) => {
                return Err(GrammarError::InvalidVocab(
                    "the token trie could not be built".into(),
                ))
            }
        };
        factory.quiet();
        Ok(GrammarVocab {
            factory,
            vocab_size,
            eos_ids: eos_ids.to_vec(),
        })
    }

    pub fn factory(&self) -> &ParserFactory {
        &self.factory
    }

    /// Mask width in tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }
}
