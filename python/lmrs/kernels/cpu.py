"""CPU kernel backend: the interface of `reference.py`, backed by the Rust kernels of
`src/cpu_kernels/` (functions `lmrs._core.cpu_*`).

Each wrapper checks what the Rust side cannot see (device, dtypes, shapes, strides), allocates
the output, and passes the tensors by address (`data_ptr()`); the kernels check the indices they
follow (positions, slots, block ids, sequence lengths) and raise ValueError on bad ones, release
the GIL while they compute, use AVX-512 when the CPU has it (a portable path otherwise) and split
large calls over the cores. Arithmetic is float32 whatever the storage dtype (bfloat16, float16
or float32), rounded once at the output. A call the kernels do not cover (another device, other
dtypes, odd strides, an uncompiled head dim) runs the reference implementation.

A forward pass calls each kernel once per layer with the same step metadata (positions, slot
mapping, block table, ...) and the same per-layer caches every step, so the wrappers remember
the last metadata tensors they converted and the caches they validated (by object identity,
holding a reference), which keeps the Python cost of a call to a few microseconds.

Options beyond the first interface, the same as the reference's: `sliding_window` / `soft_cap` on
the attention ops (the blocks before a window are never read), `rotary_dim` on RoPE (partial
rotary) and `gelu_tanh_and_mul` (GeGLU).

The fused ops of the backend interface (`lmrs.kernels.backend`) have Rust kernels too:
`rotary_embedding_and_cache` (RoPE on q in place and k rotated straight into the paged cache with
v, from the fused qkv output) and `refine_top_logits` (the output head's top candidates
recomputed in float32).

What the Rust kernels do not implement yet runs the reference: sliding-window attention and
attention soft-capping (`sliding_window` > 0, `soft_cap` > 0), partial rotary embeddings
(`rotary_dim` < head_dim) and `gelu_tanh_and_mul`.
"""

from __future__ import annotations

import weakref

import torch

from lmrs import _core
from lmrs.kernels import reference as _ref
from lmrs.kernels.cuda_checks import check_attention_options, check_rotary_dim  # (pure Python, shared)

NAME = "cpu"

_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
THREADS = 0  # threads per parallel call: 0 = every CPU this process may use

rope_cos_sin_cache = _ref.rope_cos_sin_cache
_empty = torch.empty  # output allocation (tests swap in a NaN-filled one)


def _openmp_parallel_address() -> int:
    """The address of `GOMP_parallel` in the OpenMP runtime PyTorch loaded (0 if none), read
    from the already-loaded library (RTLD_NOLOAD: never a second copy)."""
    import ctypes
    import os

    if os.environ.get("LMRS_CPU_OPENMP", "1") == "0" or "OpenMP" not in torch.__config__.parallel_info():
        return 0
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f
                            if line.rstrip().endswith(".so.1") and ("gomp" in line or "iomp" in line)})
    except OSError:
        return 0
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            return ctypes.cast(lib.GOMP_parallel, ctypes.c_void_p).value or 0
        except (OSError, AttributeError):
            continue
    return 0


# Parallel kernels run on PyTorch's OpenMP thread team (awake between ops, never competing with
# PyTorch's own threads for the cores); without one, on scoped threads for large calls only.
OPENMP = _core.cpu_kernels_use_openmp(_openmp_parallel_address())


def isa() -> str:
    """The instruction set the kernels run with: "avx512bf16", "avx512" or "portable"."""
    return _core.cpu_kernels_isa()


def force_portable(on: bool) -> None:
    """Run the portable (non-AVX-512) kernels even on an AVX-512 CPU (for tests)."""
    _core.cpu_kernels_force_portable(bool(on))


def _i32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int32 and t.is_contiguous() else t.to(torch.int32).contiguous()


def _rows_ok(t: torch.Tensor, width: int) -> bool:
    """A CPU tensor [n, width] with unit stride along the row."""
    return t.is_cpu and t.dim() == 2 and t.shape[1] == width and (width <= 1 or t.stride(1) == 1)


def _vector_ok(w: torch.Tensor, n: int) -> bool:
    return w.is_cpu and w.dtype in _CODE and w.is_contiguous() and w.numel() == n


# ---- norms ------------------------------------------------------------------------------------

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    out_dtype = out_dtype or x.dtype
    h = x.shape[-1]
    x2 = x if x.dim() == 2 else x.reshape(-1, h)
    if x.dtype not in _CODE or out_dtype not in _CODE or not _rows_ok(x2, h) or not _vector_ok(weight, h):
        return _ref.rms_norm(x, weight, eps, out_dtype)
    out = _empty(x2.shape, dtype=out_dtype)
    _core.cpu_rms_norm(x2.shape[0], h, x2.data_ptr(), x2.stride(0), _CODE[x.dtype], 0, 0, weight.data_ptr(),
                       _CODE[weight.dtype], out.data_ptr(), h, _CODE[out_dtype], eps, THREADS)
    return out if x.dim() == 2 else out.view(x.shape)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       out_dtype: torch.dtype | None = None):
    """residual (float32 here; other dtypes go to the reference) += x, in place; returns
    (rms_norm(residual) in out_dtype (default x's dtype), residual)."""
    out_dtype = out_dtype or x.dtype
    h = x.shape[-1]
    if (residual.dtype != torch.float32 or x.dtype not in _CODE or out_dtype not in _CODE or not _rows_ok(x, h)
            or x.shape != residual.shape or not residual.is_contiguous() or not _vector_ok(weight, h)):
        return _ref.fused_add_rms_norm(x, residual, weight, eps, out_dtype)
    out = _empty(x.shape, dtype=out_dtype)
    _core.cpu_rms_norm(x.shape[0], h, x.data_ptr(), x.stride(0), _CODE[x.dtype], residual.data_ptr(), h,
                       weight.data_ptr(), _CODE[weight.dtype], out.data_ptr(), h, _CODE[out_dtype], eps, THREADS)
    return out, residual


# ---- step metadata and caches (remembered by identity) ----------------------------------------

class _Remembered:
    """Conversions of per-step tensors, keyed by the identity of their inputs (held by weak
    reference: a dead tensor's entry never matches, and nothing is kept alive); the oldest entry
    goes when more than `size` are held."""

    def __init__(self, size: int):
        self.size = size
        self.entries: dict[tuple, tuple] = {}

    def get(self, key: tuple, make):
        ids = tuple(map(id, key))
        hit = self.entries.get(ids)
        if hit is not None and all(r() is t for r, t in zip(hit[0], key)):
            return hit[1]
        v = make()
        self.entries[ids] = (tuple(weakref.ref(t) for t in key), v)
        if len(self.entries) > self.size:
            del self.entries[next(iter(self.entries))]
        return v


_INDEX = _Remembered(8)  # int32 copies of positions / slot mappings
_ATTN_META = _Remembered(4)  # attention metadata
_CACHES = _Remembered(256)  # validated (k_cache, v_cache) pairs (one per layer)


def _index(t: torch.Tensor):
    """(int32 tensor, address) of an index tensor."""
    def make():
        c = _i32(t)
        return c, c.data_ptr()
    return _INDEX.get((t,), make)


def _cache_info(k_cache: torch.Tensor, v_cache: torch.Tensor):
    """(num_blocks, block_size, kv_heads, head_dim, dtype code, k address, v address) of a pair of
    contiguous CPU caches [blocks, block_size, kv_heads, head_dim] of one kernel dtype; None if
    they are not that."""
    def make():
        dt = k_cache.dtype
        if (dt not in _CODE or v_cache.dtype != dt or k_cache.dim() != 4 or k_cache.shape != v_cache.shape
                or not k_cache.is_cpu or not v_cache.is_cpu or not k_cache.is_contiguous()
                or not v_cache.is_contiguous()):
            return None
        nb, bs, hk, d = k_cache.shape
        return nb, bs, hk, d, _CODE[dt], k_cache.data_ptr(), v_cache.data_ptr()
    return _CACHES.get((k_cache, v_cache), make)


# ---- rotary embedding and the KV cache write --------------------------------------------------

def _heads(t: torch.Tensor, head_dim: int):
    """(token stride, heads) of a CPU tensor t [T, H*D] or [T, H, D] whose heads are contiguous
    per token; None if its layout is not that."""
    if not t.is_cpu:
        return None
    if t.dim() == 2:
        if t.shape[1] % head_dim or (t.stride(1) != 1 and t.shape[1] > 1):
            return None
        return t.stride(0), t.shape[1] // head_dim
    if t.dim() == 3 and t.shape[2] == head_dim and t.stride(2) == 1 and (t.stride(1) == head_dim or t.shape[1] == 1):
        return t.stride(0), t.shape[1]
    return None


def _rope_table_ok(cos_sin_cache: torch.Tensor, rotary_dim: int) -> bool:
    """Whether the Rust kernel takes this table; a table of the wrong width is an error."""
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != rotary_dim:
        raise ValueError(f"cos_sin_cache: expected [max_positions, {rotary_dim}] (cos | sin of the {rotary_dim} "
                         f"rotated dims), got shape {tuple(cos_sin_cache.shape)}")
    return cos_sin_cache.dtype == torch.float32 and cos_sin_cache.is_cpu and cos_sin_cache.is_contiguous()


def rotary_embedding(positions, q, k, cos_sin_cache, head_dim: int, is_neox: bool = True, *,
                     rotary_dim: int | None = None) -> None:
    rot = check_rotary_dim(rotary_dim, head_dim)
    qh, kh = _heads(q, head_dim), _heads(k, head_dim)
    if (qh is None or kh is None or q.dtype != k.dtype or q.dtype not in _CODE or not positions.is_cpu
            or not _rope_table_ok(cos_sin_cache, rot)):
        return _ref.rotary_embedding(positions, q, k, cos_sin_cache, head_dim, is_neox, rotary_dim=rotary_dim)
    _, pos = _index(positions)
    _core.cpu_rotary_embedding(q.shape[0], head_dim, bool(is_neox), _CODE[q.dtype], pos, cos_sin_cache.data_ptr(),
                               cos_sin_cache.shape[0], q.data_ptr(), qh[0], qh[1], k.data_ptr(), kh[0], kh[1],
                               threads=THREADS, rotary_dim=rot)


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping) -> None:
    t, hk, d = key.shape
    kh, vh = _heads(key, d), _heads(value, d)
    info = _cache_info(k_cache, v_cache)
    if (kh is None or vh is None or info is None or key.dtype not in _CODE or value.dtype != key.dtype
            or value.shape != key.shape or info[2] != hk or info[3] != d or not slot_mapping.is_cpu):
        return _ref.reshape_and_cache(key, value, k_cache, v_cache, slot_mapping)
    nb, bs, _, _, cache_code, kc, vc = info
    _, slots = _index(slot_mapping)
    _core.cpu_reshape_and_cache(t, d, hk, _CODE[key.dtype], cache_code, key.data_ptr(), kh[0], value.data_ptr(), vh[0],
                                slots, kc, vc, nb * bs, THREADS)


def rotary_embedding_and_cache(positions, qkv, num_heads: int, num_kv_heads: int, head_dim: int, cos_sin_cache,
                               is_neox: bool, k_cache, v_cache, slot_mapping, *, rotary_dim: int | None = None) -> None:
    """qkv [T, (Hq + 2 Hk) * D] = [q | k | v]: rotate q in place (the first `rotary_dim` dims of
    each head, None: all); write k rotated and v into the paged cache at `slot_mapping` (negative
    slots skipped). With float32 qkv the cache may be 16-bit (rounded once when written). The k
    columns afterwards are unspecified."""
    rot = check_rotary_dim(rotary_dim, head_dim)
    t = qkv.shape[0]
    info = _cache_info(k_cache, v_cache)
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    if (info is None or qkv.dtype not in _CODE
            or not _rows_ok(qkv, q_size + 2 * kv_size) or info[2] != num_kv_heads
            or info[3] != head_dim or (info[4] != _CODE[qkv.dtype] and qkv.dtype != torch.float32)
            or not positions.is_cpu or not slot_mapping.is_cpu or not _rope_table_ok(cos_sin_cache, rot)):
        return _ref.rotary_embedding_and_cache(positions, qkv, num_heads, num_kv_heads, head_dim, cos_sin_cache,
                                               is_neox, k_cache, v_cache, slot_mapping, rotary_dim=rotary_dim)
    nb, bs, _, _, cache_code, kc, vc = info
    _, pos = _index(positions)
    _, slots = _index(slot_mapping)
    base, row, esize = qkv.data_ptr(), qkv.stride(0), qkv.element_size()
    _core.cpu_rotary_embedding(t, head_dim, bool(is_neox), _CODE[qkv.dtype], pos, cos_sin_cache.data_ptr(),
                               cos_sin_cache.shape[0], base, row, num_heads, base + q_size * esize, row, num_kv_heads,
                               base + (q_size + kv_size) * esize, row, slots, kc, vc, nb * bs, cache_code, THREADS,
                               rot)


# ---- activation -------------------------------------------------------------------------------

_SILU, _GELU_TANH = 0, 1  # activation codes of _core.cpu_gated_act_and_mul


def _gated(x: torch.Tensor, act: int, fallback) -> torch.Tensor:
    w = x.shape[-1]
    if x.dtype not in _CODE or w % 2 or not _rows_ok(x, w):
        return fallback(x)
    t, i = x.shape[0], w // 2
    out = _empty((t, i), dtype=x.dtype)
    _core.cpu_gated_act_and_mul(act, t, i, x.data_ptr(), x.stride(0), out.data_ptr(), i, _CODE[x.dtype], THREADS)
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2I] = [gate | up] -> silu(gate) * up [T, I] (float32 math, rounded once)."""
    return _gated(x, _SILU, _ref.silu_and_mul)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2I] = [gate | up] -> gelu(gate, approximate="tanh") * up [T, I] (float32 math, rounded
    once)."""
    return _gated(x, _GELU_TANH, _ref.gelu_tanh_and_mul)


# ---- attention --------------------------------------------------------------------------------

_ARANGE = torch.arange(257, dtype=torch.int32)


def _arange(n: int) -> torch.Tensor:
    global _ARANGE
    if n > _ARANGE.numel():
        _ARANGE = torch.arange(max(n, 2 * _ARANGE.numel()), dtype=torch.int32)
    return _ARANGE[:n]


def _attn_meta(block_table, seq_lens, query_start_loc):
    """(rows, block-table address, row stride, columns, seq_lens address, query_start_loc address,
    the int32 tensors) of a plan's attention metadata."""
    def make():
        if not (block_table.is_cpu and seq_lens.is_cpu and query_start_loc.is_cpu) or block_table.dim() != 2:
            return None
        bt = block_table if block_table.dtype == torch.int32 and block_table.stride(1) == 1 else _i32(block_table)
        sl, qsl = _i32(seq_lens), _i32(query_start_loc)
        rows = sl.shape[0]
        if qsl.shape[0] != rows + 1 or bt.shape[0] != rows:
            raise ValueError(f"{rows} rows but {qsl.shape[0]} query_start_loc entries and {bt.shape[0]} block-table rows")
        return rows, bt.data_ptr(), bt.stride(0), bt.shape[1], sl.data_ptr(), qsl.data_ptr(), (bt, sl, qsl)
    return _ATTN_META.get((block_table, seq_lens, query_start_loc), make)


def _attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale: float, sliding_window: int,
               soft_cap: float):
    """Rust paged attention of all rows, or None when these tensors are not covered. q and the
    output share a dtype; the cache has it too, or any 16-bit dtype with float32 q."""
    t, hq, d = q.shape
    info = _cache_info(k_cache, v_cache)
    if (info is None or q.dtype not in _CODE or (info[4] != _CODE[q.dtype] and q.dtype != torch.float32)
            or info[3] != d or hq % info[2] or not q.is_cpu or q.stride(2) != 1 or (hq > 1 and q.stride(1) != d)
            or not _core.cpu_attention_supports_head_dim(d)):
        return None
    meta = _attn_meta(block_table, seq_lens, query_start_loc)
    if meta is None:
        return None
    rows, bt, bt_stride, max_blocks, sl, qsl, _ = meta
    nb, bs, hk, _, cache_code, kc, vc = info
    out = _empty((t, hq, d), dtype=q.dtype)
    _core.cpu_paged_attention(_CODE[q.dtype], cache_code, t, q.data_ptr(), q.stride(0), out.data_ptr(), hq * d, hq, hk,
                              d, kc, vc, nb, bs, bt, bt_stride, max_blocks, sl, qsl, rows, scale, THREADS,
                              sliding_window, soft_cap)
    return out


def decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale: float, max_seq_len: int | None = None, *,
                     sliding_window: int = 0, soft_cap: float = 0.0):
    window, cap = check_attention_options(sliding_window, soft_cap)
    b, hq, d = q.shape
    if b == 0:
        return q.new_empty((0, hq, d))
    out = _attention(q, k_cache, v_cache, block_table, seq_lens, _arange(b + 1), scale, window, cap)
    if out is None:
        return _ref.decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale, max_seq_len,
                                     sliding_window=window, soft_cap=cap)
    return out


def prefill_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale: float,
                      max_query_len: int | None = None, *, sliding_window: int = 0, soft_cap: float = 0.0):
    window, cap = check_attention_options(sliding_window, soft_cap)
    out = _attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale, window, cap)
    if out is None:
        return _ref.prefill_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale, max_query_len,
                                      sliding_window=window, soft_cap=cap)
    return out


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, num_decode_rows: int, scale: float,
                    max_query_len: int | None = None, max_seq_len: int | None = None, *, sliding_window: int = 0,
                    soft_cap: float = 0.0):
    """Decode and prefill rows in one kernel call (the kernel does not need them ordered). With a
    sliding window, the blocks before each row's window are neither read nor checked (they may be
    the null block 0)."""
    window, cap = check_attention_options(sliding_window, soft_cap)
    out = _attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale, window, cap)
    if out is None:
        return _ref.paged_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, num_decode_rows,
                                    scale, max_query_len, max_seq_len, sliding_window=window, soft_cap=cap)
    return out


# ---- output head ------------------------------------------------------------------------------

def refine_top_logits(logits: torch.Tensor, hidden: torch.Tensor, head_f32: torch.Tensor, k: int) -> torch.Tensor:
    """In place: each row's `k` largest logits recomputed as hidden @ head_f32[id] in float32."""
    r, vocab = logits.shape
    h = hidden.shape[-1]
    if (logits.dtype != torch.float32 or hidden.dtype != torch.float32 or head_f32.dtype != torch.float32
            or not _rows_ok(logits, vocab) or not _rows_ok(hidden, h) or hidden.shape[0] != r
            or head_f32.shape != (vocab, h) or not head_f32.is_contiguous() or not head_f32.is_cpu):
        return _ref.refine_top_logits(logits, hidden, head_f32, k)
    _core.cpu_refine_top_logits(r, vocab, h, logits.data_ptr(), logits.stride(0), hidden.data_ptr(), hidden.stride(0),
                                head_f32.data_ptr(), int(k), THREADS)
    return logits
