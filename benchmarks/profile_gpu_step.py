"""Where a decode step's time goes on a GPU: per step, the wall time of `LLMEngine.step` split into
schedule (Rust core), the model runner (inputs, forward, logits, sampling, the copy of token ids),
the forward alone (graph replay: forward + logits; eager: the forward without the head; CUDA events
around it, synchronized after, so it adds a little), and update + detokenize (Rust core update, text, deltas).

    python benchmarks/profile_gpu_step.py [--batches 1 32 256] [--steps 64] [--eager]

Uses SmolLM2-135M-Instruct when its GGUF is installed, else random weights of the same shape.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def profile(loaded, batch: int, steps: int, eager: bool, device: str = "cuda") -> dict:
    from lmrs import Engine, SamplingParams

    eng = Engine(loaded=loaded, device=device, dtype="bfloat16", max_num_seqs=max(batch, 1),
                 max_num_batched_tokens=max(8192, batch * 100), progress=False, cuda_graphs=not eager)
    llm = eng.engine
    rng = np.random.default_rng(0)
    for _ in range(batch):
        llm.add_request(rng.integers(100, 40000, 100).tolist(),
                        SamplingParams(temperature=0, max_tokens=steps + 8, ignore_eos=True))
    # prefill + a few decode steps (graph capture, warm-up) before timing
    for _ in range(6):
        llm.step()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    times = {"schedule": [], "runner": [], "gpu_forward": [], "update+detok": [], "step": []}
    core, runner = llm.core, llm.runner
    orig_schedule, orig_execute, orig_update = core.schedule, runner.execute, core.update
    marks = {}

    def timed_schedule():
        marks["t0"] = time.perf_counter()
        plan = orig_schedule()
        marks["t1"] = time.perf_counter()
        return plan

    def execute(plan, **kw):
        out = orig_execute(plan, **kw)  # ends with a device->host copy of the ids: synchronized
        marks["t2"] = time.perf_counter()
        return out

    # the forward alone: graph replay (or the eager forward), timed by CUDA events around it
    graphs = runner.decode_graphs
    target, attr = (graphs, "run") if graphs is not None else (runner.model, "forward")
    orig_forward = getattr(target, attr)

    def timed_forward(*a, **kw):
        if not cuda:  # (a dry run of this script on the CPU: no events, the wall time)
            t = time.perf_counter()
            out = orig_forward(*a, **kw)
            marks["gpu"] = (time.perf_counter() - t) * 1e3
            return out
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = orig_forward(*a, **kw)
        end.record()
        end.synchronize()
        marks["gpu"] = start.elapsed_time(end)
        return out

    setattr(target, attr, timed_forward)

    class CoreProxy:
        def __getattr__(self, name):
            return getattr(core, name)

        schedule = staticmethod(timed_schedule)
        update = staticmethod(orig_update)

    llm.core = CoreProxy()
    runner.execute = execute
    for _ in range(steps):
        t = time.perf_counter()
        llm.step()
        t3 = time.perf_counter()
        times["schedule"].append((marks["t1"] - marks["t0"]) * 1e3)
        times["runner"].append((marks["t2"] - marks["t1"]) * 1e3)
        times["gpu_forward"].append(marks["gpu"])
        times["update+detok"].append((t3 - marks["t2"]) * 1e3)
        times["step"].append((t3 - t) * 1e3)
    llm.core, runner.execute = core, orig_execute
    setattr(target, attr, orig_forward)
    res = {k: statistics.median(v) for k, v in times.items()}
    res["graph_steps"] = runner.graph_steps
    del eng
    if cuda:
        torch.cuda.empty_cache()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU: nothing to profile")
        return 0
    from bench_gpu_e2e import load_model

    loaded, name = load_model()
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"model: {name}; device: {where}; bfloat16; {'eager' if args.eager else 'CUDA graphs'}")
    print("median ms per decode step (runner = inputs + forward + sampling + ids to host; gpu_fwd: the forward alone)")
    print(f"{'batch':>6} {'step':>8} {'schedule':>9} {'runner':>8} {'gpu_fwd':>8} {'update+detok':>13} {'tok/s':>9}")
    for b in args.batches:
        r = profile(loaded, b, args.steps, args.eager, args.device)
        print(f"{b:>6} {r['step']:>8.3f} {r['schedule']:>9.3f} {r['runner']:>8.3f} {r['gpu_forward']:>8.3f} "
              f"{r['update+detok']:>13.3f} {b / r['step'] * 1e3:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
