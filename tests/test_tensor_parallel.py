"""Tensor parallelism on the CPU (gloo, float32): TP=2 gives the tokens of TP=1.

- the real SmolLM2 (9 query heads, 3 KV heads: an uneven 1 + 2 split of the KV heads) reproduces
  the golden tokens;
- tiny models with 4 KV heads and with 1 KV head (replicated on both ranks) give TP=1's tokens in a
  mixed batch with chunked prefill, preemption and session turns;
- every family's tiny model (dense, Qwen3-MoE experts, Phi-3's fused checkpoint projections,
  InternLM2's packed wqkv, Gemma's soft-caps) sharded on two ranks gives the unsharded logits;
- a rank that cannot start or a taken rendezvous port fails the engine with a clear error, and no
  rank process is left behind.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from lmrs import Engine, SamplingParams
from lmrs.engine.request import SessionTurn
from lmrs.engine.llm_engine import DeviceFailure
from lmrs.parallel.ranks import RankStartError
from lmrs.parallel.sharding import head_shard

from proc_table import rank_children

GREEDY = SamplingParams(temperature=0, max_tokens=48)


LAYOUTS = [(9, 3, 2), (9, 3, 3), (4, 4, 2), (8, 2, 2), (4, 1, 2), (8, 2, 4), (6, 2, 4), (12, 4, 3), (16, 8, 8)]


@pytest.mark.parametrize("heads,kv_heads,size", LAYOUTS, ids=[f"{h}q-{k}kv-tp{s}" for h, k, s in LAYOUTS])
def test_head_shards_cover_every_query_head_once_next_to_its_kv_head(heads, kv_heads, size):
    group = heads // kv_heads
    shards = [head_shard(heads, kv_heads, size, r) for r in range(size)]
    owners = [r for r, s in enumerate(shards) for _ in range(s.q_count)]
    assert sorted(q for s in shards for q in range(s.q_start, s.q_start + s.q_count)) == list(range(heads))
    assert len(owners) == heads and all(s.q_count >= 1 and s.kv_count >= 1 for s in shards)
    for s in shards:  # a rank's query heads read only KV heads that rank holds
        kv_needed = {q // group for q in range(s.q_start, s.q_start + s.q_count)}
        assert kv_needed <= set(range(s.kv_start, s.kv_start + s.kv_count)), s
    if kv_heads >= size:  # KV heads split: each held once
        assert sum(s.kv_count for s in shards) == kv_heads
    else:  # replicated: each KV head on size / kv_heads ranks
        assert [s.kv_start for s in shards] == [r * kv_heads // size for r in range(size)]


def test_smollm2_head_split_and_layouts_that_cannot_shard():
    a, b = head_shard(9, 3, 2, 0), head_shard(9, 3, 2, 1)
    assert (a.q_start, a.q_count, a.kv_count, b.q_start, b.q_count, b.kv_count) == (0, 3, 1, 3, 6, 2)
    with pytest.raises(ValueError, match="multiple of the KV heads"):
        head_shard(6, 2, 3, 0)
    with pytest.raises(ValueError, match="at least one query head"):
        head_shard(2, 1, 4, 0)


def test_smollm2_golden_tokens_with_two_ranks(smollm2_path, golden):
    prompts = golden["prompts"]
    with Engine(smollm2_path, dtype="float32", tp=2, kv_cache_memory="96MiB", progress=False) as engine:
        outs = engine.generate([p["prompt_token_ids"] for p in prompts], GREEDY)
        ranks = engine.engine.runner.ranks
        assert ranks.steps_sent > 0 and ranks.bytes_sent >= ranks.steps_sent * 65536
    for o, p in zip(outs, prompts):
        assert o.token_ids == p["output_token_ids"], p["id"]
        assert o.text == p["output_text"], p["id"]


def _mixed_workload(engine) -> list[list[int]]:
    """Six prompts at once (chunked prefill, preemption with a small cache), then two session turns."""
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompts = [rng.integers(5, 300, n).tolist() for n in (70, 5, 33, 120, 9, 50)]
    results = [o.token_ids for o in engine.generate(prompts, params)]
    llm = engine.engine
    for turn, start in ((rng.integers(5, 300, 40).tolist(), True), (rng.integers(5, 300, 12).tolist(), False)):
        rids = [llm.add_request(turn, params, session=SessionTurn(sid, sequence_start=start)) for sid in (7, 8)]
        got = {rid: [] for rid in rids}
        while any(rid in llm.requests for rid in rids) or llm.has_unfinished():
            for d in llm.step():
                if d.request_id in got:
                    got[d.request_id] += d.token_ids
        results += [got[rid] for rid in rids]
    assert engine.stats()["preemptions"] > 0, "the workload should preempt"
    return results


@pytest.mark.parametrize("kv_heads", [4, 1], ids=["4-kv-heads", "1-kv-head-replicated"])
def test_tiny_model_mixed_batch_same_tokens_as_one_rank(tmp_path, kv_heads):
    from lmrs.models.testing import make_tiny_model

    folder = str(make_tiny_model(tmp_path / "m", heads=4, kv_heads=kv_heads, vocab_size=384, seed=kv_heads))
    kw = dict(dtype="float32", num_blocks=20, max_num_batched_tokens=48, progress=False)
    with Engine(folder, **kw) as one:
        expected = _mixed_workload(one)
    with Engine(folder, tensor_parallel_size=2, **kw) as two:
        assert two.engine.runner.model.num_kv_heads == max(1, kv_heads // 2)
        got = _mixed_workload(two)
    assert got == expected


FAMILIES = ["llama", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3", "smollm3", "internlm2", "mistral"]


def test_every_family_sharded_on_two_ranks_gives_unsharded_logits(tmp_path):
    from torch import multiprocessing as mp

    from lmrs.models.linear import SINGLE
    from lmrs.models.testing_hf import make_tiny_family_model
    from tp_shards import family_logits, rank_main

    folders = {f: str(make_tiny_family_model(f, tmp_path / f, seed=1)[0]) for f in FAMILIES}
    expected = {f: family_logits(folder, SINGLE) for f, folder in folders.items()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.pt")
    mp.start_processes(rank_main, args=(port, folders, out), nprocs=2, join=True, start_method="spawn")
    got = torch.load(out)
    for f in FAMILIES:
        assert got[f].shape == expected[f].shape, f
        torch.testing.assert_close(got[f], expected[f], rtol=1e-4, atol=1e-4, msg=f)
        assert torch.equal(got[f].argmax(-1), expected[f].argmax(-1)), f


def test_a_rank_that_cannot_start_fails_the_engine_clearly(tmp_path, monkeypatch):
    from lmrs.models.testing import make_tiny_model

    folder = str(make_tiny_model(tmp_path / "m", heads=4, kv_heads=2))
    before = set(rank_children(os.getpid()))
    monkeypatch.setenv("LMRS_TP_FAIL_RANK", "1")
    with pytest.raises(RankStartError, match="rank 1: start failure injected"):
        Engine(folder, dtype="float32", tp=2, num_blocks=8, progress=False)
    assert set(rank_children(os.getpid())) <= before, "no rank process is left behind"


def test_a_taken_rendezvous_port_fails_the_engine_clearly(tmp_path, monkeypatch):
    from lmrs.models.testing import make_tiny_model

    folder = str(make_tiny_model(tmp_path / "m", heads=4, kv_heads=2))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("MASTER_PORT", str(taken.getsockname()[1]))
        with pytest.raises(RankStartError, match="cannot open the rendezvous port"):
            Engine(folder, dtype="float32", tp=2, num_blocks=8, progress=False)


def test_tp_that_does_not_fit_the_heads_is_refused(tmp_path):
    from lmrs.models.testing import make_tiny_model

    folder = str(make_tiny_model(tmp_path / "m", heads=4, kv_heads=2))
    before = set(rank_children(os.getpid()))
    with pytest.raises(ValueError, match="multiple of the KV heads"):
        Engine(folder, dtype="float32", tp=3, num_blocks=8, progress=False)
    assert set(rank_children(os.getpid())) <= before, "no rank process is left behind"
    # the failed start left the process group: this process can still start a tensor-parallel engine
    with Engine(folder, dtype="float32", tp=2, num_blocks=8, progress=False) as engine:
        assert engine.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=2))[0].token_ids


def test_closing_an_engine_releases_its_rank_resources(tmp_path):
    """Start-up pipes, the processes' sentinels and the groups' sockets are let go by close() (they
    once stayed open, ~19 descriptors per engine, until the interpreter exited)."""
    from lmrs.models.testing import make_tiny_model

    folder = str(make_tiny_model(tmp_path / "m", heads=4, kv_heads=2))

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    counts = []
    for _ in range(3):
        with Engine(folder, dtype="float32", tp=2, num_blocks=8, progress=False) as engine:
            assert engine.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=2))[0].token_ids
        counts.append(open_fds())
    assert counts[2] <= counts[1], counts  # (the first engine may open process-wide things once)
    with pytest.raises(DeviceFailure, match="RankFailure: .*engine was closed"):  # a closed engine says so
        engine.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=2))


RANK0_SCRIPT = """
import sys, time
from lmrs import Engine
if __name__ == "__main__":
    engine = Engine(sys.argv[1], dtype="float32", tp=2, num_blocks=8, progress=False)
    print("ready", flush=True)
    time.sleep(600)
"""


def test_a_worker_rank_exits_when_rank_0_is_killed(tmp_path):
    """SIGKILL leaves rank 0 no chance to stop its workers: each notices its parent is gone and exits."""
    import signal
    import subprocess
    import sys
    import time

    from lmrs.models.testing import make_tiny_model
    from proc_table import alive

    folder = str(make_tiny_model(tmp_path / "m", heads=4, kv_heads=2))
    script = tmp_path / "rank0.py"
    script.write_text(RANK0_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), folder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        workers = rank_children(proc.pid)
        assert len(workers) == 1, workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while alive(workers[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(workers[0]), "the worker rank outlived rank 0"
    finally:
        proc.kill()
        proc.wait()
