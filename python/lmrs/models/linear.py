"""Linear layers with the tensor-parallel seam kept visible.

`ColumnParallelLinear` splits its output features across ranks (q/k/v, gate/up); `RowParallelLinear`
splits its input features and all-reduces its output (o_proj, down_proj). With `tp_size == 1`
(the only size the engine runs today) both are a plain `x @ W.T (+ b)`; the sharding code below
is what `--tp N` will use once the rank processes exist.

Each layer can also hold a weight-only quantized copy for small batches (`lmrs.models.quant`),
picked per call by the number of rows; the Rust twins take float32 activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ParallelContext:
    """This process's place in the tensor-parallel group."""

    rank: int = 0
    size: int = 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        torch.distributed.all_reduce(x)
        return x


SINGLE = ParallelContext()


class Linear:
    """y = x @ W.T (+ b), W [out, in] in the compute dtype, optionally with a quantized twin."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight.contiguous()
        self.bias = None if bias is None else bias.contiguous()
        self.quantized = None  # set by lmrs.models.quant.quantize_linear
        self.quantized_max_rows = 0
        self.source: torch.Tensor | None = None  # checkpoint-precision weight, until quantization is done
        self.packed = None  # oneDNN-prepacked weight (bfloat16 / float16 on the CPU), see prepack()

    def prepack(self) -> bool:
        """Reorder the weight once into oneDNN's blocked layout (CPU, 16-bit dtypes), so products do
        not re-layout it on every call: about 1.5-2x faster at batch 8-32 on AMX machines."""
        w = self.weight
        if w.device.type != "cpu" or w.dtype not in (torch.bfloat16, torch.float16) or not hasattr(torch.ops, "mkldnn"):
            return False
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 32)
            probe = torch.zeros(2, w.shape[1], dtype=w.dtype)
            torch.ops.mkldnn._linear_pointwise(probe, packed, self.bias, "none", [], "")
        except (RuntimeError, AttributeError):
            return False
        self.packed = packed
        return True

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def accepts_float32(self, rows: int) -> bool:
        """Whether a product of `rows` rows runs on a quantized twin that takes float32
        activations (and then returns float32)."""
        q = self.quantized
        return q is not None and rows <= self.quantized_max_rows and q.accepts_float32

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantized
        if q is not None and x.shape[0] <= self.quantized_max_rows:
            return q(x)  # the twin adds the bias
        if x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class ColumnParallelLinear(Linear):
    """Output features split across ranks: rank r keeps rows [r*out/size, (r+1)*out/size)."""

    def __init__(self, weight, bias=None, ctx: ParallelContext = SINGLE):
        super().__init__(shard(weight, 0, ctx), None if bias is None else shard(bias, 0, ctx))
        self.ctx = ctx


class RowParallelLinear(Linear):
    """Input features split across ranks; partial outputs are summed with an all-reduce."""

    def __init__(self, weight, bias=None, ctx: ParallelContext = SINGLE):
        super().__init__(shard(weight, 1, ctx), bias if ctx.rank == 0 else None)
        self.ctx = ctx

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.ctx.all_reduce(super().__call__(x))


def shard(t: torch.Tensor, dim: int, ctx: ParallelContext) -> torch.Tensor:
    """This rank's slice of `t` along `dim` (the whole tensor when tp_size == 1)."""
    if ctx.size == 1:
        return t
    n = t.shape[dim]
    if n % ctx.size:
        raise ValueError(f"dimension {n} is not divisible by the tensor-parallel size {ctx.size}")
    step = n // ctx.size
    return t.narrow(dim, ctx.rank * step, step).contiguous()
