"""Per-op breakdown of a CPU engine step (the default engine: SmolLM2-135M Q4_1 GGUF, weights kept quantized).

    python benchmarks/profile_cpu_step.py [--batch 32] [--prefill-tokens 2048] [--steps 8] [--gguf-weights quantized]
                                          [--dense-gemm auto|on|off] [--threads N]
                                          [--markdown] [--alternate ROUNDS]

Two steps are profiled: a decode step with `batch` running sequences (100-token prompts) and a prefill step of
one `prefill-tokens`-token prompt (`max_num_batched_tokens` large enough to take it in one step). Every op of the
forward is wrapped with a timer that books *exclusive* wall time (time inside a nested timed op goes to that op):
the linears by kind (qkv, o, gate_up, down), the output head (logits + top-logit refinement), attention, norms,
RoPE + KV-cache write, the gated activation, the embedding, the sampler; `host` is the rest of `LLMEngine.step`
(scheduling, plan building, update, detokenization). Each row is the median over `steps` steps.
`--dense-gemm` sets `dense_gemm.DENSE_GEMM` (the dequantize + oneDNN GEMM path for large bfloat16 products).
The real step (the layer stack as one Rust call, `lmrs.models.cpu_program`) is timed first, uninstrumented;
the per-op table needs the Python layer loop, which the wrapped projections select.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

LINEAR_KINDS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
KERNEL_KINDS = {
    "rms_norm": "norms", "fused_add_rms_norm": "norms",
    "rotary_embedding": "rope + cache write", "reshape_and_cache": "rope + cache write",
    "rotary_embedding_and_cache": "rope + cache write",
    "silu_and_mul": "activation", "gelu_tanh_and_mul": "activation",
    "paged_attention": "attention", "decode_attention": "attention", "prefill_attention": "attention",
    "refine_top_logits": "head (logits + refine)",
}


class Profile:
    """Exclusive wall time per label: a timed call's children are subtracted from it."""

    def __init__(self):
        self.times: dict[str, float] = defaultdict(float)
        self.stack: list[float] = []  # children time of each open call

    def wrap(self, label: str, fn):
        def timed(*args, **kwargs):
            self.stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t
                children = self.stack.pop()
                self.times[label] += dt - children
                if self.stack:
                    self.stack[-1] += dt
        return timed


def instrument(engine, prof: Profile) -> None:
    from lmrs.kernels import cpu

    runner = engine.engine.runner
    model = runner.model
    model._program = None  # rebuilt at the next step: the wrapped projections select the Python layer loop
    for layer in model.layers:
        for owner in (getattr(layer, "attn", None), getattr(layer, "mlp", None)):
            for name in LINEAR_KINDS:
                lin = getattr(owner, name, None)
                if lin is not None:
                    setattr(owner, name, _Timed(lin, prof.wrap(name.replace("_proj", ""), lin)))
    for name, label in KERNEL_KINDS.items():
        if hasattr(cpu, name):
            setattr(cpu, name, prof.wrap(label, getattr(cpu, name)))
    model.compute_logits = prof.wrap("head (logits + refine)", model.compute_logits)
    model.embedding = prof.wrap("embedding", model.embedding)
    runner.sampler = _Timed(runner.sampler, prof.wrap("sampling", runner.sampler.__call__))
    le = engine.engine
    le.step = prof.wrap("host (schedule, update, detokenize)", le.step)


class _Timed:
    """A callable object (a linear, the sampler) with its call timed; attribute access passes through."""

    def __init__(self, inner, call):
        self._inner = inner
        self._call = call

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def profile_steps(engine, prof: Profile, prompts, steps: int, prefill: bool):
    """Median per-label exclusive ms over `steps` steps (decode steps, or prefill steps of `prompts`)."""
    from lmrs import SamplingParams

    le = engine.engine
    per_step = []
    totals = []
    if prefill:
        for p in prompts[:steps]:
            le.add_request(p, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
            prof.times.clear()
            t = time.perf_counter()
            le.step()
            totals.append(time.perf_counter() - t)
            per_step.append(dict(prof.times))
            while le.has_unfinished():
                le.step()
    else:
        for p in prompts:
            le.add_request(p, SamplingParams(temperature=0, max_tokens=steps + 4, ignore_eos=True))
        while any(not st.output_ids for st in le.requests.values()):  # prefill
            le.step()
        for _ in range(steps):
            prof.times.clear()
            t = time.perf_counter()
            le.step()
            totals.append(time.perf_counter() - t)
            per_step.append(dict(prof.times))
        while le.has_unfinished():
            le.step()
    labels = sorted({k for s in per_step for k in s})
    rows = {k: 1e3 * statistics.median(s.get(k, 0.0) for s in per_step) for k in labels}
    return rows, 1e3 * statistics.median(totals)


def print_table(title: str, rows: dict[str, float], total: float, markdown: bool) -> None:
    order = sorted(rows, key=lambda k: -rows[k])
    if markdown:
        print(f"\n{title}: step {total:.1f} ms (median)\n\n| op | ms | share |\n|---|---:|---:|")
        for k in order:
            print(f"| {k} | {rows[k]:.2f} | {100 * rows[k] / total:.1f}% |")
    else:
        print(f"\n## {title}: step {total:.1f} ms (median)")
        for k in order:
            print(f"  {k:<38} {rows[k]:9.2f} ms {100 * rows[k] / total:6.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prefill-tokens", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prefill-steps", type=int, default=3)
    ap.add_argument("--gguf-weights", default="quantized", choices=["quantized", "dequantize"])
    ap.add_argument("--dense-gemm", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--threads", type=int, default=0, help="threads for torch and the Rust kernels (0: all CPUs)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--alternate", type=int, default=0,
                    help="instead of one profile: N rounds of (dense GEMM off, on), printing each step's total")
    args = ap.parse_args()

    from lmrs import Engine
    from lmrs.kernels import cpu
    from lmrs.models import quantized_dense_gemm as dense_gemm
    from lmrs.models.loader import default_model_path, load_model_files

    if args.threads:
        torch.set_num_threads(args.threads)
        cpu.THREADS = args.threads
    if args.dense_gemm != "auto":
        dense_gemm.DENSE_GEMM = args.dense_gemm == "on"
    loaded = load_model_files(default_model_path(), progress=False, gguf_weights=args.gguf_weights)
    engine = Engine(loaded=loaded, dtype="bfloat16", max_num_seqs=max(64, args.batch), kv_cache_memory="768MiB",
                    max_num_batched_tokens=max(4096, args.prefill_tokens), progress=False)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, kernels {cpu.isa()}, gguf weights "
          f"{args.gguf_weights}, dense GEMM path {dense_gemm.DENSE_GEMM}")
    prof = Profile()
    rng = np.random.default_rng(0)
    from lmrs import SamplingParams

    engine.generate([rng.integers(100, 40000, 32).tolist()], SamplingParams(temperature=0, max_tokens=4))
    if not args.alternate:
        # the real step first: the per-op timers below need the Python layer loop (the wrapped projections are
        # not the types `CpuDecoderProgram` runs), so they show the loop, not the one-call forward pass
        plain = [rng.integers(100, 40000, 100).tolist() for _ in range(args.batch)]
        _, total = profile_steps(engine, prof, plain, args.steps, prefill=False)
        used = type(engine.engine.runner.model._program).__name__
        print(f"\ndecode step, batch {args.batch}, uninstrumented ({used}): {total:.1f} ms (median)")
    instrument(engine, prof)
    decode_prompts = [rng.integers(100, 40000, 100).tolist() for _ in range(args.batch)]
    prefill_prompts = [rng.integers(100, 40000, args.prefill_tokens).tolist() for _ in range(args.prefill_steps)]
    if args.alternate:
        alternate(engine, prof, args, decode_prompts, prefill_prompts)
        return
    rows, total = profile_steps(engine, prof, decode_prompts, args.steps, prefill=False)
    print_table(f"decode step, batch {args.batch}, per op (the Python layer loop)", rows, total, args.markdown)
    if args.prefill_steps:
        rows, total = profile_steps(engine, prof, prefill_prompts, args.prefill_steps, prefill=True)
        print_table(f"prefill step, {args.prefill_tokens} tokens", rows, total, args.markdown)


def alternate(engine, prof: Profile, args, decode_prompts, prefill_prompts) -> None:
    """Step totals (median ms) with the dense GEMM path off and on, alternating; the best round of each."""
    from lmrs.models import quantized_dense_gemm as dense_gemm

    cases = [(f"decode batch {args.batch}", decode_prompts, False), ("decode batch 1", decode_prompts[:1], False),
             (f"prefill {args.prefill_tokens} tokens", prefill_prompts, True)]
    best: dict[tuple[str, bool], float] = {}
    linears: dict[tuple[str, bool], float] = {}
    rng = np.random.default_rng(1)
    for _ in range(args.alternate):
        for name, prompts, prefill in cases:
            for on in (False, True):
                dense_gemm.DENSE_GEMM = on
                # fresh prompts every run: a repeated prompt would hit the prefix cache
                prompts = [rng.integers(100, 40000, len(p)).tolist() for p in prompts]
                rows, total = profile_steps(engine, prof, prompts, args.prefill_steps if prefill else args.steps,
                                            prefill)
                lin = sum(rows.get(k.replace("_proj", ""), 0.0) for k in LINEAR_KINDS)
                if total < best.get((name, on), float("inf")):
                    best[(name, on)], linears[(name, on)] = total, lin
                print(f"  {name:<24} dense GEMM {'on ' if on else 'off'}: step {total:8.1f} ms "
                      f"(linears {lin:7.1f} ms)", flush=True)
    print("\n| step | before (kernels) ms | after (dequantize + GEMM) ms | speedup | linears before / after ms |")
    print("|---|---:|---:|---:|---:|")
    for name, _, _ in cases:
        b, a = best[(name, False)], best[(name, True)]
        print(f"| {name} | {b:.1f} | {a:.1f} | {b / a:.2f}x | {linears[(name, False)]:.1f} / "
              f"{linears[(name, True)]:.1f} |")


if __name__ == "__main__":
    main()
