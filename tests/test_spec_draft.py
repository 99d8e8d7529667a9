"""Speculative decoding with a draft model (`speculative_model`): a copy of the real SmolLM2 without
6 of its 30 layers (12-17) drafts for the full model (about 40% of drafts accepted; fewer kept
layers give garbage drafts on a model this small). Greedy float32 output is identical token for token to plain
decoding (concurrent requests, sessions, preemption by recompute), the counters move, KV blocks all
return; sampled requests keep the target distribution (a tiny model and its truncated copy); a
draft with another tokenizer is refused naming speculative_model."""

import numpy as np
import pytest

from conftest import make_engine
from lmrs import Engine, SamplingParams
from lmrs.models.loader import load_model_files
from lmrs.models.testing_draft import truncated_model
from test_spec_decode import CHAT_MESSAGES, COPY_MESSAGES, _no_leak, _stats_delta, _tokens
from test_spec_sampling import _tv

DRAFT = dict(num_speculative_tokens=3, spec_max_decode_rows=0)
SHORT = SamplingParams(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def draft(smollm2):
    return truncated_model(smollm2, 24)


def test_greedy_concurrent_identical_to_plain(smollm2, draft):
    plain = make_engine(smollm2, dtype="float32")
    spec = make_engine(smollm2, dtype="float32", draft_loaded=draft, **DRAFT)
    tok = spec.tokenizer
    prompts = [tok.encode_chat(COPY_MESSAGES), tok.encode_chat(CHAT_MESSAGES[0])]
    before = spec.stats()
    got = _tokens(spec, prompts, SHORT)
    assert got == _tokens(plain, prompts, SHORT)
    d = _stats_delta(spec, before)
    assert d["spec_decode_num_drafts"] > 0 and d["spec_decode_num_accepted_tokens"] > 0, d
    assert d["spec_decode_num_accepted_tokens"] < d["spec_decode_num_draft_tokens"], d
    s = spec.stats()
    assert 0 < s["spec_decode_acceptance_rate"] < 1 and s["spec_decode_accepted_tokens_per_step"] > 1
    _no_leak(spec)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lmrs.models.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-draft") / "m", seed=5, layers=3)


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    """A tiny 4-layer model and its 3-layer draft (about 85% of greedy drafts accepted)."""
    from lmrs.models.testing import make_tiny_model

    loaded = load_model_files(str(make_tiny_model(tmp_path_factory.mktemp("tiny4") / "m", seed=5, layers=4)),
                              progress=False)
    return loaded, truncated_model(loaded, 3)


TINY = dict(dtype="float32", progress=False, kv_cache_memory="8MiB")
TINY_GREEDY = SamplingParams(temperature=0, max_tokens=28, ignore_eos=True)


def test_session_turns_continue_identical(tiny4):
    """Two turns of a session: the second continues from the KV both models kept for the first."""
    from lmrs.engine.request import SessionTurn

    loaded, draft = tiny4
    turns = [[5 + (j * 7) % 40 for j in range(30)], [9, 8, 7, 6, 5] * 3]

    def run(engine, sid):
        llm, outs = engine.engine, []
        for i, prompt in enumerate(turns):
            rid = llm.add_request(prompt, TINY_GREEDY,
                                  session=SessionTurn(session_id=sid, sequence_start=i == 0, sequence_end=False))
            toks = []
            while rid in llm.requests:
                toks += [t for d in llm.step() if d.request_id == rid for t in d.token_ids]
            outs.append(toks)
        hist = engine.core.session_info(sid)["token_ids"]
        llm.end_session(sid)
        return outs, hist

    spec = Engine(loaded=loaded, draft_loaded=draft, **TINY, **DRAFT)
    assert run(spec, 2) == run(Engine(loaded=loaded, **TINY), 1)
    s = spec.stats()
    assert s["spec_decode_num_accepted_tokens"] > 0
    _no_leak(spec)


def test_preemption_recompute_identical(tiny4):
    """A KV pool too small for all requests at once: sequences are preempted and recomputed (the
    draft's KV too, on the same blocks)."""
    loaded, draft = tiny4
    prompts = [[5 + (i * 11 + j * 7) % 60 for j in range(40)] for i in range(3)]
    small = Engine(loaded=loaded, draft_loaded=draft, **{**TINY, "kv_cache_memory": None}, num_blocks=11, block_size=16,
                   **DRAFT)
    got = _tokens(small, prompts, TINY_GREEDY)
    s = small.stats()
    assert s["preemptions"] > 0, "the pool must be small enough to preempt"
    assert s["spec_decode_num_accepted_tokens"] > 0
    assert got == _tokens(Engine(loaded=loaded, **TINY), prompts, TINY_GREEDY)
    _no_leak(small)


def test_sampled_requests_keep_the_target_distribution(tiny):
    """The second token of sampled requests comes from verifying the draft model's proposals; its
    distribution matches the target's exact one, and differs from the draft's own (so a verifier
    that accepted drafts blindly would fail)."""
    loaded = load_model_files(str(tiny), progress=False)
    kw = TINY
    plain = Engine(loaded=loaded, **kw)
    small = Engine(loaded=truncated_model(loaded, 2), **kw)
    spec = Engine(loaded=loaded, draft_loaded=truncated_model(loaded, 2), seed=7, max_num_seqs=512,
                  num_speculative_tokens=2, spec_max_decode_rows=0, **kw)
    top_k, prompt = 3, [11, 40, 73, 12, 99, 7, 23]

    def second_token_dist(engine):
        def dist(ids):
            o = engine.generate([ids], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, logprobs=top_k))[0]
            top = o.outputs[0].logprobs[0]["top"]
            p = np.exp(np.array([lp for _, lp in top]))
            return {t: v for (t, _), v in zip(top, p / p.sum())}

        out: dict[int, float] = {}
        for t1, w in dist(prompt).items():
            for t2, v in dist(prompt + [t1]).items():
                out[t2] = out.get(t2, 0.0) + w * v
        return out

    exact, of_draft = second_token_dist(plain), second_token_dist(small)
    keys = sorted(set(exact) | set(of_draft))
    p = np.array([exact.get(k, 0.0) for k in keys])
    assert _tv(np.array([of_draft.get(k, 0.0) for k in keys]), p) > 0.2, "draft too close to tell"
    n = 600
    outs = spec.generate([prompt] * n, SamplingParams(temperature=1.0, top_k=top_k, max_tokens=3, ignore_eos=True))
    st = spec.stats()
    assert st["spec_decode_num_drafts"] > n // 2, st
    assert 20 < st["spec_decode_num_accepted_tokens"] < st["spec_decode_num_draft_tokens"] - 20, st
    counts = np.array([sum(o.outputs[0].token_ids[1] == k for o in outs) for k in keys], dtype=float)
    assert counts.sum() == n
    assert _tv(counts, p) < 0.08  # noise at 600 draws over a few tokens is about 0.03


def test_other_tokenizer_is_refused_naming_the_flag(tiny, smollm2):
    from lmrs.models.testing import make_tiny_model

    loaded = load_model_files(str(tiny), progress=False)
    with pytest.raises(ValueError, match="speculative_model.*vocab size"):
        Engine(loaded=loaded, draft_loaded=smollm2, progress=False, kv_cache_memory="8MiB")
    other = load_model_files(str(make_tiny_model(tiny.parent / "other", vocab_size=400)), progress=False)
    with pytest.raises(ValueError, match="speculative_model"):
        Engine(loaded=loaded, draft_loaded=other, progress=False, kv_cache_memory="8MiB")


def test_config_draft_and_ngram_are_exclusive():
    from lmrs.engine.config import EngineConfig

    c = EngineConfig(speculative_model="d.gguf")
    c.validate()
    assert c.speculative_method == "draft" and c.core_num_speculative_tokens() == 4
    for kw in (dict(speculative_method="ngram", speculative_model="d.gguf"), dict(speculative_method="draft"),
               dict(speculative_model="d.gguf", tp=2)):
        with pytest.raises(ValueError, match="speculative_model"):
            EngineConfig(**kw).validate()
