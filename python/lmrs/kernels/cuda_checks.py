"""Argument checks for the CUDA kernel wrappers (`lmrs.kernels.cuda`), pure Python.

Every check runs before a launch and raises `TypeError` (wrong type or dtype) or `ValueError`
(shape, device, layout, unsupported size) with a message that names the argument. They need no
GPU: `device_type` is "cuda" in the wrappers and may be "cpu" in tests (and in the CPU emulation
of the kernels).

Layout rules the kernels rely on (see cuda/*.cu):
- model tensors are float32, float16 or bfloat16; all tensors of one call share the dtype;
- int32 plan tensors (block_table, seq_lens, query_start_loc, slot_mapping), contiguous rows;
- KV cache [num_blocks, block_size, Hk, D], contiguous, block_size 16 or 32, head_dim 64 or 128;
- q / key / value may be row-strided views (e.g. slices of a fused qkv output) but each row's heads
  must be contiguous, and rows used with 16-byte vector loads must be 16-byte aligned.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (64, 128)
BLOCK_SIZES = (16, 32)
INDEX_DTYPE = torch.int32
MAX_GRID_Y = 65535


DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # cuda/common.cuh `DType`


def dtype_suffix(dtype: torch.dtype) -> str:
    """Kernel name suffix for a model dtype."""
    return {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[dtype]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def check_float(name: str, t, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`t` is a float32/float16/bfloat16 tensor (equal to `dtype` when given)."""
    _tensor(name, t)
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (like the other inputs), got {t.dtype}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype {t.dtype} is not supported (float32, float16, bfloat16)")
    return t


def check_int32(name: str, t, ndim: int) -> torch.Tensor:
    _tensor(name, t)
    if t.dtype != INDEX_DTYPE:
        raise TypeError(f"{name}: expected dtype torch.int32, got {t.dtype}")
    check_ndim(name, t, ndim)
    if ndim == 1 and t.numel() > 1 and t.stride(0) != 1:
        raise ValueError(f"{name}: must be contiguous")
    if ndim == 2 and t.shape[1] > 1 and t.stride(1) != 1:
        raise ValueError(f"{name}: rows must be contiguous (stride(1) == 1), got strides {tuple(t.stride())}")
    return t


def check_ndim(name: str, t: torch.Tensor, ndim: int) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")


def check_contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous, got shape {tuple(t.shape)} strides {tuple(t.stride())}")


def check_devices(device_type: str, **tensors) -> torch.device:
    """All tensors are on one device of type `device_type`; returns it."""
    dev = None
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device.type != device_type:
            raise ValueError(f"{name}: expected a {device_type} tensor, got one on {t.device}")
        if dev is None:
            dev, first = t.device, name
        elif t.device != dev:
            raise ValueError(f"{name}: on {t.device}, but {first} is on {dev} (all inputs must share a device)")
    return dev


def is_aligned16(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0


def check_aligned_rows(name: str, t: torch.Tensor) -> None:
    """Rows of `t` (dim 0) start on 16-byte boundaries (base pointer and row stride)."""
    if t.data_ptr() % 16 or (t.shape[0] > 1 and (t.stride(0) * t.element_size()) % 16):
        raise ValueError(
            f"{name}: rows must be 16-byte aligned (data_ptr % 16 == 0 and row stride a multiple of "
            f"{16 // t.element_size()} elements), got data_ptr {t.data_ptr()} and strides {tuple(t.stride())}"
        )


def check_head_rows(name: str, t: torch.Tensor, heads: int | None, head_dim: int | None) -> tuple[int, int, int]:
    """`t` is [T, H, D] with contiguous heads (stride(2) == 1, stride(1) == D) and any row stride.
    Returns (T, H, D)."""
    check_ndim(name, t, 3)
    n, h, d = t.shape
    if heads is not None and h != heads:
        raise ValueError(f"{name}: expected {heads} heads (dim 1), got shape {tuple(t.shape)}")
    if head_dim is not None and d != head_dim:
        raise ValueError(f"{name}: expected head_dim {head_dim} (dim 2), got shape {tuple(t.shape)}")
    if (d > 1 and t.stride(2) != 1) or (h > 1 and t.stride(1) != d):
        raise ValueError(
            f"{name}: each row's heads must be contiguous (strides (*, {d}, 1)), got strides {tuple(t.stride())}"
        )
    return n, h, d


@dataclasses.dataclass
class CacheInfo:
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_dim: int


def check_kv_cache(k_cache, v_cache, dtype: torch.dtype | None = None) -> CacheInfo:
    check_float("k_cache", k_cache, dtype)
    check_float("v_cache", v_cache, k_cache.dtype)
    check_ndim("k_cache", k_cache, 4)
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"v_cache: shape {tuple(v_cache.shape)} differs from k_cache {tuple(k_cache.shape)}")
    check_contiguous("k_cache", k_cache)
    check_contiguous("v_cache", v_cache)
    nb, bs, hk, d = k_cache.shape
    if bs not in BLOCK_SIZES:
        raise ValueError(f"k_cache: block size {bs} (dim 1) is not supported ({', '.join(map(str, BLOCK_SIZES))})")
    if d not in HEAD_DIMS:
        raise ValueError(f"k_cache: head_dim {d} (dim 3) is not supported ({', '.join(map(str, HEAD_DIMS))})")
    if nb < 1 or hk < 1:
        raise ValueError(f"k_cache: needs at least one block and one KV head, got shape {tuple(k_cache.shape)}")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not is_aligned16(c):
            raise ValueError(f"{name}: must be 16-byte aligned")
    if nb * bs >= 2**31:
        raise ValueError(f"k_cache: {nb} blocks of {bs} slots exceed the int32 slot range")
    return CacheInfo(nb, bs, hk, d)


def check_norm(x, weight, residual=None, out_dtype=None) -> int:
    """rms_norm / fused_add_rms_norm: x [..., hidden] contiguous, weight [hidden], residual like x.
    Each may be float32, float16 or bfloat16 independently (a float32 residual stream next to 16-bit
    activations); so may `out_dtype`. Returns hidden."""
    check_float("x", x)
    check_float("weight", weight)
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dim")
    hidden = x.shape[-1]
    if weight.dim() != 1 or weight.shape[0] != hidden:
        raise ValueError(f"weight: expected shape ({hidden},) to match x's last dim, got {tuple(weight.shape)}")
    check_contiguous("x", x)
    check_contiguous("weight", weight)
    if residual is not None:
        check_float("residual", residual)
        if tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"residual: shape {tuple(residual.shape)} differs from x {tuple(x.shape)}")
        check_contiguous("residual", residual)
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype: {out_dtype} is not supported (float32, float16, bfloat16)")
    if hidden < 1:
        raise ValueError("x: last dim must be non-empty")
    return hidden


def check_silu_and_mul(x) -> int:
    """x [..., 2I] contiguous -> I (also for gelu_tanh_and_mul)."""
    check_float("x", x)
    if x.dim() < 1 or x.shape[-1] % 2:
        raise ValueError(f"x: last dim must be even ([..., 2 * intermediate]), got shape {tuple(x.shape)}")
    check_contiguous("x", x)
    return x.shape[-1] // 2


def _as_heads(name: str, t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[T, H*D] or [T, H, D] view as [T, H, D] (row-strided allowed)."""
    if t.dim() == 2:
        if t.shape[1] % head_dim:
            raise ValueError(f"{name}: last dim {t.shape[1]} is not a multiple of head_dim {head_dim}")
        if t.shape[1] > 1 and t.stride(1) != 1:
            raise ValueError(f"{name}: rows must be contiguous (stride(1) == 1), got strides {tuple(t.stride())}")
        return t.view(t.shape[0], t.shape[1] // head_dim, head_dim)
    check_head_rows(name, t, None, head_dim)
    return t


def check_rotary_dim(rotary_dim, head_dim: int) -> int:
    """The rotated dims of a head: `rotary_dim` (a positive even int <= head_dim) or head_dim for
    None."""
    if rotary_dim is None:
        return head_dim
    try:
        rot = operator.index(rotary_dim) if not isinstance(rotary_dim, bool) else 0
    except TypeError:
        rot = 0
    if not 0 < rot <= head_dim or rot % 2:
        raise ValueError(f"rotary_dim: expected a positive even int <= head_dim {head_dim}, got {rotary_dim!r}")
    return rot


def check_attention_options(sliding_window, soft_cap) -> tuple[int, float]:
    """(sliding_window, soft_cap) of the attention ops: an int >= 0 and a finite number >= 0 (0 is
    off for both). Shared by the CPU backend."""
    if sliding_window == 0 and soft_cap == 0:  # the common case, cheaply
        return 0, 0.0
    try:
        window = operator.index(sliding_window) if not isinstance(sliding_window, bool) else -1
    except TypeError:
        window = -1
    if window < 0 or window >= 2**31:
        raise ValueError(f"sliding_window: expected an int >= 0 (0: no window), got {sliding_window!r}")
    if isinstance(soft_cap, (bool, torch.Tensor)) or not isinstance(soft_cap, numbers.Real) or not 0 <= soft_cap < math.inf:
        raise ValueError(f"soft_cap: expected a finite number >= 0 (0: no capping), got {soft_cap!r}")
    return window, float(soft_cap)


def check_rotary(positions, q, k, cos_sin_cache, head_dim, rotary_dim=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns q and k viewed as [T, H, D]. `cos_sin_cache` has `rotary_dim` (None: head_dim)
    columns."""
    _tensor("positions", positions)
    if positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"positions: expected dtype torch.int32 or torch.int64, got {positions.dtype}")
    check_ndim("positions", positions, 1)
    check_contiguous("positions", positions)
    check_float("q", q)
    check_float("k", k, q.dtype)
    _tensor("cos_sin_cache", cos_sin_cache)
    if cos_sin_cache.dtype != torch.float32:
        raise TypeError(f"cos_sin_cache: expected dtype torch.float32, got {cos_sin_cache.dtype}")
    if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim: expected a positive even int, got {head_dim!r}")
    rot = check_rotary_dim(rotary_dim, head_dim)
    check_ndim("cos_sin_cache", cos_sin_cache, 2)
    if cos_sin_cache.shape[1] != rot:
        raise ValueError(
            f"cos_sin_cache: expected {rot} columns (cos | sin for {rot} rotated dims), got shape "
            f"{tuple(cos_sin_cache.shape)}"
        )
    check_contiguous("cos_sin_cache", cos_sin_cache)
    for name, t in (("q", q), ("k", k)):
        if t.dim() not in (2, 3):
            raise ValueError(f"{name}: expected [T, H*D] or [T, H, D], got shape {tuple(t.shape)}")
        if t.shape[0] != positions.shape[0]:
            raise ValueError(f"{name}: {t.shape[0]} tokens (dim 0) but positions has {positions.shape[0]}")
    return _as_heads("q", q, head_dim), _as_heads("k", k, head_dim)


def check_reshape_and_cache(key, value, k_cache, v_cache, slot_mapping) -> CacheInfo:
    info = check_kv_cache(k_cache, v_cache)
    check_float("key", key, k_cache.dtype)
    check_float("value", value, k_cache.dtype)
    t, _, _ = check_head_rows("key", key, info.num_kv_heads, info.head_dim)
    check_head_rows("value", value, info.num_kv_heads, info.head_dim)
    if value.shape[0] != t:
        raise ValueError(f"value: {value.shape[0]} tokens (dim 0) but key has {t}")
    check_int32("slot_mapping", slot_mapping, 1)
    if slot_mapping.shape[0] != t:
        raise ValueError(f"slot_mapping: {slot_mapping.shape[0]} entries but key has {t} tokens")
    check_aligned_rows("key", key)
    check_aligned_rows("value", value)
    return info


@dataclasses.dataclass
class AttnInfo:
    cache: CacheInfo
    num_q_heads: int
    group: int
    rows: int
    tokens: int


def _check_attn_common(q, k_cache, v_cache, block_table, seq_lens, scale) -> AttnInfo:
    check_float("q", q)
    info = check_kv_cache(k_cache, v_cache, q.dtype)
    tokens, hq, _ = check_head_rows("q", q, None, info.head_dim)
    if hq % info.num_kv_heads:
        raise ValueError(
            f"q: {hq} query heads (dim 1) is not a multiple of the cache's {info.num_kv_heads} KV heads"
        )
    check_aligned_rows("q", q)
    check_int32("block_table", block_table, 2)
    check_int32("seq_lens", seq_lens, 1)
    rows = seq_lens.shape[0]
    if block_table.shape[0] != rows:
        raise ValueError(f"block_table: {block_table.shape[0]} rows but seq_lens has {rows}")
    if rows > 0 and block_table.shape[1] < 1:
        raise ValueError("block_table: needs at least one column")
    if rows >= 2**31:
        raise ValueError(f"seq_lens: {rows} rows is too many")
    if not isinstance(scale, (int, float)):
        raise TypeError(f"scale: expected a float, got {type(scale).__name__}")
    return AttnInfo(info, hq, hq // info.num_kv_heads, rows, tokens)


def check_decode(q, k_cache, v_cache, block_table, seq_lens, scale) -> AttnInfo:
    info = _check_attn_common(q, k_cache, v_cache, block_table, seq_lens, scale)
    if info.tokens != info.rows:
        raise ValueError(f"q: {info.tokens} tokens (dim 0) but seq_lens has {info.rows} rows (one query each)")
    return info


def check_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale) -> AttnInfo:
    info = _check_attn_common(q, k_cache, v_cache, block_table, seq_lens, scale)
    check_int32("query_start_loc", query_start_loc, 1)
    if query_start_loc.shape[0] != info.rows + 1:
        raise ValueError(
            f"query_start_loc: expected {info.rows + 1} entries (rows + 1), got {query_start_loc.shape[0]}"
        )
    if info.rows > MAX_GRID_Y:
        raise ValueError(f"seq_lens: at most {MAX_GRID_Y} prefill rows per call, got {info.rows}")
    return info


def check_paged(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, num_decode_rows, scale) -> AttnInfo:
    info = check_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale)
    if isinstance(num_decode_rows, bool) or isinstance(num_decode_rows, torch.Tensor):
        raise TypeError(f"num_decode_rows: expected an int, got {type(num_decode_rows).__name__}")
    try:
        nd = operator.index(num_decode_rows)
    except TypeError:
        raise TypeError(f"num_decode_rows: expected an int, got {type(num_decode_rows).__name__}") from None
    if not 0 <= nd <= info.rows:
        raise ValueError(f"num_decode_rows: {nd} is outside [0, {info.rows}] (the plan's rows)")
    if nd > info.tokens:
        raise ValueError(f"num_decode_rows: {nd} decode rows but q has only {info.tokens} tokens")
    return info


QUANT_ACT_DTYPES = (torch.float16, torch.bfloat16)


def check_quant_weight(weight) -> tuple[int, int]:
    """A `cuda_quant.QuantizedWeight` with consistent, contiguous, 16-byte aligned parts. Returns
    (n, k)."""
    from lmrs.kernels.cuda_quant import GROUP, QuantizedWeight

    if not isinstance(weight, QuantizedWeight):
        raise TypeError(f"weight: expected a lmrs.kernels.cuda_quant.QuantizedWeight, got {type(weight).__name__}")
    if weight.bits not in (4, 8):
        raise ValueError(f"weight: bits must be 4 or 8, got {weight.bits!r}")
    qw, sc = _tensor("weight.qweight", weight.qweight), _tensor("weight.scales", weight.scales)
    code_dtype = torch.uint8 if weight.bits == 4 else torch.int8
    if qw.dtype != code_dtype:
        raise TypeError(f"weight.qweight: expected dtype {code_dtype} for {weight.bits}-bit codes, got {qw.dtype}")
    if sc.dtype != torch.float16:
        raise TypeError(f"weight.scales: expected dtype torch.float16, got {sc.dtype}")
    check_ndim("weight.qweight", qw, 2)
    check_ndim("weight.scales", sc, 2)
    n, groups = sc.shape
    k = groups * GROUP
    per_row = k // 2 if weight.bits == 4 else k
    if n < 1 or groups < 1 or tuple(qw.shape) != (n, per_row):
        raise ValueError(f"weight.qweight: expected shape ({n}, {per_row}) for scales of shape {tuple(sc.shape)}, "
                         f"got {tuple(qw.shape)}")
    parts = [("weight.qweight", qw), ("weight.scales", sc)]
    if weight.bits == 4:
        mins = _tensor("weight.mins", weight.mins)
        if mins.dtype != torch.float16 or tuple(mins.shape) != (n, groups):
            raise ValueError(f"weight.mins: expected float16 of shape ({n}, {groups}), got {mins.dtype} "
                             f"{tuple(mins.shape)}")
        parts.append(("weight.mins", mins))
    elif weight.mins is not None:
        raise ValueError("weight.mins: 8-bit weights have no mins (w = scale * q)")
    for name, t in parts:
        check_contiguous(name, t)
    if not is_aligned16(qw):
        raise ValueError("weight.qweight: must be 16-byte aligned")
    if n >= 2**31 or k >= 2**31:
        raise ValueError(f"weight: shape ({n}, {k}) is too large")
    return n, k


def check_quant_matmul(x, weight, bias=None) -> tuple[int, int, int]:
    """x [M, K] (float16 / bfloat16, unit stride along K) times a quantized weight [N, K], optional
    bias [N] in x's dtype. Returns (M, N, K)."""
    n, k = check_quant_weight(weight)
    _tensor("x", x)
    if x.dtype not in QUANT_ACT_DTYPES:
        raise TypeError(f"x: dtype {x.dtype} is not supported by the quantized product (float16, bfloat16)")
    check_ndim("x", x, 2)
    if x.shape[1] != k:
        raise ValueError(f"x: {x.shape[1]} input features (dim 1) but the weight has {k}")
    if x.shape[0] > 1 and k > 1 and x.stride(1) != 1:
        raise ValueError(f"x: rows must be contiguous (stride(1) == 1), got strides {tuple(x.stride())}")
    if bias is not None:
        check_float("bias", bias, x.dtype)
        if bias.dim() != 1 or bias.shape[0] != n:
            raise ValueError(f"bias: expected shape ({n},), got {tuple(bias.shape)}")
        check_contiguous("bias", bias)
    return x.shape[0], n, k
