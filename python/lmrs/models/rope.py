"""Rotary position embedding frequencies, with Hugging Face's default, linear and Llama-3 scaling.

The values match transformers' `ROPE_INIT_FUNCTIONS` bit for bit in float32, so float32 runs
reproduce Hugging Face logits exactly.
"""

from __future__ import annotations

import math

import torch

from .config import ModelConfig


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """1 / theta^(2i/d), computed like transformers (int64 arange -> float32)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim))


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


def inv_freq_for(config: ModelConfig) -> torch.Tensor:
    """The model's RoPE inverse frequencies (float32, head_dim / 2 of them)."""
    inv = default_inv_freq(config.head_dim, config.rope_theta)
    scaling = config.rope_scaling
    if not scaling:
        return inv
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind == "llama3":
        return llama3_inv_freq(inv, scaling)
    return inv
