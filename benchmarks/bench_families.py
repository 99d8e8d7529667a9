"""CPU decode throughput of the new families: lmrs.Engine.generate against transformers' generate on
the same random-weight Qwen3 and Gemma 3 models, batch 1 and 32, in one process, one after the other.

    python benchmarks/bench_families.py                         # qwen3 and gemma3, batch 1 and 32, bfloat16
    python benchmarks/bench_families.py --families qwen3 --batch 1 --dtypes float32 bfloat16
    python benchmarks/bench_families.py --write-doc docs/benchmarks.md

Models ("tiny but not trivial", about 100M parameters): hidden 768, 12 layers, 12 query / 4 KV heads of
64, MLP 2048, vocabulary 32000, built by `lmrs.models.testing_hf.make_tiny_family_model` with the
family's transformers class (Gemma 3: five sliding-window layers of 512 per global layer, local and
global RoPE, q/k norms, GeGLU). Prompts: --input-len random tokens each; greedy; --output-len new
tokens (lmrs ignore_eos; transformers min_new_tokens = max_new_tokens). Decode tok/s = output tokens /
(generation time - prefill time), the prefill time measured by a 1-token generation of the same
prompts; one untimed warm-up per configuration. Prints each number and the ratio lmrs / transformers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import doc_sections  # noqa: E402

SIZES = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
             num_key_value_heads=4, head_dim=64, vocab_size=32000)
FAMILY_SIZES = {"qwen3": {}, "gemma3": dict(sliding_window=512, query_pre_attn_scalar=64)}


def prompts(n: int, length: int, seed: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(20, 384, (n, length), generator=g).tolist()


def timed(fn, repeats: int) -> float:
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best


def bench_lmrs(folder, dtype: str, batch: list[int], args) -> dict[int, float]:
    from lmrs import Engine, SamplingParams

    eng = Engine(str(folder), dtype=dtype, max_num_seqs=max(batch), kv_cache_memory="1GiB", progress=False,
                 **({"num_threads": args.threads} if args.threads else {}))
    out = {}
    for b in batch:
        ps = prompts(b, args.input_len, b)
        one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
        full = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
        eng.generate([p[:8] for p in ps], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
        prefill = timed(lambda: eng.generate(ps, one), args.repeats)
        total = timed(lambda: eng.generate(ps, full), args.repeats)
        out[b] = b * (args.output_len - 1) / max(total - prefill, 1e-9)
        print(f"[families] lmrs {dtype} batch {b}: {out[b]:.1f} decode tok/s", flush=True)
    del eng
    gc.collect()
    return out


def bench_hf(model, dtype: str, batch: list[int], args) -> dict[int, float]:
    import torch

    model = model.to(getattr(torch, dtype)).eval()
    out = {}
    for b in batch:
        ids = torch.tensor(prompts(b, args.input_len, b))
        kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
        with torch.inference_mode():
            model.generate(ids[:, :8], max_new_tokens=4, min_new_tokens=4, **{**kw, "attention_mask": kw["attention_mask"][:, :8]})
            prefill = timed(lambda: model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw), args.repeats)
            total = timed(lambda: model.generate(ids, max_new_tokens=args.output_len, min_new_tokens=args.output_len,
                                                 **kw), args.repeats)
        out[b] = b * (args.output_len - 1) / max(total - prefill, 1e-9)
        print(f"[families] transformers {dtype} batch {b}: {out[b]:.1f} decode tok/s", flush=True)
    return out


def markdown(results: dict, args, versions: dict) -> str:
    lines = ["## New families: CPU decode against transformers", "",
             "`benchmarks/bench_families.py`: random-weight models of about 100M parameters (hidden 768, 12 layers, "
             "12 query / 4 KV heads of 64, MLP 2048, vocabulary 32000; Gemma 3 with 512-token sliding windows on 5 "
             f"of every 6 layers), {args.input_len}-token prompts, {args.output_len} new tokens, greedy; decode tok/s "
             "= output tokens / (generation time - prefill time); best of "
             f"{args.repeats} after a warm-up, one process, {args.threads or 'all'} threads, on "
             f"{os.cpu_count()} CPUs with a 1-minute load average of {versions.pop('load', '?')} during the run "
             "(other jobs share the machine: compare the ratios, not the absolute numbers). Versions: "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
             "| family | dtype | batch | lmrs tok/s | transformers tok/s | lmrs / transformers |",
             "|---|---|---:|---:|---:|---:|"]
    for fam, by_dtype in results.items():
        for dtype, by_b in by_dtype.items():
            for b, r in by_b.items():
                lines.append(f"| {fam} | {dtype} | {b} | {r['lmrs']:.1f} | {r['transformers']:.1f} | "
                             f"{r['lmrs'] / r['transformers']:.2f}x |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- bench-families:begin -->", "<!-- bench-families:end -->"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["qwen3", "gemma3"], choices=sorted(FAMILY_SIZES))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: all cores)")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--write-doc", default=None, metavar="MD", help="write the table into this markdown file")
    args = ap.parse_args(argv)

    import torch
    import transformers

    import lmrs
    from lmrs.models.testing_hf import make_tiny_family_model

    if args.threads:
        torch.set_num_threads(args.threads)
    versions = {"lmrs": lmrs.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.families:
            print(f"[families] building a {fam} model", flush=True)
            folder, hf, _ = make_tiny_family_model(fam, os.path.join(tmp, fam), **SIZES, **FAMILY_SIZES[fam])
            hf.config._attn_implementation = "sdpa"  # transformers' default (the builder asks for eager)
            for dtype in args.dtypes:
                mine = bench_lmrs(folder, dtype, args.batch, args)
                theirs = bench_hf(hf, dtype, args.batch, args)
                for b in args.batch:
                    r = {"lmrs": mine[b], "transformers": theirs[b]}
                    results.setdefault(fam, {}).setdefault(dtype, {})[b] = r
                    print(f"[families] {fam} {dtype} batch {b}: lmrs / transformers = "
                          f"{r['lmrs'] / r['transformers']:.2f}x", flush=True)
            del hf
            gc.collect()
    versions["load"] = f"{os.getloadavg()[0]:.1f} at the end"
    md = markdown(results, args, dict(versions))
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "versions": versions, "args": vars(args)}, f, indent=2)
    if args.write_doc:
        doc_sections.write_section(args.write_doc, BEGIN, END, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
