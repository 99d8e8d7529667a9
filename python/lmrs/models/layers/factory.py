"""`LayerFactory`: checkpoint tensors (Hugging Face names) -> layers on one device and dtype.

Family files build every projection, norm and embedding through it, so there is one place where
fused projections are made (q/k/v or gate/up rows concatenated into one `Linear`), where weights
are cast, and where each `Linear` keeps its checkpoint-precision `source` for weight-only
quantization (`lmrs.models.quant`). A quantized-weight variant slots in here.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..linear import SINGLE, ColumnParallelLinear, Linear, ParallelContext, RowParallelLinear
from .norm import HeadRMSNorm, RMSNorm

__all__ = ["LayerFactory"]


class LayerFactory:
    """Layers from `weights` (HF-named checkpoint tensors) in `dtype` on `device`."""

    def __init__(self, weights: Mapping[str, torch.Tensor], *, dtype: torch.dtype, device: torch.device | str,
                 kernels, eps: float, parallel: ParallelContext = SINGLE):
        self.weights = weights
        self.dtype = dtype
        self.device = torch.device(device)
        self.kernels = kernels
        self.eps = float(eps)
        self.parallel = parallel

    def has(self, name: str) -> bool:
        return name in self.weights

    def tensor(self, name: str) -> torch.Tensor:
        """A checkpoint tensor on the device, in its checkpoint dtype."""
        try:
            return self.weights[name].to(device=self.device)
        except KeyError:
            raise ValueError(f"the checkpoint has no tensor {name!r}") from None

    def _get(self, t: str | torch.Tensor) -> torch.Tensor:
        return self.tensor(t) if isinstance(t, str) else t.to(device=self.device)

    def fused(self, parts: Sequence[str | torch.Tensor], biases: Sequence[str | torch.Tensor] | None = None, *,
              row_parallel: bool = False) -> Linear:
        """One `Linear` whose output rows are the parts' rows, in order (q | k | v, gate | up);
        a single part is a plain projection. Column-parallel unless `row_parallel` (o_proj,
        down_proj: input features split across ranks, output all-reduced)."""
        ws = [self._get(p) for p in parts]
        weight = ws[0] if len(ws) == 1 else torch.cat(ws)
        bias = None
        if biases is not None:
            bs = [self._get(b) for b in biases]
            bias = bs[0] if len(bs) == 1 else torch.cat(bs)
        cls = RowParallelLinear if row_parallel else ColumnParallelLinear
        lin = cls(weight.to(self.dtype), None if bias is None else bias.to(self.dtype), self.parallel)
        lin.source = weight
        return lin

    def column(self, *parts: str | torch.Tensor, biases: Sequence[str | torch.Tensor] | None = None) -> Linear:
        """A column-parallel projection (fused when given several parts)."""
        return self.fused(parts, biases)

    def row(self, weight: str | torch.Tensor, bias: str | torch.Tensor | None = None) -> Linear:
        """A row-parallel projection (its output is all-reduced across ranks)."""
        return self.fused([weight], None if bias is None else [bias], row_parallel=True)

    def norm(self, name: str | torch.Tensor, *, offset: float = 0.0, eps: float | None = None) -> RMSNorm:
        return RMSNorm(self._get(name), self.eps if eps is None else eps, self.kernels, offset=offset,
                       dtype=self.dtype, device=self.device)

    def head_norm(self, name: str | torch.Tensor, *, offset: float = 0.0) -> HeadRMSNorm:
        return HeadRMSNorm(self._get(name), self.eps, self.kernels, offset=offset, dtype=self.dtype,
                           device=self.device)
