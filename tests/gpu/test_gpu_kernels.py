"""Every CUDA kernel against the reference op on fresh random inputs (GPU only).

Outputs (and the split-KV workspace) are poisoned with NaN before each launch, so an element a
kernel fails to write fails the comparison. Caches start NaN too: reading a slot that was never
written shows up as NaN. References run on the CPU (float32 math where the reference does so).
"""

from __future__ import annotations

import pytest
import torch

from lmrs.kernels import cuda as K
from lmrs.kernels import reference as R

DEV = "cuda"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = [pytest.param(F32, id="f32"), pytest.param(F16, id="f16"), pytest.param(BF16, id="bf16")]
TOL = {F32: 1e-4, F16: 2e-3, BF16: 1.6e-2}
GQA = [pytest.param((4, 4), id="g1"), pytest.param((9, 3), id="g3"), pytest.param((8, 2), id="g4")]


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    def nan_output(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(K, "new_output", nan_output)
    K.set_launcher(None)
    yield
    torch.cuda.synchronize()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def close(out, ref, dtype, scale=1.0):
    out = out.cpu()
    assert not torch.isnan(out).any(), f"{int(torch.isnan(out).sum())} unwritten (NaN) elements"
    t = TOL[dtype] * scale
    torch.testing.assert_close(out.float(), ref.float(), atol=t, rtol=t)


# --- elementwise / row kernels -----------------------------------------------------------------


NORM_DTYPES = [  # (x, residual, weight, out): uniform, and the float32 residual stream variants
    (F32, F32, F32, F32), (F16, F16, F16, F16), (BF16, BF16, BF16, BF16),
    (BF16, F32, BF16, BF16), (BF16, F32, BF16, F32), (F16, F32, F32, F16), (BF16, BF16, F32, BF16),
]


@pytest.mark.parametrize("dts", NORM_DTYPES, ids=lambda d: "-".join(str(t)[6:] for t in d))
@pytest.mark.parametrize("rows,hidden", [(1, 576), (7, 576), (300, 4096), (5, 37), (3, 8200)])
def test_rms_norm(dts, rows, hidden):
    xd, rd, wd, od = dts
    g = gen(rows * hidden)
    x = torch.randn(rows, hidden, generator=g).to(xd)
    w = (1 + 0.2 * torch.randn(hidden, generator=g)).to(wd)
    res = torch.randn(rows, hidden, generator=g).to(rd)
    out = K.rms_norm(res.to(DEV, copy=True), w.to(DEV, copy=True), 1e-6, od)
    assert out.dtype == od
    close(out, R.rms_norm(res, w, 1e-6, od), od)
    if xd == rd:
        close(K.rms_norm(x.to(DEV, copy=True), w.to(DEV, copy=True), 1e-6), R.rms_norm(x, w, 1e-6), xd)

    res_gpu = res.to(DEV, copy=True)
    out, r = K.fused_add_rms_norm(x.to(DEV, copy=True), res_gpu, w.to(DEV, copy=True), 1e-6, od)
    eout, eres = R.fused_add_rms_norm(x, res.clone(), w, 1e-6, od)
    assert r is res_gpu and out.dtype == od
    torch.testing.assert_close(r.cpu(), eres, atol=0, rtol=0)
    close(out, eout, od)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,inter", [(1, 1536), (33, 1536), (4, 40), (3, 13), (2, 14336)])
def test_silu_and_mul(dtype, rows, inter):
    x = torch.randn(rows, 2 * inter, generator=gen(inter)).to(dtype)
    close(K.silu_and_mul(x.to(DEV, copy=True)), R.silu_and_mul(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("pos_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_rotary(dtype, d, neox, pos_dtype):
    hq, hk, t = 9, 3, 37
    g = gen(d)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    cs = R.rope_cos_sin_cache(inv, 4096)
    pos = torch.randint(0, 4096, (t,), generator=g).to(pos_dtype)
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=g).to(dtype)
    qkv_gpu = qkv.to(DEV, copy=True)  # q and k are row-strided views of one fused projection, like the model's
    K.rotary_embedding(pos.to(DEV, copy=True), qkv_gpu[:, : hq * d], qkv_gpu[:, hq * d : (hq + hk) * d], cs.to(DEV, copy=True), d, neox)
    q, k = qkv[:, : hq * d].clone(), qkv[:, hq * d : (hq + hk) * d].clone()
    R.rotary_embedding(pos, q, k, cs, d, neox)
    out = qkv_gpu.cpu()
    tol = 1e-6 if dtype == F32 else 0  # same float32 operations, same rounding
    torch.testing.assert_close(out[:, : hq * d], q, atol=tol, rtol=tol)
    torch.testing.assert_close(out[:, hq * d : (hq + hk) * d], k, atol=tol, rtol=tol)
    assert torch.equal(out[:, (hq + hk) * d :], qkv[:, (hq + hk) * d :])  # v untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bs", [16, 32])
@pytest.mark.parametrize("d", [64, 128])
def test_reshape_and_cache(dtype, bs, d):
    hk, t, nb = 3, 50, 12
    g = gen(bs + d)
    kv = torch.randn(t, 3 * hk * d, generator=g).to(dtype)
    key, value = kv[:, : hk * d].view(t, hk, d), kv[:, hk * d : 2 * hk * d].view(t, hk, d)
    slots = torch.randperm(nb * bs, generator=g)[:t].to(torch.int32)
    slots[::7] = -1  # padding tokens
    kc = torch.full((nb, bs, hk, d), float("nan"), dtype=dtype)
    vc = kc.clone()
    kc_gpu, vc_gpu = kc.to(DEV, copy=True), vc.to(DEV, copy=True)
    kv_gpu = kv.to(DEV, copy=True)
    K.reshape_and_cache(kv_gpu[:, : hk * d].view(t, hk, d), kv_gpu[:, hk * d : 2 * hk * d].view(t, hk, d),
                        kc_gpu, vc_gpu, slots.to(DEV, copy=True))
    R.reshape_and_cache(key, value, kc, vc, slots)
    assert torch.equal(kc_gpu.cpu().nan_to_num(7.0), kc.nan_to_num(7.0))
    assert torch.equal(vc_gpu.cpu().nan_to_num(7.0), vc.nan_to_num(7.0))


# --- attention ---------------------------------------------------------------------------------


def make_attn(seq_lens, qlens, hq, hk, d, bs, dtype, seed, extra_blocks=3):
    """Random paged cache (unused slots NaN), shuffled block tables padded with block 0, q as a
    row-strided view of a fused qkv tensor. Returns CPU tensors."""
    g = gen(seed)
    need = sum(-(-s // bs) for s in seq_lens) + extra_blocks
    kc = torch.randn(need, bs, hk, d, generator=g).to(dtype)
    vc = torch.randn(need, bs, hk, d, generator=g).to(dtype)
    # slots past each sequence's length stay NaN: reading one would poison the output
    kc[0] = float("nan")
    vc[0] = float("nan")
    perm = (torch.randperm(need - 1, generator=g) + 1).tolist()
    width = max(-(-s // bs) for s in seq_lens) + 2
    bt = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    for r, s in enumerate(seq_lens):
        n = -(-s // bs)
        blocks = [perm.pop() for _ in range(n)]
        bt[r, :n] = torch.tensor(blocks, dtype=torch.int32)
        tail = s - (n - 1) * bs
        kc[blocks[-1], tail:] = float("nan")
        vc[blocks[-1], tail:] = float("nan")
    t = sum(qlens)
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=g).to(dtype)
    q = qkv[:, : hq * d].view(t, hq, d)
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    qsl = torch.tensor([0] + torch.tensor(qlens).cumsum(0).tolist(), dtype=torch.int32)
    return q, kc, vc, bt, sl, qsl


def gpu(*ts):
    return [t.to(DEV, copy=True) for t in ts]


def gpu_q(q):
    """q's row-strided layout preserved on the GPU."""
    t, hq, d = q.shape
    base = torch.as_strided(q, (t, q.stride(0)), (q.stride(0), 1)) if t else q.reshape(0, hq * d)
    return base.to(DEV, copy=True)[:, : hq * d].view(t, hq, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bs", [16, 32])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("heads", GQA)
def test_decode_attention(dtype, bs, d, heads):
    hq, hk = heads
    seq_lens = [1, bs - 1, bs, bs + 1, 100, 2 * bs + 3, 777, 4500]
    q, kc, vc, bt, sl, _ = make_attn(seq_lens, [1] * len(seq_lens), hq, hk, d, bs, dtype, seed=bs * d + hq)
    ref = R.decode_attention(q, kc.nan_to_num(0), vc.nan_to_num(0), bt, sl, d**-0.5)
    qg = gpu_q(q)
    kg, vg, btg, slg = gpu(kc, vc, bt, sl)
    close(K.decode_attention(qg, kg, vg, btg, slg, d**-0.5, max(seq_lens)), ref, dtype)
    close(K.decode_attention(qg, kg, vg, btg, slg, d**-0.5), ref, dtype)  # length bound from the table


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(16, 2), (14, 2), (24, 2), (10, 5)], ids=["g8", "g7", "g12", "g2"])
def test_decode_attention_other_groups(dtype, heads):
    """GQA groups taking the 8-heads-per-CTA variants (one or two head chunks) and the 2-head one."""
    hq, hk = heads
    seq_lens = [1, 16, 33, 900, 3000]
    q, kc, vc, bt, sl, _ = make_attn(seq_lens, [1] * len(seq_lens), hq, hk, 128, 16, dtype, seed=hq)
    ref = R.decode_attention(q, kc.nan_to_num(0), vc.nan_to_num(0), bt, sl, 128**-0.5)
    close(K.decode_attention(gpu_q(q), *gpu(kc, vc, bt, sl), 128**-0.5, max(seq_lens)), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,ctx", [(1, 4096), (2, 4500), (3, 17000), (64, 1500), (300, 600)])
def test_decode_split_kv(dtype, batch, ctx):
    hq, hk, d, bs = 9, 3, 64, 16
    seq_lens = [ctx - 37 * (i % 5) for i in range(batch)]
    q, kc, vc, bt, sl, _ = make_attn(seq_lens, [1] * batch, hq, hk, d, bs, dtype, seed=batch + ctx)
    ref = R.decode_attention(q, kc.nan_to_num(0), vc.nan_to_num(0), bt, sl, 0.125)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    splits, _ = K.decode_splits(batch * hk * 1, max(seq_lens), sms)
    if batch <= 3:
        assert splits > 1  # these shapes take the flash-decoding path
    out = K.decode_attention(gpu_q(q), *gpu(kc, vc, bt, sl), 0.125, max(seq_lens))
    close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bs", [16, 32])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("heads", GQA)
def test_prefill_attention(dtype, bs, d, heads):
    hq, hk = heads
    # fresh prompts of ragged lengths (1, block boundaries), chunks after a cached prefix, a long one
    qlens = [1, 15, 16, 17, 100, 20, 300, 1]
    ctx = [0, 0, 0, 0, 0, 33, 200, 63]
    seq_lens = [a + b for a, b in zip(qlens, ctx)]
    q, kc, vc, bt, sl, qsl = make_attn(seq_lens, qlens, hq, hk, d, bs, dtype, seed=bs + d + hq)
    ref = R.prefill_attention(q, kc.nan_to_num(0), vc.nan_to_num(0), bt, sl, qsl, d**-0.5)
    args = [gpu_q(q), *gpu(kc, vc, bt, sl, qsl), d**-0.5]
    close(K.prefill_attention(*args, max(qlens)), ref, dtype)
    close(K.prefill_attention(*args), ref, dtype)  # grid sized from the token count


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("nd", [0, 4, 6])
def test_paged_attention_mixed_plan(dtype, d, nd):
    hq, hk, bs = 9, 3, 16
    dec = [1, 37, 700, 5000, 16, 17][:nd]
    pre_q, pre_ctx = [40, 1, 130], [0, 50, 16]
    seq_lens = dec + [a + b for a, b in zip(pre_q, pre_ctx)]
    qlens = [1] * nd + pre_q
    q, kc, vc, bt, sl, qsl = make_attn(seq_lens, qlens, hq, hk, d, bs, dtype, seed=nd + d)
    ref = R.paged_attention(q, kc.nan_to_num(0), vc.nan_to_num(0), bt, sl, qsl, nd, 0.125)
    args = [gpu_q(q), *gpu(kc, vc, bt, sl, qsl), nd, 0.125]
    close(K.paged_attention(*args, max_query_len=max(qlens), max_seq_len=max(seq_lens)), ref, dtype)
    close(K.paged_attention(*args), ref, dtype)


def test_runs_on_the_current_stream():
    """Kernels are ordered after work queued on torch's current (non-default) stream."""
    g = gen(0)
    x = torch.randn(4096, 4096, generator=g).half()
    w = torch.ones(4096, dtype=F16)
    s = torch.cuda.Stream()
    xg = torch.empty(x.shape, dtype=x.dtype, device=DEV)
    wg = w.to(DEV, copy=True)
    src = x.to(DEV, copy=True)
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        torch.cuda._sleep(50_000_000)  # delay the copy: a kernel on another stream would race it
        xg.copy_(src)
        out = K.rms_norm(xg, wg, 1e-6)
    s.synchronize()
    close(out, R.rms_norm(x, w, 1e-6), F16)


def test_wrong_device_rejected():
    x = torch.zeros(2, 8, device=DEV)
    with pytest.raises(ValueError, match="weight: expected a cuda tensor"):
        K.rms_norm(x, torch.ones(8), 1e-6)


# --- issue 12: GeGLU, partial rotary, sliding window, soft-cap, quantized products ---------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,inter", [(1, 2048), (33, 6912), (3, 13)])
def test_gelu_tanh_and_mul(dtype, rows, inter):
    x = (torch.randn(rows, 2 * inter, generator=gen(inter)) * 3).to(dtype)
    close(K.gelu_tanh_and_mul(x.to(DEV, copy=True)), R.gelu_tanh_and_mul(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,rot", [(64, 32), (128, 64), (128, 96), (64, 48)])
@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
def test_partial_rotary(dtype, d, rot, neox):
    hq, hk, t = 9, 3, 37
    g = gen(d + rot)
    inv = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    cs = R.rope_cos_sin_cache(inv, 4096)
    pos = torch.randint(0, 4096, (t,), generator=g).int()
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=g).to(dtype)
    qkv_gpu = qkv.to(DEV, copy=True)
    K.rotary_embedding(pos.to(DEV), qkv_gpu[:, : hq * d], qkv_gpu[:, hq * d : (hq + hk) * d], cs.to(DEV), d, neox,
                       rotary_dim=rot)
    q, k = qkv[:, : hq * d].clone(), qkv[:, hq * d : (hq + hk) * d].clone()
    R.rotary_embedding(pos, q, k, cs, d, neox, rotary_dim=rot)
    out = qkv_gpu.cpu()
    tol = 1e-6 if dtype == F32 else 0
    torch.testing.assert_close(out[:, : hq * d], q, atol=tol, rtol=tol)
    torch.testing.assert_close(out[:, hq * d : (hq + hk) * d], k, atol=tol, rtol=tol)


def null_outside_window(bt, seq_lens, qlens, window, bs):
    """Blocks wholly before every window of their row -> the null block 0 (NaN in make_attn)."""
    bt = bt.clone()
    for r, (s, ql) in enumerate(zip(seq_lens.tolist(), qlens)):
        bt[r, : max(0, s - ql + 1 - window) // bs] = 0
    return bt


WINDOWS = [pytest.param(512, 0.0, id="w512"), pytest.param(4096, 50.0, id="w4096-cap50"),
           pytest.param(100, 30.0, id="w100-cap30"), pytest.param(0, 50.0, id="cap50")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window,cap", WINDOWS)
@pytest.mark.parametrize("heads", GQA)
def test_decode_attention_window_soft_cap(dtype, window, cap, heads):
    hq, hk = heads
    seq_lens = [1, 33, 100, 513, 777, 4500, 9000]
    q, kc, vc, bt, sl, _ = make_attn(seq_lens, [1] * len(seq_lens), hq, hk, 128, 16, dtype, seed=window + hq)
    scale = 0.5 if cap else 128**-0.5
    opts = dict(sliding_window=window, soft_cap=cap)
    ref = R.decode_attention(q, kc.nan_to_num(0), vc.nan_to_num(0), bt, sl, scale, **opts)
    btw = null_outside_window(bt, sl, [1] * len(seq_lens), window, 16) if window else bt
    close(K.decode_attention(gpu_q(q), *gpu(kc, vc, btw, sl), scale, max(seq_lens), **opts), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window,cap", WINDOWS)
def test_decode_split_kv_with_window(dtype, window, cap):
    """Few long sequences: the split-KV path covers just the window."""
    hq, hk, d = 8, 2, 128
    seq_lens = [17000, 9000]
    q, kc, vc, bt, sl, _ = make_attn(seq_lens, [1, 1], hq, hk, d, 16, dtype, seed=window + 3)
    opts = dict(sliding_window=window, soft_cap=cap)
    scale = 0.5 if cap else d**-0.5
    ref = R.decode_attention(q, kc.nan_to_num(0), vc.nan_to_num(0), bt, sl, scale, **opts)
    btw = null_outside_window(bt, sl, [1, 1], window, 16) if window else bt
    close(K.decode_attention(gpu_q(q), *gpu(kc, vc, btw, sl), scale, max(seq_lens), **opts), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window,cap", WINDOWS + [pytest.param(37, 0.0, id="w37")])
@pytest.mark.parametrize("d", [64, 128])
def test_prefill_attention_window_soft_cap(dtype, window, cap, d):
    hq, hk, bs = 9, 3, 16
    qlens = [1, 17, 100, 700, 20, 300]
    ctx = [0, 0, 0, 0, 600, 200]
    seq_lens = [a + b for a, b in zip(qlens, ctx)]
    q, kc, vc, bt, sl, qsl = make_attn(seq_lens, qlens, hq, hk, d, bs, dtype, seed=window + d)
    scale = 0.5 if cap else d**-0.5
    opts = dict(sliding_window=window, soft_cap=cap)
    ref = R.prefill_attention(q, kc.nan_to_num(0), vc.nan_to_num(0), bt, sl, qsl, scale, **opts)
    btw = null_outside_window(bt, sl, qlens, window, bs) if window else bt
    close(K.prefill_attention(gpu_q(q), *gpu(kc, vc, btw, sl, qsl), scale, max(qlens), **opts), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_attention_mixed_window_soft_cap(dtype):
    hq, hk, d, bs, window = 8, 2, 128, 32, 256
    dec = [1, 37, 700, 5000]
    pre_q, pre_ctx = [40, 1, 600], [0, 300, 16]
    seq_lens = dec + [a + b for a, b in zip(pre_q, pre_ctx)]
    qlens = [1] * len(dec) + pre_q
    q, kc, vc, bt, sl, qsl = make_attn(seq_lens, qlens, hq, hk, d, bs, dtype, seed=77)
    opts = dict(sliding_window=window, soft_cap=50.0)
    ref = R.paged_attention(q, kc.nan_to_num(0), vc.nan_to_num(0), bt, sl, qsl, len(dec), 0.4, **opts)
    btw = null_outside_window(bt, sl, qlens, window, bs)
    args = [gpu_q(q), *gpu(kc, vc, btw, sl, qsl), len(dec), 0.4]
    close(K.paged_attention(*args, max_query_len=max(qlens), max_seq_len=max(seq_lens), **opts), ref, dtype)


def random_quant_weight(bits, n, k, seed):
    """A packed weight with random codes and float16 scales / mins (cuda_quant layout, CPU)."""
    from lmrs.kernels.cuda_quant import QuantizedWeight

    g = gen(seed)
    groups = k // 32
    scales = (torch.rand(n, groups, generator=g) * 0.01 + 1e-3).half()
    if bits == 4:
        codes = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8)
        mins = (-8 * scales.float() + torch.randn(n, groups, generator=g) * 1e-3).half()
        return QuantizedWeight(4, codes, scales, mins)
    codes = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    return QuantizedWeight(8, codes, scales, None)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["f16", "bf16"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 7, 8, 9, 64])
@pytest.mark.parametrize("n,k", [(4096, 4096), (576, 1536), (1000, 96)])
def test_quant_matmul(bits, dtype, m, n, k):
    from lmrs.kernels import cuda_quant as Q

    qw = random_quant_weight(bits, n, k, seed=m + n + bits)
    w = Q.dequantize(qw)
    g = gen(m + k)
    x = torch.randn(m, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype) if m in (3, 9) else None
    y = K.quant_matmul(x.to(DEV), qw.to(DEV), None if bias is None else bias.to(DEV))
    ref = x.double() @ w.double().T + (0 if bias is None else bias.double())
    y = y.cpu()
    assert y.dtype == dtype and y.shape == (m, n) and not torch.isnan(y).any()
    err = (y.double() - ref).abs().max() / ref.abs().max()
    assert err <= TOL[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("bits", [4, 8])
def test_quant_dequantize_and_gguf_packing(bits):
    """Hand-made GGUF Q4_0 / Q4_1 / Q8_0 blocks -> packed -> dequantized on the GPU: exact."""
    import numpy as np

    from lmrs.kernels import cuda_quant as Q

    n, k = 64, 256
    rng = np.random.default_rng(bits)
    d = (rng.random((n, k // 32)) * 0.01 + 1e-3).astype(np.float16)
    for qtype in ((2, 3) if bits == 4 else (8,)):
        if qtype == 8:
            qs = rng.integers(-127, 128, (n, k // 32, 32)).astype(np.int8).view(np.uint8)
            blocks = np.concatenate([d[..., None].view(np.uint8), qs], axis=-1)
            expected = d.astype(np.float32)[..., None] * qs.view(np.int8).astype(np.float32)
        else:
            qs = rng.integers(0, 256, (n, k // 32, 16)).astype(np.uint8)
            q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float32)
            if qtype == 2:
                blocks = np.concatenate([d[..., None].view(np.uint8), qs], axis=-1)
                expected = d.astype(np.float32)[..., None] * (q - 8)
            else:
                m = (rng.standard_normal((n, k // 32)) * 0.02).astype(np.float16)
                blocks = np.concatenate([d[..., None].view(np.uint8), m[..., None].view(np.uint8), qs], axis=-1)
                expected = d.astype(np.float32)[..., None] * q + m.astype(np.float32)[..., None]
        qw = Q.pack_gguf(blocks.reshape(n, -1), qtype, (n, k))
        expected = torch.from_numpy(expected.reshape(n, k))
        assert torch.equal(Q.dequantize(qw), expected)
        for dtype in (F16, BF16):
            assert torch.equal(K.quant_dequantize(qw.to(DEV), dtype).cpu(), expected.to(dtype))
