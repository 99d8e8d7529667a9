"""Large bfloat16 products of kept-quantized weights through dequantize + dense GEMM (issue 15 part 2).

- `cpu_gguf_dequantize_t_bf16` writes tiles of a weight as bfloat16 W^T, bit for bit the float32 dequantized
  weight rounded to bfloat16 (every kept type, partial last tile, a tile range, the native and portable kernels);
- `QuantizedTensor.matmul` / `QuantizedLinear` on that path (forced on, so any CPU runs it) agree with the float32
  product of the dequantized weight within bfloat16 rounding, with bias, several chunks and mixed-type segments;
- bad tile ranges and strides are a ValueError; the path is on by default exactly where the CPU has AMX.
"""

import os

import numpy as np
import pytest
import torch

from lmrs import _core
from lmrs.kernels import cpu as cpu_kernels
from lmrs.models import quantized
from lmrs.models import quantized_dense_gemm as dense_gemm
from lmrs.models.quantized import QuantizedLinear, QuantizedTensor

#: types `gguf.quants.quantize` implements (the K-quants come from random block bytes)
QUANTIZABLE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
K_QUANTS = ["Q4_K", "Q5_K", "Q6_K"]


def k_quant(fmt: str, n: int, k: int, seed: int = 0) -> QuantizedTensor:
    """A valid random K-quant weight (random codes, small float16 super-block scales)."""
    import gguf

    qtype = gguf.GGMLQuantizationType[fmt]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n * (k // block), size), dtype=np.uint8)
    at = {"Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[fmt]
    for a in at:
        raw[:, a:a + 2] = rng.uniform(0.001, 0.01, n * (k // block)).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return QuantizedTensor.from_gguf_bytes(raw, fmt, (n, k))


def weight(fmt: str, n: int, k: int, seed: int = 0) -> QuantizedTensor:
    if fmt in K_QUANTS:
        return k_quant(fmt, n, k, seed)
    g = torch.Generator().manual_seed(seed)
    return QuantizedTensor.quantize(torch.randn(n, k, generator=g) * 0.05, fmt)


def dequantize_t(w: QuantizedTensor, tile0: int, tile1: int) -> torch.Tensor:
    n, k = w.rows, w.in_features
    cols = min(tile1 * 16, n) - tile0 * 16
    out = torch.full((k, cols), float("nan"), dtype=torch.bfloat16)
    _core.cpu_gguf_dequantize_t_bf16(w.qtype, w.packed.data_ptr(), w.nbytes, n, k, tile0, tile1, out.data_ptr(),
                                     cols, 2)
    return out


@pytest.fixture
def dense_on(monkeypatch):
    monkeypatch.setattr(dense_gemm, "DENSE_GEMM", True)
    monkeypatch.setattr(dense_gemm, "DENSE_GEMM_MIN_ROWS", dense_gemm.DENSE_GEMM_MIN_ROWS_AMX)


@pytest.mark.parametrize("path", ["native", "portable"])
@pytest.mark.parametrize("fmt", QUANTIZABLE + K_QUANTS)
def test_dequantize_t_is_the_rounded_weight(fmt, path):
    k = 256 if fmt in K_QUANTS else 96
    w = weight(fmt, 100, k)  # 7 tiles, the last one of 4 rows
    want = w.dequantize().bfloat16().T
    cpu_kernels.force_portable(path == "portable")
    try:
        assert torch.equal(dequantize_t(w, 0, 7), want)
        assert torch.equal(dequantize_t(w, 2, 5), want[:, 32:80])
        assert torch.equal(dequantize_t(w, 6, 7), want[:, 96:100])
    finally:
        cpu_kernels.force_portable(False)


def test_dequantize_t_rejects_bad_ranges():
    w = weight("Q4_1", 100, 64)
    out = torch.empty(64, 112, dtype=torch.bfloat16)
    for t0, t1 in [(0, 8), (3, 3), (5, 2)]:
        with pytest.raises(ValueError, match="tiles"):
            _core.cpu_gguf_dequantize_t_bf16(w.qtype, w.packed.data_ptr(), w.nbytes, 100, 64, t0, t1,
                                             out.data_ptr(), 112, 1)
    with pytest.raises(ValueError, match="stride"):
        _core.cpu_gguf_dequantize_t_bf16(w.qtype, w.packed.data_ptr(), w.nbytes, 100, 64, 0, 7, out.data_ptr(), 90, 1)
    with pytest.raises(ValueError, match="packed buffer"):
        _core.cpu_gguf_dequantize_t_bf16(w.qtype, w.packed.data_ptr(), w.nbytes - 1, 100, 64, 0, 7,
                                         out.data_ptr(), 112, 1)


def close_to_f32(y: torch.Tensor, x: torch.Tensor, w32: torch.Tensor, bias=None) -> None:
    ref = x.float() @ w32.T
    if bias is not None:
        ref = ref + bias
    scale = ref.abs().max().item()
    # bfloat16 weights, activations and output: a few bfloat16 ulps of the largest output
    assert (y.float() - ref).abs().max().item() <= 0.02 * scale, (y.float() - ref).abs().max().item() / scale


@pytest.mark.parametrize("fmt", ["Q4_1", "Q8_0", "Q6_K"])
@pytest.mark.parametrize("m", [12, 40])
def test_product_matches_float32(fmt, m, dense_on):
    k = 256
    w = weight(fmt, 200, k, seed=m)
    x = torch.randn(m, k).bfloat16()
    assert dense_gemm.dense_gemm_pays(m)
    close_to_f32(w.matmul(x), x, w.dequantize())
    bias = torch.randn(200)
    close_to_f32(w.matmul(x, bias), x, w.dequantize(), bias)


def test_several_chunks_and_segments(dense_on, monkeypatch):
    monkeypatch.setattr(dense_gemm, "DENSE_CHUNK_VALUES", 64 * 96)  # 64 output rows per chunk
    assert dense_gemm.dense_chunk_cols(96) == 64
    a, b = weight("Q4_0", 150, 96, seed=1), weight("Q8_0", 70, 96, seed=2)
    lin = QuantizedLinear([a, b], bias=torch.randn(220))
    x = torch.randn(3, 7, 96).bfloat16()  # 21 rows, 3-D input
    y = lin(x)
    assert y.shape == (3, 7, 220) and y.dtype == torch.bfloat16
    close_to_f32(y.reshape(21, 220), x.reshape(21, 96), lin.dequantize(), lin.bias)
    monkeypatch.setattr(dense_gemm, "DENSE_GEMM", False)  # the panel kernels agree
    close_to_f32(lin(x).reshape(21, 220), x.reshape(21, 96), lin.dequantize(), lin.bias)


def test_small_float32_and_float32_output_products_keep_the_kernels(dense_on):
    w = weight("Q4_1", 64, 64)
    x = torch.randn(20, 64)
    # float32 activations (exactness path) and float32 outputs (the head's logits) never go through bfloat16
    y = w.matmul(x)
    assert y.dtype == torch.float32
    ref = x @ w.dequantize().T
    assert (y - ref).abs().max().item() < 1e-4
    yb = w.matmul(x.bfloat16(), out_dtype=torch.float32)
    assert yb.dtype == torch.float32
    assert not dense_gemm.dense_gemm_pays(dense_gemm.DENSE_GEMM_MIN_ROWS - 1)


def test_default_follows_the_cpu():
    if os.environ.get("LMRS_GGUF_DENSE_GEMM", "auto") == "auto":
        assert dense_gemm.DENSE_GEMM == (_core.cpu_has_amx_bf16() or _core.cpu_kernels_isa() == "avx512bf16")
    # the crossover against the panel kernels is per CPU: ~12 rows on AMX tiles, ~128 on AVX512-BF16 alone
    assert dense_gemm.DENSE_GEMM_MIN_ROWS == (dense_gemm.DENSE_GEMM_MIN_ROWS_AMX if _core.cpu_has_amx_bf16()
                                              else dense_gemm.DENSE_GEMM_MIN_ROWS_AVX512BF16)
    assert not dense_gemm.dense_gemm_pays(dense_gemm.DENSE_GEMM_MIN_ROWS - 1)
    assert dense_gemm.dense_gemm_pays(dense_gemm.DENSE_GEMM_MIN_ROWS) == dense_gemm.DENSE_GEMM
    if dense_gemm.DENSE_GEMM:
        assert not quantized.prefers_float32(dense_gemm.DENSE_GEMM_MIN_ROWS)
