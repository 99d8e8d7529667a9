"""Llama 2 / 3 (and SmolLM / SmolLM2), Mistral, Qwen2: the plain pre-norm decoder.

RMSNorm -> GQA attention with RoPE (Qwen2: q/k/v biases) -> RMSNorm -> SwiGLU MLP. RoPE variants:
default, linear, Llama 3. Sliding windows: Mistral's `sliding_window` (every layer), Qwen2's
`use_sliding_window` (layers >= `max_window_layers`, or as `layer_types` says). GGUF: `llama`
(q/k rows permuted by llama.cpp's converter, undone on load) and `qwen2` (not permuted).
"""

from __future__ import annotations

from ..family import DecoderFamily
from ..registry import register


class LlamaFamily(DecoderFamily):
    name = "llama"
    hf_architectures = ("LlamaForCausalLM",)
    model_types = ("llama",)
    gguf_architectures = ("llama",)
    hf_defaults = dict(max_position_embeddings=2048, attention_bias=False, bos_token_id=1, eos_token_id=2)
    gguf_permuted_qk = True

    def hf_extra(self, cfg):
        return {"mlp_bias": False, "pretraining_tp": 1}


class MistralFamily(DecoderFamily):
    name = "mistral"
    hf_architectures = ("MistralForCausalLM",)
    model_types = ("mistral",)
    hf_defaults = dict(max_position_embeddings=4096 * 32, attention_bias=False, bos_token_id=1, eos_token_id=2)

    def hf_extra(self, cfg):
        return {"sliding_window": cfg.sliding_window}


class Qwen2Family(DecoderFamily):
    name = "qwen2"
    hf_architectures = ("Qwen2ForCausalLM",)
    model_types = ("qwen2",)
    gguf_architectures = ("qwen2",)
    hf_defaults = dict(max_position_embeddings=32768, attention_bias=True, bos_token_id=None, eos_token_id=None)

    def sliding_options(self, d, num_layers):
        if not d.get("use_sliding_window", False) or not d.get("sliding_window"):
            return {"sliding_window": None, "layer_types": None}
        types = d.get("layer_types")
        if types is None:  # transformers' rule: layers from max_window_layers on slide
            first = int(d.get("max_window_layers", num_layers))
            types = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
        return super().sliding_options({**d, "layer_types": types}, num_layers)

    def hf_extra(self, cfg):
        types = cfg.layer_types
        first = (types.index("sliding_attention") if types and "sliding_attention" in types
                 else cfg.num_hidden_layers if types else 0)
        return {"use_sliding_window": cfg.sliding_window is not None, "sliding_window": cfg.sliding_window,
                "max_window_layers": first if cfg.sliding_window else cfg.num_hidden_layers}


LLAMA = register(LlamaFamily())
MISTRAL = register(MistralFamily())
QWEN2 = register(Qwen2Family())
