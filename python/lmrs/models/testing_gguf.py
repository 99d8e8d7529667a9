"""Write a Hugging Face folder as a GGUF the way llama.cpp's `convert_hf_to_gguf.py` lays it out,
for tests (written independently of lmrs' loader, from the converter's rules, so a mapping bug in
the loader does not cancel out):

- tensor names: `token_embd`, `output_norm`, `output`, `blk.N.{attn_norm, attn_q/k/v, attn_output,
  attn_q_norm, attn_k_norm, ffn_norm, ffn_gate/up/down, post_attention_norm, post_ffw_norm,
  ffn_gate_inp, ffn_{gate,up,down}_exps, attn_qkv}`;
- q/k rows permuted for interleaved RoPE (`llama`, `smollm3`, `internlm2`; InternLM2's `wqkv` split
  per KV group first); Gemma's norms stored as 1 + w; experts stacked [E, rows, cols]; Phi-3's
  LongRoPE factors as `rope_factors_{long,short}` and `rope.scaling.attn_factor`; Gemma 2 without
  `output.weight`;
- metadata keys per architecture, and a small byte-level BPE tokenizer (the tiny one of
  `lmrs.models.testing`) padded to the vocabulary size.

`write_gguf(folder, path, quant)`: quant "F32", "F16", "Q8_0" or "Q4_K_M" (Q4_K weights, Q6_K for
`output`, `attn_v` and `ffn_down` like llama-quantize's mix; Q8_0 where a row is not a multiple of
256 values, as llama-quantize falls back). Norms, biases, the router and RoPE factors stay F32.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .testing_kquants import QK_K, quantize_q4_k, quantize_q6_k

__all__ = ["write_gguf", "quantized_hf_weights", "GGUF_ARCH"]

#: transformers class -> llama.cpp architecture
GGUF_ARCH = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
             "Qwen3MoeForCausalLM": "qwen3moe", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
             "Phi3ForCausalLM": "phi3", "SmolLM3ForCausalLM": "smollm3", "InternLM2ForCausalLM": "internlm2"}
_PERMUTED = ("llama", "smollm3", "internlm2")

_HF_BLOCK = {  # HF module (after the layer prefix) -> GGUF stem
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "self_attn.qkv_proj": "attn_qkv", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.gate_up_proj": "ffn_up", "mlp.gate": "ffn_gate_inp",
    "post_attention_layernorm": "ffn_norm", "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    # InternLM2
    "attention_norm": "attn_norm", "attention.wo": "attn_output", "ffn_norm": "ffn_norm",
    "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up", "feed_forward.w2": "ffn_down",
}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The converter's LlamaModel.permute: HF rotate-half rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({k: np.asarray(v, dtype=np.float32) for k, v in load_file(str(f)).items()})
    return out


def _gguf_tensors(arch: str, c: dict, hf: dict[str, np.ndarray]):
    """(GGUF name, float32 array) in the converter's layout."""
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    gemma = arch.startswith("gemma")
    experts: dict[tuple[int, str], dict[int, np.ndarray]] = {}
    for name, t in hf.items():
        if name in ("model.embed_tokens.weight", "model.tok_embeddings.weight"):
            yield "token_embd.weight", t
            continue
        if name in ("lm_head.weight", "output.weight"):
            if arch != "gemma2" and not c.get("tie_word_embeddings", False):
                yield "output.weight", t
            continue
        if name == "model.norm.weight":
            yield "output_norm.weight", t + 1 if gemma else t
            continue
        _, _, layer, rest = name.split(".", 3)
        bid = int(layer)
        module, kind = rest.rsplit(".", 1)
        if ".experts." in module:  # mlp.experts.E.gate_proj
            _, _, e, proj = module.split(".")
            experts.setdefault((bid, proj), {})[int(e)] = t
            continue
        if module == "attention.wqkv":  # InternLM2: split per KV group, then permute q and k
            d = c["hidden_size"] // heads
            g = t.reshape(kv, heads // kv + 2, d, *t.shape[1:])
            q, k, v = g[:, :-2].reshape(-1, *t.shape[1:]), g[:, -2].reshape(-1, *t.shape[1:]), g[:, -1].reshape(
                -1, *t.shape[1:])
            yield f"blk.{bid}.attn_q.{kind}", _permute(q, heads)
            yield f"blk.{bid}.attn_k.{kind}", _permute(k, kv)
            yield f"blk.{bid}.attn_v.{kind}", v
            continue
        stem = _HF_BLOCK.get(module)
        if arch.startswith("gemma") and module == "post_attention_layernorm":
            stem = "post_attention_norm"
        if stem is None:
            raise ValueError(f"no GGUF name for {name}")
        if arch in _PERMUTED and stem in ("attn_q", "attn_k"):
            t = _permute(t, heads if stem == "attn_q" else kv)
        if gemma and stem.endswith("norm"):
            t = t + 1  # Gemma stores 1 + w
        yield f"blk.{bid}.{stem}.{kind}", t
    for (bid, proj), per_expert in sorted(experts.items()):
        stacked = np.stack([per_expert[e] for e in range(len(per_expert))])
        yield f"blk.{bid}.ffn_{proj.split('_')[0]}_exps.weight", stacked


def _quant_type(name: str, arr: np.ndarray, quant: str) -> str:
    if arr.ndim < 2 or name.endswith("norm.weight") or "ffn_gate_inp" in name or quant in ("F32", "F16"):
        return "F32" if arr.ndim < 2 or quant == "F32" or not name.endswith(".weight") else "F16"
    if quant == "Q8_0":
        return "Q8_0" if arr.shape[-1] % 32 == 0 else "F32"
    if arr.shape[-1] % QK_K:
        return "Q8_0" if arr.shape[-1] % 32 == 0 else "F32"
    big = name == "output.weight" or ".attn_v." in name or ".ffn_down" in name
    return "Q6_K" if big else "Q4_K"


def _roundtrip(name: str, arr: np.ndarray, quant: str) -> np.ndarray:
    """`arr` as a loader will read it back from a GGUF written with `quant` (GGUF name `name`)."""
    import gguf

    qtype = _quant_type(name, arr, quant)
    data, raw = _encode(arr, qtype)
    if raw is None:
        return np.asarray(data, dtype=np.float32)
    return gguf.quants.dequantize(data, raw).reshape(arr.shape).astype(np.float32)


def quantized_hf_weights(folder: str | os.PathLike, quant: str) -> dict[str, np.ndarray]:
    """The folder's weights (Hugging Face names and layout) as `write_gguf(folder, ..., quant)`
    stores them: each quantized and dequantized with the type the writer gives its GGUF tensor
    (quantization works row by row, so the converter's row permutations commute with it)."""
    folder = Path(folder)
    c = json.loads((folder / "config.json").read_text())
    arch = GGUF_ARCH[c["architectures"][0]]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    out = {}
    for name, t in _hf_tensors(folder).items():
        if name.endswith("attention.wqkv.weight"):  # InternLM2: q, k and v parts have their own types
            d = c["hidden_size"] // heads
            g = t.reshape(kv, heads // kv + 2, d, -1).copy()
            bid = name.split(".")[2]
            for sl, stem in ((slice(0, -2), "attn_q"), (slice(-2, -1), "attn_k"), (slice(-1, None), "attn_v")):
                part = g[:, sl]
                g[:, sl] = _roundtrip(f"blk.{bid}.{stem}.weight", part.reshape(-1, t.shape[1]), quant).reshape(part.shape)
            out[name] = g.reshape(t.shape)
            continue
        if ".experts." in name:  # model.layers.N.mlp.experts.E.proj.weight: a slice of a stacked tensor
            bid, proj = name.split(".")[2], name.split(".")[6]
            gname = f"blk.{bid}.ffn_{proj.split('_')[0]}_exps.weight"
        else:
            gname = next((n for n, _ in _gguf_tensors(arch, c, {name: t})), None)
            if gname is None:  # a head the GGUF does not store (tied)
                continue
        out[name] = t if t.ndim < 2 else _roundtrip(gname, t, quant)
    return out


def _encode(arr: np.ndarray, qtype: str):
    import gguf

    if qtype == "F32":
        return np.ascontiguousarray(arr, dtype=np.float32), None
    if qtype == "F16":
        return np.ascontiguousarray(arr, dtype=np.float16), None
    t = gguf.GGMLQuantizationType[qtype]
    if qtype == "Q4_K":
        return quantize_q4_k(arr), t
    if qtype == "Q6_K":
        return quantize_q6_k(arr), t
    return gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), t), t


def write_gguf(folder: str | os.PathLike, path: str | os.PathLike, quant: str = "F32") -> Path:
    """Convert a Hugging Face folder (one of `GGUF_ARCH`'s classes) into a GGUF file at `path`."""
    import gguf

    from .testing import TINY_SPECIAL_TOKENS, tiny_tokenizer_json

    folder = Path(folder)
    c = json.loads((folder / "config.json").read_text())
    arch = GGUF_ARCH[c["architectures"][0]]
    params = c.get("rope_parameters") or {}
    full = params.get("full_attention", params) if isinstance(params, dict) else {}
    scaling = c.get("rope_scaling") or full
    heads, hidden = c["num_attention_heads"], c["hidden_size"]
    head_dim = c.get("head_dim") or hidden // heads
    w = gguf.GGUFWriter(os.fspath(path), arch)
    w.add_name(c.get("_name_or_path") or folder.name)
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(c.get("num_key_value_heads", heads))
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    if "head_dim" in c or arch.startswith("gemma"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    theta = full.get("rope_theta", c.get("rope_theta"))
    if theta is not None and arch != "gemma2":  # the converter's Gemma 2 writes no RoPE base (10k)
        w.add_rope_freq_base(theta)
    if isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):
        w.add_rope_freq_base_swa(params["sliding_attention"]["rope_theta"])
    if scaling.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])
    extra: list[tuple[str, np.ndarray]] = []
    if arch in ("llama", "smollm3"):
        w.add_vocab_size(c["vocab_size"])
        w.add_rope_dimension_count(head_dim)
        if scaling.get("rope_type") == "llama3":
            from .testing import _llama3_rope_factors

            extra.append(("rope_freqs.weight", _llama3_rope_factors(scaling, head_dim, theta)))
    if arch == "qwen3moe":
        w.add_expert_count(c.get("num_experts", c.get("num_local_experts")))
        w.add_expert_used_count(c["num_experts_per_tok"])
        w.add_expert_feed_forward_length(c["moe_intermediate_size"])
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c["attn_logit_softcapping"])
        w.add_final_logit_softcapping(c["final_logit_softcapping"])
        w.add_sliding_window(c["sliding_window"])
    if arch == "gemma3":
        if c.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(c["final_logit_softcapping"])
        w.add_sliding_window(c["sliding_window"])
    if arch == "phi3":
        rot = full.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
        orig = full.get("original_max_position_embeddings", c.get("original_max_position_embeddings"))
        w.add_rope_dimension_count(int(rot * hidden) // heads)
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_sliding_window(c.get("sliding_window") or 0)
        if full.get("long_factor"):
            scale = c["max_position_embeddings"] / orig
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0)
            extra += [("rope_factors_long.weight", np.array(full["long_factor"], dtype=np.float32)),
                      ("rope_factors_short.weight", np.array(full["short_factor"], dtype=np.float32))]

    vocab = c["vocab_size"]
    tok = json.loads(tiny_tokenizer_json(min(vocab, 384)))
    tokens = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in TINY_SPECIAL_TOKENS else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    eos = c.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    if c.get("bos_token_id") is not None:
        w.add_bos_token_id(c["bos_token_id"])
    if eos is not None:
        w.add_eos_token_id(eos)

    for name, arr in extra:
        w.add_tensor(name, arr)
    for name, arr in _gguf_tensors(arch, c, _hf_tensors(folder)):
        data, raw = _encode(arr, _quant_type(name, arr, quant))
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
