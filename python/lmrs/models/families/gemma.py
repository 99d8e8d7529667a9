"""Gemma 2 and Gemma 3 (text: `Gemma3ForCausalLM`, model_type `gemma3_text`).

Gemma 3's multimodal checkpoints (`Gemma3ForConditionalGeneration`: 4B, 12B, 27B) load as their
text model: the `text_config` and the `language_model.` tensors; the vision tower and projector are
skipped.

Both: sandwich blocks (input / post-attention / pre-feedforward / post-feedforward RMSNorms), every
norm `(1 + w)`, GeGLU MLP (`gelu_pytorch_tanh`), embeddings times sqrt(hidden_size), attention
scale `query_pre_attn_scalar ** -0.5`, tied output head, and alternating sliding-window / global
layers (`layer_types`; Gemma 2: every other layer slides, Gemma 3: five of every six).
Gemma 2 adds attention-logit and final-logit soft-capping (50 and 30). Gemma 3 adds the per-head
q/k RMSNorm and gives local (sliding) layers their own RoPE: base `rope_local_base_freq` (10k), no
scaling, while global layers use `rope_theta` (1M) with the configured (linear) scaling.
Family extras (Gemma 3): ``rope_local_theta``.

GGUF (`gemma2`, `gemma3`): not permuted; llama.cpp's converter stored norms as 1 + w (undone on
load); `ffn_norm` is the pre-feedforward norm, `post_attention_norm` / `post_ffw_norm` the post
norms. llama.cpp derives what the file lacks: the sliding pattern (2 / 6, unless
`attention.sliding_window_pattern` says otherwise), Gemma 3's local base (10k unless
`rope.freq_base_swa`), and the query scale (1/sqrt(head_dim), or 1/sqrt(hidden / heads) for the
27B models); lmrs follows the same rules.
"""

from __future__ import annotations

from ..errors import UnsupportedModelError
from ..family import GGUF_BLOCK_NAMES, DecoderFamily
from ..hf_config import normalize_rope
from ..layers import RotaryEmbedding, SandwichBlock
from ..registry import register

_GEMMA_BLOCK_NAMES = {**GGUF_BLOCK_NAMES, "ffn_norm": "pre_feedforward_layernorm",
                      "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}


def pattern_layer_types(num_layers: int, pattern: int) -> list[str]:
    """transformers' / llama.cpp's rule: layer i slides unless (i + 1) is a multiple of `pattern`."""
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)]


class Gemma2Family(DecoderFamily):
    name = "gemma2"
    hf_architectures = ("Gemma2ForCausalLM",)
    model_types = ("gemma2",)
    gguf_architectures = ("gemma2",)
    hf_defaults = dict(max_position_embeddings=8192, attention_bias=False, tie_word_embeddings=True, head_dim=256,
                       bos_token_id=2, eos_token_id=1, hidden_act="gelu_pytorch_tanh")
    norm_offset = 1.0
    gguf_block_names = _GEMMA_BLOCK_NAMES
    default_pattern = 2
    default_window = 4096
    large_model_layers = 46  # llama.cpp: the 27B model scales queries by 1/sqrt(hidden / heads)

    def config_from_hf(self, d, *, name=None):
        d = dict(d)
        if d.get("use_bidirectional_attention"):
            raise UnsupportedModelError("bidirectional Gemma (an embedding model) is not a causal language model")
        # Gemma's activation key is hidden_activation (hidden_act, when present, is stale)
        d["hidden_act"] = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
        d.setdefault("sliding_window", self.default_window)
        if d.get("layer_types") is None:
            d["layer_types"] = pattern_layer_types(int(d["num_hidden_layers"]),
                                                   int(d.get("sliding_window_pattern", self.default_pattern)))
        return super().config_from_hf(d, name=name)

    def hf_options(self, d, fields):
        return {"query_pre_attn_scalar": float(d.get("query_pre_attn_scalar", fields["head_dim"])),
                "attn_logit_softcapping": d.get("attn_logit_softcapping"),
                "final_logit_softcapping": d.get("final_logit_softcapping")}

    def hf_extra(self, cfg):
        scalar = cfg.query_pre_attn_scalar
        return {"hidden_activation": cfg.hidden_act,
                "query_pre_attn_scalar": int(scalar) if scalar and float(scalar).is_integer() else scalar,
                "attn_logit_softcapping": cfg.attn_logit_softcapping,
                "final_logit_softcapping": cfg.final_logit_softcapping, "sliding_window": cfg.sliding_window,
                "layer_types": list(cfg.layer_types) if cfg.layer_types else None}

    def gguf_options(self, g, shapes, fields, aux):
        n = fields["num_hidden_layers"]
        window = g.get("attention.sliding_window", self.default_window)
        pattern = g.get("attention.sliding_window_pattern", self.default_pattern)
        if isinstance(pattern, list):  # one flag per layer (1: sliding)
            types = ["sliding_attention" if p else "full_attention" for p in pattern]
        else:
            types = pattern_layer_types(n, int(pattern))
        heads, hidden = fields["num_attention_heads"], fields["hidden_size"]
        scalar = hidden // heads if n == self.large_model_layers else fields["head_dim"]
        out = {"hidden_act": "gelu_pytorch_tanh", "query_pre_attn_scalar": float(scalar),
               "final_logit_softcapping": g.get("final_logit_softcapping") or None,
               "attn_logit_softcapping": g.get("attn_logit_softcapping") or None}
        if window:
            out.update(sliding_window=int(window), layer_types=types)
        else:
            out.update(sliding_window=None, layer_types=None)
        return out

    def layer_norm_names(self):
        return ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")

    def embedding_scale(self, cfg):
        return cfg.hidden_size ** 0.5

    def build_layer(self, cfg, f, i, rotaries):
        p = self.layer_prefix(i)

        def norm(name):
            return f.norm(p + name + ".weight", offset=self.norm_offset)

        return SandwichBlock(norm("input_layernorm"), self.attention(cfg, f, i, rotaries), norm("post_attention_layernorm"),
                             norm("pre_feedforward_layernorm"), self.mlp(cfg, f, i), norm("post_feedforward_layernorm"))


#: transformers' Gemma3TextConfig defaults (a multimodal checkpoint's text_config omits them)
_GEMMA3_TEXT_DEFAULTS = dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                             num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                             rms_norm_eps=1e-6, sliding_window=4096, max_position_embeddings=131072,
                             rope_theta=1_000_000.0, rope_local_base_freq=10_000.0)
_SKIPPED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


class Gemma3Family(Gemma2Family):
    name = "gemma3"
    hf_architectures = ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
    model_types = ("gemma3_text", "gemma3")
    gguf_architectures = ("gemma3",)
    hf_defaults = dict(Gemma2Family.hf_defaults, max_position_embeddings=131072)

    def config_from_hf(self, d, *, name=None):
        text = d.get("text_config")
        if isinstance(text, dict):  # Gemma3ForConditionalGeneration: the text model's config
            top = {k: d[k] for k in ("eos_token_id", "bos_token_id", "pad_token_id", "tie_word_embeddings",
                                     "torch_dtype", "dtype", "_name_or_path") if k in d}
            d = {**_GEMMA3_TEXT_DEFAULTS, **top, **text, "architectures": ["Gemma3ForCausalLM"]}
        return super().config_from_hf(d, name=name)

    def checkpoint_name(self, name):
        if name.startswith(_SKIPPED_PREFIXES):
            return None
        if name.startswith("language_model."):  # language_model.model.X, language_model.lm_head.weight
            return name[len("language_model."):]
        if name.startswith("model.language_model."):
            return "model." + name[len("model.language_model."):]
        return name
    default_theta = 1_000_000.0
    local_theta = 10_000.0
    qk_norm = True
    default_pattern = 6
    large_model_layers = 62

    def hf_options(self, d, fields):
        params = d.get("rope_parameters")
        if isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):  # transformers 5
            local_theta, local_scaling = normalize_rope(d, "sliding_attention", default_theta=self.local_theta)
        else:  # transformers 4: rope_scaling and rope_theta are the global layers'
            local_theta, local_scaling = float(d.get("rope_local_base_freq") or self.local_theta), None
        if local_scaling is not None:
            raise UnsupportedModelError("Gemma 3's local (sliding) layers use plain RoPE; rope scaling there is not supported")
        return {**super().hf_options(d, fields), "extras": {"rope_local_theta": local_theta}}

    def hf_extra(self, cfg):
        return {**super().hf_extra(cfg), "model_type": "gemma3_text", "rope_local_base_freq": cfg.extras["rope_local_theta"]}

    def gguf_options(self, g, shapes, fields, aux):
        out = super().gguf_options(g, shapes, fields, aux)
        out["extras"] = {"rope_local_theta": float(g.get("rope.freq_base_swa", self.local_theta))}
        return out

    def rotary_embeddings(self, cfg, kernels, device):
        return {"global": RotaryEmbedding.for_config(cfg, kernels, device),
                "local": RotaryEmbedding.for_config(cfg, kernels, device, theta=cfg.extras["rope_local_theta"],
                                                    scaling=None)}

    def rotary_for_layer(self, cfg, i, rotaries):
        return rotaries["local"] if cfg.sliding_window_for(i) else rotaries["global"]


GEMMA2 = register(Gemma2Family())
GEMMA3 = register(Gemma3Family())
