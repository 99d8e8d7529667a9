"""The token embedding (input) and the output head (logits), each in one place.

`TokenEmbedding` looks tokens up into the float32 residual stream, times an optional scale (Gemma:
sqrt(hidden_size), as a float32 scalar like transformers). `LMHead` turns final hidden states into
float32 logits: one product in float32; in 16-bit dtypes the product runs in that dtype and the
`REFINE_TOP` largest logits of each row are recomputed in float32 from float32 weights (so the
tokens that matter carry float32 precision); then optional final soft-capping (Gemma 2:
c * tanh(logit / c)). A tied head shares the embedding table.

Tensor parallel (`parallel.size > 1`): both are vocabulary-parallel. A rank keeps a contiguous block of
table rows (`lmrs.parallel.sharding.vocab_range`); the lookup zeroes the tokens outside its block and one
all-reduce sums the ranks' rows (exact: one non-zero term per token); the head computes its block of
logits (refined and soft-capped per block) and rank 0 gathers the blocks of the sampled rows only.

A table kept quantized (`QuantizedTensor`, in a 16-bit CPU model) is one copy that serves all three:
the lookup (exactly dequantized rows), the head's logits (the quantized product) and the float32
refinement of the top logits (from exactly dequantized rows); no float copy of it is made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..linear import SINGLE, Linear, ParallelContext
from ...parallel.sharding import vocab_range, vocab_widths
from ..quantized import QuantizedEmbedding, QuantizedTensor, keeps_quantized

__all__ = ["TokenEmbedding", "LMHead"]


class TokenEmbedding:
    """Token ids -> float32 hidden states (the residual stream), optionally scaled."""

    def __init__(self, weight: torch.Tensor, *, dtype: torch.dtype, device: torch.device | str,
                 scale: float | None = None, parallel: ParallelContext = SINGLE):
        device = torch.device(device)
        self.device = device
        self.scale = None if scale is None else torch.tensor(float(scale), dtype=torch.float32, device=device)
        self.parallel = parallel
        self.vocab_size = int(weight.shape[0])
        #: this rank's table rows [vocab_start, vocab_start + vocab_count) (all of them on one rank)
        self.vocab_start, self.vocab_count = vocab_range(self.vocab_size, parallel.size, parallel.rank)
        #: the table kept quantized (lookup, tied head and refinement all read it), or None
        self.quantized: QuantizedEmbedding | None = None
        if isinstance(weight, QuantizedTensor):
            if keeps_quantized(dtype, device) and parallel.size == 1:
                self.quantized = QuantizedEmbedding(weight)
                self.source = self.table = self.table_f32 = None
                return
            weight = weight.dequantize()  # the float32 reference (or another device): a float table
        if parallel.size > 1:
            weight = weight.narrow(0, self.vocab_start, self.vocab_count)
        self.source = weight  # checkpoint tensor (for a tied head's quantization source)
        self.table = weight.to(device=device, dtype=dtype).contiguous()  # model dtype (a tied head reads it)
        # float32 copy for the residual stream when the model runs in 16 bits
        self.table_f32 = (weight.to(device=device, dtype=torch.float32).contiguous()
                          if dtype != torch.float32 else None)

    @property
    def float32_table(self) -> torch.Tensor:
        return self.table_f32 if self.table_f32 is not None else self.table

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            x = self.quantized(input_ids)
        elif self.parallel.size > 1:
            local = input_ids - self.vocab_start
            outside = (local < 0) | (local >= self.vocab_count)
            x = F.embedding(local.masked_fill(outside, 0), self.float32_table)
            x = self.parallel.all_reduce(x.masked_fill_(outside.unsqueeze(-1), 0.0))
        else:
            x = F.embedding(input_ids, self.float32_table)
        return x * self.scale if self.scale is not None else x


class LMHead:
    """Final hidden states -> float32 logits (with float32 refinement and soft-capping)."""

    REFINE_TOP = 32

    def __init__(self, linear: Linear, kernels, *, dtype: torch.dtype, head_f32: torch.Tensor | None = None,
                 soft_cap: float | None = None, quantized: QuantizedEmbedding | None = None,
                 parallel: ParallelContext = SINGLE, vocab_size: int = 0):
        self.parallel = parallel
        #: the ranks' logits block widths (vocabulary-parallel head; rank 0 gathers them)
        self.widths = vocab_widths(vocab_size, parallel.size) if parallel.distributed else None
        self.linear = linear
        self.kernels = kernels
        self.dtype = dtype
        self.head_f32 = head_f32 if dtype != torch.float32 else None  # float32 weights for refinement
        self.soft_cap = float(soft_cap) if soft_cap else 0.0
        #: the head's table kept quantized (logits and refinement from it; `linear` is its QuantizedLinear)
        self.quantized = quantized

    @classmethod
    def build(cls, embedding: TokenEmbedding, weight: torch.Tensor | QuantizedTensor | None, kernels, *,
              dtype: torch.dtype, soft_cap: float | None = None, parallel: ParallelContext = SINGLE) -> "LMHead":
        """A head with its own `weight` [vocab, hidden], or tied to `embedding` when weight is None
        (with several ranks: this rank's block of vocabulary rows, like the embedding's)."""
        table = None
        if parallel.size > 1 and weight is not None:
            if isinstance(weight, QuantizedTensor):
                weight = weight.dequantize()
            weight = weight.narrow(0, embedding.vocab_start, embedding.vocab_count).contiguous()
        if weight is None and embedding.quantized is not None:
            table = embedding.quantized
        elif isinstance(weight, QuantizedTensor):
            if keeps_quantized(dtype, embedding.device):
                table = QuantizedEmbedding(weight)
            else:
                weight = weight.dequantize()
        if table is not None:
            return cls(table.head(), kernels, dtype=dtype, soft_cap=soft_cap, quantized=table, parallel=parallel,
                       vocab_size=embedding.vocab_size)
        if weight is None:
            lin = Linear(embedding.table)
            lin.source = embedding.source
            head_f32 = embedding.float32_table if dtype != torch.float32 else None
        else:
            lin = Linear(weight.to(device=embedding.device, dtype=dtype))
            lin.source = weight
            head_f32 = (weight.to(device=embedding.device, dtype=torch.float32).contiguous()
                        if dtype != torch.float32 else None)
        return cls(lin, kernels, dtype=dtype, head_f32=head_f32, soft_cap=soft_cap, parallel=parallel,
                   vocab_size=embedding.vocab_size)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """float32 logits [rows, vocab] for final hidden states (float32 [rows, hidden]); with several
        ranks, rank 0 gets the gathered logits and the other ranks None."""
        rows = hidden.shape[0]
        x = hidden.float() if self.linear.accepts_float32(rows) else hidden.to(self.dtype)
        if self.quantized is not None:
            logits = self.quantized.logits(x)
            self.quantized.refine_top_logits(logits, hidden, self.REFINE_TOP)
        else:
            logits = self.linear(x).float()
        if self.head_f32 is not None:
            logits = self.kernels.refine_top_logits(logits, hidden.float().contiguous(), self.head_f32,
                                                    self.REFINE_TOP)
        if self.soft_cap:
            logits = logits.div_(self.soft_cap).tanh_().mul_(self.soft_cap)
        if self.widths is not None:
            return self.parallel.gather_columns(logits, self.widths)
        return logits
