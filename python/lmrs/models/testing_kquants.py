"""Q4_K and Q6_K quantizers for test GGUF files (the `gguf` package dequantizes K-quants but cannot
quantize them).

The block layouts are ggml's (what `gguf.quants.dequantize` reads): super-blocks of 256 values.
- Q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of 6-bit sub-block scales and mins (8 of each), 128
  bytes of 4-bit codes; value = d * sc[s] * q - dmin * m[s] for sub-block s (32 values).
- Q6_K (210 bytes): 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8 sub-block scales,
  f16 d; value = d * sc[s] * (q - 32) for sub-block s (16 values).
The scales are chosen by min / max (not llama.cpp's error-minimizing search), so the error is
somewhat larger than llama-quantize's; the layout, and so what a loader must decode, is the same.
"""

from __future__ import annotations

import numpy as np

__all__ = ["quantize_q4_k", "quantize_q6_k", "QK_K"]

QK_K = 256


def _blocks(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[-1] % QK_K:
        raise ValueError(f"K-quants need rows of a multiple of {QK_K} values, got {x.shape[-1]}")
    return x.reshape(-1, QK_K)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float32 [..., n * 256] -> uint8 [..., n * 144] Q4_K blocks."""
    shape = x.shape
    b = _blocks(x).reshape(-1, 8, 32)
    lo = np.minimum(b.min(axis=-1), 0.0)  # [n, 8]: the offset is a non-negative multiple of dmin
    scale = (b.max(axis=-1) - lo) / 15.0
    d = (scale.max(axis=-1) / 63.0).astype(np.float16).astype(np.float32)  # [n]
    dmin = ((-lo).max(axis=-1) / 63.0).astype(np.float16).astype(np.float32)
    sc = np.where(d[:, None] > 0, np.round(scale / np.where(d > 0, d, 1)[:, None]), 0).clip(0, 63).astype(np.uint8)
    mn = np.where(dmin[:, None] > 0, np.round(-lo / np.where(dmin > 0, dmin, 1)[:, None]), 0).clip(0, 63).astype(np.uint8)
    step = d[:, None] * sc
    offset = dmin[:, None] * mn
    q = np.where(step[..., None] > 0, np.round((b + offset[..., None]) / np.where(step > 0, step, 1)[..., None]), 0)
    q = q.clip(0, 15).astype(np.uint8)  # [n, 8, 32]
    n = b.shape[0]
    scales = np.empty((n, 12), dtype=np.uint8)
    scales[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] & 0x30) << 2)
    scales[:, 4:8] = mn[:, 0:4] | ((mn[:, 4:8] & 0x30) << 2)
    scales[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, 128)  # sub-blocks 2j (low nibble) and 2j+1 (high)
    out = np.concatenate([d.astype(np.float16).view(np.uint8).reshape(n, 2),
                          dmin.astype(np.float16).view(np.uint8).reshape(n, 2), scales, qs], axis=1)
    return out.reshape(*shape[:-1], shape[-1] // QK_K * 144)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float32 [..., n * 256] -> uint8 [..., n * 210] Q6_K blocks."""
    shape = x.shape
    b = _blocks(x)
    n = b.shape[0]
    sub = b.reshape(n, 16, 16)
    scale = np.abs(sub).max(axis=-1) / 31.0  # [n, 16]
    d = (scale.max(axis=-1) / 127.0).astype(np.float16).astype(np.float32)
    sc = np.where(d[:, None] > 0, np.round(scale / np.where(d > 0, d, 1)[:, None]), 0).clip(-128, 127).astype(np.int8)
    step = d[:, None] * sc.astype(np.float32)
    q = np.where(step[..., None] > 0, np.round(sub / np.where(step > 0, step, 1)[..., None]), 0)
    q = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(n, 256)
    # element e = h*128 + s*64 + p: low nibble s of ql[h*64 + p]; e = h*128 + t*32 + p: bits 2t of qh[h*32 + p]
    lo = (q & 0x0F).reshape(n, 2, 2, 64)
    ql = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(n, 128)
    hi = (q >> 4).reshape(n, 2, 4, 32)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d.astype(np.float16).view(np.uint8).reshape(n, 2)], axis=1)
    return out.reshape(*shape[:-1], shape[-1] // QK_K * 210)
