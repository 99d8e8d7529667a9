"""The kernel backend interface: what a model may call, and nothing else.

A backend is a module (`reference`, `cpu`, `cuda`) that provides every op below. Each backend owns
its fallbacks: where its own kernels do not cover a call (another dtype, an odd layout, a sliding
window, partial rotary...) it runs the `reference` op itself, so model code never imports
`reference` and never probes a backend with `getattr`. Matrix products are not kernels: they stay
with PyTorch (`lmrs.models.linear.Linear`).

The ops come in two groups:

- required ops (`KernelBackend`): the building blocks every model uses;
- fused ops (`FusedKernels`): one call doing the work of several required ones, faster where a
  backend has a real kernel for it. Every backend still provides them (the reference composes the
  required ops), so a model calls them unconditionally.

Shapes and semantics are documented in `lmrs.kernels.reference` (the ground truth the other
backends are tested against).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["KernelBackend", "FusedKernels", "Backend", "REQUIRED_OPS", "FUSED_OPS", "missing_ops"]


@runtime_checkable
class KernelBackend(Protocol):
    """Required ops. T tokens, B rows, Hq/Hk query/KV heads, D head dim, R rotary dims."""

    NAME: str

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """RMSNorm over the last dim in float32, returned in `out_dtype` (default x's dtype)."""

    def fused_add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                           out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """residual += x (in place); returns (rms_norm(residual), residual)."""

    def rope_cos_sin_cache(self, inv_freq: torch.Tensor, max_positions: int,
                           attention_scaling: float = 1.0) -> torch.Tensor:
        """float32 [max_positions, R]: [cos | sin] of position * inv_freq (times attention_scaling)."""

    def rotary_embedding(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         cos_sin_cache: torch.Tensor, head_dim: int, is_neox: bool = True, *,
                         rotary_dim: int | None = None) -> None:
        """Rotate the first `rotary_dim` dims of each head of q [T, Hq*D] and k [T, Hk*D] in place."""

    def reshape_and_cache(self, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                          v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Write key/value [T, Hk, D] into the paged cache at their slots (negative slots skipped)."""

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """[gate | up] -> silu(gate) * up."""

    def gelu_tanh_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """[gate | up] -> gelu(gate, approximate="tanh") * up."""

    def decode_attention(self, q, k_cache, v_cache, block_table, seq_lens, scale: float,
                         max_seq_len: int | None = None, *, sliding_window: int = 0,
                         soft_cap: float = 0.0) -> torch.Tensor:
        """One query per row over the paged cache."""

    def prefill_attention(self, q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale: float,
                          max_query_len: int | None = None, *, sliding_window: int = 0,
                          soft_cap: float = 0.0) -> torch.Tensor:
        """Variable-length causal attention over the paged cache."""

    def paged_attention(self, q, k_cache, v_cache, block_table, seq_lens, query_start_loc, num_decode_rows: int,
                        scale: float, max_query_len: int | None = None, max_seq_len: int | None = None, *,
                        sliding_window: int = 0, soft_cap: float = 0.0) -> torch.Tensor:
        """A whole step's attention (decode rows first, then prefill rows)."""


@runtime_checkable
class FusedKernels(Protocol):
    """Fused ops: each does the work of several required ops in one call."""

    def rotary_embedding_and_cache(self, positions, qkv, num_heads: int, num_kv_heads: int, head_dim: int,
                                   cos_sin_cache, is_neox: bool, k_cache, v_cache, slot_mapping, *,
                                   rotary_dim: int | None = None) -> None:
        """qkv [T, (Hq + 2 Hk) * D]: rotate q in place, write rotated k and v into the paged cache."""

    def refine_top_logits(self, logits: torch.Tensor, hidden: torch.Tensor, head_f32: torch.Tensor,
                          k: int) -> torch.Tensor:
        """In place: each row's k largest logits recomputed in float32 from float32 head weights."""


class Backend(KernelBackend, FusedKernels, Protocol):
    """What `lmrs.kernels.get_backend` returns: required and fused ops."""


REQUIRED_OPS = ("rms_norm", "fused_add_rms_norm", "rope_cos_sin_cache", "rotary_embedding", "reshape_and_cache",
                "silu_and_mul", "gelu_tanh_and_mul", "decode_attention", "prefill_attention", "paged_attention")
FUSED_OPS = ("rotary_embedding_and_cache", "refine_top_logits")


def missing_ops(backend) -> list[str]:
    """The ops of the interface a backend module lacks (empty for a complete backend)."""
    return [op for op in ("NAME", *REQUIRED_OPS, *FUSED_OPS) if not hasattr(backend, op)]
