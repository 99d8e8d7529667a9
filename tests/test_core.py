"""The Rust core through its Python surface (`lmrs._core.Core`), with a fake model."""

import numpy as np
import pytest

from lmrs import _core
from core_driver import VOCAB, expected, run_all, step


def make_core(num_blocks=64, block_size=4, budget=64, max_seqs=8, **kw):
    return _core.Core(num_blocks, vocab_size=VOCAB, block_size=block_size, max_num_batched_tokens=budget,
                      max_num_seqs=max_seqs, eos_token_ids=[0], **kw)


def prompt(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(1, VOCAB, size=n).tolist()


def test_plan_arrays_describe_the_step():
    core = make_core()
    core.add(1, prompt(6, 1), max_new_tokens=3, ignore_eos=True)
    plan = core.schedule()
    assert plan.num_rows == 1 and plan.num_tokens == 6 and plan.num_sampled == 1
    assert plan.input_ids.dtype == np.int32 and plan.req_ids.tolist() == [1]
    assert plan.positions.tolist() == list(range(6))
    assert plan.query_start_loc.tolist() == [0, 6]
    assert plan.seq_lens.tolist() == [6]
    bt = plan.block_table
    assert bt.shape == (1, 2) and 0 not in bt[0]
    assert plan.slot_mapping.tolist() == [bt[0, p // 4] * 4 + p % 4 for p in range(6)]
    assert plan.logits_indices.tolist() == [5]
    assert plan.temperature.tolist() == [0.0] and plan.top_p.tolist() == [1.0]
    core.update(np.array([5], dtype=np.int64))


def test_continuous_batching_joins_next_step():
    core = make_core()
    outs = {}
    core.add(1, prompt(5, 1), max_new_tokens=12, ignore_eos=True)
    core.add(2, prompt(7, 2), max_new_tokens=12, ignore_eos=True)
    step(core, outs)
    step(core, outs)
    core.add(3, prompt(9, 3), max_new_tokens=12, ignore_eos=True)
    plan, _ = step(core, outs)
    assert sorted(plan.req_ids.tolist()) == [1, 2, 3]
    assert plan.num_decode_rows == 2 and plan.num_prefill_tokens == 9
    run_all(core, outs)
    for rid, seed, n in [(1, 1, 5), (2, 2, 7), (3, 3, 9)]:
        assert outs[rid] == (expected(prompt(n, seed), 12), _core.FinishReason.LENGTH)


def test_chunked_prefill_of_a_prompt_longer_than_the_budget():
    core = make_core(budget=16)
    p = prompt(40, 4)
    core.add(1, p, max_new_tokens=4, ignore_eos=True)
    chunks = []
    outs = {}
    while core.has_unfinished():
        plan, _ = step(core, outs)
        chunks.append((plan.num_tokens, plan.num_sampled))
    assert chunks[:3] == [(16, 0), (16, 0), (8, 1)]
    assert outs[1][0] == expected(p, 4)


def test_prefix_reuse_computes_only_the_last_partial_block():
    core = make_core(block_size=16, num_blocks=32)
    p = prompt(50, 5)  # 3 full blocks + 2 tokens
    core.add(1, p, max_new_tokens=2, ignore_eos=True)
    run_all(core)
    before = core.stats()
    core.add(2, p, max_new_tokens=2, ignore_eos=True)
    plan, _ = step(core)
    assert plan.num_tokens == 2
    after = core.stats()
    assert after["prefix_hit_tokens"] - before["prefix_hit_tokens"] == 48
    assert after["prompt_tokens_computed"] - before["prompt_tokens_computed"] == 2


def test_session_second_turn_computes_only_new_tokens():
    core = make_core()
    outs = {}
    core.add(1, prompt(10, 6), max_new_tokens=5, ignore_eos=True, session_id=42, sequence_start=True)
    run_all(core, outs)
    info = core.session_info(42)
    assert info["history_len"] == 15 and not info["busy"]
    before = core.stats()["prompt_tokens_computed"]
    core.add(2, prompt(6, 7), max_new_tokens=5, ignore_eos=True, session_id=42, sequence_start=False)
    plan, _ = step(core, outs)
    assert plan.num_tokens == 7  # 6 new tokens + the last token sampled in turn 1
    run_all(core, outs)
    assert core.stats()["prompt_tokens_computed"] - before == 7
    hist = core.session_info(42)["token_ids"]
    assert hist == prompt(10, 6) + outs[1][0] + prompt(6, 7) + outs[2][0]
    # ending the session frees its blocks
    assert core.end_session(42)
    core.reset_prefix_cache()
    assert core.stats()["blocks_free"] == core.stats()["num_blocks"]


def test_preemption_under_a_tiny_pool_gives_the_same_tokens():
    prompts = [prompt(9 + i, 10 + i) for i in range(8)]

    def run(num_blocks):
        core = make_core(num_blocks=num_blocks, budget=32)
        for i, p in enumerate(prompts):
            core.add(i, p, max_new_tokens=16, ignore_eos=True)
        outs = run_all(core)
        return outs, core.stats()["preemptions"]

    big, n0 = run(256)
    small, n1 = run(14)
    assert n0 == 0 and n1 > 0
    assert big == small
    for i, p in enumerate(prompts):
        assert big[i][0] == expected(p, 16)


def test_abort_frees_blocks():
    core = make_core()
    total = core.stats()["blocks_free"]
    for i in range(3):
        core.add(i, prompt(12, i), max_new_tokens=50, ignore_eos=True)
    for _ in range(4):
        step(core)
    assert core.stats()["blocks_used"] > 0
    for i in range(3):
        core.abort(i)
    core.check_invariants()
    assert core.stats()["blocks_used"] == 0
    assert core.stats()["blocks_free"] == total
    with pytest.raises(KeyError, match="unknown request id"):
        core.abort(0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt_ids=[VOCAB]), "outside the vocabulary"),
        (dict(prompt_ids=[-1]), "not a valid token id"),
        (dict(prompt_ids=[]), "prompt is empty"),
        (dict(prompt_ids="abc"), "prompt_ids must be"),
        (dict(prompt_ids=[1], top_p=0.0), "top_p"),
        (dict(prompt_ids=[1], temperature=-1.0), "temperature"),
        (dict(prompt_ids=[1], stop_token_ids=[VOCAB + 5]), "stop token id"),
        (dict(prompt_ids=[1], session_len=10**6), "session_len"),
        (dict(prompt_ids=[1], logprobs=_core.MAX_LOGPROBS + 1), "logprobs"),
    ],
)
def test_invalid_add_raises_and_changes_nothing(kwargs, match):
    core = make_core(max_model_len=512)
    with pytest.raises(ValueError, match=match):
        core.add(7, **kwargs)
    assert not core.has_unfinished()
    core.check_invariants()


def test_protocol_misuse_is_reported():
    core = make_core()
    core.add(1, [1, 2, 3], max_new_tokens=2)
    with pytest.raises(ValueError, match="already in use"):
        core.add(1, [1], max_new_tokens=2)
    core.schedule()
    with pytest.raises(RuntimeError, match="schedule"):
        core.schedule()
    with pytest.raises(ValueError, match="sampled"):
        core.update(np.array([1, 2], dtype=np.int64))
    with pytest.raises(ValueError, match="vocabulary"):
        core.update(np.array([VOCAB], dtype=np.int64))
    core.check_invariants()
    core.update(np.array([3], dtype=np.int64))
    core.check_invariants()


def test_a_prompt_larger_than_the_pool_fails_with_a_reason():
    core = make_core(num_blocks=5)  # 4 usable blocks of 4 tokens
    core.add(1, prompt(30, 1), max_new_tokens=2)
    _, res = step(core)
    assert res.finish_reasons.tolist() == [int(_core.FinishReason.ERROR)]
    assert res.tolist()[0][2] == _core.FinishReason.ERROR
    assert "pool has only 4" in res.errors[0][1]


def test_session_turns_owner_cancel_and_continuation_forms():
    core = make_core(max_model_len=512)
    core.add(1, [5, 6, 7], max_new_tokens=2, ignore_eos=True, session_id=3, owner="a",
             continuation_ids=[60, 61], eos_prefix_len=1)
    with pytest.raises(PermissionError, match="session 3 does not exist for this API key"):
        core.add(2, [1], max_new_tokens=1, session_id=3, owner="b")
    with pytest.raises(PermissionError):
        core.cancel_session(3, "b")
    info = core.session_info(3)
    assert info["turns"] == [1] and info["owner"] == "a" and info["history_len"] == 0
    run_all(core)
    assert core.session_info(3)["token_ids"][:3] == [5, 6, 7], "no history: the whole form"
    # the next turn continues the history: its continuation form, the leading EOS kept (no EOS yet)
    core.add(3, [9], max_new_tokens=50, ignore_eos=True, session_id=3, sequence_start=False, owner="a",
             continuation_ids=[0, 8], eos_prefix_len=1)
    step(core)
    step(core)
    assert core.cancel_session(3, "a") == 3
    hist = core.session_info(3)["token_ids"]
    assert hist[5:7] == [0, 8] and len(hist) == 3 + 2 + 2 + 2
    assert core.cancel_session(3, "a") is None
    core.check_invariants()


def test_fail_step_ends_only_the_step_and_embeddings_pool_rows():
    core = make_core(budget=8)
    core.add(1, prompt(6, 1), max_new_tokens=20, ignore_eos=True)
    step(core)
    core.add(2, prompt(12, 2), max_new_tokens=0, embed=True)
    plan = core.schedule()
    assert plan.num_pool_rows == 1 and plan.req_ids[plan.pool_rows[0]] == 2
    res = core.fail_step("boom")
    core.check_invariants()
    assert sorted(r[0] for r in res.tolist()) == [1, 2]
    assert all(r[2] == _core.FinishReason.ERROR for r in res.tolist()) and dict(res.errors) == {1: "boom", 2: "boom"}
    assert core.stats()["blocks_used"] == 0 and not core.has_unfinished()
    assert [r.label for r in _core.FinishReason.all()] == ["stop", "length", "refused", "abort", "stop_string", "error"]
