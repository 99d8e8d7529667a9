"""Large bfloat16 products of kept-quantized GGUF weights: dequantize + dense GEMM.

Where the CPU has AMX bfloat16 tiles, oneDNN's bfloat16 GEMM beats the quantized panel kernels from ~12 rows
on (with AVX512-BF16 but no AMX, as on Zen 4, from ~128 rows: ``DENSE_GEMM_MIN_ROWS`` is per CPU), so
:func:`matmul` dequantizes chunks of the weight's rows to a transposed bfloat16 scratch
(``src/cpu_kernels/gguf_dequant_bf16.rs``, reused per thread, at most ``DENSE_CHUNK_VALUES``) and runs
``torch.mm`` on it. ``QuantizedTensor.matmul`` calls it for bfloat16 activations and outputs when
:func:`dense_gemm_pays`; no dense copy of a weight outlives a call.
"""

from __future__ import annotations

import os
import threading

import torch

from lmrs import _core
from lmrs.kernels import cpu as _cpu


def matmul(w, x: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, out_col: int) -> None:
    """out[:, out_col:] = x @ W.T (+ bias) for bfloat16 x and out: chunks of the weight's rows are dequantized
    (transposed, bfloat16) into a reused per-thread scratch and multiplied by torch's bfloat16 GEMM (oneDNN,
    AMX tiles where present); no dense copy of the weight outlives the call."""
    k, n = w.in_features, w.rows
    chunk = dense_chunk_cols(k)
    scratch = _dense_scratch(k * min(chunk, -(-n // 16) * 16))
    if bias is not None:
        bias = bias.to(torch.bfloat16)
    tiles = -(-n // 16)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        _core.cpu_gguf_dequantize_t_bf16(w.qtype, w.packed.data_ptr(), w.nbytes, n, k, c0 // 16,
                                         min(tiles, -(-c1 // 16)), scratch.data_ptr(), c1 - c0, _cpu.THREADS)
        wt = scratch[: k * (c1 - c0)].view(k, c1 - c0)
        dst = out[:, out_col + c0: out_col + c1]
        if dst.is_contiguous():
            if bias is None:
                torch.mm(x, wt, out=dst)
            else:
                torch.addmm(bias[c0:c1], x, wt, out=dst)
        else:
            dst.copy_(torch.mm(x, wt) if bias is None else torch.addmm(bias[c0:c1], x, wt))


#: bfloat16 values of one chunk of dequantized weight (4 MiB): larger weights go in several chunks
DENSE_CHUNK_VALUES = 1 << 21

_scratch = threading.local()


def dense_chunk_cols(k: int) -> int:
    """Output rows per dequantized chunk for an input width `k` (a multiple of the 16-row tile)."""
    return max(16, DENSE_CHUNK_VALUES // k // 16 * 16)


def _dense_scratch(values: int) -> torch.Tensor:
    """This thread's bfloat16 scratch of at least `values` elements (grown, never shrunk; <= one chunk)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < values:
        buf = torch.empty(values, dtype=torch.bfloat16)
        _scratch.buf = buf
    return buf


def _dense_gemm_enabled() -> bool:
    env = os.environ.get("LMRS_GGUF_DENSE_GEMM", "auto").strip().lower()
    if env in ("0", "off", "false", "no"):
        return False
    if env in ("1", "on", "true", "yes"):
        return True
    return _core.cpu_has_amx_bf16() or _core.cpu_kernels_isa() == "avx512bf16"


#: rows from which the path pays where the CPU has AMX bfloat16 tiles (oneDNN's GEMM on tiles is 2-5x the
#: panel kernels from ~12 rows on); measured by benchmarks/bench_quant_dense_gemm.py (docs/benchmarks.md)
DENSE_GEMM_MIN_ROWS_AMX = 12
#: ... and on AVX512-BF16 without AMX (Zen 4): oneDNN's avx512_bf16 GEMM is only 1.3-1.6x the `vdpbf16ps`
#: panel kernel, so the per-call decode of the weight is paid back from ~100-128 rows on (prefill chunks, mixed
#: prefill + decode steps), while at 16-32 rows (decode batches) the panel kernel is 1.15-2x faster
DENSE_GEMM_MIN_ROWS_AVX512BF16 = 128


def _dense_gemm_min_rows() -> int:
    return DENSE_GEMM_MIN_ROWS_AMX if _core.cpu_has_amx_bf16() else DENSE_GEMM_MIN_ROWS_AVX512BF16


#: rows from which bfloat16 products of kept-quantized weights dequantize chunks of the weight and run
#: torch's bfloat16 GEMM (see :func:`dense_gemm_pays`): the CPU's crossover (above)
DENSE_GEMM_MIN_ROWS = _dense_gemm_min_rows()
#: whether that path is on: by default where the CPU has AMX bfloat16 tiles or AVX512-BF16 (oneDNN's GEMM then
#: beats the quantized panel kernels from DENSE_GEMM_MIN_ROWS rows); ``LMRS_GGUF_DENSE_GEMM=0`` / ``=1`` forces
#: it off / on (benchmarks, tests)
DENSE_GEMM = _dense_gemm_enabled()


def dense_gemm_pays(rows: int) -> bool:
    """Whether a bfloat16 product of `rows` rows takes the dequantize + dense GEMM path."""
    return DENSE_GEMM and rows >= DENSE_GEMM_MIN_ROWS
