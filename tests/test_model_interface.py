"""The model interface: the kernel backend Protocol (every backend complete, model files never
importing the reference), the family registry, and the reference semantics of the kernel options
the new families need (sliding window, soft-cap, partial rotary, GeGLU), checked against naive
dense PyTorch; the CPU backend's fallbacks give the same results."""

import math
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F

from lmrs.kernels import backend, cpu, cuda, get_backend, reference
from lmrs.models import registry
from lmrs.models.errors import UnsupportedModelError


@pytest.mark.parametrize("module", [reference, cpu, cuda], ids=lambda m: m.NAME)
def test_backends_implement_the_interface(module):
    assert backend.missing_ops(module) == []
    assert isinstance(module, backend.KernelBackend) and isinstance(module, backend.FusedKernels)
    assert get_backend("reference") is reference and get_backend("cpu") is cpu


def test_model_code_never_imports_the_reference_kernels():
    root = pathlib.Path(registry.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if re.search(r"kernels\.reference|kernels import reference", p.read_text())]
    assert offenders == []


def test_registry_lookups_and_errors():
    names = set(registry.family_names())
    assert {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3", "phi3", "smollm3",
            "internlm2"} <= names
    assert registry.family_for_hf_config({"architectures": ["Gemma3ForCausalLM"]}).name == "gemma3"
    assert registry.family_for_hf_config({"model_type": "qwen3_moe"}).name == "qwen3_moe"
    assert registry.family_for_gguf("qwen3moe").name == "qwen3_moe"
    assert registry.family_for_gguf("internlm2").name == "internlm2"
    with pytest.raises(UnsupportedModelError, match="GPTNeoXForCausalLM.*supports: llama"):
        registry.family_for_hf_config({"architectures": ["GPTNeoXForCausalLM"]})
    with pytest.raises(UnsupportedModelError, match="falcon.*supports: llama, qwen2"):
        registry.family_for_gguf("falcon")


# ----------------------------------------------------------------------------------- attention options
def paged_case(lens, qlens, hq=4, hk=2, d=16, bs=4, seed=0):
    """Random q and a paged cache holding each row's context at scattered blocks."""
    g = torch.Generator().manual_seed(seed)
    rows = len(lens)
    max_blocks = max(-(-n // bs) for n in lens)
    nblocks = rows * max_blocks + 1
    k_cache = torch.randn(nblocks, bs, hk, d, generator=g)
    v_cache = torch.randn(nblocks, bs, hk, d, generator=g)
    perm = torch.randperm(nblocks - 1, generator=g) + 1
    table = perm[: rows * max_blocks].view(rows, max_blocks).to(torch.int32)
    q = torch.randn(sum(qlens), hq, d, generator=g)
    qsl = torch.tensor([0, *torch.tensor(qlens).cumsum(0).tolist()], dtype=torch.int32)
    return q, k_cache, v_cache, table, torch.tensor(lens, dtype=torch.int32), qsl


def naive_attention(q, k_cache, v_cache, table, lens, qsl, scale, window=0, soft_cap=0.0):
    out = torch.empty_like(q)
    hq, hk = q.shape[1], k_cache.shape[2]
    bs = k_cache.shape[1]
    for r, n in enumerate(lens.tolist()):
        a, b = int(qsl[r]), int(qsl[r + 1])
        k = torch.cat([k_cache[int(table[r, j // bs]), j % bs][None] for j in range(n)])  # [n, hk, d]
        v = torch.cat([v_cache[int(table[r, j // bs]), j % bs][None] for j in range(n)])
        for t in range(a, b):
            p = n - (b - t)  # this query's position
            for h in range(hq):
                kh = k[:, h // (hq // hk)]
                s = (kh @ q[t, h]) * scale
                if soft_cap:
                    s = soft_cap * torch.tanh(s / soft_cap)
                j = torch.arange(n)
                allowed = (j <= p) & ((j > p - window) if window else True)
                s = s.masked_fill(~allowed, float("-inf"))
                out[t, h] = torch.softmax(s, 0) @ v[:, h // (hq // hk)]
    return out


@pytest.mark.parametrize("window,soft_cap", [(0, 0.0), (5, 0.0), (0, 1.5), (3, 2.0)])
@pytest.mark.parametrize("module", [reference, cpu], ids=lambda m: m.NAME)
def test_paged_attention_window_and_soft_cap(module, window, soft_cap):
    lens, qlens = [1, 9, 13, 7], [1, 1, 6, 7]  # two decode rows, a chunk after a prefix, a full prefill
    q, kc, vc, table, sl, qsl = paged_case(lens, qlens)
    scale = 1 / math.sqrt(16)
    want = naive_attention(q, kc, vc, table, sl, qsl, scale, window, soft_cap)
    got = module.paged_attention(q, kc, vc, table, sl, qsl, 2, scale, 7, 13, sliding_window=window,
                                 soft_cap=soft_cap)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    dec = module.decode_attention(q[:2], kc, vc, table[:2], sl[:2], scale, sliding_window=window, soft_cap=soft_cap)
    assert torch.allclose(dec, want[:2], atol=1e-5)
    pre = module.prefill_attention(q[2:], kc, vc, table[2:], sl[2:], qsl[2:] - 2, scale, sliding_window=window,
                                   soft_cap=soft_cap)
    assert torch.allclose(pre, want[2:], atol=1e-5)


def test_window_counts_the_query_itself():
    """W = 1: each query sees only its own key (transformers' convention: p - W < j <= p)."""
    q, kc, vc, table, sl, qsl = paged_case([6], [6])
    out = reference.paged_attention(q, kc, vc, table, sl, qsl, 0, 0.25, sliding_window=1)
    v_own = torch.stack([vc[int(table[0, p // 4]), p % 4] for p in range(6)])  # [6, hk, d]
    assert torch.allclose(out, v_own.repeat_interleave(2, dim=1), atol=1e-6)


# ----------------------------------------------------------------------------------- rotary, GeGLU
def hf_partial_rope(x, pos, inv_freq, head_dim):
    """transformers' apply_rotary_pos_emb with cos/sin of rotary_dim columns (Phi-4-mini)."""
    rd = 2 * inv_freq.numel()
    freqs = torch.outer(pos.float(), inv_freq)
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    xv = x.view(x.shape[0], -1, head_dim)
    rot, rest = xv[..., :rd], xv[..., rd:]
    half = torch.cat([-rot[..., rd // 2:], rot[..., : rd // 2]], -1)
    return torch.cat([rot * cos + half * sin, rest], -1).reshape(x.shape)


@pytest.mark.parametrize("module", [reference, cpu], ids=lambda m: m.NAME)
def test_partial_rotary_embedding(module):
    g = torch.Generator().manual_seed(1)
    d, rd, t = 16, 12, 5
    inv = 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd))
    table = reference.rope_cos_sin_cache(inv, 64)
    assert table.shape == (64, rd)
    pos = torch.tensor([0, 3, 7, 8, 40], dtype=torch.int32)
    q, k = torch.randn(t, 4 * d, generator=g), torch.randn(t, 2 * d, generator=g)
    want_q, want_k = hf_partial_rope(q, pos, inv, d), hf_partial_rope(k, pos, inv, d)
    module.rotary_embedding(pos, q, k, table, d, True, rotary_dim=rd)
    assert torch.allclose(q, want_q, atol=1e-6) and torch.allclose(k, want_k, atol=1e-6)
    # the fused op with the cache write
    qkv = torch.randn(t, 8 * d, generator=g)
    kc = torch.zeros(4, 4, 2, d)
    vc = torch.zeros(4, 4, 2, d)
    slots = torch.tensor([4, 5, 6, 7, 8], dtype=torch.int32)
    q0, k0, v0 = qkv[:, : 4 * d].clone(), qkv[:, 4 * d: 6 * d].clone(), qkv[:, 6 * d:].clone()
    module.rotary_embedding_and_cache(pos, qkv, 4, 2, d, table, True, kc, vc, slots, rotary_dim=rd)
    assert torch.allclose(qkv[:, : 4 * d], hf_partial_rope(q0, pos, inv, d), atol=1e-6)
    flat_k, flat_v = kc.view(16, 2 * d), vc.view(16, 2 * d)
    assert torch.allclose(flat_k[4:9], hf_partial_rope(k0, pos, inv, d), atol=1e-6)
    assert torch.equal(flat_v[4:9], v0)


@pytest.mark.parametrize("module", [reference, cpu], ids=lambda m: m.NAME)
def test_gelu_tanh_and_mul(module):
    x = torch.randn(7, 2 * 48)
    want = F.gelu(x[:, :48], approximate="tanh") * x[:, 48:]
    assert torch.allclose(module.gelu_tanh_and_mul(x), want, atol=1e-6)


# ----------------------------------------------------------------------------------- mixture of experts
@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_sparse_moe_matches_transformers_block(norm_topk_prob):
    """The MoE block (router, top-k with or without renormalization, experts grouped by expert)
    against transformers' Qwen3MoeSparseMoeBlock with the same weights."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    from lmrs.models.layers import SparseMoE
    from lmrs.models.linear import Linear

    cfg = Qwen3MoeConfig(hidden_size=32, moe_intermediate_size=16, num_experts=6, num_experts_per_tok=3,
                         norm_topk_prob=norm_topk_prob)
    torch.manual_seed(0)
    block = Qwen3MoeSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape) / math.sqrt(p.shape[-1]))
    gate_up = [Linear(block.experts.gate_up_proj[e].detach().clone()) for e in range(6)]
    down = [Linear(block.experts.down_proj[e].detach().clone()) for e in range(6)]
    moe = SparseMoE(block.gate.weight.detach(), gate_up, down, cpu, top_k=3, norm_topk_prob=norm_topk_prob)
    x = torch.randn(11, 32)
    with torch.no_grad():
        want = block(x[None])[0]
    assert torch.allclose(moe(x), want, atol=1e-6)
    weights, ids = moe.route(x)
    assert ids.shape == (11, 3) and torch.allclose(weights.sum(-1), torch.ones(11)) == norm_topk_prob
