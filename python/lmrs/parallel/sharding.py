"""Which slice of each weight a tensor-parallel rank keeps (Megatron-style).

- Attention: query heads are split by KV group, so a rank's query heads always find their KV heads
  on the same rank. With at least as many KV heads as ranks, the KV heads are split (unevenly when
  they do not divide: SmolLM2's 3 KV heads on 2 ranks give 1 + 2); with fewer, each KV head is
  replicated on `size / kv_heads` ranks and its group's query heads are split among them.
- MLP / MoE experts: the intermediate features split evenly (gate/up rows, down columns).
- Vocabulary (embedding and output head): contiguous row ranges, the last one possibly shorter.

Everything here is plain integer arithmetic, the same on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HeadShard", "head_shard", "even_range", "vocab_range"]


def _bounds(n: int, parts: int, i: int) -> tuple[int, int]:
    return i * n // parts, (i + 1) * n // parts


@dataclass(frozen=True)
class HeadShard:
    """A rank's attention heads: query heads [q_start, q_start + q_count), KV heads likewise."""

    q_start: int
    q_count: int
    kv_start: int
    kv_count: int


def head_shard(num_heads: int, num_kv_heads: int, size: int, rank: int) -> HeadShard:
    """Rank `rank`'s heads out of `num_heads` query and `num_kv_heads` KV heads on `size` ranks."""
    if size == 1:
        return HeadShard(0, num_heads, 0, num_kv_heads)
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads do not group evenly over {num_kv_heads} KV heads")
    group = num_heads // num_kv_heads
    if num_kv_heads >= size:
        kv0, kv1 = _bounds(num_kv_heads, size, rank)
        return HeadShard(kv0 * group, (kv1 - kv0) * group, kv0, kv1 - kv0)
    if size % num_kv_heads:
        raise ValueError(f"--tp {size} cannot share {num_kv_heads} KV heads: with fewer KV heads than ranks, "
                         f"the number of ranks must be a multiple of the KV heads")
    per_head = size // num_kv_heads  # ranks sharing (replicating) one KV head
    if group < per_head:
        raise ValueError(f"--tp {size} is more than the {num_heads} query heads can be split over "
                         f"(each rank needs at least one query head)")
    kv = rank // per_head
    q0, q1 = _bounds(group, per_head, rank % per_head)
    return HeadShard(kv * group + q0, q1 - q0, kv, 1)


def even_range(n: int, size: int, rank: int, what: str) -> tuple[int, int]:
    """(start, count) of an evenly split dimension of `n` (an error names `what` when it does not divide)."""
    if n % size:
        raise ValueError(f"{what} ({n}) is not divisible by the tensor-parallel size {size}")
    step = n // size
    return rank * step, step


def vocab_range(vocab: int, size: int, rank: int) -> tuple[int, int]:
    """(start, count) of a rank's vocabulary rows: blocks of ceil(vocab / size), the last one shorter."""
    block = -(-vocab // size)
    start = min(vocab, rank * block)
    return start, min(vocab, start + block) - start


def vocab_widths(vocab: int, size: int) -> list[int]:
    return [vocab_range(vocab, size, r)[1] for r in range(size)]
