"""`StepContext`: what every layer of one forward pass shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..attention_metadata import AttentionMetadata


@dataclass
class StepContext:
    """One forward pass: the tokens' positions, the attention metadata, the compute dtype of the
    activations fed to the projections, and a scratch dict for values a layer derives once per
    step and the others reuse."""

    positions: torch.Tensor  # int32 [T]: position of each input token in its sequence
    attn: AttentionMetadata  # slots, block table, sequence lengths, query start offsets
    compute_dtype: torch.dtype  # dtype of the projections' inputs this step (float32 or the model dtype)
    cache: dict = field(default_factory=dict)  # per-step derived values, keyed by their producer

    @property
    def num_tokens(self) -> int:
        return self.positions.shape[0]
