"""Mixture-of-experts MLP block (Qwen3-MoE, and any top-k softmax-routed family).

    router logits (float32) -> softmax -> top-k experts per token [-> renormalize (norm_topk_prob)]
    -> tokens sorted by expert -> one grouped product per expert that got tokens (gate_up, act, down)
    -> outputs times routing weights -> back in token order -> sum over each token's k experts

The work is grouped by expert (a loop over the experts that received tokens, each running one
matrix product over all of its tokens), never a loop over tokens. The order of operations follows
transformers' `grouped_mm` experts path (sort by expert, weight, restore, sum over k), so float32
results agree with it to the last bits. The router, the routing weights and the sum over experts run
in float32 whatever the model dtype (the block returns float32, which joins the float32 residual):
expert choices near a tie do not flip with the activation precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..linear import SINGLE, Linear, ParallelContext
from .mlp import activation_op

__all__ = ["SparseMoE"]


class SparseMoE:
    """Top-k routed experts; each expert is a gated MLP (fused gate_up, down)."""

    def __init__(self, router_weight: torch.Tensor, gate_up: list[Linear], down: list[Linear], kernels, *,
                 top_k: int, norm_topk_prob: bool, activation: str = "silu", parallel: ParallelContext = SINGLE):
        if not (len(gate_up) == len(down) == router_weight.shape[0]):
            raise ValueError(f"router has {router_weight.shape[0]} experts but {len(gate_up)} gate_up and "
                             f"{len(down)} down projections were given")
        if not 0 < top_k <= len(gate_up):
            raise ValueError(f"top_k must be in [1, {len(gate_up)}], got {top_k}")
        self.router = router_weight.float().contiguous()
        self.gate_up = gate_up
        self.down = down
        self.top_k = int(top_k)
        self.norm_topk_prob = bool(norm_topk_prob)
        self.act_and_mul = activation_op(kernels, activation)
        # tensor parallel: every rank routes the same tokens to the same experts, each computes its slice
        # of every expert's intermediate features; the block's float32 output is summed by one all-reduce
        self.parallel = parallel

    @property
    def num_experts(self) -> int:
        return len(self.gate_up)

    def linears(self) -> list[Linear]:
        return [*self.gate_up, *self.down]

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights float32 [T, k], expert ids int64 [T, k]) for hidden states x [T, H]."""
        probs = torch.softmax(F.linear(x.float(), self.router), dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, ids

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t, h = x.shape
        k = self.top_k
        weights, ids = self.route(x)
        flat = ids.reshape(-1)
        sorted_ids, perm = torch.sort(flat)
        counts = torch.bincount(sorted_ids, minlength=self.num_experts).tolist()  # one host sync per layer
        tokens = x[perm // k]
        outs = []
        start = 0
        for e, n in enumerate(counts):
            if n:
                seg = tokens[start : start + n]
                outs.append(self.down[e](self.act_and_mul(self.gate_up[e](seg))))
                start += n
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        # routing weights and the sum over experts in float32 (one rounding fewer in 16-bit runs;
        # the same operations as transformers' in float32)
        out = out.float() * weights.reshape(-1)[perm].unsqueeze(-1)
        restored = torch.empty_like(out)
        restored[perm] = out
        return self.parallel.all_reduce(restored.view(t, k, h).sum(dim=1))
