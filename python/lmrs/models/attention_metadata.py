"""Per-step attention inputs, built by the model runner from a StepPlan (see src/plan.rs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Where each token's K/V goes and where each row's context is, for one forward pass."""

    slot_mapping: torch.Tensor  # int32 [T]: flat KV slot of each input token
    block_table: torch.Tensor  # int32 [B, max_blocks]: each row's blocks (0-padded)
    seq_lens: torch.Tensor  # int32 [B]: KV length of each row after this step
    query_start_loc: torch.Tensor  # int32 [B + 1]: row r's tokens are [qsl[r], qsl[r+1])
    num_decode_rows: int  # leading rows with exactly one query token
    max_query_len: int
    max_seq_len: int
