//! A model's vocabulary as llguidance sees it (a token trie over each token's bytes, built once) and
//! grammars compiled against it: the templates every sequence's matcher is cloned from.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

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

/// What the source text of a grammar is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrammarKind {
    /// A JSON schema (JSON text); the output is one JSON value valid under it.
    JsonSchema,
    /// A regular expression (Rust `regex` syntax) the whole output must match.
    Regex,
    /// A context-free grammar in llguidance's Lark dialect (may embed `%json {...}` schemas).
    Lark,
}

impl GrammarKind {
    pub fn parse(name: &str) -> Result<Self, GrammarError> {
        match name {
            "json_schema" => Ok(GrammarKind::JsonSchema),
            "regex" => Ok(GrammarKind::Regex),
            "lark" => Ok(GrammarKind::Lark),
            other => Err(GrammarError::BadArgument(format!(
                "unknown grammar kind {other:?}; expected json_schema, regex or lark"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GrammarKind::JsonSchema => "json_schema",
            GrammarKind::Regex => "regex",
            GrammarKind::Lark => "lark",
        }
    }
}

/// A compiled grammar. Matchers are clones of `template`, which share its lexer cache (the lazily built
/// lexer states of the grammar), so the work one sequence does is reused by the next.
pub struct CompiledGrammar {
    template: Mutex<Matcher>,
    vocab: Arc<GrammarVocab>,
    kind: GrammarKind,
    compile_time: Duration,
}

impl CompiledGrammar {
    /// Compile `source` and compute the first mask once, so errors that only show when the parser
    /// starts are reported here and the first step of the first request does not pay for it.
    pub fn compile(
        vocab: &Arc<GrammarVocab>,
        kind: GrammarKind,
        source: &str,
    ) -> Result<Self, GrammarError> {
        let t0 = Instant::now();
        let grammar = match kind {
            GrammarKind::JsonSchema => {
                let schema: serde_json::Value = serde_json::from_str(source).map_err(|e| {
                    GrammarError::InvalidGrammar(format!("the JSON schema is not valid JSON: {e}"))
                })?;
                TopLevelGrammar::from_json_schema(schema)
            }
            GrammarKind::Regex => TopLevelGrammar::from_regex(source),
            GrammarKind::Lark => TopLevelGrammar::from_lark(source.to_string()),
        };
        let parser = vocab
            .factory()
            .create_parser(grammar)
            .map_err(|e| GrammarError::InvalidGrammar(first_line(&e.to_string())))?;
        let mut template = Matcher::new(Ok(parser));
        if let Some(e) = template.get_error() {
            return Err(GrammarError::InvalidGrammar(first_line(&e)));
        }
        template
            .compute_mask()
            .map_err(|e| GrammarError::InvalidGrammar(first_line(&e.to_string())))?;
        Ok(CompiledGrammar {
            template: Mutex::new(template),
            vocab: vocab.clone(),
            kind,
            compile_time: t0.elapsed(),
        })
    }

    /// A fresh matcher at the start of the grammar.
    pub fn new_matcher(&self) -> Matcher {
        self.template
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn vocab(&self) -> &Arc<GrammarVocab> {
        &self.vocab
    }

    pub fn kind(&self) -> GrammarKind {
        self.kind
    }

    /// Wall time of `compile` (parse, lexer construction and the first mask).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }
}

/// llguidance errors may append the whole grammar and parser state; keep the message a client can use.
fn first_line(msg: &str) -> String {
    let line = msg
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(msg)
        .trim();
    let mut out: String = line.chars().take(500).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out
}
