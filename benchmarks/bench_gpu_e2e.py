"""End-to-end decode throughput on a GPU: lmrs (CUDA kernels) against Hugging Face transformers
on the same GPU in the same run, at batch 1, 32 and 256, bfloat16.

The model is SmolLM2-135M-Instruct when its GGUF is installed; otherwise a model with the same
configuration and random weights (decode speed does not depend on the weight values), so the
script also runs on a GPU machine that cannot download the 98 MB model.

    python benchmarks/bench_gpu_e2e.py [--batches 1 32 256] [--prompt 100] [--new 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

SMOLLM2 = dict(architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
               max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=1, eos_token_ids=[2],
               name="SmolLM2-135M (random weights)")


def load_model():
    from lmrs.models.errors import ModelNotFoundError
    from lmrs.models.loader import default_model_path, load_model_files

    try:
        return load_model_files(default_model_path(), progress=False), "SmolLM2-135M-Instruct"
    except (ModelNotFoundError, ImportError) as e:
        print(f"(no SmolLM2 GGUF here: {e}; using random weights of the same shape)")
    from lmrs.models.config import ModelConfig
    from lmrs.models.loader import LoadedModel
    from lmrs.models.testing import random_weights

    cfg = ModelConfig(**SMOLLM2)
    return LoadedModel(cfg, random_weights(cfg, seed=0), tokenizer=placeholder_tokenizer(cfg.vocab_size),
                       source="random"), cfg.name


def placeholder_tokenizer(vocab_size: int):
    """A word-level tokenizer with one made-up word per id (text only matters for detokenizing)."""
    import tokenizers

    from lmrs.models.tokenizer import Tokenizer

    vocab = {f"w{i} ": i for i in range(vocab_size)}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0 "))
    tk.decoder = tokenizers.decoders.Fuse()
    return Tokenizer(tk, eos_token="w2 ")


def bench_lmrs(loaded, batch, prompt_len, new_tokens, cuda_graphs=True):
    from lmrs import Engine, SamplingParams

    eng = Engine(loaded=loaded, device="cuda", dtype="bfloat16", max_num_seqs=max(batch, 1),
                 max_num_batched_tokens=max(8192, batch * prompt_len), progress=False, cuda_graphs=cuda_graphs)
    rng = np.random.default_rng(batch)
    prompts = [rng.integers(100, 40000, prompt_len).tolist() for _ in range(batch)]
    sp = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    # warm-up on other prompts: the prefix cache must not hold a timed prompt (transformers has no such cache)
    warm = [np.random.default_rng(10_000 + batch).integers(100, 40000, prompt_len).tolist() for _ in range(min(batch, 4))]
    eng.generate(warm, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = eng.generate(prompts, sp)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = sum(len(o.token_ids) for o in outs)
    if n != batch * new_tokens:
        raise SystemExit(f"lmrs returned {n} tokens, not {batch} x {new_tokens}")
    if cuda_graphs and not eng.engine.runner.graph_steps:
        print(f"  (batch {batch}: no decode step ran on a CUDA graph; see the log for why)")
    del eng
    torch.cuda.empty_cache()
    return n / dt, dt / new_tokens * 1000


def bench_transformers(loaded, batch, prompt_len, new_tokens):
    try:
        import transformers
    except ImportError:
        return None
    cfg = loaded.config
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures",)})
    model = transformers.LlamaForCausalLM(hf_cfg).to("cuda", torch.bfloat16).eval()
    sd = {k: v for k, v in loaded.weights.items()}
    model.load_state_dict(sd, strict=False)
    rng = np.random.default_rng(batch)
    ids = torch.tensor(rng.integers(100, 40000, (batch, prompt_len)), device="cuda")
    with torch.inference_mode():
        warm = torch.tensor(np.random.default_rng(10_000 + batch).integers(100, 40000, (min(batch, 4), prompt_len)),
                            device="cuda")
        model.generate(warm, max_new_tokens=8, do_sample=False, min_new_tokens=8, pad_token_id=0)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = (out.shape[1] - prompt_len) * batch
    del model
    torch.cuda.empty_cache()
    return n / dt, dt / new_tokens * 1000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--prompt", type=int, default=100)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure")
        return 0
    loaded, name = load_model()
    print(f"model: {name}; GPU: {torch.cuda.get_device_name(0)}; bfloat16; prompt {args.prompt}, new {args.new}")
    print(f"{'batch':>6} {'lmrs tok/s':>12} {'ms/step':>9} {'eager tok/s':>12} {'graphs/eager':>12} "
          f"{'HF tok/s':>10} {'ms/step':>9} {'lmrs/HF':>8}")
    rows = []
    for b in args.batches:
        l_tps, l_ms = bench_lmrs(loaded, b, args.prompt, args.new)
        e_tps, e_ms = bench_lmrs(loaded, b, args.prompt, args.new, cuda_graphs=False)
        hf = bench_transformers(loaded, b, args.prompt, args.new) if os.environ.get("LMRS_HAVE_TRANSFORMERS", "1") != "0" else None
        h_tps, h_ms = hf if hf else (float("nan"), float("nan"))
        ratio = l_tps / h_tps if hf else float("nan")
        print(f"{b:>6} {l_tps:>12.0f} {l_ms:>9.2f} {e_tps:>12.0f} {l_tps / e_tps:>11.2f}x "
              f"{h_tps:>10.0f} {h_ms:>9.2f} {ratio:>7.2f}x")
        rows.append(dict(batch=b, lmrs_tokens_per_s=l_tps, lmrs_ms_per_step=l_ms, eager_tokens_per_s=e_tps,
                         eager_ms_per_step=e_ms, hf_tokens_per_s=h_tps,
                         hf_ms_per_step=h_ms, ratio=ratio))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": name, "gpu": torch.cuda.get_device_name(0), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
