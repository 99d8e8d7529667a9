"""Paged KV cache tensors: per layer, K and V of shape [num_blocks, block_size, kv_heads, head_dim]."""

from __future__ import annotations

import re

import torch

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_bytes(value: int | float | str) -> int:
    """Bytes from 1073741824, "1GiB", "512MB", "2g"."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read a memory size from {value!r} (use e.g. 1073741824, '512MiB' or '2GiB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def bytes_per_block(num_layers: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * kv_heads * head_dim * elem


class KVCache:
    """One tensor holds every layer's K and V; `layers[i]` is layer i's (k_cache, v_cache) view."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: str | torch.device = "cpu"):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.storage = torch.zeros((num_layers, 2, num_blocks, block_size, kv_heads, head_dim), dtype=dtype, device=device)
        self.layers = [(self.storage[i, 0], self.storage[i, 1]) for i in range(num_layers)]

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()
