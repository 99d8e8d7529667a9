"""The Rust CPU kernels' options for the model families of issue 12 (GeGLU, partial rotary,
sliding-window and soft-capped attention) against the PyTorch reference, with the fixtures and
helpers of test_cpu_kernels.py (NaN-poisoned outputs, both ISAs)."""

from __future__ import annotations

import math

import pytest
import torch

from lmrs.kernels import cpu
from lmrs.kernels import reference as ref
from test_cpu_kernels import DTYPES, close, fill_context, isa, kv_caches, make_plan, nan_outputs  # noqa: F401, F811

# ---- issue 12: GeGLU, partial rotary, sliding-window and soft-capped attention ------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2048), (33, 1536), (4, 40)])
def test_gelu_tanh_and_mul(isa, dtype, shape):
    g = torch.Generator().manual_seed(shape[0] + 7)
    x = (torch.randn(shape[0], 2 * shape[1], generator=g) * 4).to(dtype)
    gate, up = x.float().chunk(2, dim=-1)
    expected = (torch.nn.functional.gelu(gate, approximate="tanh") * up).to(dtype)  # rounded once
    out = cpu.gelu_tanh_and_mul(x)
    assert out.shape == (shape[0], shape[1]) and out.dtype == dtype
    close(out, expected)
    close(out, ref.gelu_tanh_and_mul(x), dtype)
    # a strided view of the rows (the model passes the MLP's fused output)
    wide = torch.randn(shape[0], 2 * shape[1] + 16, generator=g).to(dtype)[:, : 2 * shape[1]]
    close(cpu.gelu_tanh_and_mul(wide), ref.gelu_tanh_and_mul(wide.contiguous()), dtype)


def rope_cache_partial(rotary_dim, max_pos=4096, base=10000.0):
    inv = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    return ref.rope_cos_sin_cache(inv, max_pos)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 32), (64, 48), (128, 64), (128, 96), (96, 96)])
@pytest.mark.parametrize("is_neox", [True, False])
def test_partial_rotary_is_exact(isa, dtype, head_dim, rotary_dim, is_neox):
    g = torch.Generator().manual_seed(head_dim + rotary_dim)
    t, hq, hk, nb, bs = 13, 6, 2, 8, 16
    cs = rope_cache_partial(rotary_dim)
    qkv = torch.randn(t, (hq + 2 * hk) * head_dim, generator=g).to(dtype)
    pos = torch.randint(0, 4096, (t,), generator=g, dtype=torch.int32)
    qs, ks = hq * head_dim, hk * head_dim
    # in place on strided q / k views
    q1, k1 = qkv[:, :qs].clone(), qkv[:, qs : qs + ks].clone()
    q2, k2 = q1.clone(), k1.clone()
    cpu.rotary_embedding(pos, q1, k1, cs, head_dim, is_neox, rotary_dim=rotary_dim)
    ref.rotary_embedding(pos.long(), q2, k2, cs, head_dim, is_neox, rotary_dim=rotary_dim)
    assert torch.equal(q1, q2) and torch.equal(k1, k2)
    # the pass-through dims are untouched, the rotated ones changed
    heads = q1.view(t, hq, head_dim)
    before = qkv[:, :qs].view(t, hq, head_dim)
    assert torch.equal(heads[..., rotary_dim:], before[..., rotary_dim:])
    assert not torch.equal(heads[..., :rotary_dim], before[..., :rotary_dim])
    # fused with the cache write: k (rotated + passed through) and v land in the cache
    slots = torch.randperm(nb * bs, generator=g)[:t].to(torch.int32)
    slots[3] = -1
    c1, c2 = kv_caches(nb, bs, hk, head_dim, dtype), kv_caches(nb, bs, hk, head_dim, dtype)
    qkv1, qkv2 = qkv.clone(), qkv.clone()
    cpu.rotary_embedding_and_cache(pos, qkv1, hq, hk, head_dim, cs, is_neox, *c1, slots, rotary_dim=rotary_dim)
    ref.rotary_embedding_and_cache(pos, qkv2, hq, hk, head_dim, cs, is_neox, *c2, slots, rotary_dim=rotary_dim)
    assert torch.equal(qkv1[:, :qs], qkv2[:, :qs])
    for a, b in zip(c1, c2):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


def test_partial_rotary_rejects_bad_arguments():
    q, k = torch.randn(2, 64), torch.randn(2, 64)
    pos = torch.tensor([0, 1], dtype=torch.int32)
    for bad in (0, 33, 66, -2, 2.5, True):
        with pytest.raises(ValueError, match="rotary_dim"):
            cpu.rotary_embedding(pos, q, k, rope_cache_partial(32), 64, rotary_dim=bad)
    with pytest.raises(ValueError, match=r"cos_sin_cache: expected \[max_positions, 32\]"):
        cpu.rotary_embedding(pos, q, k, rope_cache_partial(64), 64, rotary_dim=32)


WINDOW_CASES = [
    # (head_dim, hq, hk, block_size, q_lens, ctx_lens, window)
    (64, 9, 3, 16, [1, 1, 1, 1], [0, 15, 200, 300], 32),  # decode, window on block boundaries
    (64, 8, 2, 32, [1, 1, 7, 40], [31, 77, 0, 90], 50),  # decode + chunked prefill, unaligned window
    (128, 4, 4, 16, [1, 3, 1, 20], [5, 0, 130, 33], 4096),  # window longer than every context
    (128, 12, 3, 32, [1, 150], [300, 0], 37),  # a prefill chunk much longer than the window
    (64, 6, 2, 16, [17, 1], [0, 40], 1),  # each query sees only itself
    (80, 4, 2, 16, [1, 5, 1], [100, 20, 18], 19),  # head dim 80, GQA 2
]


def _outside_window_to_null(bt, seq_lens, qsl, window, bs):
    """The block table with every block that lies wholly before all of its row's windows replaced
    by the null block 0 (left NaN in the cache): a kernel that reads one returns NaN."""
    bt = bt.clone()
    for r in range(bt.shape[0]):
        ctx = int(seq_lens[r]) - int(qsl[r + 1] - qsl[r])
        first = max(0, ctx + 1 - window) // bs
        bt[r, :first] = 0
    return bt


@pytest.mark.parametrize("dtype,soft_cap", [(torch.float32, 0.0), (torch.float32, 50.0), (torch.bfloat16, 30.0),
                                           (torch.float16, 0.0), (torch.float16, 50.0)],
                         ids=["f32", "f32-cap50", "bf16-cap30", "f16", "f16-cap50"])
@pytest.mark.parametrize("case", WINDOW_CASES, ids=lambda c: f"d{c[0]}-g{c[1] // c[2]}-bs{c[3]}-w{c[6]}")
def test_attention_with_window_and_soft_cap(isa, dtype, case, soft_cap):
    d, hq, hk, bs, q_lens, ctx_lens, window = case
    g = torch.Generator().manual_seed(sum(q_lens) + d + window)
    num_blocks = 64
    bt, seq_lens, qsl = make_plan(g, q_lens, ctx_lens, bs, num_blocks)
    k_cache, v_cache = kv_caches(num_blocks, bs, hk, d, dtype)
    fill_context(g, k_cache, v_cache, bt, seq_lens, dtype)
    t = int(qsl[-1])
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=g).to(dtype)
    q = qkv[:, : hq * d].view(t, hq, d)
    nd = next((i for i, ql in enumerate(q_lens) if ql != 1), len(q_lens))
    # with a cap, scores of std sqrt(d) (up to ~+-30 on these random vectors), so the cap bites
    scale = 1.0 if soft_cap else 1.0 / math.sqrt(d)
    opts = dict(sliding_window=window, soft_cap=soft_cap)
    sparse_bt = _outside_window_to_null(bt, seq_lens, qsl, window, bs)
    out = cpu.paged_attention(q, k_cache, v_cache, sparse_bt, seq_lens, qsl, nd, scale, max(q_lens),
                              int(seq_lens.max()), **opts)
    kz, vz = k_cache.nan_to_num(0.0), v_cache.nan_to_num(0.0)
    expected = ref.paged_attention(q.contiguous(), kz, vz, bt, seq_lens, qsl, nd, scale, max(q_lens),
                                   int(seq_lens.max()), **opts)
    close(out, expected)
    if soft_cap and window > 1:  # the cap changes the result (the test would not see a kernel that ignored it)
        uncapped = ref.paged_attention(q.contiguous(), kz, vz, bt, seq_lens, qsl, nd, scale, sliding_window=window)
        assert (uncapped.float() - expected.float()).abs().max() > 0.02
    if window < int(seq_lens.max()):  # ... and so does the window
        full = ref.paged_attention(q.contiguous(), kz, vz, bt, seq_lens, qsl, nd, scale, soft_cap=soft_cap)
        assert (full.float() - expected.float()).abs().max() > 0.05
    # the decode and prefill entry points take the options too
    if 0 < nd < len(q_lens):
        dec = cpu.decode_attention(q[:nd], k_cache, v_cache, sparse_bt[:nd], seq_lens[:nd], scale, **opts)
        close(dec, expected[:nd])
        pre = cpu.prefill_attention(q[nd:], k_cache, v_cache, sparse_bt[nd:], seq_lens[nd:], qsl[nd:] - qsl[nd],
                                    scale, **opts)
        close(pre, expected[nd:])


def test_window_blocks_are_not_checked_either():
    """Blocks before the window may hold any id (the scheduler may free them): neither read nor
    checked; the blocks inside it still are."""
    d, hq, hk, bs = 64, 4, 2, 16
    g = torch.Generator().manual_seed(3)
    bt, seq_lens, qsl = make_plan(g, [1], [99], bs, 16)
    kc, vc = kv_caches(16, bs, hk, d, torch.float32)
    fill_context(g, kc, vc, bt, seq_lens, torch.float32)
    q = torch.randn(1, hq, d, generator=g)
    expected = ref.decode_attention(q, kc.nan_to_num(0.0), vc.nan_to_num(0.0), bt, seq_lens, 0.125, sliding_window=20)
    bad = bt.clone()
    bad[0, :5] = 10_000  # positions 0..79 are before the window (80..99)
    close(cpu.decode_attention(q, kc, vc, bad, seq_lens, 0.125, sliding_window=20), expected)
    bad[0, 5] = 10_000
    with pytest.raises(ValueError, match="block id 10000"):
        cpu.decode_attention(q, kc, vc, bad, seq_lens, 0.125, sliding_window=20)


@pytest.mark.parametrize("bad", [dict(sliding_window=-1), dict(sliding_window=2.5), dict(soft_cap=-1.0),
                                 dict(soft_cap=float("nan")), dict(soft_cap=float("inf")), dict(soft_cap="30")])
def test_attention_options_are_checked(bad):
    g = torch.Generator().manual_seed(1)
    bt, seq_lens, qsl = make_plan(g, [1], [5], 16, 4)
    kc, vc = kv_caches(4, 16, 1, 64, torch.float32)
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        cpu.paged_attention(torch.randn(1, 2, 64), kc, vc, bt, seq_lens, qsl, 1, 0.125, **bad)


def test_uncovered_layouts_pass_the_options_to_the_reference():
    """Head dim 48 (no compiled attention kernel) and float64 (no Rust kernels) run the reference,
    with the window, cap, rotary_dim and GeGLU options intact."""
    g = torch.Generator().manual_seed(4)
    bt, seq_lens, qsl = make_plan(g, [1, 6], [40, 3], 16, 8)
    kc, vc = torch.randn(8, 16, 1, 48, generator=g), torch.randn(8, 16, 1, 48, generator=g)
    q = torch.randn(7, 2, 48, generator=g)
    opts = dict(sliding_window=5, soft_cap=3.0)
    out = cpu.paged_attention(q, kc, vc, bt, seq_lens, qsl, 1, 0.3, **opts)
    close(out, ref.paged_attention(q, kc, vc, bt, seq_lens, qsl, 1, 0.3, **opts))
    assert (out - ref.paged_attention(q, kc, vc, bt, seq_lens, qsl, 1, 0.3)).abs().max() > 1e-3
    x = torch.randn(3, 8, dtype=torch.float64, generator=g)
    assert torch.equal(cpu.gelu_tanh_and_mul(x), ref.gelu_tanh_and_mul(x))
    qd, kd = torch.randn(2, 64, dtype=torch.float64), torch.randn(2, 64, dtype=torch.float64)
    q2, k2 = qd.clone(), kd.clone()
    pos = torch.tensor([1, 7], dtype=torch.int32)
    cpu.rotary_embedding(pos, qd, kd, rope_cache_partial(32), 64, rotary_dim=32)
    ref.rotary_embedding(pos, q2, k2, rope_cache_partial(32), 64, rotary_dim=32)
    assert torch.equal(qd, q2) and torch.equal(kd, k2)
