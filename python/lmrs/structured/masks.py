"""Token bitmasks applied to logits.

A mask row is ``ceil(vocab / 32)`` int32 words; bit ``t % 32`` of word ``t // 32`` is set when token ``t``
is allowed (xgrammar's and vLLM's layout, filled by ``lmrs._core.fill_next_token_bitmasks``). Applying
sets every disallowed logit to ``-inf`` in place, for all constrained rows at once, on the logits'
device: float32 CPU logits in one Rust pass (``lmrs._core.apply_token_bitmask_cpu``, GIL released), other
dtypes and CUDA tensors with vectorized torch ops. A step without constrained rows does not call it.
"""

from __future__ import annotations

import torch

__all__ = ["allocate_token_bitmask", "apply_token_bitmask_", "bitmask_to_bool"]

_LUT: dict[torch.device, torch.Tensor] = {}


def allocate_token_bitmask(rows: int, vocab_size: int, *, pin_memory: bool = False) -> torch.Tensor:
    """A zeroed int32 ``[rows, ceil(vocab_size / 32)]`` mask on the CPU (pinned for fast copies to a GPU)."""
    return torch.zeros((rows, (vocab_size + 31) // 32), dtype=torch.int32, pin_memory=pin_memory)


def _byte_lut(device: torch.device) -> torch.Tensor:
    """``[256, 8]`` bool: bit j of byte value b."""
    lut = _LUT.get(device)
    if lut is None:
        b = torch.arange(256, dtype=torch.int32)
        lut = ((b.unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1).bool().to(device)
        _LUT[device] = lut
    return lut


def bitmask_to_bool(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[rows, vocab_size]`` bool (True: allowed) from an int32 ``[rows, words]`` mask, on its device."""
    if bitmask.dtype != torch.int32 or bitmask.dim() != 2:
        raise ValueError("bitmask must be a 2-D int32 tensor")
    rows, words = bitmask.shape
    if words * 32 < vocab_size:
        raise ValueError(f"bitmask has {words} words per row; {vocab_size} tokens need {(vocab_size + 31) // 32}")
    # little-endian words: byte k of word w holds tokens 32w + 8k .. 32w + 8k + 7
    as_bytes = bitmask.contiguous().view(torch.uint8).long()
    return _byte_lut(bitmask.device)[as_bytes].view(rows, words * 32)[:, :vocab_size]


def apply_token_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor,
                         rows: torch.Tensor | None = None) -> torch.Tensor:
    """Set disallowed logits to ``-inf`` in place and return ``logits``.

    ``logits``: float ``[S, V]`` (CPU or CUDA). ``bitmask``: int32 ``[R, words]`` (any device; moved to the
    logits' device). ``rows``: the ``R`` logits rows the mask rows belong to (int64), or None when
    ``R == S`` and mask row i is logits row i.
    """
    if logits.dim() != 2:
        raise ValueError("logits must be 2-D [rows, vocab]")
    n = bitmask.shape[0]
    if n == 0:
        return logits
    if rows is None and n != logits.shape[0]:
        raise ValueError(f"{n} mask rows for {logits.shape[0]} logits rows; pass rows=")
    if rows is not None and rows.numel() != n:
        raise ValueError(f"{n} mask rows but {rows.numel()} row indices")
    if rows is not None and (int(rows.min()) < 0 or int(rows.max()) >= logits.shape[0]):
        raise ValueError(f"a row index is out of range ({logits.shape[0]} logits rows)")
    need = (logits.shape[1] + 31) // 32
    if bitmask.dtype != torch.int32 or bitmask.dim() != 2 or bitmask.shape[1] < need:
        raise ValueError(f"bitmask must be int32 [rows, words] with at least {need} words for "
                         f"{logits.shape[1]} tokens")
    device = logits.device
    if device.type == "cpu" and logits.dtype == torch.float32 and logits.stride(1) == 1:
        from .. import _core  # one pass in Rust: several times faster than the torch ops below

        _core.apply_token_bitmask_cpu(logits.detach().numpy(), bitmask.cpu().contiguous().numpy(),
                                      None if rows is None else rows.tolist())
        return logits
    if bitmask.device != device:
        bitmask = bitmask.to(device, non_blocking=True)
    allowed = bitmask_to_bool(bitmask, logits.shape[1])
    if rows is None:
        logits.masked_fill_(~allowed, float("-inf"))
    else:
        rows = rows.to(device=device, dtype=torch.long)
        logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
    return logits
