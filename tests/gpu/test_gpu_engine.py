"""The whole engine on the CUDA backend: a tiny random Llama/Qwen2 matches the CPU reference
forward, and the golden SmolLM2 prompts give the reference tokens in float32 and the reference
first-step top-5 in bfloat16 (skipped when the model file is not on the machine)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from lmrs import _core
from lmrs.models.registry import build_model
from lmrs.models.loader import load_model_files
from lmrs.models.testing import make_tiny_model
from lmrs.runner.kv_cache import KVCache
from lmrs.runner.model_runner import ModelRunner
from lmrs.runner.sampler import Sampler

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "smollm2_golden.json")


def run_logits(model, cfg, prompts, device, budget=24):
    """Drive the real scheduler; return {request: [logits of each sampled step]} (float32, CPU)."""
    kv = KVCache(cfg.num_hidden_layers, 128, 16, cfg.num_key_value_heads, cfg.head_dim, model.dtype, device)
    runner = ModelRunner(model, kv, Sampler([]))
    core = _core.Core(128, vocab_size=cfg.vocab_size, block_size=16, max_num_batched_tokens=budget, max_model_len=512)
    for i, p in enumerate(prompts):
        core.add(i, p, max_new_tokens=5, ignore_eos=True)
    out = {i: [] for i in range(len(prompts))}
    while core.has_unfinished():
        plan = core.schedule()
        if plan.num_sampled:
            logits = runner.logits_for(plan)
            for j, rid in enumerate(plan.req_ids[plan.sample_rows].tolist()):
                out[rid].append(logits[j])
            core.update(logits.argmax(-1).numpy().astype(np.int64))
        else:
            runner.execute(plan)
            core.update(np.zeros(0, np.int64))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_tiny_model_cuda_matches_cpu_reference(tmp_path, arch, head_dim):
    from lmrs.kernels import cuda, reference

    folder = make_tiny_model(tmp_path / "m", arch=arch, hidden_size=4 * head_dim, heads=4, kv_heads=2, seed=1)
    loaded = load_model_files(folder, progress=False)
    cfg, w = loaded.config, loaded.weights
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, cfg.vocab_size, int(rng.integers(1, 60))).tolist() for _ in range(5)]
    cpu = run_logits(build_model(cfg, w, dtype=torch.float32, device="cpu", kernels=reference), cfg, prompts, "cpu")
    gpu = run_logits(build_model(cfg, w, dtype=torch.float32, device="cuda", kernels=cuda), cfg, prompts, "cuda")
    for i in cpu:
        for a, b in zip(cpu[i], gpu[i]):
            assert torch.allclose(a, b, atol=2e-3, rtol=2e-3), (i, (a - b).abs().max())


def _golden_engine(dtype, **kwargs):
    from lmrs import Engine
    from lmrs.models.errors import ModelNotFoundError
    from lmrs.models.loader import default_model_path

    try:
        path = default_model_path()
    except ModelNotFoundError as e:
        pytest.skip(f"the SmolLM2 GGUF is not on this machine: {e}")
    return Engine(path, device="cuda", dtype=dtype, kv_cache_memory="1GiB", progress=False, **kwargs)


def test_golden_tokens_float32_on_cuda():
    from lmrs import SamplingParams

    golden = json.load(open(GOLDEN))["prompts"]
    eng = _golden_engine("float32")
    outs = eng.generate([p["prompt_token_ids"] for p in golden], SamplingParams(temperature=0, max_tokens=48))
    for o, p in zip(outs, golden):
        assert o.token_ids == p["output_token_ids"], p["id"]


def test_golden_first_step_top5_bfloat16_on_cuda():
    from lmrs import SamplingParams

    golden = json.load(open(GOLDEN))["prompts"]
    eng = _golden_engine("bfloat16")
    outs = eng.generate([p["prompt_token_ids"] for p in golden], SamplingParams(temperature=0, max_tokens=1, logprobs=8))
    # The top logits are recomputed in float32 (compute_logits), but the hidden state carries 30
    # layers of bfloat16 matrix products (cuBLAS): on an H200 the worst top-5 log-probability over
    # the golden prompts was 0.140 off the float32 reference (the CPU path stays under 0.1), so the
    # bound leaves room for other GPUs' cuBLAS algorithms.
    for o, p in zip(outs, golden):
        ours = dict(o.outputs[0].logprobs[0]["top"])
        ref = p["first_step_top5"]
        for tid, lp in zip(ref["ids"], ref["logprobs"]):
            assert tid in ours and abs(ours[tid] - lp) < 0.2, (p["id"], tid, ours.get(tid), lp)


def test_cuda_graph_decode_matches_eager(tmp_path):
    """Decode steps replayed from CUDA graphs give the same greedy tokens as eager steps, and
    graphs really serve the decode steps (5 ragged prompts run in the 8-row bucket, then fewer
    rows as they finish). A tiny random model, so the test needs no model download."""
    from lmrs import Engine, SamplingParams

    folder = make_tiny_model(tmp_path / "m", hidden_size=256, heads=4, kv_heads=2, layers=3, seed=3)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 384, int(rng.integers(1, 40))).tolist() for _ in range(5)]
    sps = [SamplingParams(temperature=0, max_tokens=10 + 4 * i, ignore_eos=True) for i in range(5)]

    def run(cuda_graphs):
        eng = Engine(str(folder), device="cuda", dtype="float32", num_blocks=64, max_num_seqs=16,
                     progress=False, cuda_graphs=cuda_graphs)
        outs = [eng.generate([p], sp)[0] for p, sp in zip(prompts, sps)]  # batch 1
        outs += eng.generate(prompts, sps)  # ragged batch
        return [o.token_ids for o in outs], eng.engine.runner.graph_steps

    graph_tokens, graph_steps = run(True)
    eager_tokens, eager_steps = run(False)
    assert graph_steps > 0 and eager_steps == 0
    assert graph_tokens == eager_tokens
