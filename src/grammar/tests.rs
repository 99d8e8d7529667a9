//! Tests over a byte vocabulary: 256 one-byte tokens, a few multi-byte ones, and special tokens.

use std::sync::Arc;

use super::*;

const EOS: u32 = 256;
const TOOL: u32 = 257; // a special token "<|tool|>"
const AB: u32 = 258; // "ab"
const QUOTE_COMMA: u32 = 259; // "\","
const VOCAB: usize = 264; // logits width wider than the token table

fn vocab() -> Arc<GrammarVocab> {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    tokens.push(b"<|end|>".to_vec());
    tokens.push(b"<|tool|>".to_vec());
    tokens.push(b"ab".to_vec());
    tokens.push(b"\",".to_vec());
    Arc::new(GrammarVocab::new(&tokens, &[TOOL], &[EOS], VOCAB).unwrap())
}

fn compile(kind: GrammarKind, src: &str) -> Arc<CompiledGrammar> {
    Arc::new(CompiledGrammar::compile(&vocab(), kind, src).unwrap())
}

fn allowed(m: &mut GrammarMatcher) -> Vec<u32> {
    let mut mask = vec![0u32; mask_words(m.vocab_size())];
    m.fill_mask(&mut mask).unwrap();
    (0..m.vocab_size() as u32)
        .filter(|&t| mask[t as usize / 32] >> (t % 32) & 1 == 1)
        .collect()
}

fn commit_str(m: &mut GrammarMatcher, s: &str) {
    for b in s.bytes() {
        m.commit(b as u32).unwrap();
    }
}

#[test]
fn regex_allows_exactly_its_language() {
    let g = compile(GrammarKind::Regex, "a[0-9]{2}");
    let mut m = GrammarMatcher::new(&g);
    assert_eq!(allowed(&mut m), vec![b'a' as u32]);
    m.commit(b'a' as u32).unwrap();
    assert_eq!(
        allowed(&mut m),
        (b'0'..=b'9').map(u32::from).collect::<Vec<_>>()
    );
    assert!(!m.is_accepting());
    commit_str(&mut m, "12");
    assert!(m.is_accepting());
    assert_eq!(allowed(&mut m), vec![EOS]);
    m.commit(EOS).unwrap();
    assert!(m.is_stopped());
    assert_eq!(m.num_tokens(), 4);
}

#[test]
fn multi_byte_tokens_and_padding_ids() {
    let g = compile(GrammarKind::Regex, "(ab)+");
    let mut m = GrammarMatcher::new(&g);
    let a = allowed(&mut m);
    assert!(a.contains(&AB) && a.contains(&(b'a' as u32)));
    assert!(
        a.iter().all(|&t| t < 260),
        "ids past the token table are never allowed"
    );
    m.commit(AB).unwrap();
    assert!(m.is_accepting());
}

#[test]
fn json_schema_walk_and_rejection() {
    let schema = r#"{"type":"object","properties":{"x":{"type":"integer"},"s":{"type":"string"}},
                     "required":["x","s"],"additionalProperties":false}"#;
    let g = compile(GrammarKind::JsonSchema, schema);
    let mut m = GrammarMatcher::new(&g);
    commit_str(&mut m, "{\"x\":");
    let digits = allowed(&mut m);
    assert!(digits.contains(&(b'7' as u32)) && !digits.contains(&(b'"' as u32)));
    commit_str(&mut m, "7,\"s\":\"a");
    assert!(matches!(
        m.commit(QUOTE_COMMA),
        Err(GrammarError::TokenRejected { .. })
    ));
    assert!(
        m.error().is_none(),
        "a rejected token leaves the matcher as it was"
    );
    commit_str(&mut m, "\\\"b\"}");
    assert!(m.is_accepting());
    assert_eq!(m.num_tokens(), "{\"x\":7,\"s\":\"a\\\"b\"}".len());
}

#[test]
fn a_failed_matcher_allows_only_eos() {
    let g = compile(GrammarKind::Regex, "[a-z]+");
    let mut m = GrammarMatcher::new(&g);
    m.force_error();
    assert!(m.is_stopped() && m.error().is_some());
    let mut mask = vec![u32::MAX; mask_words(VOCAB)];
    assert!(matches!(
        m.fill_mask(&mut mask),
        Err(GrammarError::Matcher(_))
    ));
    let set: Vec<u32> = (0..VOCAB as u32)
        .filter(|&t| mask[t as usize / 32] >> (t % 32) & 1 == 1)
        .collect();
    assert_eq!(set, vec![EOS]);
    assert!(m.commit(b'a' as u32).is_err());
}

#[test]
fn rollback_and_reset() {
    let g = compile(GrammarKind::Regex, "a[0-9]b");
    let mut m = GrammarMatcher::new(&g);
    commit_str(&mut m, "a1");
    assert_eq!(allowed(&mut m), vec![b'b' as u32]);
    m.rollback(1).unwrap();
    assert_eq!(m.num_tokens(), 1);
    assert_eq!(allowed(&mut m).len(), 10);
    assert!(matches!(m.rollback(2), Err(GrammarError::BadArgument(_))));
    m.reset();
    assert_eq!(m.num_tokens(), 0);
    assert_eq!(allowed(&mut m), vec![b'a' as u32]);
}

#[test]
fn lark_with_special_token_and_embedded_json() {
    let lark = format!(
        "start: <[{TOOL}]> body\nbody: %json {{\"type\": \"object\", \"properties\": {{\"n\": {{\"const\": 1}}}}, \"required\": [\"n\"]}}\n"
    );
    let g = compile(GrammarKind::Lark, &lark);
    let mut m = GrammarMatcher::new(&g);
    assert_eq!(allowed(&mut m), vec![TOOL]);
    m.commit(TOOL).unwrap();
    commit_str(&mut m, "{\"n\":1}");
    assert!(m.is_accepting());
}

#[test]
fn special_tokens_never_match_text() {
    let g = compile(GrammarKind::Regex, "<\\|tool\\|>x");
    let mut m = GrammarMatcher::new(&g);
    assert_eq!(allowed(&mut m), vec![b'<' as u32]);
    assert!(m.commit(TOOL).is_err());
}

#[test]
fn bad_grammars_are_errors() {
    let v = vocab();
    for (kind, src) in [
        (GrammarKind::JsonSchema, "{not json"),
        (GrammarKind::JsonSchema, r#"{"type": "no-such-type"}"#),
        (GrammarKind::Regex, "(unclosed"),
        (GrammarKind::Lark, "start: missing_rule"),
        (GrammarKind::Lark, "start: \"a\" ("),
    ] {
        match CompiledGrammar::compile(&v, kind, src) {
            Err(GrammarError::InvalidGrammar(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("{src}: unexpected error {e}"),
            Ok(_) => panic!("{src}: compiled"),
        }
    }
    assert!(GrammarKind::parse("yaml").is_err());
}

#[test]
fn vocab_errors() {
    let tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    assert!(matches!(
        GrammarVocab::new(&tokens, &[], &[300], 512),
        Err(GrammarError::InvalidVocab(_))
    ));
    assert!(matches!(
        GrammarVocab::new(&tokens, &[], &[0], 100),
        Err(GrammarError::InvalidVocab(_))
    ));
    assert!(matches!(
        GrammarVocab::new(&tokens, &[], &[], 256),
        Err(GrammarError::InvalidVocab(_))
    ));
}

#[test]
fn commit_checks_the_token_range() {
    let g = compile(GrammarKind::Regex, "a");
    let mut m = GrammarMatcher::new(&g);
    assert!(matches!(
        m.commit(VOCAB as u32),
        Err(GrammarError::BadArgument(_))
    ));
}

#[test]
fn fill_masks_batch_on_threads() {
    let g1 = compile(GrammarKind::Regex, "x+");
    let g2 = compile(GrammarKind::Regex, "y");
    let words = mask_words(VOCAB);
    for threads in [1, 2, 3] {
        let mut a = GrammarMatcher::new(&g1);
        let mut b = GrammarMatcher::new(&g2);
        let mut c = GrammarMatcher::new(&g1);
        c.commit(b'x' as u32).unwrap();
        let mut out = vec![u32::MAX; 4 * words];
        let mut ms = [&mut a, &mut b, &mut c];
        let errs = fill_masks(&mut ms, &mut out, words, &[2, 0, 3], threads).unwrap();
        assert!(errs.iter().all(Option::is_none));
        let bit = |row: usize, t: u32| out[row * words + t as usize / 32] >> (t % 32) & 1 == 1;
        assert!(bit(2, b'x' as u32) && !bit(2, EOS));
        assert!(bit(0, b'y' as u32) && !bit(0, b'x' as u32));
        assert!(bit(3, b'x' as u32) && bit(3, EOS));
        assert!(
            out[words..2 * words].iter().all(|&w| w == u32::MAX),
            "row 1 is untouched"
        );
    }
    let mut a = GrammarMatcher::new(&g1);
    let mut b = GrammarMatcher::new(&g1);
    let mut out = vec![0u32; 2 * words];
    let mut ms = [&mut a, &mut b];
    assert!(fill_masks(&mut ms, &mut out, words, &[1, 1], 1).is_err());
    assert!(fill_masks(&mut ms, &mut out, words, &[0, 2], 1).is_err());
}

#[test]
fn matchers_of_one_grammar_are_independent() {
    let g = compile(GrammarKind::Regex, "(a|b)c");
    let mut m1 = GrammarMatcher::new(&g);
    let mut m2 = GrammarMatcher::new(&g);
    m1.commit(b'a' as u32).unwrap();
    assert_eq!(allowed(&mut m2), vec![b'a' as u32, b'b' as u32]);
    assert_eq!(allowed(&mut m1), vec![b'c' as u32]);
}

#[test]
fn eos_after_a_finished_grammar_and_its_rollback() {
    let g = compile(GrammarKind::Regex, "ab");
    let mut m = GrammarMatcher::new(&g);
    m.commit(AB).unwrap();
    assert!(m.is_stopped(), "nothing can follow 'ab'");
    m.commit(EOS).unwrap();
    assert!(matches!(
        m.commit(b'a' as u32),
        Err(GrammarError::TokenRejected { .. })
    ));
    m.rollback(1).unwrap();
    assert_eq!(m.num_tokens(), 1);
    m.rollback(1).unwrap();
    assert_eq!(allowed(&mut m), vec![b'a' as u32, AB]);
}

#[test]
fn masking_cpu_logits_clears_exactly_the_forbidden_tokens() {
    let mut logits: Vec<f32> = (0..70).map(|i| i as f32).collect();
    let mask = [u32::MAX, 0b1010, 1 << 5];
    mask_logits_row(&mut logits, &mask).unwrap();
    for (t, &x) in logits.iter().enumerate() {
        let allowed = t < 32 || t == 33 || t == 35 || t == 69;
        assert_eq!(x.is_finite(), allowed, "token {t}");
        if allowed {
            assert_eq!(x, t as f32);
        }
    }
    let mut short = vec![0.0f32; 65];
    assert!(mask_logits_row(&mut short, &[0, 0]).is_err());
}
