"""Cost of one Core.schedule() + update() step, numpy arrays included.

N running decode sequences with 512-token contexts; the step reads every plan array the model
runner reads, samples with numpy (a fake model), and calls update(). Prints the median
microseconds per step and per sequence, and the ratio against a pure-Python reference step
(a minimal nano-vllm-style scheduler loop over Python objects) measured in the same run.

    python benchmarks/bench_scheduler.py [--steps 2000] [--sizes 32 256 1024]
"""

import argparse
import statistics
import time

import numpy as np

from lmrs import _core

RUNNER_FIELDS = ("req_ids", "input_ids", "positions", "query_start_loc", "seq_lens", "slot_mapping",
                 "block_table", "logits_indices", "temperature", "top_p", "top_k", "seeds")


def make_core(n, ctx, block_size=16, seed=0):
    """n sequences decoding, with contexts of ctx - 64 tokens (the measured steps take them to ctx + 64)."""
    blocks_per_seq = (ctx + 256) // block_size + 2
    core = _core.Core(n * blocks_per_seq + 1, vocab_size=50000, block_size=block_size, max_num_seqs=n,
                      max_num_batched_tokens=max(8192, n), max_model_len=1 << 20, enable_prefix_caching=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        core.add(i, rng.integers(1, 50000, ctx - 64), max_new_tokens=1 << 30, ignore_eos=True)
    # prefill everything
    while True:
        plan = core.schedule()
        core.update(np.full(plan.num_sampled, 7, dtype=np.int64))
        if plan.num_prefill_tokens == 0:
            break
    return core


def lmrs_step(core, sampled):
    """schedule() + every array the runner reads + update() with the model's output."""
    plan = core.schedule()
    for f in RUNNER_FIELDS:
        getattr(plan, f)
    res = core.update(sampled)
    res.req_ids, res.new_tokens, res.finish_reasons
    return plan.num_rows


class PySeq:
    __slots__ = ("tokens", "blocks", "computed")

    def __init__(self, tokens, blocks):
        self.tokens, self.blocks, self.computed = tokens, blocks, len(tokens) - 1


SAMPLED = list(range(1, 2049))


def python_step(seqs, free, bs):
    """A minimal pure-Python decode step with the same outputs (peer for the ratio)."""
    ids, pos, slots, lens, tables = [], [], [], [], []
    for s in seqs:
        p = s.computed
        if p // bs >= len(s.blocks):
            s.blocks.append(free.pop())
        ids.append(s.tokens[p])
        pos.append(p)
        slots.append(s.blocks[p // bs] * bs + p % bs)
        lens.append(p + 1)
        tables.append(s.blocks)
    width = max(len(t) for t in tables)
    bt = np.zeros((len(seqs), width), np.int32)
    for i, t in enumerate(tables):
        bt[i, : len(t)] = t
    arrs = [np.asarray(ids, np.int32), np.asarray(pos, np.int32), np.asarray(slots, np.int32),
            np.asarray(lens, np.int32), bt]
    for s, t in zip(seqs, SAMPLED[: len(seqs)]):
        s.tokens.append(t)
        s.computed += 1
    return len(seqs)


def timeit(fn, steps):
    times = []
    for _ in range(steps):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return times


def time_lmrs(n, ctx, steps):
    """Median over rounds of 128 decode steps each (contexts ctx-64 .. ctx+64)."""
    times = []
    seed = 0
    while len(times) < steps:
        core = make_core(n, ctx, seed=seed)
        seed += 1
        lmrs_step(core, np.full(n, 7, dtype=np.int64))
        sampled = np.arange(n, dtype=np.int64) + 1  # stands for the model's sampled ids (not timed)
        times += timeit(lambda: lmrs_step(core, sampled), 128)
    return statistics.median(times) / 1000.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1280)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 256, 1024])
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()
    print(f"{'seqs':>6} {'lmrs us/step':>13} {'us/seq':>8} {'python us/step':>15} {'python/lmrs':>12}")
    for n in args.sizes:
        t_lmrs = time_lmrs(n, args.ctx, args.steps)
        bs = 16
        free = list(range(n * ((args.ctx + 256) // bs + 2), 0, -1))
        rng = np.random.default_rng(0)
        seqs = [PySeq(rng.integers(1, 50000, args.ctx - 64).tolist(), [free.pop() for _ in range((args.ctx - 64) // bs)])
                for _ in range(n)]
        t_py = statistics.median(timeit(lambda: python_step(seqs, free, bs), 128)) / 1000.0
        print(f"{n:>6} {t_lmrs:>13.1f} {t_lmrs / n:>8.3f} {t_py:>15.1f} {t_py / t_lmrs:>11.1f}x")


if __name__ == "__main__":
    main()
