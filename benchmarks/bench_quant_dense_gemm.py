"""Large-row bfloat16 products of kept-quantized weights: the panel kernels against dequantize + dense GEMM.

    python benchmarks/bench_quant_dense_gemm.py [--format Q4_1] [--rows 9,16,32,64,256,2048] [--threads N]
                                                [--repeats 3] [--shapes smollm2|7b|all] [--json PATH]

For each weight shape and number of rows M it times, in the same process and alternating `repeats` times:
- `kernel`: `QuantizedTensor.matmul` on the Rust panel kernels (`gguf_gemm_bf16.rs` with AVX512-BF16, else
  `gguf_gemm.rs`), i.e. ``dense_gemm.DENSE_GEMM = False``;
- `dequant+gemm`: the same call with ``DENSE_GEMM = True`` (chunks of the weight dequantized to a transposed
  bfloat16 scratch by `gguf_dequant_bf16.rs`, then torch's bfloat16 GEMM: oneDNN, on AMX tiles where present);
- `dense`: oneDNN's bfloat16 product with a prepacked dense weight (what ``--gguf-weights dequantize`` runs).
Each figure is the best of the repeats' medians (a shared machine: the median of single calls drops the
stalls of descheduled threads, the best repeat the worst contention). Activations are bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_quant_matmul import SHAPES, random_gguf  # noqa: E402
from lmrs import _core  # noqa: E402
from lmrs.kernels import cpu as _cpu  # noqa: E402
from lmrs.models import quantized_dense_gemm as dense_gemm  # noqa: E402
from lmrs.models.quantized import QuantizedTensor  # noqa: E402


def median_ms(fn, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", default="Q4_1")
    ap.add_argument("--rows", default="9,16,32,64,256,2048")
    ap.add_argument("--threads", type=int, default=0, help="threads for every product (default: all CPUs)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", default="smollm2", choices=["smollm2", "7b", "all"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        _cpu.THREADS = args.threads
    rows_list = [int(r) for r in args.rows.split(",")]
    shapes = SHAPES["smollm2"][:4] + SHAPES["7b"] if args.shapes == "all" else (
        SHAPES["smollm2"][:4] if args.shapes == "smollm2" else SHAPES["7b"])
    rng = np.random.default_rng(0)
    print(f"# {_core.cpu_kernels_isa()} kernels, AMX bf16: {_core.cpu_has_amx_bf16()}, "
          f"{torch.get_num_threads()} threads, {args.format}, torch {torch.__version__}")
    print(f"{'shape':<18} {'M':>5} {'kernel ms':>10} {'deq+gemm ms':>12} {'dense ms':>9} {'kernel/new':>11} "
          f"{'new/dense':>10}")
    results = []
    saved = dense_gemm.DENSE_GEMM
    for label, n, k in shapes:
        w = QuantizedTensor.from_gguf_bytes(random_gguf(args.format, n, k, rng), args.format, (n, k))
        packed = torch.ops.mkldnn._reorder_linear_weight(w.dequantize().bfloat16().contiguous(), 32)
        for m in rows_list:
            x = torch.randn(m, k).bfloat16()
            calls = 5 if m * n * k > 1e9 else 21
            runs = {"kernel": [], "new": [], "dense": []}
            for _ in range(args.repeats):
                dense_gemm.DENSE_GEMM = False
                runs["kernel"].append(median_ms(lambda: w.matmul(x), calls))
                dense_gemm.DENSE_GEMM = True
                runs["new"].append(median_ms(lambda: w.matmul(x), calls))
                runs["dense"].append(median_ms(
                    lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), calls))
            best = {key: min(v) for key, v in runs.items()}
            print(f"{label:<18} {m:>5} {best['kernel']:>10.3f} {best['new']:>12.3f} {best['dense']:>9.3f} "
                  f"{best['kernel'] / best['new']:>11.2f} {best['new'] / best['dense']:>10.2f}", flush=True)
            results.append({"shape": label, "n": n, "k": k, "m": m, **{f"{key}_ms": v for key, v in best.items()}})
    dense_gemm.DENSE_GEMM = saved
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"isa": _core.cpu_kernels_isa(), "amx": _core.cpu_has_amx_bf16(),
                       "threads": torch.get_num_threads(), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
