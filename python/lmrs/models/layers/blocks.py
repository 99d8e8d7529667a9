"""Decoder blocks: how a layer chains its norms, attention and MLP around the residual stream.

A block takes (hidden, residual) and returns (hidden, residual): `hidden` is what the previous
block produced and has not yet been added to the float32 `residual` stream (None before the first
block), so each add is fused with the norm that follows it (`RMSNorm.add_and_norm`).

- `PreNormBlock` (Llama, Mistral, Qwen, Phi-3, SmolLM3, InternLM2):
  x + attn(norm(x)), then x + mlp(norm(x)).
- `SandwichBlock` (Gemma 2 / 3): pre and post norms around both sub-blocks:
  x + post_attn_norm(attn(input_norm(x))), then x + post_ffw_norm(mlp(pre_ffw_norm(x))).
"""

from __future__ import annotations

import torch

from ..linear import Linear
from .attention import SelfAttention
from .norm import RMSNorm
from .step import StepContext

__all__ = ["PreNormBlock", "SandwichBlock"]


class PreNormBlock:
    """input_norm -> attention -> (add) post_attention_norm -> mlp (a GatedMLP or SparseMoE)."""

    def __init__(self, input_norm: RMSNorm, attn: SelfAttention, post_attention_norm: RMSNorm, mlp):
        self.input_norm = input_norm
        self.attn = attn
        self.post_attention_norm = post_attention_norm
        self.mlp = mlp

    def linears(self) -> list[Linear]:
        return [*self.attn.linears(), *self.mlp.linears()]

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None, step: StepContext, kv_cache):
        cd = step.compute_dtype
        if residual is None:
            residual, h = x, self.input_norm(x, cd)
        else:
            h, residual = self.input_norm.add_and_norm(x, residual, cd)
        a = self.attn(h, step, kv_cache)
        h, residual = self.post_attention_norm.add_and_norm(a, residual, cd)
        return self.mlp(h), residual


class SandwichBlock:
    """Gemma's block: every sub-block's output is normalized before it joins the residual."""

    def __init__(self, input_norm: RMSNorm, attn: SelfAttention, post_attention_norm: RMSNorm,
                 pre_feedforward_norm: RMSNorm, mlp, post_feedforward_norm: RMSNorm):
        self.input_norm = input_norm
        self.attn = attn
        self.post_attention_norm = post_attention_norm
        self.pre_feedforward_norm = pre_feedforward_norm
        self.mlp = mlp
        self.post_feedforward_norm = post_feedforward_norm

    def linears(self) -> list[Linear]:
        return [*self.attn.linears(), *self.mlp.linears()]

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None, step: StepContext, kv_cache):
        cd = step.compute_dtype
        if residual is None:
            residual, h = x, self.input_norm(x, cd)
        else:
            h, residual = self.input_norm.add_and_norm(x, residual, cd)
        a = self.post_attention_norm(self.attn(h, step, kv_cache), torch.float32)
        h, residual = self.pre_feedforward_norm.add_and_norm(a, residual, cd)
        return self.post_feedforward_norm(self.mlp(h), torch.float32), residual
