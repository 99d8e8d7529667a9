"""Weight-only quantized twins of linear layers, for the memory-bound small-batch CPU path.

At batch 1 a decode step streams every weight once, so bytes decide the speed. Each projection
(and the output head) gets a twin in a group-quantized format, used for products of at most
`max_rows` rows; larger batches stay on the dense 16-bit weights (oneDNN, compute-bound).

With the Rust CPU kernels (`lmrs._core.cpu_quant_*`, see `src/cpu_kernels/quant_matmul.rs`):
- Q4: 4-bit codes, a float16 scale and minimum per group of 32 input features;
- Q8: int8 codes, a float16 scale per group of 32.
Both reconstruct GGUF Q4_0 / Q4_1 / Q8_0 weights exactly (their scales are float16 already),
take float32 activations (the products split them into bfloat16 high and low parts, 16
significant bits) and return float32, so a small batch runs the whole layer stack with float32
activations: the same weights and nearly the same arithmetic as the float32 model.

`auto` picks Q4 for a matrix that Q4 reproduces exactly (a 4-bit GGUF source), otherwise Q8.

Without AVX512-BF16 the twins are PyTorch's packed int4 (`_weight_int4pack_mm_for_cpu`, group 32,
bfloat16 scales and zero points: not exact) and int8 per output channel.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("lmrs.quant")

INT4_GROUP = 32
INT4_MAX_ROWS = 8  # rows up to which the 4-bit twin is used (dense bf16 wins beyond)
INT8_MAX_ROWS = 4  # the same for 8-bit twins (the output head)
EXACT_ERROR = 1e-3  # largest reconstruction error (in units of a group's scale) counted as exact

_KERNEL_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_cpu_kernels = None  # lmrs.kernels.cpu, imported with the first PackedWeight (its THREADS setting)


def rust_quant_available() -> bool:
    """Whether the Rust quantized products run fast on this CPU (AVX512-BF16)."""
    try:
        from lmrs import _core
    except ImportError:
        return False
    return hasattr(_core, "cpu_quant_matmul") and _core.cpu_kernels_isa() == "avx512bf16"


class PackedWeight:
    """A Q4 or Q8 weight for `lmrs._core.cpu_quant_matmul`; y = x @ W.T + bias, in x's dtype
    (float32 / bfloat16 / float16). `error`: the largest reconstruction error of a weight in
    units of its group's scale (0 for an exact copy of a GGUF-quantized weight)."""

    accepts_float32 = True

    def __init__(self, w: torch.Tensor, bits: int, bias: torch.Tensor | None = None):
        global _cpu_kernels
        from lmrs import _core
        from lmrs.kernels import cpu as _cpu_kernels

        self._core = _core
        n, k = w.shape
        wf = w.detach().to(torch.float32).contiguous()
        self.packed = torch.empty(_core.cpu_quant_bytes(bits, n, k), dtype=torch.uint8)
        self.bias = None if bias is None else bias.detach().to(torch.float32).contiguous()
        self.error = _core.cpu_quant_pack(bits, wf.data_ptr(), n, k, self.packed.data_ptr())
        self.bits, self.out_features, self.in_features = bits, n, k
        self._ptrs = (self.packed.data_ptr(), self.bias.data_ptr() if self.bias is not None else 0)

    @property
    def nbytes(self) -> int:
        return self.packed.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.dtype not in _KERNEL_DTYPES or (x.stride(1) != 1 and x.shape[1] > 1):
            x = x.reshape(-1, x.shape[-1]).contiguous()
            if x.dtype not in _KERNEL_DTYPES:
                x = x.float()
        m = x.shape[0]
        code = _KERNEL_DTYPES[x.dtype]
        out = torch.empty((m, self.out_features), dtype=x.dtype)
        packed, bias = self._ptrs
        self._core.cpu_quant_matmul(self.bits, m, self.out_features, self.in_features, x.data_ptr(), x.stride(0), code,
                                    out.data_ptr(), self.out_features, code, packed, bias, _cpu_kernels.THREADS)
        return out


class Int8Weight:
    """PyTorch fallback: y = x @ (q * scale).T with q int8 [N, K] and one scale per output channel."""

    accepts_float32 = False

    def __init__(self, w: torch.Tensor, dtype: torch.dtype = torch.bfloat16, bias: torch.Tensor | None = None):
        wf = w.float()
        scale = (wf.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(dtype)
        self.dtype = dtype
        self.bias = None if bias is None else bias.to(dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.to(self.dtype), self.q, self.scale)
        return y if self.bias is None else y + self.bias


class Int4Weight:
    """PyTorch fallback: group-wise asymmetric int4, w = (q - 8) * scale + zero per group of 32
    input features, scale and zero in the activation dtype."""

    accepts_float32 = False

    def __init__(self, packed: torch.Tensor, scale_zero: torch.Tensor, out_features: int, bias=None):
        self.packed = packed
        self.scale_zero = scale_zero
        self.out_features = out_features
        self.bias = None if bias is None else bias.to(scale_zero.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(self.scale_zero.dtype), self.packed, INT4_GROUP,
                                                      self.scale_zero)
        return y if self.bias is None else y + self.bias


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


def try_int4(w: torch.Tensor, exact_only: bool, dtype: torch.dtype = torch.bfloat16, bias=None) -> Int4Weight | None:
    n, k = w.shape
    if k % INT4_GROUP or not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return None
    q, scale, zero, err = int4_codes(w)
    if exact_only and err > EXACT_ERROR:
        return None
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scale_zero = torch.stack([scale.t(), zero.t()], dim=-1).contiguous().to(dtype)  # [K/32, N, 2]
    return Int4Weight(packed, scale_zero, n, bias)


def quantize_linear(lin, mode: str) -> str:
    """Attach a quantized twin to `lin` (built from its checkpoint-precision `source` when kept);
    returns the format chosen ("int4", "int8" or "none"; "kept" for a weight kept quantized, which is its
    own small-batch path and gets no twin)."""
    from .quantized import QuantizedLinear

    if isinstance(lin, QuantizedLinear):
        return "kept"
    w = lin.weight
    if w.dtype not in (torch.bfloat16, torch.float16) or w.device.type != "cpu":
        return "none"
    src = lin.source if lin.source is not None else w
    n, k = src.shape
    if rust_quant_available() and k % INT4_GROUP == 0:
        if mode in ("auto", "int4"):
            q4 = PackedWeight(src, 4, lin.bias)
            if mode == "int4" or q4.error <= EXACT_ERROR:
                lin.quantized, lin.quantized_max_rows = q4, INT4_MAX_ROWS
                return "int4"
        if mode in ("auto", "int8"):
            lin.quantized, lin.quantized_max_rows = PackedWeight(src, 8, lin.bias), INT8_MAX_ROWS
            return "int8"
        return "none"
    if mode in ("auto", "int4"):
        q4 = try_int4(src, exact_only=(mode == "auto"), dtype=w.dtype, bias=lin.bias)
        if q4 is not None:
            lin.quantized, lin.quantized_max_rows = q4, INT4_MAX_ROWS
            return "int4"
    if mode in ("auto", "int8"):
        lin.quantized, lin.quantized_max_rows = Int8Weight(src, w.dtype, lin.bias), INT8_MAX_ROWS
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
