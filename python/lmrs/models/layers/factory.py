"""`LayerFactory`: checkpoint tensors (Hugging Face names) -> layers on one device and dtype.

Family files build every projection, norm and embedding through it, so there is one place where
fused projections are made (q/k/v or gate/up rows concatenated into one `Linear`), where weights
are cast, and where each `Linear` keeps its checkpoint-precision `source` for weight-only
quantization (`lmrs.models.quant`).

Weights kept quantized (`lmrs.models.quantized.QuantizedTensor`, from a GGUF loaded with
``keep_quantized``) become `QuantizedLinear` projections (one copy, no float weight, no twin) when the
model runs in a 16-bit dtype on the CPU; in float32 (the exactness reference) or on another device
they are dequantized here, as is a fused projection that mixes quantized and float parts.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..linear import SINGLE, ColumnParallelLinear, Linear, ParallelContext, RowParallelLinear
from ..quantized import QuantizedLinear, QuantizedTensor, keeps_quantized
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
        #: weights kept quantized run as they are (16-bit dtype on the CPU, one tensor-parallel rank)
        self.keep_quantized = keeps_quantized(dtype, self.device) and parallel.size == 1

    def has(self, name: str) -> bool:
        return name in self.weights

    def weight(self, name: str) -> torch.Tensor | QuantizedTensor:
        """A checkpoint weight as stored: a QuantizedTensor when kept quantized and this model runs it so,
        else a tensor on the device (a quantized one dequantized to float32)."""
        try:
            w = self.weights[name]
        except KeyError:
            raise ValueError(f"the checkpoint has no tensor {name!r}") from None
        return self._get(w)

    def tensor(self, name: str) -> torch.Tensor:
        """A checkpoint tensor on the device, in its checkpoint dtype (float32 for a quantized weight)."""
        w = self.weight(name)
        return w if isinstance(w, torch.Tensor) else w.dequantize()

    def _get(self, t):
        """A tensor on the device; a weight kept quantized (a QuantizedTensor, or a family's holder of
        quantized parts with a `dequantize()`) as it is when this model runs it so, else dequantized."""
        if isinstance(t, str):
            return self.weight(t)
        if isinstance(t, torch.Tensor):
            return t.to(device=self.device)
        return t if self.keep_quantized else t.dequantize().to(device=self.device)

    def fused(self, parts: Sequence[str | torch.Tensor | QuantizedTensor],
              biases: Sequence[str | torch.Tensor] | None = None, *,
              row_parallel: bool = False) -> Linear | QuantizedLinear:
        """One `Linear` whose output rows are the parts' rows, in order (q | k | v, gate | up);
        a single part is a plain projection. Column-parallel unless `row_parallel` (o_proj,
        down_proj: input features split across ranks, output all-reduced). Parts kept quantized
        give a `QuantizedLinear` (its segments may differ in type: Q4_K q/k with a Q6_K v)."""
        ws = [self._get(p) for p in parts]
        quantized = [isinstance(w, QuantizedTensor) for w in ws]
        if all(quantized):
            bias = None
            if biases is not None:
                bs = [self.tensor(b) if isinstance(b, str) else b for b in biases]
                bias = torch.cat([b.float().reshape(-1) for b in bs])
            return QuantizedLinear(ws, bias)
        if any(quantized):  # a float part next to quantized ones: this projection is dense
            ws = [w.dequantize().to(device=self.device) if q else w for w, q in zip(ws, quantized)]
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
