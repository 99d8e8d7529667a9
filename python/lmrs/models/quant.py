"""Weight-only quantized twins of linear layers, for the memory-bound small-batch CPU path.

At batch 1 a decode step streams every weight once, so bytes decide the speed: on the 2-core
Xeon of the dev machine the 121 matrix products of SmolLM2-135M take about 15 ms in bfloat16,
9.6 ms with int8 weights and 4.1 ms with int4 weights (`torch.ops.aten._weight_int4pack_mm_for_cpu`,
group size 32); oneDNN's prepacked dense bfloat16 product (AMX) takes 11.6 ms at 1 row, 12.4 ms at 8
and 24 ms at 32, so it wins from about 8 rows.

`auto` picks per matrix: int4 (group 32, asymmetric) when it reproduces the weight exactly up to
the rounding of its scale and zero point to the activation dtype (true for weights that came from
a 4-bit GGUF such as Q4_0 / Q4_1), otherwise int8 per output channel.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("lmrs.quant")

INT4_GROUP = 32
INT4_MAX_ROWS = 8
INT8_MAX_ROWS = 4


class Int8Weight:
    """y = x @ (q * scale).T with q int8 [N, K] and one scale per output channel."""

    def __init__(self, w: torch.Tensor, dtype: torch.dtype = torch.bfloat16):
        wf = w.float()
        scale = (wf.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.q, self.scale)


class Int4Weight:
    """Group-wise asymmetric int4: w = (q - 8) * scale + zero per group of 32 input features."""

    def __init__(self, packed: torch.Tensor, scale_zero: torch.Tensor, out_features: int):
        self.packed = packed
        self.scale_zero = scale_zero
        self.out_features = out_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, INT4_GROUP, self.scale_zero)


def int4_codes(w: torch.Tensor):
    """(codes int32 [N, K], scale [N, K/32], zero [N, K/32], max reconstruction error relative to scale)."""
    n, k = w.shape
    wg = w.float().view(n, k // INT4_GROUP, INT4_GROUP)
    lo = wg.amin(-1, keepdim=True)
    hi = wg.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    q = torch.round((wg - lo) / scale).clamp(0, 15)
    err = ((q * scale + lo - wg).abs() / scale).amax().item()
    zero = lo + 8.0 * scale
    return q.to(torch.int32).view(n, k), scale.squeeze(-1), zero.squeeze(-1), err


def try_int4(w: torch.Tensor, exact_only: bool, dtype: torch.dtype = torch.bfloat16) -> Int4Weight | None:
    n, k = w.shape
    if k % INT4_GROUP or not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return None
    q, scale, zero, err = int4_codes(w)
    if exact_only and err > 1e-3:
        return None
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scale_zero = torch.stack([scale.t(), zero.t()], dim=-1).contiguous().to(dtype)  # [K/32, N, 2]
    return Int4Weight(packed, scale_zero, n)


def quantize_linear(lin, mode: str) -> str:
    """Attach a quantized twin to `lin` (built from its checkpoint-precision `source` when kept);
    returns the format chosen ("int4", "int8" or "none")."""
    w = lin.weight
    if w.dtype not in (torch.bfloat16, torch.float16) or w.device.type != "cpu":
        return "none"
    src = lin.source if lin.source is not None else w
    if mode in ("auto", "int4"):
        q4 = try_int4(src, exact_only=(mode == "auto"), dtype=w.dtype)
        if q4 is not None:
            lin.quantized, lin.quantized_max_rows = q4, INT4_MAX_ROWS
            return "int4"
    if mode in ("auto", "int8"):
        lin.quantized, lin.quantized_max_rows = Int8Weight(src, w.dtype), INT8_MAX_ROWS
        return "int8"
    return "none"


def quantize_for_small_batches(model, mode: str = "auto") -> dict:
    """Give every projection and the output head a quantized twin; returns counts per format."""
    counts: dict[str, int] = {}
    for lin in [*model.linears(), model.lm_head]:
        kind = quantize_linear(lin, mode)
        counts[kind] = counts.get(kind, 0) + 1
    model.drop_sources()
    log.info("small-batch weight formats: %s", counts)
    return counts
