"""The CUDA kernels, run on the CPU: `cuda/*.cu` compiled by the host C++ compiler with
`cuda/host_emulation.h` (every CUDA thread an OS thread, barriers and warp shuffles emulated) and
driven through the real wrappers in `lmrs.kernels.cuda` (argument checks, grid sizes, split-KV
policy, pointer/stride arguments), compared against `lmrs.kernels.reference`.

This catches indexing, masking, reduction and launch-geometry bugs without a GPU. It does not
check memory-model, alignment or performance behavior of real hardware (tests/gpu does that).
Skipped when no C++ compiler is found.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrs.kernels import cuda as K
from lmrs.kernels import reference as R
from lmrs.kernels.compile_check import kernel_source_dir

CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no host C++ compiler for the kernel emulation")

_THUNK = ctypes.CFUNCTYPE(None)


class EmuLauncher:
    """Runs kernel launches with the host build of the kernel sources."""

    device_type = "cpu"

    def __init__(self, num_sms: int = 4):
        self._sms = num_sms
        self._libs: dict[str, ctypes.CDLL] = {}
        self.launches: list[tuple[str, tuple, tuple]] = []

    def num_sms(self, device) -> int:
        return self._sms

    def _lib(self, module: str) -> ctypes.CDLL:
        if module not in self._libs:
            src = kernel_source_dir()
            h = hashlib.sha256()
            extra = os.environ.get("LMRS_EMU_CXXFLAGS", "").split()  # e.g. -fsanitize=address
            for p in sorted(src.glob("*.cuh")) + sorted(src.glob("*.h")) + [src / f"{module}.cu"]:
                h.update(p.read_bytes())
            h.update(repr(extra).encode())
            out_dir = Path(tempfile.gettempdir()) / f"lmrs-emu-{os.getuid()}"
            out_dir.mkdir(exist_ok=True)
            so = out_dir / f"{module}-{h.hexdigest()[:16]}.so"
            if not so.exists():
                tmp = so.with_suffix(f".{os.getpid()}.tmp")
                subprocess.run(
                    [CXX, "-std=c++17", "-O2", "-DLMRS_HOST_EMULATION", "-x", "c++", "-shared", "-fPIC",
                     "-pthread", *extra, f"-I{src}", str(src / f"{module}.cu"), "-o", str(tmp)],
                    check=True,
                )
                os.replace(tmp, so)
            self._libs[module] = ctypes.CDLL(str(so))
        return self._libs[module]

    def launch(self, module, kernel, grid, block, args, device, smem=0):
        lib = self._lib(module)
        fn = getattr(lib, kernel)
        fn.restype = None
        cargs = []
        for a in args:
            if isinstance(a, K.Ptr):
                cargs.append(ctypes.c_void_p(a.value))
            elif isinstance(a, np.int32):
                cargs.append(ctypes.c_int32(int(a)))
            elif isinstance(a, np.int64):
                cargs.append(ctypes.c_int64(int(a)))
            elif isinstance(a, np.float32):
                cargs.append(ctypes.c_float(float(a)))
            else:
                raise TypeError(f"unexpected kernel argument {a!r}")
        self.launches.append((kernel, tuple(grid), tuple(block)))
        for g in grid:
            assert 1 <= g < 2**31
        assert grid[1] <= 65535 and grid[2] <= 65535
        thunk = _THUNK(lambda: fn(*cargs))
        lib.lmrs_emu_launch.restype = ctypes.c_int
        rc = lib.lmrs_emu_launch(thunk, *(ctypes.c_uint(int(g)) for g in grid),
                                 *(ctypes.c_uint(int(b)) for b in block), ctypes.c_ulonglong(smem))
        assert rc == 0, f"bad block shape {block}"


def _poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@pytest.fixture
def emu(monkeypatch):
    monkeypatch.setattr(K, "new_output", _poisoned)  # unwritten output elements stay NaN
    launcher = EmuLauncher()
    K.set_launcher(launcher)
    yield launcher
    K.set_launcher(None)


DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float16, id="f16"),
          pytest.param(torch.bfloat16, id="bf16")]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _close(a, b, dtype, scale=1.0):
    assert not torch.isnan(a).any(), "unwritten (NaN) output elements"
    torch.testing.assert_close(a.float(), b.float(), atol=TOL[dtype] * scale, rtol=TOL[dtype] * scale)


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
NORM_DTYPES = [  # (x, residual, weight, out): uniform, and the float32 residual stream variants
    (F32, F32, F32, F32), (F16, F16, F16, F16), (BF16, BF16, BF16, BF16),
    (BF16, F32, BF16, BF16), (BF16, F32, BF16, F32), (F16, F32, F32, F16), (BF16, BF16, F32, BF16),
]


@pytest.mark.parametrize("dts", NORM_DTYPES, ids=lambda d: "-".join(str(t)[6:] for t in d))
@pytest.mark.parametrize("hidden", [64, 576, 37])
def test_rms_norm(emu, dts, hidden):
    xd, rd, wd, od = dts
    g = torch.Generator().manual_seed(hidden)
    x = torch.randn(5, hidden, generator=g).to(xd)
    w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(wd)
    r = torch.randn(5, hidden, generator=g).to(rd)
    out = K.rms_norm(r, w, 1e-5, od)
    assert out.dtype == od
    _close(out, R.rms_norm(r, w, 1e-5, od), od)
    if rd == xd:
        _close(K.rms_norm(x, w, 1e-5), R.rms_norm(x, w, 1e-5), xd)  # default out dtype
    r2 = r.clone()
    out, res = K.fused_add_rms_norm(x, r, w, 1e-5, od)
    eout, eres = R.fused_add_rms_norm(x, r2, w, 1e-5, od)
    assert res is r and out.dtype == od
    torch.testing.assert_close(res, eres, atol=0, rtol=0)  # one rounding of the same sum
    _close(out, eout, od)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [64, 40, 13])
def test_silu_and_mul(emu, dtype, inter):
    x = torch.randn(3, 2 * inter, generator=torch.Generator().manual_seed(inter)).to(dtype)
    _close(K.silu_and_mul(x), R.silu_and_mul(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("pos_dtype", [torch.int32, torch.int64])
def test_rotary(emu, dtype, neox, pos_dtype):
    d, hq, hk, t = 64, 3, 1, 5
    g = torch.Generator().manual_seed(1)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    cs = R.rope_cos_sin_cache(inv, 64)
    pos = torch.tensor([0, 3, 17, 63, 5], dtype=pos_dtype)
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=g).to(dtype)  # q, k are strided views
    q, k = qkv[:, : hq * d], qkv[:, hq * d : (hq + hk) * d]
    q2, k2 = q.clone(), k.clone()
    v_before = qkv[:, (hq + hk) * d :].clone()
    K.rotary_embedding(pos, q, k, cs, d, neox)
    R.rotary_embedding(pos, q2, k2, cs, d, neox)
    torch.testing.assert_close(q, q2, atol=0, rtol=0)
    torch.testing.assert_close(k, k2, atol=0, rtol=0)
    assert torch.equal(qkv[:, (hq + hk) * d :], v_before)


def _cache(nb, bs, hk, d, dtype, g):
    kc = torch.full((nb, bs, hk, d), float("nan")).to(dtype)
    vc = torch.full((nb, bs, hk, d), float("nan")).to(dtype)
    return kc, vc


@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_and_cache(emu, dtype):
    g = torch.Generator().manual_seed(2)
    nb, bs, hk, d, t = 6, 16, 3, 64, 7
    kv = torch.randn(t, 3 * hk * d, generator=g).to(dtype)  # strided key/value views
    key, value = kv[:, : hk * d].view(t, hk, d), kv[:, hk * d : 2 * hk * d].view(t, hk, d)
    slots = torch.tensor([17, 18, -1, 40, 95, 0, 5], dtype=torch.int32)
    kc, vc = _cache(nb, bs, hk, d, dtype, g)
    kc2, vc2 = kc.clone(), vc.clone()
    K.reshape_and_cache(key, value, kc, vc, slots)
    R.reshape_and_cache(key, value, kc2, vc2, slots)
    assert torch.equal(kc.view(-1).view(torch.int8 if dtype != torch.float32 else torch.int32),
                       kc2.view(-1).view(torch.int8 if dtype != torch.float32 else torch.int32))
    assert torch.equal(torch.nan_to_num(vc.float()), torch.nan_to_num(vc2.float()))


def _plan(seq_lens, qlens, bs, nb, g):
    """Random block tables (distinct blocks, shuffled, padded with the null block 0)."""
    rows = len(seq_lens)
    maxb = max(-(-s // bs) for s in seq_lens) + 1
    perm = torch.randperm(nb - 1, generator=g) + 1
    bt = torch.zeros(rows, maxb, dtype=torch.int32)
    i = 0
    for r, s in enumerate(seq_lens):
        n = -(-s // bs)
        bt[r, :n] = perm[i : i + n]
        i += n
    qsl = torch.tensor([0] + list(np.cumsum(qlens)), dtype=torch.int32)
    return bt, torch.tensor(seq_lens, dtype=torch.int32), qsl


def _attn_inputs(seq_lens, qlens, hq, hk, d, bs, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    need = sum(-(-s // bs) for s in seq_lens) + 2
    kc = torch.randn(need, bs, hk, d, generator=g).to(dtype)
    vc = torch.randn(need, bs, hk, d, generator=g).to(dtype)
    bt, sl, qsl = _plan(seq_lens, qlens, bs, need, g)
    t = sum(qlens)
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=g).to(dtype)
    q = qkv[:, : hq * d].view(t, hq, d)  # row-strided like the model's fused projection
    return q, kc, vc, bt, sl, qsl


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,bs,hq,hk", [(64, 16, 3, 1), (128, 32, 4, 2), (64, 32, 2, 2), (64, 16, 9, 3), (128, 16, 12, 1)])
def test_decode(emu, dtype, d, bs, hq, hk):
    seq_lens = [1, 17, bs, 40]
    q, kc, vc, bt, sl, _ = _attn_inputs(seq_lens, [1] * 4, hq, hk, d, bs, dtype, seed=d + hq)
    out = K.decode_attention(q, kc, vc, bt, sl, d**-0.5, max(seq_lens))
    ref = R.decode_attention(q, kc, vc, bt, sl, d**-0.5)
    _close(out, ref, dtype)
    assert all(name.startswith("decode_attention") for name, _, _ in emu.launches)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_split(emu, dtype, monkeypatch):
    monkeypatch.setattr(K, "SPLIT_MIN_LEN", 64)
    monkeypatch.setattr(K, "SPLIT_MIN_PARTITION", 32)
    seq_lens = [200, 3, 64, 129]
    q, kc, vc, bt, sl, _ = _attn_inputs(seq_lens, [1] * 4, 4, 1, 64, 16, dtype, seed=5)
    out = K.decode_attention(q, kc, vc, bt, sl, 0.125, 200)
    ref = R.decode_attention(q, kc, vc, bt, sl, 0.125)
    names = [n for n, _, _ in emu.launches]
    assert names == ["decode_attention_%s_d64_g4" % ("f32" if dtype == torch.float32 else "bf16"),
                     "decode_reduce_%s_d64" % ("f32" if dtype == torch.float32 else "bf16")]
    assert emu.launches[0][1][2] > 1  # split over the KV length
    _close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,bs,hq,hk", [(64, 16, 3, 1), (128, 32, 4, 2), (64, 16, 9, 3)])
def test_prefill(emu, dtype, d, bs, hq, hk):
    # rows: fresh prompt, chunk with a cached prefix, a 1-token chunk, a long-ish prompt
    qlens = [5, 20, 1, 70]
    seq_lens = [5, 20 + 33, 1 + 16, 70]
    q, kc, vc, bt, sl, qsl = _attn_inputs(seq_lens, qlens, hq, hk, d, bs, dtype, seed=7 + d)
    out = K.prefill_attention(q, kc, vc, bt, sl, qsl, d**-0.5, max(qlens))
    ref = R.prefill_attention(q, kc, vc, bt, sl, qsl, d**-0.5)
    _close(out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float16])
def test_paged_mixed(emu, dtype):
    qlens = [1, 1, 1, 12, 3]
    seq_lens = [9, 33, 16, 12, 3 + 40]
    q, kc, vc, bt, sl, qsl = _attn_inputs(seq_lens, qlens, 9, 3, 64, 16, dtype, seed=11)
    out = K.paged_attention(q, kc, vc, bt, sl, qsl, 3, 0.125, max_query_len=12, max_seq_len=43)
    ref = R.paged_attention(q, kc, vc, bt, sl, qsl, 3, 0.125)
    _close(out, ref, dtype)
    out2 = K.paged_attention(q, kc, vc, bt, sl, qsl, 3, 0.125)  # no max lengths: bounds from shapes
    _close(out2, ref, dtype)


# --- issue 12: GeGLU, partial rotary, sliding window, soft-cap, quantized products ---------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [64, 13])
def test_gelu_tanh_and_mul(emu, dtype, inter):
    x = (torch.randn(3, 2 * inter, generator=torch.Generator().manual_seed(inter)) * 3).to(dtype)
    _close(K.gelu_tanh_and_mul(x), R.gelu_tanh_and_mul(x), dtype)
    assert emu.launches[-1][0].startswith("gelu_tanh_and_mul_")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("d,rot", [(64, 32), (128, 96)])
def test_partial_rotary(emu, dtype, neox, d, rot):
    hq, hk, t = 3, 1, 5
    g = torch.Generator().manual_seed(rot)
    inv = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    cs = R.rope_cos_sin_cache(inv, 64)
    pos = torch.tensor([0, 3, 17, 63, 5], dtype=torch.int32)
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=g).to(dtype)
    q, k = qkv[:, : hq * d], qkv[:, hq * d : (hq + hk) * d]
    q2, k2 = q.clone(), k.clone()
    K.rotary_embedding(pos, q, k, cs, d, neox, rotary_dim=rot)
    R.rotary_embedding(pos, q2, k2, cs, d, neox, rotary_dim=rot)
    torch.testing.assert_close(q, q2, atol=0, rtol=0)
    torch.testing.assert_close(k, k2, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"cos_sin_cache: expected 96 columns|cos_sin_cache: expected 32 columns"):
        K.rotary_embedding(pos, q, k, R.rope_cos_sin_cache(1.0 / (10000 ** (torch.arange(0, d, 2).float() / d)), 64),
                           d, neox, rotary_dim=rot)


def _null_outside_window(bt, seq_lens, qlens, window, bs):
    """Blocks wholly before every window of their row -> the null block 0, filled with NaN."""
    bt = bt.clone()
    for r, (s, ql) in enumerate(zip(seq_lens.tolist(), qlens)):
        bt[r, : max(0, s - ql + 1 - window) // bs] = 0
    return bt


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window,cap", [(24, 0.0), (7, 30.0), (1000, 50.0), (0, 30.0)])
def test_decode_window_and_soft_cap(emu, dtype, window, cap):
    seq_lens = [1, 17, 40, 90]
    q, kc, vc, bt, sl, _ = _attn_inputs(seq_lens, [1] * 4, 4, 2, 64, 16, dtype, seed=window + 1)
    scale = 0.6 if cap else 0.125  # scores large enough for the cap to matter
    opts = dict(sliding_window=window, soft_cap=cap)
    ref = R.decode_attention(q, kc, vc, bt, sl, scale, **opts)
    kc[0], vc[0] = float("nan"), float("nan")
    out = K.decode_attention(q, kc, vc, _null_outside_window(bt, sl, [1] * 4, window, 16) if window else bt, sl,
                             scale, max(seq_lens), **opts)
    _close(out, ref, dtype)
    assert emu.launches[-1][0].endswith("_cap") == (cap > 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_split_with_window(emu, dtype, monkeypatch):
    """Split-KV over a window: the splits cover the window only (so fewer than without it)."""
    monkeypatch.setattr(K, "SPLIT_MIN_LEN", 32)
    monkeypatch.setattr(K, "SPLIT_MIN_PARTITION", 16)
    seq_lens, window = [300, 5, 100, 64], 70
    q, kc, vc, bt, sl, _ = _attn_inputs(seq_lens, [1] * 4, 4, 1, 64, 16, dtype, seed=9)
    ref = R.decode_attention(q, kc, vc, bt, sl, 0.125, sliding_window=window, soft_cap=20.0)
    kc[0], vc[0] = float("nan"), float("nan")
    out = K.decode_attention(q, kc, vc, _null_outside_window(bt, sl, [1] * 4, window, 16), sl, 0.125, 300,
                             sliding_window=window, soft_cap=20.0)
    splits = emu.launches[0][1][2]
    assert [n for n, _, _ in emu.launches][1].startswith("decode_reduce") and 1 < splits <= -(-window // 16)
    _close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window,cap", [(16, 0.0), (21, 50.0), (500, 30.0), (1, 0.0)])
def test_prefill_window_and_soft_cap(emu, dtype, window, cap):
    qlens = [5, 20, 1, 70]
    seq_lens = [5, 20 + 33, 1 + 16, 70]
    q, kc, vc, bt, sl, qsl = _attn_inputs(seq_lens, qlens, 6, 2, 64, 16, dtype, seed=window)
    scale = 0.6 if cap else 0.125
    opts = dict(sliding_window=window, soft_cap=cap)
    ref = R.prefill_attention(q, kc, vc, bt, sl, qsl, scale, **opts)
    kc[0], vc[0] = float("nan"), float("nan")
    out = K.prefill_attention(q, kc, vc, _null_outside_window(bt, sl, qlens, window, 16), sl, qsl, scale,
                              max(qlens), **opts)
    _close(out, ref, dtype)


def test_paged_mixed_window_and_soft_cap(emu):
    qlens = [1, 1, 12, 3]
    seq_lens = [9, 60, 12, 3 + 40]
    q, kc, vc, bt, sl, qsl = _attn_inputs(seq_lens, qlens, 9, 3, 64, 16, torch.bfloat16, seed=13)
    opts = dict(sliding_window=10, soft_cap=50.0)
    ref = R.paged_attention(q, kc, vc, bt, sl, qsl, 2, 0.3, **opts)
    out = K.paged_attention(q, kc, vc, bt, sl, qsl, 2, 0.3, max_query_len=12, max_seq_len=60, **opts)
    _close(out, ref, torch.bfloat16)
    with pytest.raises(ValueError, match="^sliding_window: expected an int >= 0"):
        K.paged_attention(q, kc, vc, bt, sl, qsl, 2, 0.3, sliding_window=-4)
    with pytest.raises(ValueError, match="^soft_cap: expected a finite number >= 0"):
        K.paged_attention(q, kc, vc, bt, sl, qsl, 2, 0.3, soft_cap=float("nan"))


# quantized products: GGUF blocks -> packed layout -> emulated kernels


def _gguf_weight(qtype_name, n, k, seed):
    gguf = pytest.importorskip("gguf")
    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 0.05
    blocks = gguf.quants.quantize(w, qtype)
    return blocks, int(qtype), torch.from_numpy(gguf.quants.dequantize(blocks, qtype).reshape(n, k).copy())


QTYPES = ["Q4_0", "Q4_1", "Q8_0"]


@pytest.mark.parametrize("qtype", QTYPES)
def test_packing_gguf_blocks_is_exact(qtype):
    from lmrs.kernels import cuda_quant as Q

    blocks, qt, w = _gguf_weight(qtype, 24, 160, seed=1)
    qw = Q.pack_gguf(blocks, qt, (24, 160))
    assert qw.bits == (8 if qtype == "Q8_0" else 4) and (qw.n, qw.k) == (24, 160)
    assert torch.equal(Q.dequantize(qw), w)  # bit for bit
    # the GGUF blocks' bytes (Q4_0 gains a min per block: the kernel has one layout for both Q4s)
    assert qw.nbytes == blocks.size + (24 * 160 // 32 * 2 if qtype == "Q4_0" else 0)
    with pytest.raises(ValueError, match="^blocks: "):
        Q.pack_gguf(blocks[:, :-1], qt, (24, 160))
    with pytest.raises(ValueError, match="^qtype: "):
        Q.pack_gguf(blocks, 12, (24, 160))


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("m", [1, 3, 8])
def test_quant_gemv(emu, qtype, dtype, m):
    from lmrs.kernels import cuda_quant as Q

    n, k = 10, 96  # a partial CTA of columns (4 per CTA), three groups
    blocks, qt, w = _gguf_weight(qtype, n, k, seed=m)
    qw = Q.pack_gguf(blocks, qt, (n, k))
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k + 8, generator=g).to(dtype)[:, :k]  # row-strided (16-byte aligned rows)
    bias = torch.randn(n, generator=g).to(dtype) if m == 3 else None
    y = K.quant_matmul(x, qw, bias)
    assert emu.launches[-1][0] == f"quant_gemv_{'q8' if qw.bits == 8 else 'q4'}_{'f16' if dtype == torch.float16 else 'bf16'}_m{min(r for r in (1, 2, 4, 8) if r >= m)}"
    expected = x.double() @ w.double().T + (0 if bias is None else bias.double())
    assert y.dtype == dtype and y.shape == (m, n)
    _close(y, expected, dtype, scale=2)
    # one-hot rows read single weights: exactly the GGUF dequantized values (rounded to dtype)
    cols = torch.tensor([0, 31, 33, 95, 17, 64, 48, 1][:m])
    onehot = torch.zeros(m, k, dtype=dtype)
    onehot[torch.arange(m), cols] = 1
    assert torch.equal(K.quant_matmul(onehot, qw), w[:, cols].T.to(dtype))


@pytest.mark.parametrize("qtype", QTYPES)
def test_quant_dequantize_and_large_m(emu, qtype):
    from lmrs.kernels import cuda_quant as Q

    n, k = 6, 64
    blocks, qt, w = _gguf_weight(qtype, n, k, seed=4)
    qw = Q.pack_gguf(blocks, qt, (n, k))
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(K.quant_dequantize(qw, dtype), w.to(dtype))
    x = torch.randn(K.QUANT_GEMV_MAX_M + 3, k, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    y = K.quant_matmul(x, qw)  # above the GEMV rows: dequantize, then a (here CPU) GEMM
    assert emu.launches[-1][0] == f"quant_dequant_{'q8' if qw.bits == 8 else 'q4'}_bf16"
    _close(y, x.float() @ w.to(torch.bfloat16).float().T, torch.bfloat16)


def test_quantize_from_float_weights(emu):
    from lmrs.kernels import cuda_quant as Q

    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(2)) * 0.1
    for bits, step in ((4, 15), (8, 127)):
        qw = Q.quantize(w, bits)
        err = (Q.dequantize(qw) - w).abs().max()
        spread = (w.view(8, 2, 32).amax(-1) - w.view(8, 2, 32).amin(-1)).max() if bits == 4 else w.abs().max()
        assert 0 < err <= spread / step  # within one quantization step
        x = torch.randn(2, 64, generator=torch.Generator().manual_seed(3)).half()
        _close(K.quant_matmul(x, qw), x.float() @ Q.dequantize(qw).T, torch.float16, scale=2)
