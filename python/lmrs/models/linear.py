"""Linear layers with the tensor-parallel seam kept visible.

`ColumnParallelLinear` holds this rank's output features (q/k/v heads, gate/up rows); `RowParallelLinear`
holds this rank's input features and all-reduces its output (o_proj, down_proj): one all-reduce per
row-parallel layer. Which rows / columns a rank keeps is decided by `LayerFactory` with the ranges of
`lmrs.parallel.sharding` (heads may split unevenly: SmolLM2's 3 KV heads on 2 ranks); the weights
given here are already this rank's slice. With one rank both are a plain `x @ W.T (+ b)`.

Each layer can also hold a weight-only quantized copy for small batches (`lmrs.models.quant`),
picked per call by the number of rows; the Rust twins take float32 activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ParallelContext:
    """This process's place in the tensor-parallel group."""

    rank: int = 0  # this rank (0 runs the server, the Rust core and the sampler)
    size: int = 1  # ranks in the group (--tp)
    # the torch.distributed group the model's collectives run on; None: not distributed (no collective
    # at all). A one-rank group still runs them (the NCCL single-rank check on a GPU).
    group: Any = None

    @property
    def distributed(self) -> bool:
        return self.group is not None

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of `x` over the ranks, in place."""
        if self.group is None:
            return x
        torch.distributed.all_reduce(x, group=self.group)
        return x

    def gather_columns(self, x: torch.Tensor, widths: list[int]) -> torch.Tensor | None:
        """Rank 0: the ranks' column blocks of x [rows, widths[r]] side by side [rows, sum(widths)];
        other ranks: None (they only send). Blocks are padded to the widest for the collective."""
        if self.group is None:
            return x
        wide = max(widths)
        mine = x if x.shape[1] == wide else torch.nn.functional.pad(x, (0, wide - x.shape[1]))
        mine = mine.contiguous()
        bufs = [torch.empty_like(mine) for _ in range(self.size)] if self.rank == 0 else None
        torch.distributed.gather(mine, bufs, dst=0, group=self.group)
        if self.rank != 0:
            return None
        return torch.cat([b[:, :w] for b, w in zip(bufs, widths)], dim=1)


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
    """This rank's output features (already sliced by the factory); no communication."""

    def __init__(self, weight, bias=None, ctx: ParallelContext = SINGLE):
        super().__init__(weight, bias)
        self.ctx = ctx


class RowParallelLinear(Linear):
    """This rank's input features (already sliced); the partial outputs are summed with one all-reduce.
    The bias is added by rank 0 only (so the sum holds it once). `reduce=False` leaves the sum to the
    caller (MoE experts: one all-reduce for the whole block)."""

    def __init__(self, weight, bias=None, ctx: ParallelContext = SINGLE, *, reduce: bool = True):
        super().__init__(weight, bias if ctx.rank == 0 else None)
        self.ctx = ctx
        self.reduce = reduce

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = super().__call__(x)
        return self.ctx.all_reduce(y) if self.reduce else y
