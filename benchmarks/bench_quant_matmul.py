"""Quantized GGUF products on the CPU against dense peers measured in the same run.

    python benchmarks/bench_quant_matmul.py [--formats Q4_0,Q4_K,...] [--shapes smollm2|7b|all]
                                            [--rows 1,4,8,16,32,64,256] [--threads N] [--quick] [--json PATH]

For each weight shape (SmolLM2-135M's q/o 576x576, k/v 192x576, gate/up 1536x576, down 576x1536 and head
49152x576; a 7B model's 4096x4096 and 11008x4096) and number of rows M, it times y = x @ W.T with W kept
quantized (`lmrs.models.quantized.QuantizedTensor.matmul`) in each GGUF format, and the same (dequantized)
weight as oneDNN's dense bfloat16 product with a prepacked weight (what `models/linear.py` runs) and as
float32 `F.linear`. It prints the ratios (peer time / quantized time: above 1 the quantized product is
faster) and, at M = 1, the GB/s the quantized product streams its packed bytes at.

Activations are what the model would feed: float32 where `quantized.prefers_float32(M)` says float32
costs no more (streaming products, and every product without AVX512-BF16), else bfloat16. Weights rotate
through enough copies that one pass exceeds the last-level cache, as in a real decode step (every weight
comes from DRAM); each time is the median of many single calls (the machine is shared: a mean would include the stalls
of descheduled threads).
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lmrs import _core  # noqa: E402
from lmrs.kernels import cpu as _cpu  # noqa: E402
from lmrs.models.quantized import QuantizedTensor, prefers_float32  # noqa: E402

SHAPES = {
    "smollm2": [("q/o 576x576", 576, 576), ("k/v 192x576", 192, 576), ("gate/up 1536x576", 1536, 576),
                ("down 576x1536", 576, 1536), ("head 49152x576", 49152, 576)],
    "7b": [("7B 4096x4096", 4096, 4096), ("7B 11008x4096", 11008, 4096)],
}
FORMATS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
ROWS = [1, 4, 8, 16, 32, 64, 256]
ROTATE_BYTES = 96 << 20  # weight copies per candidate: more than the last-level cache
HALF_OFFSETS = {"Q4_0": [0], "Q5_0": [0], "Q8_0": [0], "Q4_1": [0, 2], "Q5_1": [0, 2], "Q4_K": [0, 2],
                "Q5_K": [0, 2], "Q6_K": [208]}


def random_gguf(fmt: str, n: int, k: int, rng) -> np.ndarray:
    """Valid GGUF bytes of a random [n, k] tensor (random codes, float16 scales of a trained model's size)."""
    qtype = gguf.GGMLQuantizationType[fmt]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n * (k // block), size), dtype=np.uint8)
    for at in HALF_OFFSETS[fmt]:
        raw[:, at:at + 2] = rng.uniform(0.001, 0.01, n * (k // block)).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(n, -1)


def call_time(fn, copies: int, budget: float) -> float:
    """Median seconds of one call, cycling through `copies` inputs: the median of single calls is robust
    to the stalls of a shared machine (a thread of a parallel call descheduled), a mean is not."""
    for i in range(min(copies, 3)):
        fn(i)
    times: list[float] = []
    end = time.perf_counter() + budget
    i = 0
    while len(times) < 2000:
        t0 = time.perf_counter()
        fn(i % copies)
        times.append(time.perf_counter() - t0)
        i += 1
        enough = 7 if times[0] > 0.05 else max(15, min(copies, 200))
        if len(times) >= enough and time.perf_counter() >= end:
            break
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--shapes", default="all", choices=["smollm2", "7b", "all"])
    ap.add_argument("--rows", default=",".join(map(str, ROWS)))
    ap.add_argument("--threads", type=int, default=0, help="threads for every product (default: all CPUs)")
    ap.add_argument("--quick", action="store_true", help="shorter timing (a smoke run)")
    ap.add_argument("--json", default=None, help="also write the measurements here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        _cpu.THREADS = args.threads
    formats = [f.strip().upper() for f in args.formats.split(",") if f.strip()]
    rows_list = [int(r) for r in args.rows.split(",")]
    shapes = SHAPES["smollm2"] + SHAPES["7b"] if args.shapes == "all" else SHAPES[args.shapes]
    budget = 0.05 if args.quick else 0.4
    rotate = (8 << 20) if args.quick else ROTATE_BYTES
    rng = np.random.default_rng(0)
    print(f"# CPU: {_core.cpu_kernels_isa()} kernels, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("# ratios = peer time / quantized time (above 1: the quantized product is faster); "
          "x: activations fed to the quantized product")
    results = []
    for label, n, k in shapes:
        # K-quants need k to be a multiple of 256 (llama.cpp falls back to other types otherwise)
        weights = {f: QuantizedTensor.from_gguf_bytes(random_gguf(f, n, k, rng), f, (n, k)) for f in formats
                   if k % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[f]][0] == 0}
        rotations = {f: [w] + [QuantizedTensor(w.qtype, w.shape, w.packed.clone())
                               for _ in range(max(1, min(64, rotate // w.nbytes)) - 1)] for f, w in weights.items()}
        dense = torch.randn(n, k) * 0.02  # peers: a dense weight of the same shape
        bf16_copies = max(1, min(64, rotate // (n * k * 2)))
        f32_copies = max(1, min(64, rotate // (n * k * 4)))
        packed_bf16 = [torch.ops.mkldnn._reorder_linear_weight(dense.bfloat16().contiguous(), 32)
                       for _ in range(bf16_copies)]
        dense_f32 = [dense.clone() for _ in range(f32_copies)]
        print(f"\n## {label}  (dense bf16 {n * k * 2 / 1e6:.1f} MB; packed: "
              + ", ".join(f"{f} {w.nbytes / 1e6:.1f} MB" for f, w in weights.items()) + ")")
        head = f"{'M':>4} {'x':>4} {'bf16 ms':>8} {'f32 ms':>8} |" + "".join(f" {f + ' ms':>9} {'/bf16':>6} {'/f32':>6} |"
                                                                          for f in formats)
        print(head)
        for m in rows_list:
            x32 = torch.randn(m, k)
            xb = x32.bfloat16()
            t_bf16 = call_time(lambda i: torch.ops.mkldnn._linear_pointwise(xb, packed_bf16[i], None, "none", [], ""),
                               bf16_copies, budget)
            t_f32 = call_time(lambda i: F.linear(x32, dense_f32[i]), f32_copies, budget)
            use_f32 = prefers_float32(m)
            line = f"{m:>4} {'f32' if use_f32 else 'bf16':>4} {t_bf16 * 1e3:>8.3f} {t_f32 * 1e3:>8.3f} |"
            xq = x32 if use_f32 else xb
            for f in formats:
                if f not in weights:
                    line += f" {'n/a':>9} {'':>6} {'':>6} |"
                    continue
                w, ws = weights[f], rotations[f]
                t_q = call_time(lambda i: ws[i].matmul(xq), len(ws), budget)
                gbs = w.nbytes / t_q / 1e9
                line += f" {t_q * 1e3:>9.3f} {t_bf16 / t_q:>6.2f} {t_f32 / t_q:>6.2f} |"
                results.append({"shape": label, "n": n, "k": k, "m": m, "format": f, "x": "f32" if use_f32 else "bf16",
                                "quant_s": t_q, "dense_bf16_s": t_bf16, "dense_f32_s": t_f32,
                                "packed_bytes": w.nbytes, "packed_gb_s": gbs})
            print(line, flush=True)
        gb = [r for r in results if r["shape"] == label and r["m"] == 1]
        if gb:
            print("  M=1 GB/s of packed bytes: " + ", ".join(f"{r['format']} {r['packed_gb_s']:.1f}" for r in gb)
                  + f"  (dense bf16: {n * k * 2 / next(r['dense_bf16_s'] for r in gb) / 1e9:.1f})")
        del packed_bf16, dense_f32, weights, rotations
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"isa": _core.cpu_kernels_isa(), "threads": torch.get_num_threads(), "results": results}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
