"""Rotary position embeddings: the frequency variants and the per-layer `RotaryEmbedding`.

Variants (`rope_scaling["rope_type"]`): default, linear, llama3, longrope (Phi-3 / Phi-4-mini:
short and long per-frequency factors and an attention scaling of cos and sin). Partial rotary
(`rotary_dim` < head_dim, Phi-4-mini) rotates only the first dimensions of each head; layers
without RoPE (SmolLM3's NoPE layers) simply have no `RotaryEmbedding`.

The frequencies match transformers' `ROPE_INIT_FUNCTIONS` bit for bit in float32, so float32 runs
reproduce Hugging Face logits exactly.

LongRoPE picks its short or long factors once per engine, like llama.cpp (by context size) and
vLLM: the long factors when sequences may grow beyond `original_max_position_embeddings` (the
engine's max_model_len is larger), the short ones otherwise. transformers decides per sequence and,
when a sequence grows past the original context, recomputes its whole KV cache with the long
factors; a paged, prefix-shared cache cannot re-rotate keys other sequences share, so lmrs never
mixes tables: it equals transformers for every sequence longer than the original context (and,
with max_model_len <= original context, for every sequence), and differs only for short sequences
served by an engine configured for long ones.
"""

from __future__ import annotations

import math

import torch

__all__ = ["default_inv_freq", "llama3_inv_freq", "inv_freq_for", "rotary_dim_for", "RotaryEmbedding",
           "longrope_attention_factor"]


def default_inv_freq(dim: int, theta: float) -> torch.Tensor:
    """1 / theta^(2i/dim), computed like transformers (int64 arange -> float32)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))


def llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1 frequency scaling: low frequencies divided by `factor`, high ones kept, smooth between."""
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
    high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
    old_context_len = float(scaling.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def longrope_inv_freq(dim: int, theta: float, factors) -> torch.Tensor:
    """1 / (factor_i * theta^(2i/dim)) (transformers' `_compute_longrope_parameters`)."""
    ext = torch.tensor(list(factors), dtype=torch.float32)
    shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (ext * theta ** shape)


def longrope_attention_factor(scaling: dict, max_position_embeddings: int) -> float:
    """The cos/sin scale of LongRoPE: `attention_factor` if given, else sqrt(1 + ln(s) / ln(orig))
    with s = factor (or max_position_embeddings / original_max_position_embeddings)."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    orig = int(scaling["original_max_position_embeddings"])
    factor = scaling.get("factor")
    factor = float(factor) if factor is not None else max_position_embeddings / orig
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))


def rotary_dim_for(head_dim: int, partial_rotary_factor: float = 1.0) -> int:
    """Rotated dimensions per head: int(head_dim * partial_rotary_factor) (transformers' rule)."""
    return int(head_dim * float(partial_rotary_factor))


def inv_freq_for(config, *, theta: float | None = None, scaling: dict | None | str = "config") -> torch.Tensor:
    """The RoPE inverse frequencies of `config` (float32, rotary_dim / 2 of them), optionally
    with another base `theta` or `scaling` (Gemma 3's local layers). LongRoPE returns the short
    factors' frequencies."""
    dim = rotary_dim_for(config.head_dim, getattr(config, "partial_rotary_factor", 1.0))
    theta = config.rope_theta if theta is None else theta
    scaling = config.rope_scaling if scaling == "config" else scaling
    if not scaling:
        return default_inv_freq(dim, theta)
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return default_inv_freq(dim, theta) / float(scaling["factor"])
    if kind == "llama3":
        return llama3_inv_freq(default_inv_freq(dim, theta), scaling)
    if kind == "longrope":
        return longrope_inv_freq(dim, theta, scaling["short_factor"])
    return default_inv_freq(dim, theta)


class RotaryEmbedding:
    """One RoPE variant of a model: its cos/sin table and how to rotate q and k with it.

    `cos_sin_cache` is float32 [positions, rotary_dim] ([cos | sin]). A LongRoPE embedding holds a
    short and a long table; `select_for_context(max_len)` picks one (see the module docstring).
    """

    def __init__(self, kernels, head_dim: int, inv_freq: torch.Tensor, max_positions: int, device, *,
                 is_neox: bool = True, attention_scaling: float = 1.0, long_inv_freq: torch.Tensor | None = None,
                 original_max_positions: int = 0):
        self.head_dim = head_dim
        self.rotary_dim = 2 * inv_freq.numel()
        self.is_neox = is_neox
        self.short_table = kernels.rope_cos_sin_cache(inv_freq, max_positions, attention_scaling).to(device).contiguous()
        self.long_table = None
        self.original_max_positions = int(original_max_positions)
        if long_inv_freq is not None:
            self.long_table = kernels.rope_cos_sin_cache(long_inv_freq, max_positions, attention_scaling).to(
                device).contiguous()
        self.cos_sin_cache = self.short_table
        self.select_for_context(max_positions)

    @property
    def partial(self) -> int | None:
        """`rotary_dim` for the kernels when it is not the whole head (None otherwise)."""
        return self.rotary_dim if self.rotary_dim != self.head_dim else None

    @property
    def uses_long_factors(self) -> bool:
        return self.long_table is not None and self.cos_sin_cache is self.long_table

    def select_for_context(self, max_len: int) -> None:
        """Size the tables for sequences of at most `max_len` tokens (rows beyond are freed: a
        131072-position table of 256 columns is 128 MiB), and for LongRoPE pick the long table when
        sequences may be longer than the original context."""
        if max_len < self.short_table.shape[0]:
            self.short_table = self.short_table[:max_len].clone()
            if self.long_table is not None:
                self.long_table = self.long_table[:max_len].clone()
        self.cos_sin_cache = self.short_table
        if self.long_table is not None and max_len > self.original_max_positions:
            self.cos_sin_cache = self.long_table

    @classmethod
    def for_config(cls, config, kernels, device, *, theta: float | None = None, scaling: dict | None | str = "config",
                   max_positions: int | None = None) -> "RotaryEmbedding":
        """The rotary embedding a config describes (or with another `theta` / `scaling`)."""
        scaling = config.rope_scaling if scaling == "config" else scaling
        max_positions = max_positions or config.max_position_embeddings
        inv = inv_freq_for(config, theta=theta, scaling=scaling)
        if scaling and scaling.get("rope_type") == "longrope":
            dim = 2 * inv.numel()
            theta_ = config.rope_theta if theta is None else theta
            return cls(kernels, config.head_dim, inv, max_positions, device,
                       attention_scaling=longrope_attention_factor(scaling, config.max_position_embeddings),
                       long_inv_freq=longrope_inv_freq(dim, theta_, scaling["long_factor"]),
                       original_max_positions=int(scaling["original_max_position_embeddings"]))
        return cls(kernels, config.head_dim, inv, max_positions, device)
