"""Weight-only int4 / int8 weights for the CUDA quantized matrix product (`cuda/quant_matmul.cu`):
the packed layout, packing on the host (numpy) from GGUF Q4_0 / Q4_1 / Q8_0 blocks or from float
weights, and the host dequantization the tests compare against.

Layout of a weight W [N, K] (K a multiple of 32; groups of 32 input features along K):

- 4-bit: `qweight` uint8 [N, K/2]: group g of row n is the 16 bytes qweight[n, 16g : 16g + 16];
  byte j holds feature 32g + j in its low nibble and feature 32g + 16 + j in its high nibble
  (GGUF's own order, so a block's `qs` bytes are copied as they are). `scales`, `mins` float16
  [N, K/32]: w = scale * q + min, q in 0..15. GGUF Q4_1 blocks give (d, m) as they are; Q4_0 blocks
  (w = d * (q - 8)) give scale d and min -8 d (exact in float16).
- 8-bit: `qweight` int8 [N, K]; `scales` float16 [N, K/32]; w = scale * q. GGUF Q8_0 blocks as they
  are.

Every weight a GGUF Q4_0 / Q4_1 / Q8_0 file holds is reproduced exactly: `dequantize(pack_gguf(
blocks))` equals `gguf.quants.dequantize(blocks)` bit for bit (scale * q is exact in float32 and
so is adding the min of Q4_0). On the GPU the products run with `lmrs.kernels.cuda.quant_matmul`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

GROUP = 32
# GGUF block sizes in bytes (32 weights each) and their quantization type ids (gguf.GGMLQuantizationType)
_Q4_0, _Q4_1, _Q8_0 = 2, 3, 8
_BLOCK_BYTES = {_Q4_0: 18, _Q4_1: 20, _Q8_0: 34}
_QTYPE_NAMES = {_Q4_0: "Q4_0", _Q4_1: "Q4_1", _Q8_0: "Q8_0"}
GEMV_ROWS = (1, 2, 4, 8)  # compiled row bounds of quant_gemv_* (cuda/quant_matmul.cu)


@dataclasses.dataclass
class QuantizedWeight:
    """A weight W [n, k] in the packed layout above (tensors on one device)."""

    bits: int  # 4 or 8
    qweight: torch.Tensor  # uint8 [n, k/2] (4-bit) or int8 [n, k] (8-bit)
    scales: torch.Tensor  # float16 [n, k/32]
    mins: torch.Tensor | None  # float16 [n, k/32] (4-bit), None (8-bit)

    @property
    def n(self) -> int:
        return self.qweight.shape[0]

    @property
    def k(self) -> int:
        return self.scales.shape[1] * GROUP

    @property
    def nbytes(self) -> int:
        """Bytes the weight occupies (codes + scales + mins)."""
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.mins) if t is not None)

    def to(self, device) -> QuantizedWeight:
        return QuantizedWeight(self.bits, self.qweight.to(device), self.scales.to(device),
                               None if self.mins is None else self.mins.to(device))


def kernel_names() -> dict[str, set[str]]:
    """The kernels of cuda/quant_matmul.cu the wrappers launch."""
    names = set()
    for s in ("f16", "bf16"):
        for fmt in ("q4", "q8"):
            names.add(f"quant_dequant_{fmt}_{s}")
            names |= {f"quant_gemv_{fmt}_{s}_m{m}" for m in GEMV_ROWS}
    return {"quant_matmul": names}


def pack_gguf(blocks, qtype: int, shape: tuple[int, int]) -> QuantizedWeight:
    """Pack the raw GGUF blocks of a [n, k] tensor (uint8, `n * k / 32` blocks, row-major as in the
    file) of type Q4_0 (2), Q4_1 (3) or Q8_0 (8) into the CUDA layout (CPU tensors)."""
    qtype = int(qtype)
    if qtype not in _BLOCK_BYTES:
        raise ValueError(f"qtype: {qtype} is not Q4_0 (2), Q4_1 (3) or Q8_0 (8)")
    n, k = (int(d) for d in shape)
    if n < 1 or k < GROUP or k % GROUP:
        raise ValueError(f"shape: expected [n, k] with k a multiple of {GROUP}, got {tuple(shape)}")
    raw = np.ascontiguousarray(np.asarray(blocks, dtype=np.uint8)).reshape(-1)
    bb = _BLOCK_BYTES[qtype]
    if raw.size != n * (k // GROUP) * bb:
        raise ValueError(f"blocks: {raw.size} bytes, but a {_QTYPE_NAMES[qtype]} [{n}, {k}] tensor has "
                         f"{n * (k // GROUP) * bb}")
    b = raw.reshape(n, k // GROUP, bb)
    d = b[..., 0:2].copy().view(np.float16)[..., 0]  # [n, groups]
    if qtype == _Q8_0:
        q = b[..., 2:].copy().view(np.int8).reshape(n, k)
        return QuantizedWeight(8, torch.from_numpy(q), torch.from_numpy(d.copy()), None)
    if qtype == _Q4_1:
        mins = b[..., 2:4].copy().view(np.float16)[..., 0]
        qs = b[..., 4:]
    else:
        with np.errstate(over="raise"):
            try:
                mins = (d * np.float16(-8)).astype(np.float16)
            except FloatingPointError:
                raise ValueError("blocks: a Q4_0 scale is too large for its min (-8 x scale) in float16") from None
        qs = b[..., 2:]
    return QuantizedWeight(4, torch.from_numpy(np.ascontiguousarray(qs).reshape(n, k // 2)),
                           torch.from_numpy(d.copy()), torch.from_numpy(np.ascontiguousarray(mins)))


def quantize(w: torch.Tensor, bits: int) -> QuantizedWeight:
    """Quantize a float weight [n, k] (k a multiple of 32): 4 bits as GGUF Q4_1 does (min and
    max of each group on 0 and 15), 8 bits as Q8_0 (largest magnitude on +-127). CPU tensors."""
    import gguf

    if bits not in (4, 8):
        raise ValueError(f"bits: expected 4 or 8, got {bits!r}")
    if w.dim() != 2 or w.shape[1] % GROUP:
        raise ValueError(f"w: expected [n, k] with k a multiple of {GROUP}, got shape {tuple(w.shape)}")
    qtype = gguf.GGMLQuantizationType.Q4_1 if bits == 4 else gguf.GGMLQuantizationType.Q8_0
    blocks = gguf.quants.quantize(w.detach().float().cpu().numpy(), qtype)
    return pack_gguf(blocks, int(qtype), tuple(w.shape))


def dequantize(qw: QuantizedWeight) -> torch.Tensor:
    """W [n, k] in float32 on the host (the values the kernels use)."""
    n, k = qw.n, qw.k
    scales = qw.scales.cpu().float().view(n, k // GROUP, 1)
    if qw.bits == 8:
        q = qw.qweight.cpu().view(n, k // GROUP, GROUP).float()
        return (q * scales).view(n, k)
    b = qw.qweight.cpu().view(n, k // GROUP, 16)
    q = torch.cat([b & 0x0F, b >> 4], dim=-1).float()  # features j (low nibbles), then 16 + j
    return (q * scales + qw.mins.cpu().float().view(n, k // GROUP, 1)).view(n, k)
