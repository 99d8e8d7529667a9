"""Self-attention over the paged KV cache.

`SelfAttention` is the whole attention sub-block of a decoder layer:

    fused qkv projection -> [per-head q/k RMSNorm] -> [RoPE] -> K/V into the paged cache
    -> paged attention (scale, sliding window, logit soft-cap) -> o_proj

Every row of a step runs at once (prefill chunks and decodes in one varlen batch). The RoPE and the
cache write are one fused kernel call (`rotary_embedding_and_cache`); a layer without RoPE
(SmolLM3's NoPE layers) writes K/V directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..linear import Linear
from .norm import HeadRMSNorm
from .rotary import RotaryEmbedding
from .step import StepContext

__all__ = ["AttentionSpec", "SelfAttention"]


@dataclass(frozen=True)
class AttentionSpec:
    """The shape and options of one layer's attention."""

    num_heads: int  # query heads (this rank's)
    num_kv_heads: int  # key/value heads (this rank's)
    head_dim: int
    scale: float  # multiplies q.k (1/sqrt(head_dim) unless the family says otherwise)
    sliding_window: int = 0  # W > 0: a query sees its last W keys (itself included); 0: all
    soft_cap: float = 0.0  # c > 0: scores become c * tanh(score / c) (Gemma 2)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


class SelfAttention:
    """qkv_proj output [q | k | v] -> attention -> o_proj, for one layer."""

    def __init__(self, spec: AttentionSpec, qkv_proj: Linear, o_proj: Linear, kernels, *,
                 rotary: RotaryEmbedding | None = None, q_norm: HeadRMSNorm | None = None,
                 k_norm: HeadRMSNorm | None = None):
        expected = spec.q_size + 2 * spec.kv_size
        if qkv_proj.out_features != expected:
            raise ValueError(f"qkv projection has {qkv_proj.out_features} outputs, the heads need {expected}")
        self.spec = spec
        self.qkv_proj = qkv_proj
        self.o_proj = o_proj
        self.kernels = kernels
        self.rotary = rotary
        self.q_norm = q_norm
        self.k_norm = k_norm

    def linears(self) -> list[Linear]:
        return [self.qkv_proj, self.o_proj]

    def __call__(self, x: torch.Tensor, step: StepContext, kv_cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        s, k = self.spec, self.kernels
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        if self.q_norm is not None:
            self.q_norm.apply_(qkv[:, : s.q_size], s.num_heads)
        if self.k_norm is not None:
            self.k_norm.apply_(qkv[:, s.q_size : s.q_size + s.kv_size], s.num_kv_heads)
        k_cache, v_cache = kv_cache
        attn = step.attn
        rot = self.rotary
        if rot is not None:  # q rotated in place, k rotated straight into the cache
            k.rotary_embedding_and_cache(step.positions, qkv, s.num_heads, s.num_kv_heads, s.head_dim,
                                         rot.cos_sin_cache, rot.is_neox, k_cache, v_cache, attn.slot_mapping,
                                         rotary_dim=rot.partial)
        else:
            kv = qkv[:, s.q_size :]
            k.reshape_and_cache(kv[:, : s.kv_size].reshape(t, s.num_kv_heads, s.head_dim),
                                kv[:, s.kv_size :].reshape(t, s.num_kv_heads, s.head_dim),
                                k_cache, v_cache, attn.slot_mapping)
        q = qkv[:, : s.q_size]
        # a window no sequence of this step outgrows changes nothing: full attention (faster kernels)
        window = s.sliding_window if s.sliding_window and attn.max_seq_len > s.sliding_window else 0
        o = k.paged_attention(
            q.view(t, s.num_heads, s.head_dim), k_cache, v_cache, attn.block_table, attn.seq_lens,
            attn.query_start_loc, attn.num_decode_rows, s.scale, attn.max_query_len, attn.max_seq_len,
            sliding_window=window, soft_cap=s.soft_cap,
        )
        return self.o_proj(o.reshape(t, s.q_size))
