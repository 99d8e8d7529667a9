//! One grammar compiled against a vocabulary: the template every sequence's matcher is cloned from.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llguidance::api::TopLevelGrammar;
use llguidance::Matcher;

use super::{GrammarError, GrammarVocab};

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
