"""TP=2 vs TP=1 on this machine (gloo, CPU), and the cost of the per-step communication.

    .venv/bin/python benchmarks/bench_tp.py [--dtype float32] [--batch 8] [--tokens 32]

Runs the embedded SmolLM2-135M with `--tp 1` and `--tp 2`: a batch of greedy requests (decode
throughput), then, on two gloo ranks, the per-step collectives alone: the 64 KiB plan broadcast and
the row-parallel all-reduce of a decode step's [batch, hidden] float32 activations (the model does
2 per layer + 1 for the embedding).
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import time

import torch
import torch.distributed as dist


def generate_throughput(tp: int, dtype: str, batch: int, tokens: int, threads: int | None = None) -> tuple[float, float]:
    from lmrs import Engine, SamplingParams
    from lmrs.models.loader import default_model_path

    prompts = [f"Tell me a story about the number {i}." for i in range(batch)]
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    with Engine(default_model_path(), dtype=dtype, tp=tp, kv_cache_memory="256MiB", progress=False,
                num_threads=threads) as e:
        e.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4))  # warm up
        t0 = time.perf_counter()
        e.generate(prompts, params)
        dt = time.perf_counter() - t0
    return batch * tokens / dt, dt


def _collectives(rank: int, port: int, hidden: int, batch: int, layers: int, out) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    from lmrs.parallel.plan_wire import MESSAGE_BYTES

    msg = torch.zeros(MESSAGE_BYTES, dtype=torch.uint8)
    act = torch.randn(batch, hidden)
    n = 200
    for _ in range(20):
        dist.broadcast(msg, 0)
        dist.all_reduce(act)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        dist.broadcast(msg, 0)
    t_bcast = (time.perf_counter() - t0) / n
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        dist.all_reduce(act)
    t_ar = (time.perf_counter() - t0) / n
    if rank == 0:
        out.put((t_bcast, t_ar, 2 * layers + 1))
    dist.destroy_process_group()


def collective_times(hidden: int, batch: int, layers: int):
    from torch import multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_collectives, args=(r, port, hidden, batch, layers, q)) for r in range(2)]
    for p in procs:
        p.start()
    res = q.get(timeout=120)
    for p in procs:
        p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    print(f"cores: {os.cpu_count()}, dtype {a.dtype}, batch {a.batch}, {a.tokens} tokens each")
    # tp=1 with the default threads (all cores), tp=1 with one thread (what each tp=2 rank gets), tp=2
    for tp, threads in ((1, None), (1, 1), (2, None)):
        tps, dt = generate_throughput(tp, a.dtype, a.batch, a.tokens, threads)
        label = f"tp={tp}" + (f", {threads} thread" if threads else "")
        print(f"{label}: {tps:.1f} generated tokens/s ({dt:.2f} s)")
    bcast, ar, per_step = collective_times(576, a.batch, 30)
    print(f"plan broadcast (64 KiB): {bcast * 1e6:.0f} us/step; all-reduce [{a.batch}, 576] float32: "
          f"{ar * 1e6:.0f} us each, x{per_step} per step = {ar * per_step * 1e3:.2f} ms/step")


if __name__ == "__main__":
    main()
