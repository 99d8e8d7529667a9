//! Structured output: grammars compiled by `llguidance` over the model's vocabulary, and per-sequence
//! matchers that compute the bitmask of allowed next tokens.
//!
//! - [`compiled::GrammarVocab`]: built once per model from the token table (token id -> bytes, special
//!   tokens, EOS ids); holds llguidance's token trie and parser factory.
//! - [`compiled::CompiledGrammar`]: one JSON schema / regex / Lark grammar compiled against a vocabulary;
//!   immutable and shared (`Arc`) by every sequence that uses it.
//! - [`matcher::GrammarMatcher`]: one sequence's position in the grammar: fill the mask, commit the
//!   sampled token, roll back. [`matcher::fill_masks`] fills many rows at once (optionally on several
//!   threads), the call the engine makes per step with the GIL released.
//! - [`matcher::mask_logits_row`]: `-inf` into CPU float32 logits where the mask forbids a token.
//!
//! Masks are `u32` words, bit `t % 32` of word `t / 32` set when token `t` is allowed (the layout of
//! xgrammar and vLLM), `ceil(vocab_size / 32)` words per row.

pub mod compiled;
pub mod matcher;

#[cfg(test)]
mod tests;

use std::fmt;

pub use compiled::{CompiledGrammar, GrammarKind, GrammarVocab};
pub use matcher::{fill_masks, mask_logits_row, GrammarMatcher};

/// Everything that can go wrong in this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrammarError {
    /// The token table cannot make a vocabulary (bad EOS id, size mismatch).
    InvalidVocab(String),
    /// The grammar engine rejected the schema, regex or grammar.
    InvalidGrammar(String),
    /// A committed token is not allowed by the grammar at that point; the matcher is now unusable.
    TokenRejected { token: u32, reason: String },
    /// The matcher is in an error state from an earlier failure.
    Matcher(String),
    /// A caller-side mistake: wrong buffer size, token id out of range, bad row index.
    BadArgument(String),
}

impl fmt::Display for GrammarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrammarError::InvalidVocab(m) => write!(f, "invalid vocabulary: {m}"),
            GrammarError::InvalidGrammar(m) => write!(f, "invalid grammar: {m}"),
            GrammarError::TokenRejected { token, reason } => {
                write!(f, "token {token} is not allowed by the grammar: {reason}")
            }
            GrammarError::Matcher(m) => write!(f, "grammar matcher failed: {m}"),
            GrammarError::BadArgument(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for GrammarError {}

/// Number of `u32` mask words for `vocab_size` tokens.
pub fn mask_words(vocab_size: usize) -> usize {
    vocab_size.div_ceil(32)
}
