"""GGUF weights kept quantized (`lmrs.models.quantized`, `src/cpu_kernels/gguf_*.rs`).

For every type kept quantized (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K): weights from
``gguf.quants.quantize`` where it implements the type, else random valid GGUF blocks (every code and scale
bit pattern, sane float16 d / dmin) -> repacked -> dequantized bit for bit as ``gguf.quants.dequantize``;
products for 1 to 300 rows against the float64 product of the dequantized weight, on the AVX-512 and portable
paths (and the bfloat16 panel kernel, emulated where the CPU lacks AVX512-BF16); the embedding lookup; the
output head's refined logits bit for bit those of ``refine_top_logits`` over the float32 table; fused
projections of mixed types; the llama q/k un-permute; odd shapes and clear errors; and the real SmolLM2 GGUF
loaded without any float copy of its quantized tensors.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from lmrs import _core
from lmrs.kernels import cpu
from lmrs.models import quantized_dense_gemm as dense_gemm
from lmrs.models.gguf_quantized import llama_qk_row_order, load_gguf_tensors
from lmrs.models.quantized import QuantizedEmbedding, QuantizedLinear, QuantizedTensor

TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
K_QUANTS = {T.Q4_K, T.Q5_K, T.Q6_K}
#: byte offsets of the float16 d (and m / dmin) of each GGUF block
HALF_OFFSETS = {T.Q4_0: [0], T.Q5_0: [0], T.Q8_0: [0], T.Q4_1: [0, 2], T.Q5_1: [0, 2], T.Q4_K: [0, 2],
                T.Q5_K: [0, 2], T.Q6_K: [208]}
ISAS = ["native", "portable", "bf16-panels"]


@pytest.fixture(params=ISAS)
def isa(request):
    """The kernels' instruction set: AVX-512 (+ AVX512-BF16 where present), portable, or AVX-512 with the
    bfloat16 large-batch kernel (its `vdpbf16ps` emulated where the CPU lacks it)."""
    native = _core.cpu_kernels_isa()
    if request.param != "portable" and native == "portable":
        pytest.skip("this CPU has no AVX-512: the native path is the portable one")
    if request.param == "bf16-panels" and native == "avx512bf16":
        pytest.skip("AVX512-BF16 present: the native run covers the bfloat16 panels")
    cpu.force_portable(request.param == "portable")
    _core.cpu_gguf_emulate_bf16(request.param == "bf16-panels")
    yield request.param
    cpu.force_portable(False)
    _core.cpu_gguf_emulate_bf16(False)


def gguf_bytes(qtype, n: int, k: int, seed: int) -> np.ndarray:
    """GGUF bytes [n, row bytes] of a random [n, k] tensor: quantized floats where ``gguf`` can quantize the
    type, else random blocks with sane float16 scales."""
    rng = np.random.default_rng(seed)
    if qtype not in K_QUANTS:
        w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 0.2, (n, 1))).astype(np.float32)
        w[:, :5] += 0.3  # some groups far from zero (Q4_1/Q5_1 minimums)
        return gguf.quants.quantize(w, qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n * (k // block), size), dtype=np.uint8)
    for at in HALF_OFFSETS[qtype]:
        raw[:, at:at + 2] = (rng.uniform(-0.02, 0.05, n * (k // block)).astype(np.float16)
                             .view(np.uint8).reshape(-1, 2))
    return raw.reshape(n, -1)


def k_for(qtype) -> int:
    return 512 if qtype in K_QUANTS else 96


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_is_bit_exact_and_lossless(qtype):
    n, k = 37, k_for(qtype)  # 37: two tiles of 16 and a partial one
    raw = gguf_bytes(qtype, n, k, 1)
    qt = QuantizedTensor.from_gguf_bytes(raw, qtype, (n, k))
    want = gguf.quants.dequantize(raw, qtype)
    got = qt.dequantize()
    assert got.shape == (n, k) and got.dtype == torch.float32
    assert np.array_equal(got.numpy().view(np.int32), want.view(np.int32))  # bit for bit, signed zeros too
    assert np.array_equal(qt.to_gguf_bytes(), raw)
    # one copy of about the file's size (K-quants: the 6-bit scales unpacked to bytes)
    assert raw.nbytes <= qt.nbytes <= (1.03 if qtype in (T.Q4_K, T.Q5_K) else 1.0) * raw.nbytes * 48 / 37 + 1
    rows = torch.tensor([36, 0, 17, 17])
    assert torch.equal(qt.dequantize_rows(rows), got[rows])


def reference(x: torch.Tensor, w: torch.Tensor, bias=None):
    """(float64 product, float64 |x| @ |w|.T): the tolerance scales with the second."""
    y = x.double() @ w.double().T
    if bias is not None:
        y = y + bias.double()
    return y, x.double().abs() @ w.double().abs().T


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_products_match_the_dequantized_weight(isa, qtype):
    n, k = 75, k_for(qtype)  # 75 outputs: not a multiple of 16, nor of the 64-output panels
    qt = QuantizedTensor.from_gguf_bytes(gguf_bytes(qtype, n, k, 2), qtype, (n, k))
    w = qt.dequantize()
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(n, generator=g)
    for m in (1, 3, 8, 9, 64, 300):
        x = torch.randn(m, k, generator=g)
        for x_dtype in (torch.float32, torch.bfloat16):
            xi = x.to(x_dtype)
            y = qt.matmul(xi, bias if m % 2 else None, out_dtype=torch.float32)
            assert y.shape == (m, n) and y.dtype == torch.float32
            want, mag = reference(xi, w, bias if m % 2 else None)
            err = (y.double() - want).abs()
            # float32 accumulation (and activations used to >= 16 significant bits)
            assert (err <= 1e-5 * mag + 1e-6).all(), f"{isa} m={m} {x_dtype}: max error {err.max():.3g}"
        # the result takes the activation dtype by default, rounded once; on AMX machines products of
        # >= 12 rows dequantize the weight to bfloat16 for oneDNN (quantized_dense_gemm): each weight is
        # then rounded too (relative error <= 2^-9)
        yb = qt.matmul(x.bfloat16())
        assert yb.dtype == torch.bfloat16
        want, mag = reference(x.bfloat16(), w)
        weight_rounding = mag * 2.0**-9 if dense_gemm.dense_gemm_pays(m) else 0
        assert ((yb.double() - want).abs() <= want.abs() / 128 + 1e-5 * mag + 1e-6 + weight_rounding).all()


def test_products_with_strided_rows_and_3d_activations():
    qt = QuantizedTensor.from_gguf_bytes(gguf_bytes(T.Q4_K, 40, 256, 4), T.Q4_K, (40, 256))
    w = qt.dequantize()
    x = torch.randn(2, 5, 300)[..., 10:266]  # rows with a stride of 300
    y = qt.matmul(x)
    assert y.shape == (2, 5, 40)
    want, mag = reference(x.reshape(-1, 256), w)
    assert ((y.reshape(-1, 40).double() - want).abs() <= 1e-5 * mag + 1e-6).all()


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_embedding_lookup_is_exact(qtype):
    vocab, dim = 70, 256
    emb = QuantizedEmbedding(QuantizedTensor.from_gguf_bytes(gguf_bytes(qtype, vocab, dim, 5), qtype, (vocab, dim)))
    table = emb.table.dequantize()
    ids = torch.tensor([[3, 69, 0], [3, 5, 41]])
    rows = emb(ids)
    assert rows.shape == (2, 3, dim) and rows.dtype == torch.float32
    assert torch.equal(rows, table[ids])
    with pytest.raises(ValueError, match="token id 70 is out of range"):
        emb(torch.tensor([1, 70]))
    with pytest.raises(ValueError, match="out of range"):
        emb(torch.tensor([-1]))


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_head_logits_and_refinement(isa, qtype):
    vocab, dim, rows, top = 1000, 256, 5, 32
    emb = QuantizedEmbedding(QuantizedTensor.from_gguf_bytes(gguf_bytes(qtype, vocab, dim, 6), qtype, (vocab, dim)))
    table = emb.table.dequantize()
    hidden = torch.randn(rows, dim, generator=torch.Generator().manual_seed(7))
    exact = hidden @ table.T
    # bfloat16 hidden states (the model dtype), as the head sees them in a bfloat16 model
    logits = emb.logits(hidden.bfloat16())
    assert logits.dtype == torch.float32 and logits.shape == (rows, vocab)
    want, mag = reference(hidden.bfloat16(), table)
    assert ((logits.double() - want).abs() <= 1e-5 * mag + 1e-6).all()
    before = logits.clone()
    theirs = cpu.refine_top_logits(logits.clone(), hidden, table.contiguous(), top)
    ours = emb.refine_top_logits(logits, hidden, top)
    assert ours is logits
    assert torch.equal(ours.view(torch.int32), theirs.view(torch.int32))  # bit for bit
    # the top logits now carry float32 precision, the rest are untouched
    ids = before.topk(top, dim=1).indices
    torch.testing.assert_close(ours.gather(1, ids), exact.gather(1, ids), rtol=1e-5, atol=1e-5)
    rest = torch.ones_like(before, dtype=torch.bool).scatter_(1, ids, False)
    assert torch.equal(ours[rest], before[rest])
    assert emb.head().segments[0] is emb.table  # tied: the head reads the same buffer


def test_fused_segments_of_mixed_types():
    k = 256
    parts = [QuantizedTensor.from_gguf_bytes(gguf_bytes(t, n, k, 10 + i), t, (n, k))
             for i, (t, n) in enumerate([(T.Q4_K, 48), (T.Q4_K, 16), (T.Q6_K, 16), (T.Q8_0, 20)])]
    bias = torch.randn(100)
    lin = QuantizedLinear(parts, bias)
    assert [s.type_name for s in lin.segments] == ["Q4_K", "Q6_K", "Q8_0"]  # the two Q4_K parts merged
    assert lin.out_features == 100 and lin.in_features == k
    assert lin.prepack() is False and lin.source is None
    assert lin.accepts_float32(1) and lin.accepts_float32(8)
    assert lin.nbytes == sum(p.nbytes for p in parts)
    w = torch.cat([p.dequantize() for p in parts])
    assert torch.equal(lin.dequantize(), w)
    for m in (1, 4, 33):
        x = torch.randn(m, k)
        y = lin(x)
        want, mag = reference(x, w, bias)
        assert y.dtype == torch.float32 and ((y.double() - want).abs() <= 1e-5 * mag + 1e-6).all()
    yb = lin(torch.randn(20, k).bfloat16())
    assert yb.dtype == torch.bfloat16 and yb.shape == (20, 100)


def test_llama_qk_unpermute_matches_the_float_loader():
    from lmrs.models.gguf_loader import unpermute_qk

    n_head, head_dim, k = 3, 64, 64
    raw = gguf_bytes(T.Q4_0, n_head * head_dim, k, 20)
    qt = QuantizedTensor.from_gguf_bytes(raw, T.Q4_0, (n_head * head_dim, k))
    order = llama_qk_row_order(n_head, head_dim)
    got = qt.permute_rows(order).dequantize()
    want = unpermute_qk(torch.from_numpy(gguf.quants.dequantize(raw, T.Q4_0)), n_head)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="permutation"):
        qt.permute_rows(torch.zeros(n_head * head_dim, dtype=torch.int64))


def test_row_selection_and_reshape():
    raw = gguf_bytes(T.Q5_1, 3 * 24, 64, 21)  # e.g. 3 experts of 24 rows
    qt = QuantizedTensor.from_gguf_bytes(raw, T.Q5_1, (3, 24, 64))
    assert qt.rows == 72 and qt.out_features == 24 and qt.dequantize().shape == (3, 24, 64)
    expert = qt.select_rows(24, 48)
    assert torch.equal(expert.dequantize(), qt.dequantize()[1])
    assert np.array_equal(expert.to_gguf_bytes(), raw.reshape(72, -1)[24:48])
    assert QuantizedLinear(qt).out_features == 72


def test_bad_shapes_and_types_give_clear_errors():
    raw = gguf_bytes(T.Q4_0, 4, 64, 30)
    with pytest.raises(ValueError, match="not kept quantized"):
        QuantizedTensor.from_gguf_bytes(raw, T.Q2_K, (4, 64))
    with pytest.raises(ValueError, match="multiple of 256"):
        QuantizedTensor.from_gguf_bytes(raw, "Q4_K", (4, 128))
    with pytest.raises(ValueError, match="has 144 bytes, got 143"):
        QuantizedTensor.from_gguf_bytes(raw.reshape(-1)[:-1], T.Q4_0, (4, 64))
    with pytest.raises(ValueError, match="needs >= 2"):
        QuantizedTensor.from_gguf_bytes(raw, T.Q4_0, (256,))
    qt = QuantizedTensor.from_gguf_bytes(raw, T.Q4_0, (4, 64))
    with pytest.raises(ValueError, match="64 features"):
        qt.matmul(torch.randn(2, 65))
    with pytest.raises(ValueError, match="bias has 3 values"):
        QuantizedLinear(qt, torch.zeros(3))
    with pytest.raises(ValueError, match="cannot concatenate"):
        QuantizedTensor.concat_rows([qt, QuantizedTensor.from_gguf_bytes(gguf_bytes(T.Q8_0, 4, 64, 31), T.Q8_0,
                                                                            (4, 64))])
    with pytest.raises(ValueError, match="out of range"):
        qt.dequantize_rows(torch.tensor([4]))
    with pytest.raises(ValueError, match="different input widths"):
        QuantizedLinear([qt, QuantizedTensor.from_gguf_bytes(gguf_bytes(T.Q4_0, 4, 32, 32), T.Q4_0, (4, 32))])


def test_smollm2_loads_without_float_copies(smollm2_path):
    loaded = load_gguf_tensors(smollm2_path)
    types = {}
    for name, t in loaded.tensors.items():
        kind = t.type_name if isinstance(t, QuantizedTensor) else str(t.dtype)
        types[kind] = types.get(kind, 0) + 1
    assert types == {"Q4_1": 210, "Q8_0": 1, "torch.float32": 61}
    assert loaded.file_bytes == 98_362_432
    # one copy of every weight: the packed layout holds exactly the file's tensor bytes
    assert loaded.nbytes <= 1.0 * loaded.file_bytes
    reader = gguf.GGUFReader(smollm2_path)
    tensors = {t.name: t for t in reader.tensors}
    for name in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight"):
        want = gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type)
        assert np.array_equal(loaded.tensors[name].dequantize().numpy().view(np.int32), want.view(np.int32))
    # a real projection, one decode row and a prefill chunk
    gate = loaded.tensors["blk.3.ffn_gate.weight"]
    w = gate.dequantize()
    for m in (1, 40):
        x = torch.randn(m, 576)
        want, mag = reference(x, w)
        assert ((gate.matmul(x).double() - want).abs() <= 1e-5 * mag + 1e-6).all()


def test_threads_do_not_change_results():
    """Every tile / panel is computed the same way whichever thread takes it: one thread and all of them
    agree bit for bit, on the streaming path (a weight large enough to split) and on the panel path."""
    qt = QuantizedTensor.from_gguf_bytes(gguf_bytes(T.Q4_K, 4096, 1024, 50), T.Q4_K, (4096, 1024))
    g = torch.Generator().manual_seed(51)
    old = cpu.THREADS
    try:
        for m in (1, 30):
            x = torch.randn(m, 1024, generator=g)
            cpu.THREADS = 1
            one = qt.matmul(x)
            cpu.THREADS = 0
            assert torch.equal(qt.matmul(x).view(torch.int32), one.view(torch.int32))
    finally:
        cpu.THREADS = old


def test_loader_keeps_quantized_types_and_reads_the_rest(tmp_path, caplog):
    from lmrs.models.errors import CorruptModelError, UnsupportedQuantizationError

    rng = np.random.default_rng(60)
    q2k = rng.integers(0, 256, (16, 84), dtype=np.uint8)  # Q2_K: 16 rows of one 84-byte block
    q2k[:, 80:84] = rng.uniform(0.001, 0.01, (16, 2)).astype(np.float16).view(np.uint8)
    tensors = {
        "blk.0.attn_q.weight": (gguf_bytes(T.Q4_K, 32, 256, 61), T.Q4_K),
        "blk.0.attn_v.weight": (gguf_bytes(T.Q6_K, 16, 256, 62), T.Q6_K),
        "blk.0.attn_k.weight": (q2k, T.Q2_K),
        "blk.0.attn_norm.weight": (rng.standard_normal(256).astype(np.float32), None),
        "token_embd.weight": (rng.standard_normal((8, 256)).astype(np.float16), None),
        "output.weight": (rng.standard_normal((8, 256)).astype(np.float32).view(np.uint32).__rshift__(16)
                          .astype(np.uint16).view(np.uint8).reshape(8, 512), T.BF16),
    }
    path = tmp_path / "mix.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (data, raw_dtype) in tensors.items():
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    with caplog.at_level("WARNING"):
        loaded = load_gguf_tensors(path)
    t = loaded.tensors
    assert loaded.types["blk.0.attn_q.weight"] == "Q4_K" and isinstance(t["blk.0.attn_q.weight"], QuantizedTensor)
    assert t["blk.0.attn_q.weight"].shape == (32, 256) and t["blk.0.attn_v.weight"].type_name == "Q6_K"
    assert np.array_equal(t["blk.0.attn_v.weight"].to_gguf_bytes(), tensors["blk.0.attn_v.weight"][0])
    assert t["blk.0.attn_norm.weight"].dtype == torch.float32 and t["blk.0.attn_norm.weight"].shape == (256,)
    assert t["token_embd.weight"].dtype == torch.float16 and t["token_embd.weight"].shape == (8, 256)
    out = t["output.weight"]
    assert out.dtype == torch.bfloat16 and out.shape == (8, 256)
    assert np.array_equal(out.view(torch.int16).numpy().view(np.uint8), tensors["output.weight"][0].reshape(8, 512))
    # Q2_K is not kept quantized: dequantized to float32, and said so
    assert loaded.dequantized == ["blk.0.attn_k.weight"]
    assert torch.equal(t["blk.0.attn_k.weight"], torch.from_numpy(gguf.quants.dequantize(q2k, T.Q2_K)))
    assert "dequantized to float32" in caplog.text
    assert loaded.nbytes == sum(v.nbytes if isinstance(v, QuantizedTensor) else v.numel() * v.element_size()
                                for v in t.values())
    with pytest.raises(UnsupportedQuantizationError, match="blk.0.attn_k.weight.*Q2_K"):
        load_gguf_tensors(path, unsupported="error")
    only = load_gguf_tensors(path, names=["blk.0.attn_q.weight"])
    assert list(only.tensors) == ["blk.0.attn_q.weight"]
    with pytest.raises(CorruptModelError, match="no tensor"):
        load_gguf_tensors(path, names=["blk.9.attn_q.weight"])
