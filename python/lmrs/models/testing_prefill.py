"""A model's logits at every position of a prompt, prefilled in one chunk through a paged KV cache made
for it: the reference forward pass the model tests compare against Hugging Face and against each other."""

from __future__ import annotations

import torch

from lmrs.models.attention_metadata import AttentionMetadata
from lmrs.runner.kv_cache import KVCache

__all__ = ["prefill_logits"]

BLOCK_SIZE = 16


def prefill_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits (one row per position of `ids`) of a built model (`lmrs.models.registry.build_model`), the
    prompt prefilled at once into blocks 1.. of a fresh cache in the model's dtype (block 0 left unused,
    so a kernel that reads it by mistake reads zeros, not the prompt)."""
    cfg = model.config
    n = len(ids)
    blocks = -(-n // BLOCK_SIZE)
    kv = KVCache(cfg.num_hidden_layers, blocks + 1, BLOCK_SIZE, model.num_kv_heads, cfg.head_dim, model.dtype)
    attn = AttentionMetadata(slot_mapping=torch.arange(BLOCK_SIZE, BLOCK_SIZE + n, dtype=torch.int32),
                             block_table=torch.arange(1, blocks + 1, dtype=torch.int32).unsqueeze(0),
                             seq_lens=torch.tensor([n], dtype=torch.int32),
                             query_start_loc=torch.tensor([0, n], dtype=torch.int32), num_decode_rows=0,
                             max_query_len=n, max_seq_len=n)
    with torch.inference_mode():
        hidden = model.forward(torch.tensor(ids, dtype=torch.int32), torch.arange(n, dtype=torch.int32), attn,
                               kv.layers)
        return model.compute_logits(hidden)
