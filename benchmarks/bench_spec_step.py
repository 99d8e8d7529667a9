"""Cost of a speculative (verified) decode step against a plain one, by query rows, with a per-op
breakdown: is a K+1-row step close to a 1-row step?

    python benchmarks/bench_spec_step.py [--k 4] [--rounds 3] [--output-len 96] [--kernel-threads 1]

One engine with n-gram speculation (the served defaults: bfloat16, GGUF weights kept quantized)
generates the code-editing workload of `bench_spec.py` (one request at a time, greedy). Every
decode step is timed and booked by its query rows (1 + drafts, from the engine's draft counter);
the ops are timed as in `profile_cpu_step.py` (exclusive wall time). Plain and speculative runs of
the same prompt alternate (a plain engine gives 1-row steps under the same load). Printed: per
row count, the median step ms, its ratio to the 1-row median, and the ops' medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_spec import code_prompt  # noqa: E402
from profile_cpu_step import Profile, instrument  # noqa: E402


def run_timed(engine, prof: Profile, prompt: list[int], out_len: int, book: dict) -> None:
    """Generate one request step by step, booking each decode step's total and ops by its rows."""
    from lmrs import SamplingParams

    le = engine.engine
    le.add_request(prompt, SamplingParams(temperature=0, max_tokens=out_len))
    first = True
    while le.has_unfinished():
        before = engine.stats()["spec_decode_num_draft_tokens"]
        prof.times.clear()
        t = time.perf_counter()
        le.step()
        dt = time.perf_counter() - t
        if first:  # the prefill
            first = False
            continue
        rows = 1 + engine.stats()["spec_decode_num_draft_tokens"] - before
        book[rows].append((dt, dict(prof.times)))


def kernel_costs(engine, rows_list, rounds: int) -> None:
    """All linears of the model plus the output head for m rows, with the activations the model
    passes (`prefers_float32`) against float32 ones; ms, median of `rounds` interleaved passes."""
    import torch
    from lmrs.models import quantized

    model = engine.engine.runner.model
    lins = [getattr(o, n) for layer in model.layers for o in (layer.attn, layer.mlp) for n in
            ("qkv_proj", "o_proj", "gate_up_proj", "down_proj") if hasattr(o, n)]
    head = model.head.linear

    def once(m: int, dtype) -> float:
        t = time.perf_counter()
        for lin in [*lins, head]:
            lin(torch.randn(m, lin.in_features).to(dtype))
        return time.perf_counter() - t

    res: dict = defaultdict(list)
    for _ in range(rounds):
        for m in rows_list:
            res[(m, "float32")].append(once(m, torch.float32))
            res[(m, "model")].append(once(m, torch.float32 if quantized.prefers_float32(m) else torch.bfloat16))
    print("| rows | float32 x ms | model's x ms |\n|---:|---:|---:|")
    for m in rows_list:
        f, d = (1e3 * statistics.median(res[(m, k)]) for k in ("float32", "model"))
        print(f"| {m} | {f:.2f} | {d:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--output-len", type=int, default=96)
    ap.add_argument("--kernel-threads", type=int, default=0)
    ap.add_argument("--kernels", action="store_true", help="only the linears + head cost by rows")
    args = ap.parse_args()
    from lmrs import Engine, SamplingParams
    import lmrs.kernels.cpu as cpu

    cpu.THREADS = args.kernel_threads
    common = dict(progress=False, max_num_seqs=8)
    plain = Engine(**common)
    if args.kernels:
        kernel_costs(plain, [1, 2, 3, 4, 5, 6, 8], 5 * args.rounds)
        return
    spec = Engine(**common, speculative_method="ngram", num_speculative_tokens=args.k)
    profs = {}
    for name, eng in (("plain", plain), ("spec", spec)):
        profs[name] = Profile()
        instrument(eng, profs[name])
        eng.generate([code_prompt(eng.tokenizer, 9_999)], SamplingParams(temperature=0, max_tokens=8))
    book: dict[int, list] = defaultdict(list)
    for r in range(args.rounds):
        order = [("plain", plain), ("spec", spec)] if r % 2 == 0 else [("spec", spec), ("plain", plain)]
        for name, eng in order:
            run_timed(eng, profs[name], code_prompt(eng.tokenizer, r), args.output_len, book)
    base = statistics.median(dt for dt, _ in book[1])
    labels = sorted({k for v in book.values() for _, ops in v for k in ops})
    print(f"# kernel threads {cpu.THREADS or 'all'}, K = {args.k}")
    print("| rows | steps | step ms | vs 1 row | " + " | ".join(labels) + " |")
    print("|---:|---:|---:|---:|" + "---:|" * len(labels))
    for rows in sorted(book):
        v = book[rows]
        ms = 1e3 * statistics.median(dt for dt, _ in v)
        ops = [1e3 * statistics.median(o.get(k, 0.0) for _, o in v) for k in labels]
        print(f"| {rows} | {len(v)} | {ms:.2f} | {ms / 1e3 / base:.2f}x | " + " | ".join(f"{x:.2f}" for x in ops) + " |")


if __name__ == "__main__":
    main()
