"""Tiny random Llama and Qwen2 models (made here with safetensors): the paged, varlen, chunked
lmrs forward matches a plain non-paged PyTorch implementation of the same math (logits within
1e-4 in float32), on random prompts run concurrently through the real scheduler."""

import math

import numpy as np
import pytest
import torch

from lmrs import _core
from lmrs.models.registry import build_model
from lmrs.models.loader import load_model_files
from lmrs.models.layers.rotary import inv_freq_for
from lmrs.models.testing import make_tiny_model
from lmrs.runner.kv_cache import KVCache
from lmrs.runner.model_runner import ModelRunner
from lmrs.runner.sampler import Sampler


def plain_forward(cfg, w, ids):
    """Hugging Face Llama/Qwen2 math, no cache, full causal attention: logits [T, V]."""
    x = w["model.embed_tokens.weight"][torch.tensor(ids)].float()
    t = len(ids)
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    inv = inv_freq_for(cfg)
    ang = torch.outer(torch.arange(t, dtype=torch.float32), inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def norm(v, wt):
        return wt * (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    def rot(v):
        return torch.cat([-v[..., hd // 2 :], v[..., : hd // 2]], -1)

    def lin(v, name):
        b = w.get(name + ".bias")
        return v @ w[name + ".weight"].float().T + (b.float() if b is not None else 0)

    mask = torch.full((t, t), float("-inf")).triu(1)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = norm(x, w[p + "input_layernorm.weight"].float())
        q = lin(h, p + "self_attn.q_proj").view(t, nh, hd).transpose(0, 1)
        k = lin(h, p + "self_attn.k_proj").view(t, nkv, hd).transpose(0, 1)
        v = lin(h, p + "self_attn.v_proj").view(t, nkv, hd).transpose(0, 1)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k = k.repeat_interleave(nh // nkv, 0)
        v = v.repeat_interleave(nh // nkv, 0)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, -1) @ v
        x = x + lin(a.transpose(0, 1).reshape(t, nh * hd), p + "self_attn.o_proj")
        h = norm(x, w[p + "post_attention_layernorm.weight"].float())
        x = x + lin(torch.nn.functional.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = norm(x, w["model.norm.weight"].float())
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"]).float()
    return x @ head.T


CASES = [
    dict(arch="llama"),
    dict(arch="llama", tie_word_embeddings=False, kv_heads=1),
    dict(arch="llama", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    dict(arch="llama", rope_scaling={"rope_type": "linear", "factor": 2.0}),
    dict(arch="qwen2"),
    dict(arch="mistral"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" if not isinstance(v, dict) else v["rope_type"]
                                                           for v in c.values()))
def test_paged_forward_matches_plain_pytorch(tmp_path, case):
    folder = make_tiny_model(tmp_path / "m", seed=3, **case)
    loaded = load_model_files(folder, progress=False)
    cfg, w = loaded.config, loaded.weights
    model = build_model(cfg, w, dtype=torch.float32)
    bs = 4
    kv = KVCache(cfg.num_hidden_layers, 96, bs, cfg.num_key_value_heads, cfg.head_dim, torch.float32)
    runner = ModelRunner(model, kv, Sampler([]))
    core = _core.Core(96, vocab_size=cfg.vocab_size, block_size=bs, max_num_batched_tokens=24, max_num_seqs=4,
                      max_model_len=256)
    rng = np.random.default_rng(0)
    prompts = {i: rng.integers(3, cfg.vocab_size, int(rng.integers(1, 40))).tolist() for i in range(6)}
    for i, p in prompts.items():
        core.add(i, p, max_new_tokens=6, ignore_eos=True)
    tokens = {i: list(p) for i, p in prompts.items()}
    checked = 0
    while core.has_unfinished():
        plan = core.schedule()
        if plan.num_sampled:
            logits = runner.logits_for(plan)
            sampled = logits.argmax(-1).numpy().astype(np.int64)
            rows = plan.req_ids[plan.sample_rows]
            for j, rid in enumerate(rows.tolist()):
                ref = plain_forward(cfg, w, tokens[rid])[-1]
                assert torch.allclose(logits[j], ref, atol=1e-4, rtol=1e-4), (rid, (logits[j] - ref).abs().max())
                tokens[rid].append(int(sampled[j]))
                checked += 1
        else:
            runner.execute(plan)  # a prefill chunk that samples nothing still writes its K/V
            sampled = np.zeros(0, np.int64)
        core.update(sampled)
    assert checked == 6 * 6
