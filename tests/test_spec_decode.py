"""Speculative decoding (n-gram drafts) inside the continuous batch: greedy output identical token
for token to plain decoding in float32 (the real SmolLM2 and a tiny model, concurrent requests
mixed with prefill), sessions, preemption by recompute, KV blocks all returned, the counters."""

import pytest

from conftest import make_engine
from lmrs import Engine, SamplingParams
from lmrs.engine.request import SessionTurn

GREEDY = SamplingParams(temperature=0, max_tokens=32)
COPY_TEXT = ("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n"
             "def mul(a, b):\n    return a * b\n")
COPY_MESSAGES = [{"role": "user", "content": "Rewrite this code exactly, adding nothing:\n\n" + COPY_TEXT}]
CHAT_MESSAGES = [[{"role": "user", "content": "What is the capital of France?"}],
                 [{"role": "user", "content": "Write a haiku about the sea."}],
                 [{"role": "user", "content": "List three colours."}]]
# the per-step switch off (0): these tests verify drafts of several rows in one step
SPEC = dict(speculative_method="ngram", num_speculative_tokens=4, spec_max_decode_rows=0)


@pytest.fixture(scope="module")
def plain(smollm2):
    return make_engine(smollm2, dtype="float32")


@pytest.fixture(scope="module")
def spec(smollm2):
    return make_engine(smollm2, dtype="float32", **SPEC)


def _tokens(engine, prompts, params=GREEDY):
    return [o.outputs[0].token_ids for o in engine.generate(prompts, params)]


_PLAIN: dict[tuple, list[int]] = {}


def _plain_tokens(plain, prompts):
    """Plain greedy tokens of each prompt (GREEDY), computed once per prompt for the module (in
    float32 a request's tokens do not depend on the batch it ran in)."""
    missing = [p for p in prompts if tuple(p) not in _PLAIN]
    if missing:
        for p, t in zip(missing, _tokens(plain, missing)):
            _PLAIN[tuple(p)] = t
    return [_PLAIN[tuple(p)] for p in prompts]


def _stats_delta(engine, before):
    after = engine.stats()
    return {k: after[k] - before[k] for k in ("spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens",
                                              "spec_decode_num_drafts")}


def _no_leak(engine):
    engine.core.check_invariants()
    s = engine.stats()
    assert s["blocks_used"] == s["blocks_pinned_by_sessions"], "blocks leaked"


def test_greedy_copy_and_chat_identical_to_plain(plain, spec):
    tok = spec.tokenizer
    prompts = [tok.encode_chat(COPY_MESSAGES)] + [tok.encode_chat(m) for m in CHAT_MESSAGES[:2]]
    before = spec.stats()
    want = _plain_tokens(plain, prompts)
    got = _tokens(spec, prompts)
    assert got == want
    d = _stats_delta(spec, before)
    assert d["spec_decode_num_accepted_tokens"] > 10, d  # the copy prompt's drafts are right
    assert d["spec_decode_num_accepted_tokens"] < d["spec_decode_num_draft_tokens"], d
    _no_leak(spec)


def test_concurrent_requests_mixed_with_prefill(plain, spec):
    """Requests join while others decode with drafts: prefills, plain decodes and verified rows
    share steps."""
    tok = spec.tokenizer
    prompts = [tok.encode_chat(COPY_MESSAGES), tok.encode_chat(CHAT_MESSAGES[0]), tok.encode(COPY_TEXT)]
    want = _plain_tokens(plain, prompts)
    llm = spec.engine
    got: dict[int, list[int]] = {}
    ids, pending = [], list(prompts)
    mixed_steps = step = 0
    while pending or any(r in llm.requests for r in ids):
        if pending and step % 3 == 0:
            ids.append(llm.add_request(pending.pop(0), GREEDY))
        before = llm.stats()
        for d in llm.step():
            got.setdefault(d.request_id, []).extend(d.token_ids)
        after = llm.stats()
        if after["spec_decode_num_drafts"] > before["spec_decode_num_drafts"] and \
                after["prompt_tokens_computed"] > before["prompt_tokens_computed"]:
            mixed_steps += 1
        step += 1
    assert [got[r] for r in ids] == want
    assert mixed_steps > 0, "no step verified drafts beside a prefill"
    _no_leak(spec)


def test_tiny_model_greedy_identical(tmp_path):
    from lmrs.models.testing import make_tiny_model

    folder = make_tiny_model(tmp_path / "tiny", seed=3)
    prompts = [[5 + (i * 7 + j) % 40 for j in range(12 + 3 * i)] * 2 for i in range(6)]
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    a = Engine(str(folder), dtype="float32", progress=False, kv_cache_memory="8MiB")
    b = Engine(str(folder), dtype="float32", progress=False, kv_cache_memory="8MiB", **SPEC)
    assert _tokens(b, prompts, params) == _tokens(a, prompts, params)
    assert b.stats()["spec_decode_num_accepted_tokens"] > 0
    _no_leak(b)


def test_session_three_turns_same_as_plain(plain, spec):
    tok = spec.tokenizer
    turns = ["Repeat after me: the quick brown fox jumps over the lazy dog.",
             "Again, the same sentence twice.", "Now say it once more."]

    def run(engine, sid):
        llm = engine.engine
        outs, history = [], []
        for i, text in enumerate(turns):
            history.append({"role": "user", "content": text})
            full = tok.encode_chat(history)
            turn = SessionTurn(session_id=sid, sequence_start=i == 0, sequence_end=False)
            prompt = full if i == 0 else tok.encode_chat([{"role": "user", "content": text}])
            rid = llm.add_request(prompt, SamplingParams(temperature=0, max_tokens=16), session=turn)
            toks = []
            while rid in llm.requests:
                for d in llm.step():
                    if d.request_id == rid:
                        toks.extend(d.token_ids)
            outs.append(toks)
            history.append({"role": "assistant", "content": tok.decode(toks)})
        info = engine.core.session_info(sid)
        engine.engine.end_session(sid)
        return outs, info["token_ids"]

    before = spec.stats()
    want, want_hist = run(plain, 101)
    got, got_hist = run(spec, 102)
    assert got == want
    assert got_hist == want_hist  # the session holds only accepted tokens
    assert _stats_delta(spec, before)["spec_decode_num_accepted_tokens"] > 0
    _no_leak(spec)


def test_preemption_recompute_same_tokens(smollm2, plain):
    """A KV pool too small for all requests at once: sequences are preempted and recomputed."""
    tok = plain.tokenizer
    # three prompts of 3 blocks each are admitted together (9 of 11 blocks); growing by 32 tokens
    # each, they cannot all stay
    prompts = [tok.encode(COPY_TEXT), tok.encode_chat(CHAT_MESSAGES[1]), tok.encode(COPY_TEXT[:60] * 2)]
    want = _plain_tokens(plain, prompts)
    small = make_engine(smollm2, dtype="float32", num_blocks=12, block_size=16, **SPEC)
    got = _tokens(small, prompts)
    s = small.stats()
    assert s["preemptions"] > 0, "the pool must be small enough to preempt"
    assert s["spec_decode_num_accepted_tokens"] > 0
    assert got == want
    _no_leak(small)


def test_stop_string_inside_accepted_tokens_ends_there(spec, plain):
    tok = spec.tokenizer
    prompt = tok.encode_chat(COPY_MESSAGES)
    text = tok.decode(_plain_tokens(plain, [prompt])[0])
    stop = text[len(text) // 2:len(text) // 2 + 5]  # a stop string the plain output reaches mid-way
    assert stop.strip()
    params = SamplingParams(temperature=0, max_tokens=32, stop=[stop])
    want = plain.generate([prompt], params)[0].outputs[0]
    got = spec.generate([prompt], params)[0].outputs[0]
    assert got.text == want.text and got.finish_reason == want.finish_reason == "stop"
    _no_leak(spec)


def test_speculation_off_above_the_decode_row_threshold(smollm2):
    eng = make_engine(smollm2, dtype="float32", **{**SPEC, "spec_max_decode_rows": 2})
    tok = eng.tokenizer
    prompts = [tok.encode_chat(COPY_MESSAGES)] * 3
    eng.generate(prompts, SamplingParams(temperature=0, max_tokens=8))
    # three running sequences all along: above the threshold, no step verified drafts
    assert eng.stats()["spec_decode_num_drafts"] == 0


def test_config_rejects_bad_speculation_settings():
    from lmrs.engine.config import EngineConfig

    for kw, field in [(dict(speculative_method="medusa"), "speculative_method"),
                      (dict(speculative_method="ngram", num_speculative_tokens=0), "num_speculative_tokens"),
                      (dict(speculative_method="ngram", speculative_model="x.gguf"), "speculative_model"),
                      (dict(spec_max_decode_rows=-1), "spec_max_decode_rows")]:
        with pytest.raises(ValueError, match=field):
            EngineConfig(**kw).validate()
