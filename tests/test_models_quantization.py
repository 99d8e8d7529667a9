"""Dequantization coverage: tiny GGUF models stored as F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K.

``gguf.quants.quantize`` implements F16/BF16/Q8_0/Q4_0/Q4_1 but not the K-quants, so this file carries small
reference K-quant encoders written from the ggml block layouts (block of 256 values):

* Q4_K (144 B): d, dmin (f16) | 12 B of packed 6-bit scales/mins for 8 sub-blocks of 32 | 128 B of nibbles
* Q5_K (176 B): as Q4_K plus 32 B holding the 5th bit of each value
* Q6_K (210 B): 128 B low nibbles | 64 B high 2-bit pairs | 16 int8 scales (sub-blocks of 16) | d (f16)

Each encoder also returns the exact values its blocks decode to, so the loader's output is checked exactly
(block layout, shapes, q/k un-permutation) and against the original weights within the quantization error.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from lmrs.models.errors import ModelLoadError, UnsupportedQuantizationError
from lmrs.models.gguf_loader import load_gguf, permute_qk, unpermute_qk
from lmrs.models.testing import make_tiny_gguf
from lmrs.models.quantized import QuantizedTensor

QK = 256


def _f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def _pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins per block -> the 12-byte layout read by ggml's get_scale_min_k4."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)
    return out


def _affine_k(x: np.ndarray, levels: int):
    """Shared Q4_K/Q5_K math: per 32-value sub-block q in [0, levels], value = d*sc*q - dmin*m."""
    xs = x.reshape(-1, 8, 32)
    lo = np.minimum(xs.min(-1), 0.0)
    scale = (xs.max(-1) - lo) / levels
    d, dmin = _f16(scale.max(-1) / 63), _f16((-lo).max(-1) / 63)
    df, dminf = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.round(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), 0, 63)
    mn = np.clip(np.round(np.divide(-lo, dminf, out=np.zeros_like(lo), where=dminf > 0)), 0, 63)
    eff_d, eff_m = (df * sc)[..., None], (dminf * mn)[..., None]
    q = np.clip(np.round(np.divide(xs + eff_m, eff_d, out=np.zeros_like(xs), where=eff_d > 0)), 0, levels)
    values = (eff_d * q - eff_m).reshape(-1, QK)
    return d, dmin, sc, mn, q.astype(np.uint8), values


def quantize_q4_k(x: np.ndarray):
    d, dmin, sc, mn, q, values = _affine_k(x.reshape(-1, QK), 15)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)  # byte j*32+l: sub-block 2j low, 2j+1 high nibble
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                             _pack_k_scales(sc, mn), qs], axis=1)
    return blocks, values


def quantize_q5_k(x: np.ndarray):
    d, dmin, sc, mn, q, values = _affine_k(x.reshape(-1, QK), 31)
    low = q & 15
    qs = (low[:, 0::2] | (low[:, 1::2] << 4)).reshape(-1, 128)
    qh = np.zeros((q.shape[0], 32), dtype=np.uint8)
    for i in range(8):  # bit i of qh[l] is the 5th bit of value l of sub-block i
        qh |= ((q[:, i] >> 4) & 1) << i
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                             _pack_k_scales(sc, mn), qh, qs], axis=1)
    return blocks, values


def quantize_q6_k(x: np.ndarray):
    xs = x.reshape(-1, 16, 16)
    scale = np.abs(xs).max(-1) / 31
    d = _f16(scale.max(-1) / 127)
    df = d.astype(np.float32)[:, None]
    sc = np.clip(np.round(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), -128, 127)
    eff = (df * sc)[..., None]
    q = np.clip(np.round(np.divide(xs, eff, out=np.zeros_like(xs), where=eff > 0)), -32, 31)
    values = (eff * q).reshape(-1, QK)
    u = (q.reshape(-1, QK) + 32).astype(np.uint8)
    low, high = u & 15, u >> 4
    low = low.reshape(-1, 2, 2, 64)  # value h*128 + s*64 + k -> ql[h*64 + k], nibble s
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    high = high.reshape(-1, 2, 4, 32)  # value h*128 + t*32 + k -> qh[h*32 + k], bits 2t..2t+1
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(-1, 64)
    blocks = np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)
    return blocks, values


K_ENCODERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


@pytest.mark.parametrize("qtype", list(K_ENCODERS))
def test_reference_k_encoders_match_ggml_layout(qtype):
    """The encoders' blocks decode (with gguf's ggml-faithful decoder) to exactly the values they claim."""
    x = np.random.default_rng(1).standard_normal((8, 512)).astype(np.float32)
    x[0] = np.abs(x[0])  # an all-positive row (min clamps to 0)
    blocks, values = K_ENCODERS[qtype](x)
    assert blocks.shape[1] == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][1]
    decoded = gguf.quants.dequantize(blocks.reshape(8, -1), gguf.GGMLQuantizationType[qtype])
    np.testing.assert_allclose(decoded.reshape(-1, QK), values, rtol=0, atol=1e-6)


# relative RMS error bounds (error RMS / weight RMS) and a max-error bound relative to the tensor's max |w|
BOUNDS = {"F16": (1e-3, 1e-3), "BF16": (5e-3, 5e-3), "Q8_0": (0.01, 0.01), "Q4_0": (0.12, 0.13),
          "Q4_1": (0.1, 0.07), "Q4_K": (0.1, 0.08), "Q5_K": (0.05, 0.04), "Q6_K": (0.025, 0.02)}


@pytest.mark.parametrize("qtype", list(BOUNDS))
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_quantized_gguf_loads_within_error(tmp_path, qtype, arch):
    encoder = K_ENCODERS.get(qtype)
    kwargs = dict(hidden_size=256, intermediate_size=512, heads=4, kv_heads=2, layers=1)
    path, config, weights = make_tiny_gguf(tmp_path / f"{qtype}.gguf", arch, tensor_type=qtype,
                                           quantize=(lambda a: encoder(a)[0].reshape(a.shape[0], -1)) if encoder else None, **kwargs)
    contents = load_gguf(path, progress=False)
    assert set(contents.weights) == set(weights)
    for name, w in weights.items():
        got = contents.weights[name]
        assert got.dtype == torch.float32 and got.shape == w.shape, name
        if w.ndim == 1:
            assert contents.tensor_types[name] == "F32" and torch.equal(got, w), name
            continue
        assert contents.tensor_types[name] == qtype
        # exact: what the stored blocks decode to, in the GGUF (permuted) layout, then un-permuted
        n_head = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}.get(
            name.split(".")[-2]) if arch == "llama" else None
        stored = w.numpy() if n_head is None else permute_qk(w.numpy(), n_head)
        if encoder:
            exact = encoder(stored)[1].reshape(stored.shape)
        else:
            qt = gguf.GGMLQuantizationType[qtype]
            exact = gguf.quants.dequantize(gguf.quants.quantize(stored, qt), qt).reshape(stored.shape)
        exact = exact if n_head is None else unpermute_qk(exact, n_head)
        np.testing.assert_allclose(got.numpy(), exact, rtol=0, atol=1e-6, err_msg=name)
        # bounded quantization error against the original weights
        err = (got - w).float()
        rel_rms = (err.pow(2).mean().sqrt() / w.pow(2).mean().sqrt()).item()
        rel_max = (err.abs().max() / w.abs().max()).item()
        assert rel_rms < BOUNDS[qtype][0] and rel_max < BOUNDS[qtype][1], (name, rel_rms, rel_max)
        assert rel_rms > 0 or qtype in ("F16", "BF16")
    # kept quantized (the 16-bit CPU path): the same weights, in the file's blocks, un-permuted on quantized rows
    kept = load_gguf(path, progress=False, keep_quantized=True)
    assert set(kept.weights) == set(weights)
    for name, w in kept.weights.items():
        if isinstance(w, QuantizedTensor):
            assert qtype not in ("F16", "BF16") and w.type_name == qtype, name
            assert torch.equal(w.dequantize(), contents.weights[name]), name
        else:
            assert contents.weights[name].ndim == 1 or qtype in ("F16", "BF16"), name
            assert torch.equal(w, contents.weights[name]), name


def test_unsupported_quantization_type(tmp_path):
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ4_NL]
    rng = np.random.default_rng(0)
    path, _, _ = make_tiny_gguf(tmp_path / "iq.gguf", tensor_type="IQ4_NL",
                                quantize=lambda a: rng.integers(0, 255, (a.shape[0], a.shape[1] // block * size),
                                                                dtype=np.uint8))
    with pytest.raises(UnsupportedQuantizationError, match=r"iq.gguf: tensor 'token_embd.weight' uses .*IQ4_NL.*Q4_K") as e:
        load_gguf(path, progress=False)
    assert e.value.tensor_type == "IQ4_NL" and e.value.tensor_name == "token_embd.weight"
    assert isinstance(e.value, ModelLoadError)
