"""CUDA kernel backend: the interface of `reference.py`, backed by the kernels in `cuda/*.cu`.

Each module (`norm`, `rope`, `activation`, `cache`, `decode_attention`, `prefill_attention`,
`quant_matmul`) is
compiled once per GPU architecture with NVRTC (`compile_check.binary_for_device`, cached on disk),
loaded once per device with `cupy.RawModule`, and its kernels are launched on PyTorch's current
stream with torch tensors passed by pointer. Arguments are checked (`cuda_checks`) before any
launch. CuPy is imported lazily: importing this module works without a GPU; calling a kernel
without one raises RuntimeError.

Attention: decode rows use `decode_attention_*` (one CTA per sequence x KV head x head chunk,
GQA-shared K/V reads), split over the KV length (flash-decoding, `decode_reduce_*` combines the
splits) when there are too few CTAs to fill the GPU; prefill rows use `prefill_attention_*`.
With `sliding_window` W both read only the keys inside each query's window (a decode row's CTAs
and splits cover its last W keys), and `soft_cap` caps the scores (`decode_attention_*_cap`, a
separate build so the default one keeps its registers). `rotary_dim` rotates the leading dims of
each head only; `gelu_tanh_and_mul` is GeGLU. Weight-only int4 / int8 matrix products are in
`cuda_quant`.
Attention and cache writes for head dims or block sizes the kernels are not compiled for
(Gemma's 256) and `refine_top_logits` run the reference ops on the GPU tensors;
`rotary_embedding_and_cache` composes the rotary and cache-write kernels.
"""

from __future__ import annotations

import operator
import threading
import warnings

import numpy as np
import torch

from lmrs.kernels import cuda_checks as cc
from lmrs.kernels import reference as _ref

NAME = "cuda"

# Must match the constants in cuda/decode_attention.cu and cuda/prefill_attention.cu.
DECODE_THREADS = 128
MAX_SPLITS = 256
PREFILL_M = 64
PREFILL_N = 32
PREFILL_THREADS = 128
HEADS_PER_CTA = (1, 2, 4, 8)
# Split-KV policy (see decode_splits).
SPLIT_MIN_LEN = 512
SPLIT_MIN_PARTITION = 256
SPLIT_CTAS_PER_SM = 8
_NO_SPLIT_PARTITION = 1 << 30
_LOG2E = 1.4426950408889634
_STATIC_SMEM_LIMIT = 48 * 1024


def prefill_smem_bytes(head_dim: int) -> int:
    """Dynamic shared memory of prefill_attention_*_d<head_dim> (cuda/prefill_attention.cu)."""
    dp = head_dim + 4
    return 4 * (PREFILL_M * dp + 2 * PREFILL_N * dp + PREFILL_M * (PREFILL_N + 4))


def heads_per_cta(group: int) -> int:
    """Query heads a decode CTA handles for a GQA group of `group` heads (a compiled variant)."""
    for h in HEADS_PER_CTA:
        if group <= h:
            return h
    return HEADS_PER_CTA[-1]


def decode_splits(ctas: int, max_len: int, num_sms: int) -> tuple[int, int]:
    """(number of KV splits, keys per split) for a decode launch of `ctas` CTAs without splitting.

    Split only when the sequences are long and there are fewer CTAs than SPLIT_CTAS_PER_SM per SM;
    each split holds at least SPLIT_MIN_PARTITION keys. (1, huge) means no split: then the
    partition covers any length, whatever max_len says.
    """
    target = SPLIT_CTAS_PER_SM * max(1, num_sms)
    if max_len < SPLIT_MIN_LEN or ctas >= target or ctas == 0:
        return 1, _NO_SPLIT_PARTITION
    splits = min(-(-target // ctas), -(-max_len // SPLIT_MIN_PARTITION), MAX_SPLITS)
    if splits <= 1:
        return 1, _NO_SPLIT_PARTITION
    partition = -(-max_len // splits)
    partition = -(-partition // 16) * 16
    splits = -(-max_len // partition)
    return (splits, partition) if splits > 1 else (1, _NO_SPLIT_PARTITION)


def kernel_names() -> dict[str, set[str]]:
    """Every kernel the wrappers can launch, by module (checked against the compiled modules)."""
    names: dict[str, set[str]] = {m: set() for m in ("norm", "rope", "activation", "cache", "decode_attention", "prefill_attention")}
    names["norm"] = {"rms_norm", "fused_add_rms_norm"}  # operand dtypes are run-time arguments
    for dt in cc.FLOAT_DTYPES:
        s = cc.dtype_suffix(dt)
        names["activation"] |= {f"silu_and_mul_{s}", f"gelu_tanh_and_mul_{s}"}
        names["cache"].add(f"reshape_and_cache_{s}")
        for layout in ("neox", "gptj"):
            names["rope"] |= {f"rotary_{layout}_{s}_i32", f"rotary_{layout}_{s}_i64"}
        for d in cc.HEAD_DIMS:
            names["prefill_attention"].add(f"prefill_attention_{s}_d{d}")
            names["decode_attention"].add(f"decode_reduce_{s}_d{d}")
            for h in HEADS_PER_CTA:
                names["decode_attention"] |= {f"decode_attention_{s}_d{d}_g{h}", f"decode_attention_{s}_d{d}_g{h}_cap"}
    from lmrs.kernels.cuda_quant import kernel_names as quant_kernel_names

    names.update(quant_kernel_names())
    return names


# ---------------------------------------------------------------------------------------------
# Launchers: how a kernel call reaches a device. The CuPy one is the real backend; tests may
# install another (tests/test_cuda_emulated.py runs the same sources on the CPU).


class Ptr:
    """A pointer kernel argument: a tensor's data pointer (or NULL for None)."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor | None):
        self.tensor = tensor

    @property
    def value(self) -> int:
        return 0 if self.tensor is None else self.tensor.data_ptr()


class CupyLauncher:
    device_type = "cuda"

    def __init__(self):
        if not torch.cuda.is_available():
            raise RuntimeError("lmrs CUDA kernels need an NVIDIA GPU: torch.cuda.is_available() is False")
        try:
            import cupy
        except Exception as e:  # noqa: BLE001 - any import failure means no usable CuPy
            raise RuntimeError(f"lmrs CUDA kernels need CuPy (pip install cupy-cuda13x): {e}") from e
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(f"CuPy cannot see a CUDA device: {e}") from e
        if n < 1:
            raise RuntimeError("CuPy cannot see a CUDA device")
        self._cupy = cupy
        self._lock = threading.Lock()
        self._modules: dict = {}
        self._funcs: dict = {}
        self._smem_opt: dict = {}
        self._streams: dict = {}
        self._sms: dict = {}

    @staticmethod
    def _index(device: torch.device) -> int:
        return device.index if device.index is not None else torch.cuda.current_device()

    def num_sms(self, device: torch.device) -> int:
        idx = self._index(device)
        if idx not in self._sms:
            self._sms[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
        return self._sms[idx]

    def _function(self, idx: int, module: str, kernel: str):
        key = (idx, module, kernel)
        fn = self._funcs.get(key)
        if fn is None:
            from lmrs.kernels.compile_check import binary_for_device

            with self._lock, self._cupy.cuda.Device(idx):
                mod = self._modules.get((idx, module))
                if mod is None:
                    path = binary_for_device(module, torch.cuda.get_device_capability(idx))
                    mod = self._cupy.RawModule(path=str(path))
                    self._modules[(idx, module)] = mod
                fn = mod.get_function(kernel)
                self._funcs[key] = fn
                self._smem_opt[key] = _STATIC_SMEM_LIMIT
        return fn

    def _stream(self, idx: int):
        ts = torch.cuda.current_stream(idx)
        ptr = ts.cuda_stream
        st = self._streams.get((idx, ptr))
        if st is None:
            st = None
            if hasattr(ts, "__cuda_stream__") and hasattr(self._cupy.cuda.Stream, "from_external"):
                try:  # CuPy >= 14: the CUDA stream protocol
                    st = self._cupy.cuda.Stream.from_external(ts)
                except Exception:  # noqa: BLE001 - fall back to the raw pointer
                    st = None
            if st is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    st = self._cupy.cuda.ExternalStream(ptr, idx)
            self._streams[(idx, ptr)] = st
        return st

    def launch(self, module, kernel, grid, block, args, device, smem=0):
        idx = self._index(device)
        fn = self._function(idx, module, kernel)
        key = (idx, module, kernel)
        if smem > self._smem_opt[key]:
            with self._cupy.cuda.Device(idx):
                fn.max_dynamic_shared_size_bytes = smem  # opt in above 48 KB
            self._smem_opt[key] = smem
        cargs = tuple(np.uint64(a.value) if isinstance(a, Ptr) else a for a in args)
        with self._cupy.cuda.Device(idx), self._stream(idx):
            fn(tuple(grid), tuple(block), cargs, shared_mem=smem)


_launcher = None
_launcher_lock = threading.Lock()


def get_launcher():
    """The active launcher (a CupyLauncher unless a test installed another)."""
    global _launcher
    if _launcher is None:
        with _launcher_lock:
            if _launcher is None:
                _launcher = CupyLauncher()
    return _launcher


def set_launcher(launcher) -> None:
    """Install a launcher (None: back to CuPy on first use). For tests."""
    global _launcher
    _launcher = launcher


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocation of every kernel output and workspace (tests replace it to poison outputs)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _i32(v) -> np.int32:
    if not -(2**31) <= int(v) < 2**31:
        raise ValueError(f"value {v} does not fit a 32-bit kernel argument")
    return np.int32(v)


def _i64(v) -> np.int64:
    return np.int64(v)


def _f32(v) -> np.float32:
    return np.float32(v)


def _round32(n: int, hi: int) -> int:
    return max(32, min(hi, -(-n // 32) * 32))


def _vec_ok(n: int, *tensors: torch.Tensor, width: int | None = None) -> bool:
    """Vector path: n (the row length) a multiple of the vector width (16 bytes of the first
    tensor's dtype, or `width` elements) and every tensor 16-byte aligned."""
    width = width or 16 // tensors[0].element_size()
    return n % width == 0 and all(cc.is_aligned16(t) for t in tensors)


# ---------------------------------------------------------------------------------------------
# The kernel interface (same names and arguments as reference.py).


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    L = get_launcher()
    hidden = cc.check_norm(x, weight, out_dtype=out_dtype)
    dev = cc.check_devices(L.device_type, x=x, weight=weight)
    out = new_output(x.shape, out_dtype or x.dtype, x.device)
    rows = x.numel() // hidden
    if rows:
        vec = _vec_ok(hidden, x, weight, out, width=8)
        n = hidden // 8 if vec else hidden
        code = cc.DTYPE_CODES
        L.launch("norm", "rms_norm", (rows, 1, 1), (_round32(n, 1024), 1, 1),
                 [Ptr(out), Ptr(x), Ptr(weight), _f32(eps), _i32(hidden), _i32(vec),
                  _i32(code[out.dtype]), _i32(code[x.dtype]), _i32(code[weight.dtype])], dev)
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       out_dtype: torch.dtype | None = None):
    """residual += x (in place, in residual's dtype); returns (rms_norm(residual) in out_dtype
    (default x's dtype), residual)."""
    L = get_launcher()
    hidden = cc.check_norm(x, weight, residual, out_dtype)
    dev = cc.check_devices(L.device_type, x=x, residual=residual, weight=weight)
    out = new_output(x.shape, out_dtype or x.dtype, x.device)
    rows = x.numel() // hidden
    if rows:
        vec = _vec_ok(hidden, x, residual, weight, out, width=8)
        n = hidden // 8 if vec else hidden
        code = cc.DTYPE_CODES
        L.launch("norm", "fused_add_rms_norm", (rows, 1, 1), (_round32(n, 1024), 1, 1),
                 [Ptr(out), Ptr(x), Ptr(residual), Ptr(weight), _f32(eps), _i32(hidden), _i32(vec),
                  _i32(code[out.dtype]), _i32(code[x.dtype]), _i32(code[residual.dtype]),
                  _i32(code[weight.dtype])], dev)
    return out, residual


def rope_cos_sin_cache(inv_freq: torch.Tensor, max_positions: int, attention_scaling: float = 1.0) -> torch.Tensor:
    """Same table as the reference (computed once at load time, so PyTorch ops suffice)."""
    return _ref.rope_cos_sin_cache(inv_freq.float().cpu(), max_positions, attention_scaling).to(inv_freq.device)


def rotary_embedding(positions, q, k, cos_sin_cache, head_dim: int, is_neox: bool = True, *,
                     rotary_dim: int | None = None) -> None:
    """Rotate q [T, Hq*D] and k [T, Hk*D] in place (the first `rotary_dim` dims of each head;
    None: all D)."""
    L = get_launcher()
    q3, k3 = cc.check_rotary(positions, q, k, cos_sin_cache, head_dim, rotary_dim)
    rot = cos_sin_cache.shape[1]
    dev = cc.check_devices(L.device_type, positions=positions, q=q, k=k, cos_sin_cache=cos_sin_cache)
    t = positions.shape[0]
    if t == 0 or q3.shape[1] + k3.shape[1] == 0:
        return
    kernel = f"rotary_{'neox' if is_neox else 'gptj'}_{cc.dtype_suffix(q.dtype)}_{'i32' if positions.dtype == torch.int32 else 'i64'}"
    pairs = (q3.shape[1] + k3.shape[1]) * (rot // 2)
    L.launch("rope", kernel, (t, 1, 1), (_round32(pairs, 256), 1, 1),
             [Ptr(positions), Ptr(q3), _i64(q3.stride(0)), Ptr(k3), _i64(k3.stride(0)), Ptr(cos_sin_cache),
              _i32(head_dim), _i32(rot), _i32(q3.shape[1]), _i32(k3.shape[1]), _i64(cos_sin_cache.shape[0])], dev)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2I] = [gate | up] -> silu(gate) * up [T, I]."""
    return _gated_and_mul(x, "silu_and_mul")


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2I] = [gate | up] -> gelu(gate, approximate="tanh") * up [T, I] (GeGLU)."""
    return _gated_and_mul(x, "gelu_tanh_and_mul")


def _gated_and_mul(x: torch.Tensor, kernel: str) -> torch.Tensor:
    L = get_launcher()
    inter = cc.check_silu_and_mul(x)
    dev = cc.check_devices(L.device_type, x=x)
    out = new_output(x.shape[:-1] + (inter,), x.dtype, x.device)
    rows = out.numel() // inter if inter else 0
    if rows:
        vec = _vec_ok(inter, x, out)
        n = inter // (16 // x.element_size()) if vec else inter
        block = _round32(n, 256)
        chunks = min(65535, -(-n // block))
        L.launch("activation", f"{kernel}_{cc.dtype_suffix(x.dtype)}", (rows, chunks, 1), (block, 1, 1),
                 [Ptr(out), Ptr(x), _i32(inter), _i32(vec)], dev)
    return out


def _compiled_for(k_cache) -> bool:
    """Whether the attention and cache kernels are compiled for this cache's head dim and block
    size (otherwise the reference runs)."""
    return k_cache.dim() == 4 and k_cache.shape[3] in cc.HEAD_DIMS and k_cache.shape[1] in cc.BLOCK_SIZES


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping) -> None:
    if not _compiled_for(k_cache):
        return _ref.reshape_and_cache(key, value, k_cache, v_cache, slot_mapping)
    L = get_launcher()
    info = cc.check_reshape_and_cache(key, value, k_cache, v_cache, slot_mapping)
    dev = cc.check_devices(L.device_type, key=key, value=value, k_cache=k_cache, v_cache=v_cache,
                           slot_mapping=slot_mapping)
    t = key.shape[0]
    if t == 0:
        return
    row = info.num_kv_heads * info.head_dim
    items = t * 2 * (row // (16 // key.element_size()))
    grid = min(-(-items // 256), 1 << 20)  # grid-stride loop covers the rest
    L.launch("cache", f"reshape_and_cache_{cc.dtype_suffix(key.dtype)}", (grid, 1, 1), (256, 1, 1),
             [Ptr(key), _i64(key.stride(0)), Ptr(value), _i64(value.stride(0)), Ptr(k_cache), Ptr(v_cache),
              Ptr(slot_mapping), _i32(t), _i32(row), _i64(info.num_blocks * info.block_size)], dev)


def rotary_embedding_and_cache(positions, qkv, num_heads: int, num_kv_heads: int, head_dim: int, cos_sin_cache,
                               is_neox: bool, k_cache, v_cache, slot_mapping, *, rotary_dim: int | None = None) -> None:
    """The fused op of the interface, composed of `rotary_embedding` and `reshape_and_cache`."""
    t = qkv.shape[0]
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    q = qkv[:, :q_size].contiguous()
    k = qkv[:, q_size:q_size + kv_size].contiguous()
    rotary_embedding(positions, q, k, cos_sin_cache, head_dim, is_neox, rotary_dim=rotary_dim)
    qkv[:, :q_size] = q
    reshape_and_cache(k.view(t, num_kv_heads, head_dim),
                      qkv[:, q_size + kv_size:].contiguous().view(t, num_kv_heads, head_dim),
                      k_cache, v_cache, slot_mapping)


refine_top_logits = _ref.refine_top_logits  # torch ops on the GPU


def _q_scale(scale: float, soft_cap: float) -> np.float32:
    """What the attention kernels multiply q by: scale * log2(e) (softmax in the log2 domain), or
    the plain scale when the scores are soft-capped (the kernel applies log2(e) after the cap)."""
    return _f32(scale if soft_cap > 0 else scale * _LOG2E)


def _launch_decode(L, dev, out, q, k_cache, v_cache, block_table, seq_lens, scale, info, rows, max_seq_len,
                   window: int, soft_cap: float):
    """Decode rows 0..rows-1 of q (one token each) into rows 0..rows-1 of out."""
    c = info.cache
    s = cc.dtype_suffix(q.dtype)
    hpc = heads_per_cta(info.group)
    chunks = -(-info.group // hpc)
    ctas_y = c.num_kv_heads * chunks
    if ctas_y > cc.MAX_GRID_Y:
        raise ValueError(f"k_cache: {c.num_kv_heads} KV heads x {chunks} head chunks exceed the grid limit")
    max_len = int(max_seq_len) if max_seq_len is not None else block_table.shape[1] * c.block_size
    if window > 0:
        max_len = min(max_len, window)  # keys a query sees
    splits, partition = decode_splits(rows * ctas_y, max_len, L.num_sms(dev))
    common = [Ptr(q), _i64(q.stride(0)), Ptr(k_cache), Ptr(v_cache), Ptr(block_table), _i64(block_table.stride(0)),
              Ptr(seq_lens), _q_scale(scale, soft_cap), _f32(soft_cap), _i32(window), _i32(c.num_kv_heads),
              _i32(info.group), _i32(c.block_size.bit_length() - 1), _i32(c.num_blocks), _i32(partition)]
    kernel = f"decode_attention_{s}_d{c.head_dim}_g{hpc}" + ("_cap" if soft_cap > 0 else "")
    if splits == 1:
        L.launch("decode_attention", kernel, (rows, ctas_y, 1), (DECODE_THREADS, 1, 1),
                 [Ptr(out), _i64(out.stride(0))] + common + [Ptr(None), Ptr(None)], dev)
        return
    part_out = new_output((rows, info.num_q_heads, splits, c.head_dim), torch.float32, q.device)
    part_lse = new_output((rows, info.num_q_heads, splits), torch.float32, q.device)
    L.launch("decode_attention", kernel, (rows, ctas_y, splits), (DECODE_THREADS, 1, 1),
             [Ptr(None), _i64(0)] + common + [Ptr(part_out), Ptr(part_lse)], dev)
    L.launch("decode_attention", f"decode_reduce_{s}_d{c.head_dim}", (rows, info.num_q_heads, 1),
             (c.head_dim, 1, 1),
             [Ptr(out), _i64(out.stride(0)), Ptr(part_out), Ptr(part_lse), Ptr(seq_lens), _i32(window),
              _i32(info.num_q_heads), _i32(splits), _i32(partition)], dev)


def _launch_prefill(L, dev, out, q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale, info,
                    rows, max_query_len, window: int, soft_cap: float):
    """Prefill rows given by (block_table, seq_lens, query_start_loc[0..rows]) - tensors already
    offset to the first prefill row; query_start_loc values index q and out absolutely."""
    c = info.cache
    smem = prefill_smem_bytes(c.head_dim)
    tiles = max(1, -(-int(max_query_len) * info.group // PREFILL_M))
    L.launch("prefill_attention", f"prefill_attention_{cc.dtype_suffix(q.dtype)}_d{c.head_dim}",
             (tiles, rows, c.num_kv_heads), (PREFILL_THREADS, 1, 1),
             [Ptr(out), _i64(out.stride(0)), Ptr(q), _i64(q.stride(0)), Ptr(k_cache), Ptr(v_cache),
              Ptr(block_table), _i64(block_table.stride(0)), Ptr(seq_lens), Ptr(query_start_loc),
              _q_scale(scale, soft_cap), _f32(soft_cap), _i32(window), _i32(c.num_kv_heads), _i32(info.group),
              _i32(c.block_size.bit_length() - 1), _i32(c.num_blocks)], dev, smem=smem)


def decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale: float, max_seq_len: int | None = None, *,
                     sliding_window: int = 0, soft_cap: float = 0.0):
    """q [B, Hq, D] -> [B, Hq, D]. `max_seq_len` (>= every seq_len) sizes the KV split; without
    it the block table's width bounds the length."""
    if not _compiled_for(k_cache):
        return _ref.decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale, max_seq_len,
                                     sliding_window=sliding_window, soft_cap=soft_cap)
    L = get_launcher()
    info = cc.check_decode(q, k_cache, v_cache, block_table, seq_lens, scale)
    window, cap = cc.check_attention_options(sliding_window, soft_cap)
    dev = cc.check_devices(L.device_type, q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table,
                           seq_lens=seq_lens)
    out = new_output(q.shape, q.dtype, q.device)
    if info.rows:
        _launch_decode(L, dev, out, q, k_cache, v_cache, block_table, seq_lens, scale, info, info.rows, max_seq_len,
                       window, cap)
    return out


def prefill_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale: float,
                      max_query_len: int | None = None, *, sliding_window: int = 0, soft_cap: float = 0.0):
    """q [T, Hq, D] -> [T, Hq, D], rows of any query length. Without `max_query_len` the grid is
    sized for T tokens in one row (correct, but launches idle CTAs)."""
    if not _compiled_for(k_cache):
        return _ref.prefill_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale, max_query_len,
                                      sliding_window=sliding_window, soft_cap=soft_cap)
    L = get_launcher()
    info = cc.check_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale)
    window, cap = cc.check_attention_options(sliding_window, soft_cap)
    dev = cc.check_devices(L.device_type, q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table,
                           seq_lens=seq_lens, query_start_loc=query_start_loc)
    out = new_output(q.shape, q.dtype, q.device)
    if info.rows and info.tokens:
        mq = info.tokens if max_query_len is None else min(int(max_query_len), info.tokens)
        _launch_prefill(L, dev, out, q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale, info,
                        info.rows, mq, window, cap)
    return out


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, num_decode_rows: int, scale: float,
                    max_query_len: int | None = None, max_seq_len: int | None = None, *, sliding_window: int = 0,
                    soft_cap: float = 0.0):
    """A whole plan: the leading `num_decode_rows` rows (one query each, q rows 0..nd-1) through
    the decode kernel, the rest through the prefill kernel, both writing one [T, Hq, D] output."""
    if not _compiled_for(k_cache):
        return _ref.paged_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, num_decode_rows,
                                    scale, max_query_len, max_seq_len, sliding_window=sliding_window,
                                    soft_cap=soft_cap)
    L = get_launcher()
    info = cc.check_paged(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, num_decode_rows, scale)
    window, cap = cc.check_attention_options(sliding_window, soft_cap)
    dev = cc.check_devices(L.device_type, q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table,
                           seq_lens=seq_lens, query_start_loc=query_start_loc)
    nd = operator.index(num_decode_rows)
    out = new_output(q.shape, q.dtype, q.device)
    if nd:
        _launch_decode(L, dev, out, q, k_cache, v_cache, block_table, seq_lens, scale, info, nd, max_seq_len, window,
                       cap)
    rows = info.rows - nd
    if rows and info.tokens > nd:
        mq = info.tokens - nd if max_query_len is None else min(int(max_query_len), info.tokens - nd)
        _launch_prefill(L, dev, out, q, k_cache, v_cache, block_table[nd:], seq_lens[nd:], query_start_loc[nd:],
                        scale, info, rows, mq, window, cap)
    return out


# ---------------------------------------------------------------------------------------------
# Weight-only quantized products (cuda/quant_matmul.cu; layout and packing in cuda_quant.py).

QUANT_GEMV_MAX_M = 8  # above this many rows: dequantize to the activation dtype, then cuBLAS
_QUANT_THREADS, _QUANT_ROWS = 128, 4  # cuda/quant_matmul.cu kQuantThreads, kQuantRows


def quant_matmul(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W^T (+ bias) for a `cuda_quant.QuantizedWeight` W [N, K], x and y
    float16 or bfloat16 (float32 arithmetic). Up to QUANT_GEMV_MAX_M rows the int4 / int8 codes are
    dequantized in registers (memory-bound GEMV); above, W is dequantized to x's dtype on the GPU
    and multiplied by cuBLAS (large M is compute-bound: tensor cores win there)."""
    L = get_launcher()
    m, n, k = cc.check_quant_matmul(x, weight, bias)
    dev = cc.check_devices(L.device_type, x=x, qweight=weight.qweight, scales=weight.scales, mins=weight.mins,
                           bias=bias)
    if m > QUANT_GEMV_MAX_M:
        return torch.nn.functional.linear(x, quant_dequantize(weight, x.dtype), bias)
    out = new_output((m, n), x.dtype, x.device)
    if m == 0:
        return out
    if not (cc.is_aligned16(x) and (m == 1 or (x.stride(0) * x.element_size()) % 16 == 0)):
        x = x.clone()  # (a fresh allocation is aligned)
    rows = next(r for r in (1, 2, 4, 8) if m <= r)
    fmt = "q4" if weight.bits == 4 else "q8"
    L.launch("quant_matmul", f"quant_gemv_{fmt}_{cc.dtype_suffix(x.dtype)}_m{rows}",
             (-(-n // _QUANT_ROWS), 1, 1), (_QUANT_THREADS, 1, 1),
             [Ptr(out), _i64(n), Ptr(x), _i64(x.stride(0)), Ptr(weight.qweight), Ptr(weight.scales),
              Ptr(weight.mins), Ptr(bias), _i32(m), _i32(n), _i32(k)], dev)
    return out


def quant_dequantize(weight, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """W [N, K] of a `cuda_quant.QuantizedWeight` in `dtype` (float16 or bfloat16), on its device."""
    L = get_launcher()
    n, k = cc.check_quant_weight(weight)
    if dtype not in cc.QUANT_ACT_DTYPES:
        raise TypeError(f"dtype: {dtype} is not supported (float16, bfloat16)")
    dev = cc.check_devices(L.device_type, qweight=weight.qweight, scales=weight.scales, mins=weight.mins)
    out = new_output((n, k), dtype, dev)
    items = n * (k // 32)
    fmt = "q4" if weight.bits == 4 else "q8"
    L.launch("quant_matmul", f"quant_dequant_{fmt}_{cc.dtype_suffix(dtype)}", (min(-(-items // 256), 1 << 20), 1, 1),
             (256, 1, 1), [Ptr(out), Ptr(weight.qweight), Ptr(weight.scales), Ptr(weight.mins), _i32(n), _i32(k)],
             dev)
    return out


__all__ = [
    "NAME",
    "rms_norm",
    "fused_add_rms_norm",
    "rope_cos_sin_cache",
    "rotary_embedding",
    "silu_and_mul",
    "gelu_tanh_and_mul",
    "reshape_and_cache",
    "rotary_embedding_and_cache",
    "refine_top_logits",
    "decode_attention",
    "prefill_attention",
    "paged_attention",
]
