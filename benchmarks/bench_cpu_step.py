"""CPU decode benchmark: tokens/s of SmolLM2-135M-Instruct in bfloat16 with the reference kernels
(`lmrs.kernels.reference`) and the Rust CPU kernels (`lmrs.kernels.cpu`), measured in the same run.

    python benchmarks/bench_cpu_step.py [--batches 1 32] [--prompt-len 100] [--new-tokens 128]
                                        [--repeats 2] [--dtype bfloat16] [--json PATH]

For each batch size: `generate` of `batch` random prompts of `prompt-len` tokens with `new-tokens`
greedy tokens each (ignore_eos), timed end to end (prefill included): tokens/s = generated tokens /
seconds. Then the median time of one decode step at that batch (prefill excluded). One engine, its
model's kernel module swapped between the two backends; runs alternate between them (`repeats`
times each) and the best run of each counts, which tames the noise of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def generate_rate(engine, prompts, new_tokens: int) -> float:
    from lmrs import SamplingParams

    t = time.perf_counter()
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True))
    dt = time.perf_counter() - t
    return sum(len(o.token_ids) for o in outs) / dt


def decode_step_ms(engine, prompts, steps: int = 24) -> float:
    """Median wall time of a decode step with len(prompts) running sequences."""
    from lmrs import SamplingParams

    le = engine.engine
    for p in prompts:
        le.add_request(p, SamplingParams(temperature=0, max_tokens=steps + 8, ignore_eos=True))
    while any(not st.output_ids for st in le.requests.values()):
        le.step()  # prefill
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        le.step()
        times.append(time.perf_counter() - t)
    while le.has_unfinished():
        le.step()
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--backends", nargs="+", default=["reference", "cpu"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from lmrs import Engine
    from lmrs.kernels import cpu, reference
    from lmrs.models.loader import default_model_path, load_model_files

    modules = {"reference": reference, "cpu": cpu}
    loaded = load_model_files(default_model_path(), progress=False)
    engine = Engine(loaded=loaded, dtype=args.dtype, max_num_seqs=max(64, max(args.batches)),
                    kv_cache_memory="512MiB", progress=False)
    model = engine.engine.runner.model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernels isa: {cpu.isa()}, "
          f"dtype {args.dtype}", flush=True)
    rng = np.random.default_rng(0)
    results = {}
    for bs in args.batches:
        prompts = [rng.integers(100, 40000, args.prompt_len).tolist() for _ in range(bs)]
        rates = {b: [] for b in args.backends}
        steps = {b: [] for b in args.backends}
        for _ in range(args.repeats):
            for b in args.backends:
                model.kernels = modules[b]
                engine.generate(prompts[:1], _warm())
                rates[b].append(generate_rate(engine, prompts, args.new_tokens))
                steps[b].append(decode_step_ms(engine, prompts))
        row = {b: {"tokens_per_s": max(rates[b]), "decode_step_ms": min(steps[b])} for b in args.backends}
        results[bs] = row
        line = "  ".join(f"{b}: {row[b]['tokens_per_s']:8.1f} tok/s ({row[b]['decode_step_ms']:6.1f} ms/step)"
                         for b in args.backends)
        ratio = ""
        if "reference" in row and "cpu" in row:
            ratio = f"  ratio {row['cpu']['tokens_per_s'] / row['reference']['tokens_per_s']:.2f}x"
        print(f"batch {bs:3d}: {line}{ratio}", flush=True)
    model.kernels = cpu
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


def _warm():
    from lmrs import SamplingParams

    return SamplingParams(temperature=0, max_tokens=4)


if __name__ == "__main__":
    main()
