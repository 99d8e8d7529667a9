"""Tiny random models of every family, built with Hugging Face transformers (a test dependency).

`make_tiny_family_model(family, folder)` builds the family's transformers model class from the
family's real config layout at a tiny size (2-6 layers, hidden 64, the real head layout, RoPE
variant, sliding windows, soft-caps, experts: see `SPECS`), gives it random weights with non-trivial
norms, saves it with `save_pretrained` plus a tokenizer and the family's chat template
(`testing_templates`), and returns the folder and the transformers model (the reference).

InternLM2 is not in transformers: its folder holds the InternLM2 checkpoint layout (packed `wqkv`,
`feed_forward.w1/w2/w3`...) and config, and the reference is a transformers Llama with the same
weights unpacked.

The tokenizer is word-level (whitespace-split words; special tokens first), so any generated token
sequence decodes to text that encodes back to the same tokens: a stateless client that resends a
reply reproduces the session's tokens exactly. The special tokens other than the template's
end-of-turn token get all-zero output rows, so a random model never emits them inside a reply (their
text would be skipped when decoded) nor ends a turn with another EOS than the template's.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from .testing_templates import FORMATS, ChatFormat

__all__ = ["SPECS", "VOCAB_SIZE", "make_tiny_family_model", "make_tiny_gemma3_multimodal", "word_tokenizer",
           "write_family_tokenizer", "hf_reference_class"]

VOCAB_SIZE = 384

_WORDS = ("system user assistant model tool ipython What is the capital of France? Germany? Paris. Berlin. And "
          "Thank you! Hello world a an the sea sky blue red green one two three four five yes no I you we it "
          "Tell me about joke count to please tiny test").split()

_LONGROPE = {"rope_type": "longrope"}  # factors sized for the rotary dimension by _longrope_factors


def _longrope_factors(kwargs: dict) -> dict:
    """Short factors rising from 1 to 2.5 and long ones from 1.5 to 13, one per rotated pair."""
    head_dim = kwargs.get("head_dim") or kwargs["hidden_size"] // kwargs["num_attention_heads"]
    n = int(head_dim * kwargs.get("partial_rotary_factor", 1.0)) // 2
    ramp = [i / max(1, n - 1) for i in range(n)]
    return {**kwargs["rope_scaling"], "short_factor": [round(1.0 + 1.5 * r, 3) for r in ramp],
            "long_factor": [round(1.5 + 11.5 * r, 3) for r in ramp]}

#: family -> (transformers class, config keyword arguments)
SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64})),
    "mistral": ("MistralForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        sliding_window=16, tie_word_embeddings=False)),
    "qwen2": ("Qwen2ForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=True, rope_theta=1000000.0)),
    "qwen3": ("Qwen3ForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, tie_word_embeddings=False, rope_theta=1000000.0)),
    "qwen3_moe": ("Qwen3MoeForCausalLM", dict(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
        decoder_sparse_step=1, mlp_only_layers=[1], tie_word_embeddings=False, rope_theta=1000000.0)),
    "gemma2": ("Gemma2ForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh")),
    "gemma3": ("Gemma3ForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, sliding_window=8, query_pre_attn_scalar=16, hidden_activation="gelu_pytorch_tanh",
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    "phi3": ("Phi3ForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        partial_rotary_factor=0.75, original_max_position_embeddings=16, max_position_embeddings=128,
        rope_scaling=_LONGROPE, tie_word_embeddings=True, sliding_window=None)),
    "smollm3": ("SmolLM3ForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=True, rope_theta=2000000.0)),
    "internlm2": ("LlamaForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
        tie_word_embeddings=False, rope_theta=1000000.0)),
}


def word_tokenizer(fmt: ChatFormat, vocab_size: int = VOCAB_SIZE):
    """A word-level `tokenizers.Tokenizer`: fmt.specials (ids 0..), then words, then fillers."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = list(dict.fromkeys([*fmt.specials, "<unk>" if "<unk>" not in fmt.specials else "<unk>", *_WORDS]))
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words[:vocab_size])}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.add_special_tokens(list(fmt.specials))
    return tk


def hf_reference_class(family: str) -> str:
    return SPECS[family][0]


def _randomize(model, family: str, seed: int) -> None:
    """Seeded weights: projections ~ N(0, 1/fan_in), embeddings and head ~ N(0, 0.5^2) (logits of a
    few units, like trained models'), norms ~ base + N(0, 0.1) (base 0 for Gemma's `1 + w` norms),
    biases ~ N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    offset_norms = family.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                base = 0.0 if offset_norms else 1.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or name == "lm_head.weight":
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def _silence(model, ids: list[int]) -> None:
    """Zero the output rows of `ids` (so greedy decoding never picks them)."""
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[ids] = 0.0


def make_tiny_family_model(family: str, folder: str | os.PathLike, *, seed: int = 0, **overrides):
    """Write a tiny random model of `family` into `folder`; returns (folder, transformers model in
    float32 eval mode, its config keyword arguments)."""
    import transformers

    cls_name, spec = SPECS[family]
    fmt = FORMATS[family]
    tk = word_tokenizer(fmt)
    ids = {t: tk.token_to_id(t) for t in fmt.specials}
    kwargs = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=512, bos_token_id=ids.get(fmt.bos),
                  eos_token_id=[ids[t] for t in fmt.eos_tokens], pad_token_id=0, attn_implementation="eager")
    kwargs.update(spec)
    kwargs.update(overrides)
    if (kwargs.get("rope_scaling") or {}).get("rope_type") == "longrope" and "short_factor" not in kwargs["rope_scaling"]:
        kwargs["rope_scaling"] = _longrope_factors(kwargs)
    config_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config").replace("Gemma3", "Gemma3Text"))
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config).float().eval()
    _randomize(model, family, seed)
    _silence(model, [i for t, i in ids.items() if t != fmt.end_of_turn])
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if family == "internlm2":
        _save_internlm2(model, out, kwargs)
    else:
        model.save_pretrained(out, safe_serialization=True)
    _save_tokenizer(out, tk, fmt, kwargs)
    return out, model, kwargs


def make_tiny_gemma3_multimodal(folder: str | os.PathLike, *, seed: int = 0):
    """A tiny `Gemma3ForConditionalGeneration` (the 4B-27B checkpoints' layout: `text_config`,
    `language_model.*` tensors beside a SigLIP vision tower); returns (folder, transformers model)."""
    import transformers

    _, spec = SPECS["gemma3"]
    text = transformers.Gemma3TextConfig(**dict(spec, vocab_size=VOCAB_SIZE, max_position_embeddings=512))
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=32, patch_size=8)
    fmt = FORMATS["gemma3"]
    ids = {t: i for i, t in enumerate(fmt.specials)}
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                       image_token_index=ids["<start_of_image>"], boi_token_index=ids["<start_of_image>"],
                                       eoi_token_index=ids["<end_of_turn>"], eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
                                       attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.Gemma3ForConditionalGeneration(config).float().eval()
    _randomize(model, "gemma3", seed)
    out = Path(folder)
    model.save_pretrained(out, safe_serialization=True)
    write_family_tokenizer("gemma3", out)
    return out, model


def write_family_tokenizer(family: str, folder: str | os.PathLike, template: str | None = None) -> Path:
    """Only the tokenizer files of a family's tiny model (tokenizer.json, tokenizer_config.json with
    the chat template or `template`, generation_config.json)."""
    fmt = FORMATS[family]
    if template is not None:
        fmt = ChatFormat(template, fmt.specials, fmt.bos, fmt.eos, fmt.extra_eos, turn_end=fmt.turn_end)
    tk = word_tokenizer(fmt)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ids = {t: tk.token_to_id(t) for t in fmt.specials}
    _save_tokenizer(out, tk, fmt, {"bos_token_id": ids.get(fmt.bos), "eos_token_id": [ids[t] for t in fmt.eos_tokens],
                                   "pad_token_id": 0})
    return out


def _save_tokenizer(out: Path, tk, fmt: ChatFormat, kwargs: dict) -> None:
    from .tokenizer import Tokenizer

    tok = Tokenizer(tk, bos_token=fmt.bos, eos_token=fmt.eos, unk_token="<unk>",
                    pad_token=fmt.specials[0], chat_template=fmt.template, model_max_length=512)
    tok.save_hf(out)
    gen = {"bos_token_id": kwargs["bos_token_id"], "eos_token_id": kwargs["eos_token_id"],
           "pad_token_id": kwargs["pad_token_id"]}
    (out / "generation_config.json").write_text(json.dumps({k: v for k, v in gen.items() if v is not None}) + "\n")


def _save_internlm2(llama, out: Path, kwargs: dict) -> None:
    """The InternLM2 checkpoint layout of a transformers Llama's weights."""
    from safetensors.torch import save_file

    from .families.internlm2 import pack_wqkv

    c = llama.config
    head_dim = c.hidden_size // c.num_attention_heads
    sd = {k: v.detach().clone().contiguous() for k, v in llama.state_dict().items()}
    w = {"model.tok_embeddings.weight": sd["model.embed_tokens.weight"], "model.norm.weight": sd["model.norm.weight"],
         "output.weight": sd["lm_head.weight"]}
    for i in range(c.num_hidden_layers):
        p, q = f"model.layers.{i}.", f"model.layers.{i}."
        w[q + "attention.wqkv.weight"] = pack_wqkv(sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"],
                                                   sd[p + "self_attn.v_proj.weight"], c.num_key_value_heads, head_dim)
        w[q + "attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        w[q + "feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        w[q + "feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        w[q + "feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        w[q + "attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        w[q + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    save_file({k: v.contiguous() for k, v in w.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2",
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "hidden_act": "silu", "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings, "rope_theta": kwargs.get("rope_theta", 10000.0),
        "rope_scaling": {"type": "dynamic", "factor": 2.0}, "bias": False, "tie_word_embeddings": False,
        "bos_token_id": kwargs["bos_token_id"], "eos_token_id": kwargs["eos_token_id"],
        "pad_token_id": kwargs["pad_token_id"], "torch_dtype": "float32", "attn_implementation": "eager",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
