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
from ...parallel.sharding import even_range, head_shard
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
              row_parallel: bool = False, shards: Sequence[tuple[int, int]] | None = None,
              reduce: bool = True) -> Linear | QuantizedLinear:
        """One `Linear` whose output rows are the parts' rows, in order (q | k | v, gate | up);
        a single part is a plain projection. Column-parallel unless `row_parallel` (o_proj,
        down_proj: input features split across ranks, output all-reduced unless `reduce` is False).
        `shards`: with several ranks, this rank's (start, count) rows of each part (column) or the
        one (start, count) column range (row); default an even split. Parts kept quantized
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
        bs = None if biases is None else [self._get(b) for b in biases]
        ctx = self.parallel
        if ctx.size > 1:
            ws, bs = self._slice(ws, bs, row_parallel, shards)
        weight = ws[0] if len(ws) == 1 else torch.cat(ws)
        bias = None if bs is None else (bs[0] if len(bs) == 1 else torch.cat(bs))
        if row_parallel:
            lin = RowParallelLinear(weight.to(self.dtype), None if bias is None else bias.to(self.dtype), ctx,
                                    reduce=reduce)
        else:
            lin = ColumnParallelLinear(weight.to(self.dtype), None if bias is None else bias.to(self.dtype), ctx)
        lin.source = weight  # this rank's slice: a quantized twin is built per shard
        return lin

    def _slice(self, ws, bs, row_parallel: bool, shards):
        """This rank's slices of the parts (and biases) of a projection."""
        ctx = self.parallel
        if row_parallel:
            start, count = shards[0] if shards else even_range(ws[0].shape[1], ctx.size, ctx.rank,
                                                                 "the input features of a row-parallel projection")
            return [w.narrow(1, start, count).contiguous() for w in ws], bs  # the bias is whole (rank 0 adds it)
        if shards is None:
            shards = [even_range(w.shape[0], ctx.size, ctx.rank, "the output features of a column-parallel "
                                 "projection") for w in ws]
        ws = [w.narrow(0, a, n).contiguous() for w, (a, n) in zip(ws, shards)]
        if bs is not None:
            bs = [b.narrow(0, a, n).contiguous() for b, (a, n) in zip(bs, shards)]
        return ws, bs

    def column(self, *parts: str | torch.Tensor, biases: Sequence[str | torch.Tensor] | None = None) -> Linear:
        """A column-parallel projection (fused when given several parts), each part split evenly."""
        return self.fused(parts, biases)

    def qkv(self, q, k, v, biases=None, *, num_heads: int, num_kv_heads: int, head_dim: int) -> Linear:
        """The fused q | k | v projection of this rank's heads (`lmrs.parallel.sharding.head_shard`)."""
        hs = head_shard(num_heads, num_kv_heads, self.parallel.size, self.parallel.rank)
        kv = (hs.kv_start * head_dim, hs.kv_count * head_dim)
        return self.fused([q, k, v], biases, shards=[(hs.q_start * head_dim, hs.q_count * head_dim), kv, kv])

    def row(self, weight: str | torch.Tensor, bias: str | torch.Tensor | None = None, *,
            columns: tuple[int, int] | None = None, reduce: bool = True) -> Linear:
        """A row-parallel projection (its output is all-reduced across ranks unless `reduce` is False);
        `columns`: this rank's (start, count) input features (default an even split)."""
        return self.fused([weight], None if bias is None else [bias], row_parallel=True,
                          shards=None if columns is None else [columns], reduce=reduce)

    def o_proj(self, weight: str | torch.Tensor, bias=None, *, num_heads: int, num_kv_heads: int,
               head_dim: int) -> Linear:
        """The attention output projection over this rank's query heads."""
        hs = head_shard(num_heads, num_kv_heads, self.parallel.size, self.parallel.rank)
        return self.row(weight, bias, columns=(hs.q_start * head_dim, hs.q_count * head_dim))

    def norm(self, name: str | torch.Tensor, *, offset: float = 0.0, eps: float | None = None) -> RMSNorm:
        return RMSNorm(self._get(name), self.eps if eps is None else eps, self.kernels, offset=offset,
                       dtype=self.dtype, device=self.device)

    def head_norm(self, name: str | torch.Tensor, *, offset: float = 0.0) -> HeadRMSNorm:
        return HeadRMSNorm(self._get(name), self.eps, self.kernels, offset=offset, dtype=self.dtype,
                           device=self.device)
