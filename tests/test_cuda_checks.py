"""The CUDA wrappers' argument checks (lmrs.kernels.cuda_checks) and launch policy, without a GPU.

The checks run on CPU tensors with device_type "cpu" (shape/dtype/layout rules do not depend on
the device); device errors are checked with device_type "cuda".
"""

from __future__ import annotations

import pytest
import torch

from lmrs.kernels import cuda as K
from lmrs.kernels import cuda_checks as cc

F16 = torch.float16


def _cache(nb=4, bs=16, hk=2, d=64, dtype=F16):
    return torch.zeros(nb, bs, hk, d, dtype=dtype), torch.zeros(nb, bs, hk, d, dtype=dtype)


def _decode_args(b=3, hq=4, hk=2, d=64, bs=16, dtype=F16):
    kc, vc = _cache(bs=bs, hk=hk, d=d, dtype=dtype)
    q = torch.zeros(b, hq, d, dtype=dtype)
    bt = torch.zeros(b, 2, dtype=torch.int32)
    sl = torch.ones(b, dtype=torch.int32)
    return dict(q=q, k_cache=kc, v_cache=vc, block_table=bt, seq_lens=sl, scale=0.125)


def _prefill_args(**kw):
    a = _decode_args(**kw)
    a["query_start_loc"] = torch.arange(a["seq_lens"].shape[0] + 1, dtype=torch.int32)
    return a


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


# --- norms, activation -------------------------------------------------------------------------


def test_norm_ok():
    assert cc.check_norm(torch.zeros(3, 8, dtype=F16), torch.ones(8, dtype=F16)) == 8


def test_norm_errors():
    x = torch.zeros(3, 8, dtype=F16)
    _raises(TypeError, "^x: dtype torch.float64", cc.check_norm, x.double(), torch.ones(8, dtype=torch.float64))
    assert cc.check_norm(x, torch.ones(8), torch.zeros(3, 8), torch.float32) == 8  # mixed dtypes are fine
    _raises(TypeError, "^out_dtype: torch.int8 is not supported", cc.check_norm, x, torch.ones(8, dtype=F16), None, torch.int8)
    _raises(TypeError, "^weight: dtype torch.int32", cc.check_norm, x, torch.ones(8, dtype=torch.int32))
    _raises(ValueError, r"^weight: expected shape \(8,\)", cc.check_norm, x, torch.ones(4, dtype=F16))
    _raises(ValueError, "^x: must be contiguous", cc.check_norm, torch.zeros(8, 3, dtype=F16).t(), torch.ones(8, dtype=F16))
    _raises(ValueError, "^residual: shape", cc.check_norm, x, torch.ones(8, dtype=F16), torch.zeros(2, 8, dtype=F16))
    _raises(TypeError, "^residual: dtype torch.float64", cc.check_norm, x, torch.ones(8, dtype=F16), torch.zeros(3, 8).double())
    _raises(TypeError, "^x: expected a torch.Tensor", cc.check_norm, [1.0], torch.ones(1))


def test_silu_errors():
    assert cc.check_silu_and_mul(torch.zeros(2, 10)) == 5
    _raises(ValueError, "^x: last dim must be even", cc.check_silu_and_mul, torch.zeros(2, 7))
    _raises(ValueError, "^x: must be contiguous", cc.check_silu_and_mul, torch.zeros(10, 2).t())
    _raises(TypeError, "^x: dtype torch.int32", cc.check_silu_and_mul, torch.zeros(2, 4, dtype=torch.int32))


# --- rotary ------------------------------------------------------------------------------------


def _rope_args(t=4, hq=3, hk=1, d=64):
    qkv = torch.zeros(t, (hq + 2 * hk) * d, dtype=F16)
    return dict(positions=torch.arange(t, dtype=torch.int32), q=qkv[:, : hq * d], k=qkv[:, hq * d : (hq + hk) * d],
                cos_sin_cache=torch.zeros(32, d), head_dim=d)


def test_rotary_ok_strided_views():
    a = _rope_args()
    q3, k3 = cc.check_rotary(**a)
    assert q3.shape == (4, 3, 64) and k3.shape == (4, 1, 64) and q3.stride(0) == 5 * 64


def test_rotary_errors():
    a = _rope_args()
    _raises(TypeError, "^positions: expected dtype torch.int32 or torch.int64", cc.check_rotary,
            **{**a, "positions": a["positions"].float()})
    _raises(TypeError, "^cos_sin_cache: expected dtype torch.float32", cc.check_rotary,
            **{**a, "cos_sin_cache": a["cos_sin_cache"].half()})
    _raises(ValueError, "^cos_sin_cache: expected 64 columns", cc.check_rotary,
            **{**a, "cos_sin_cache": torch.zeros(32, 32)})
    _raises(ValueError, "^q: 3 tokens", cc.check_rotary, **{**a, "q": a["q"][:3]})
    _raises(TypeError, "^k: expected dtype torch.float16", cc.check_rotary, **{**a, "k": a["k"].float()})
    _raises(ValueError, "^q: last dim 96 is not a multiple of head_dim 64", cc.check_rotary,
            **{**a, "q": torch.zeros(4, 96, dtype=F16)})
    _raises(ValueError, "^head_dim: expected a positive even int", cc.check_rotary, **{**a, "head_dim": 63})
    _raises(ValueError, r"^q: rows must be contiguous \(stride\(1\) == 1\)", cc.check_rotary,
            **{**a, "q": torch.zeros(192, 4, dtype=F16).t()})


# --- cache -------------------------------------------------------------------------------------


def _rc_args(t=5, hk=2, d=64, bs=16, dtype=F16):
    kc, vc = _cache(bs=bs, hk=hk, d=d, dtype=dtype)
    return dict(key=torch.zeros(t, hk, d, dtype=dtype), value=torch.zeros(t, hk, d, dtype=dtype), k_cache=kc,
                v_cache=vc, slot_mapping=torch.zeros(t, dtype=torch.int32))


def test_reshape_and_cache_errors():
    a = _rc_args()
    assert cc.check_reshape_and_cache(**a).block_size == 16
    _raises(TypeError, "^slot_mapping: expected dtype torch.int32", cc.check_reshape_and_cache,
            **{**a, "slot_mapping": a["slot_mapping"].long()})
    _raises(ValueError, "^slot_mapping: 4 entries", cc.check_reshape_and_cache, **{**a, "slot_mapping": a["slot_mapping"][:4]})
    _raises(TypeError, "^key: expected dtype torch.float16", cc.check_reshape_and_cache, **{**a, "key": a["key"].float()})
    _raises(ValueError, "^value: expected 2 heads", cc.check_reshape_and_cache, **{**a, "value": torch.zeros(5, 3, 64, dtype=F16)})
    _raises(ValueError, "^key: each row's heads must be contiguous", cc.check_reshape_and_cache,
            **{**a, "key": torch.zeros(5, 64, 2, dtype=F16).transpose(1, 2)})
    _raises(ValueError, "^k_cache: block size 8 ", cc.check_reshape_and_cache, **_rc_args(bs=8))
    _raises(ValueError, "^k_cache: head_dim 32 ", cc.check_reshape_and_cache, **_rc_args(d=32))
    kc, vc = _cache()
    _raises(ValueError, "^v_cache: shape", cc.check_reshape_and_cache, **{**a, "v_cache": vc[:3]})
    _raises(ValueError, "^k_cache: must be contiguous", cc.check_reshape_and_cache,
            **{**a, "k_cache": torch.zeros(16, 4, 2, 64, dtype=F16).transpose(0, 1)})
    # a key view whose rows are not 16-byte aligned (odd element offset)
    buf = torch.zeros(5 * 2 * 64 + 1, dtype=F16)
    _raises(ValueError, "^key: rows must be 16-byte aligned", cc.check_reshape_and_cache,
            **{**a, "key": buf[1:].view(5, 2, 64)})


# --- attention ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bs", [16, 32])
@pytest.mark.parametrize("d", [64, 128])
def test_decode_ok(bs, d):
    info = cc.check_decode(**_decode_args(bs=bs, d=d))
    assert (info.group, info.cache.block_size, info.cache.head_dim) == (2, bs, d)


def test_decode_errors():
    a = _decode_args()
    _raises(ValueError, "^k_cache: head_dim 96 ", cc.check_decode, **_decode_args(d=96))
    _raises(ValueError, "^k_cache: block size 64 ", cc.check_decode, **_decode_args(bs=64))
    _raises(TypeError, "^k_cache: expected dtype torch.float16", cc.check_decode, **{**a, "k_cache": a["k_cache"].float()})
    _raises(TypeError, "^v_cache: expected dtype torch.float16", cc.check_decode, **{**a, "v_cache": a["v_cache"].float()})
    _raises(ValueError, "^q: 3 query heads", cc.check_decode, **{**a, "q": torch.zeros(3, 3, 64, dtype=F16)})
    _raises(ValueError, "^q: expected head_dim 64", cc.check_decode, **{**a, "q": torch.zeros(3, 4, 128, dtype=F16)})
    _raises(ValueError, "^q: 2 tokens", cc.check_decode, **{**a, "q": a["q"][:2]})
    _raises(TypeError, "^seq_lens: expected dtype torch.int32", cc.check_decode, **{**a, "seq_lens": a["seq_lens"].long()})
    _raises(TypeError, "^block_table: expected dtype torch.int32", cc.check_decode,
            **{**a, "block_table": a["block_table"].long()})
    _raises(ValueError, "^block_table: 2 rows", cc.check_decode, **{**a, "block_table": a["block_table"][:2]})
    _raises(ValueError, r"^block_table: rows must be contiguous", cc.check_decode,
            **{**a, "block_table": torch.zeros(2, 3, dtype=torch.int32).t()})
    _raises(ValueError, "^q: each row's heads must be contiguous", cc.check_decode,
            **{**a, "q": torch.zeros(3, 64, 4, dtype=F16).transpose(1, 2)})
    _raises(TypeError, "^scale: expected a float", cc.check_decode, **{**a, "scale": "x"})


def test_prefill_and_paged_errors():
    a = _prefill_args()
    cc.check_prefill(**a)
    _raises(ValueError, r"^query_start_loc: expected 4 entries \(rows \+ 1\)", cc.check_prefill,
            **{**a, "query_start_loc": a["query_start_loc"][:3]})
    _raises(TypeError, "^query_start_loc: expected dtype torch.int32", cc.check_prefill,
            **{**a, "query_start_loc": a["query_start_loc"].long()})
    assert cc.check_paged(num_decode_rows=2, **a).rows == 3
    _raises(ValueError, r"^num_decode_rows: 4 is outside \[0, 3\]", cc.check_paged, num_decode_rows=4, **a)
    _raises(TypeError, "^num_decode_rows: expected an int", cc.check_paged, num_decode_rows=1.5, **a)
    _raises(TypeError, "^num_decode_rows: expected an int", cc.check_paged, num_decode_rows=True, **a)


def test_devices():
    x, w = torch.zeros(2, 8), torch.zeros(8)
    assert cc.check_devices("cpu", x=x, weight=w) == torch.device("cpu")
    _raises(ValueError, "^x: expected a cuda tensor, got one on cpu", cc.check_devices, "cuda", x=x, weight=w)
    _raises(ValueError, "^weight: expected a meta tensor", cc.check_devices, "meta", x=x.to("meta"), weight=w)


# --- wrappers without a GPU --------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_wrappers_raise_runtime_error_without_gpu():
    K.set_launcher(None)
    with pytest.raises(RuntimeError, match="GPU|CuPy|device"):
        K.rms_norm(torch.zeros(2, 8), torch.ones(8), 1e-6)
    with pytest.raises(RuntimeError):
        K.decode_attention(**_decode_args())


def test_module_interface():
    assert K.NAME == "cuda"
    for name in ("rms_norm", "fused_add_rms_norm", "rope_cos_sin_cache", "rotary_embedding", "silu_and_mul",
                 "reshape_and_cache", "decode_attention", "prefill_attention", "paged_attention"):
        assert callable(getattr(K, name))


def test_import_does_not_load_cupy():
    import subprocess
    import sys

    code = "import sys, lmrs.kernels.cuda; assert 'cupy' not in sys.modules, 'cupy imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_same_signatures_as_reference():
    import inspect

    from lmrs.kernels import reference as R

    for name in K.__all__:
        if name == "NAME":
            continue
        assert list(inspect.signature(getattr(K, name)).parameters) == list(
            inspect.signature(getattr(R, name)).parameters
        ), name


def test_decode_split_policy():
    # few CTAs and a long context: split, each split at least SPLIT_MIN_PARTITION keys, all keys covered
    s, p = K.decode_splits(3, 4096, 132)
    assert s > 1 and p >= K.SPLIT_MIN_PARTITION and s * p >= 4096 and (s - 1) * p < 4096 and s <= K.MAX_SPLITS
    # enough CTAs, or short contexts: no split, and the partition covers any length
    assert K.decode_splits(8 * 132, 4096, 132)[0] == 1
    assert K.decode_splits(3, 256, 132) == (1, K._NO_SPLIT_PARTITION)
    for ctas in (1, 2, 3, 9, 48, 100, 768, 2000):
        for n in (1, 511, 512, 513, 4096, 100_000):
            s, p = K.decode_splits(ctas, n, 132)
            assert 1 <= s <= K.MAX_SPLITS and (s == 1 or s * p >= n)


def test_heads_per_cta():
    assert [K.heads_per_cta(g) for g in (1, 2, 3, 4, 5, 7, 8, 12, 16)] == [1, 2, 4, 4, 8, 8, 8, 8, 8]


def test_prefill_smem_matches_kernel_comment():
    assert K.prefill_smem_bytes(64) <= 48 * 1024 < K.prefill_smem_bytes(128) <= 99 * 1024


# --- issue 12 options and the quantized product ------------------------------------------------


def test_attention_options():
    assert cc.check_attention_options(0, 0.0) == (0, 0.0)
    assert cc.check_attention_options(4096, 50) == (4096, 50.0)
    for bad in (-1, 2.5, True, "8", 2**31):
        _raises(ValueError, "^sliding_window: expected an int >= 0", cc.check_attention_options, bad, 0.0)
    for bad in (-1.0, float("nan"), float("inf"), "30", torch.tensor(30.0)):
        _raises(ValueError, "^soft_cap: expected a finite number >= 0", cc.check_attention_options, 0, bad)


def test_rotary_dim_checks():
    a = _rope_args()
    q3, _ = cc.check_rotary(**{**a, "cos_sin_cache": torch.zeros(32, 32)}, rotary_dim=32)
    assert q3.shape == (4, 3, 64)
    for bad in (0, 63, 66, -2, 2.5):
        _raises(ValueError, "^rotary_dim: expected a positive even int <= head_dim 64", cc.check_rotary, **a,
                rotary_dim=bad)
    _raises(ValueError, r"^cos_sin_cache: expected 32 columns", cc.check_rotary, **a, rotary_dim=32)


def _quant(bits=4, n=6, k=64):
    from lmrs.kernels.cuda_quant import QuantizedWeight

    codes = torch.zeros(n, k // 2 if bits == 4 else k, dtype=torch.uint8 if bits == 4 else torch.int8)
    scales = torch.ones(n, k // 32, dtype=F16)
    return QuantizedWeight(bits, codes, scales, scales.clone() if bits == 4 else None)


def test_quant_matmul_checks():
    x = torch.zeros(3, 64, dtype=F16)
    assert cc.check_quant_matmul(x, _quant()) == (3, 6, 64)
    assert cc.check_quant_matmul(x.bfloat16(), _quant(8), torch.zeros(6, dtype=torch.bfloat16)) == (3, 6, 64)
    _raises(TypeError, "^weight: expected a lmrs.kernels.cuda_quant.QuantizedWeight", cc.check_quant_matmul, x, x)
    _raises(TypeError, "^x: dtype torch.float32 is not supported", cc.check_quant_matmul, x.float(), _quant())
    _raises(ValueError, r"^x: 32 input features \(dim 1\) but the weight has 64", cc.check_quant_matmul,
            x[:, :32], _quant())
    _raises(ValueError, "^x: rows must be contiguous", cc.check_quant_matmul, torch.zeros(64, 3, dtype=F16).t(),
            _quant())
    _raises(ValueError, r"^bias: expected shape \(6,\)", cc.check_quant_matmul, x, _quant(), torch.zeros(5, dtype=F16))
    _raises(TypeError, "^bias: expected dtype torch.float16", cc.check_quant_matmul, x, _quant(), torch.zeros(6))
    w = _quant()
    w.qweight = w.qweight.to(torch.int8)
    _raises(TypeError, "^weight.qweight: expected dtype torch.uint8 for 4-bit codes", cc.check_quant_weight, w)
    w = _quant()
    w.qweight = w.qweight[:, :16]
    _raises(ValueError, r"^weight.qweight: expected shape \(6, 32\)", cc.check_quant_weight, w)
    w = _quant()
    w.mins = None
    _raises(TypeError, "^weight.mins: expected a torch.Tensor", cc.check_quant_weight, w)
    w = _quant(8)
    w.mins = w.scales
    _raises(ValueError, "^weight.mins: 8-bit weights have no mins", cc.check_quant_weight, w)
    w = _quant()
    w.scales = w.scales.float()
    _raises(TypeError, "^weight.scales: expected dtype torch.float16", cc.check_quant_weight, w)
