"""GGUF weights kept quantized against dense copies: decode and prefill speed of the two CPU paths, in one run.

    python benchmarks/bench_gguf_weights.py                         # SmolLM2-135M Q4_1, batch 1 and 32
    python benchmarks/bench_gguf_weights.py --model m.Q4_K_M.gguf --batch 1 8 32 --write-doc docs/benchmarks.md

Both engines run bfloat16 on the CPU from the same GGUF:
- `quantized` (the default since issue 12 part 3): every quantized weight stays in its GGUF blocks
  (`QuantizedLinear`, the Rust kernels: streaming products up to 8 rows, decoded panels beyond);
- `dense` (the earlier path, `load_model_files(gguf_weights="dequantize")`): bfloat16 weights (oneDNN) plus
  the small-batch int4/int8 twins (`quantize="auto"`).
Decode tok/s at each --batch: output tokens / (generation time - prefill time), the prefill time taken
from a 1-token generation of the same prompts (--input-len tokens, greedy, --output-len new tokens with
EOS ignored). Prefill: seconds for one --prefill-len-token prompt (1 new token, prefix cache off). The
two engines alternate within each repeat (--repeats, median reported), so machine load hits both alike.
Prints each number and the ratio quantized / dense; RSS of the weights is in engine_load_memory.py.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import doc_sections  # noqa: E402

BEGIN, END = "<!-- bench-gguf-weights:begin -->", "<!-- bench-gguf-weights:end -->"


def prompts(n: int, length: int, seed: int, vocab: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab, (n, length), generator=g).tolist()


def engine(path: str, mode: str, args):
    from lmrs import Engine
    from lmrs.models.loader import load_model_files

    loaded = load_model_files(path, progress=False, gguf_weights="quantized" if mode == "quantized" else "dequantize")
    kw = {"num_threads": args.threads} if args.threads else {}
    return Engine(loaded=loaded, dtype="bfloat16", progress=False, max_num_seqs=max(64, max(args.batch)),
                  kv_cache_memory=args.kv_cache_memory, enable_prefix_caching=False, **kw)


def timed(eng, ps, n_out: int) -> float:
    from lmrs import SamplingParams

    t = time.perf_counter()
    eng.generate(ps, SamplingParams(temperature=0, max_tokens=n_out, min_tokens=n_out, ignore_eos=True))
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: all cores)")
    ap.add_argument("--kv-cache-memory", default="256MiB")
    ap.add_argument("--write-doc", default=None, metavar="MD", help="write the table into this markdown file")
    args = ap.parse_args(argv)

    import torch

    from lmrs import _core
    from lmrs.models.loader import default_model_path

    path = args.model or default_model_path()
    modes = ("quantized", "dense")
    engines = {m: engine(path, m, args) for m in modes}
    vocab = engines["quantized"].engine.parts.model.config.vocab_size
    results: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    for m in modes:  # warm-up: first-call costs (oneDNN kernels, lazily built layouts) are not timed
        timed(engines[m], prompts(2, 16, 999, vocab), 4)
    for r in range(args.repeats):
        for b in args.batch:
            ps = prompts(b, args.input_len, 1000 * r + b, vocab)
            for m in modes:
                pre = timed(engines[m], ps, 1)
                full = timed(engines[m], ps, args.output_len)
                rate = b * (args.output_len - 1) / max(full - pre, 1e-9)
                results[m].setdefault(f"decode b{b}", []).append(rate)
                print(f"[gguf-weights] {m:9s} batch {b:>3}: {rate:8.1f} decode tok/s", flush=True)
        long = prompts(1, args.prefill_len, 7000 + r, vocab)
        for m in modes:
            s = timed(engines[m], long, 1)
            results[m]["prefill"] = results[m].get("prefill", []) + [s]
            print(f"[gguf-weights] {m:9s} prefill {args.prefill_len}: {s * 1000:8.0f} ms", flush=True)
        gc.collect()

    med = {m: {k: statistics.median(v) for k, v in res.items()} for m, res in results.items()}
    load = os.getloadavg()[0]
    lines = [
        "## GGUF weights kept quantized: speed against dense bfloat16 (`benchmarks/bench_gguf_weights.py`)",
        "",
        f"Model `{os.path.basename(path)}`, bfloat16, {os.cpu_count()} CPUs, kernels ISA "
        f"`{_core.cpu_kernels_isa()}`, torch {torch.__version__}, load average {load:.1f} at the end "
        f"(the machine is shared); prompts of {args.input_len} tokens, {args.output_len} new tokens, "
        f"median of {args.repeats} alternating repeats. `quantized`: weights kept in their GGUF blocks (the "
        "default); `dense`: `gguf_weights=\"dequantize\"` (bfloat16 weights + small-batch int4/int8 twins).",
        "",
        "| measure | quantized | dense | quantized / dense |",
        "|---|---:|---:|---:|",
    ]
    for key in med["quantized"]:
        q, d = med["quantized"][key], med["dense"][key]
        if key == "prefill":
            lines.append(f"| prefill of {args.prefill_len} tokens (ms, lower is better) | {q * 1000:.0f} | "
                         f"{d * 1000:.0f} | {q / d:.2f} (speed {d / q:.2f}x) |")
        else:
            lines.append(f"| {key.replace('decode b', 'decode tok/s, batch ')} | {q:.1f} | {d:.1f} | {q / d:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.write_doc:
        doc_sections.write_section(args.write_doc, BEGIN, END, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
