"""SmolLM3: the Llama block where some layers have no RoPE (NoPE).

`no_rope_layers[i]` is 1 when layer i uses RoPE and 0 when it does not (transformers' default:
every 4th layer, `no_rope_layer_interval`); a NoPE layer writes K/V and attends without rotating.
Family extras: ``no_rope_layers`` (list of 0/1 per layer). GGUF: `smollm3` (q/k permuted like
`llama`; llama.cpp fixes the NoPE step at 4).
"""

from __future__ import annotations

from ..family import DecoderFamily
from ..registry import register


def default_no_rope_layers(num_layers: int, interval: int = 4) -> list[int]:
    return [int((i + 1) % interval != 0) for i in range(num_layers)]


class SmolLM3Family(DecoderFamily):
    name = "smollm3"
    hf_architectures = ("SmolLM3ForCausalLM",)
    model_types = ("smollm3",)
    gguf_architectures = ("smollm3",)
    hf_defaults = dict(max_position_embeddings=32768, attention_bias=False, tie_word_embeddings=True,
                       bos_token_id=128000, eos_token_id=128001)
    default_theta = 2_000_000.0
    gguf_permuted_qk = True

    def hf_options(self, d, fields):
        n = fields["num_hidden_layers"]
        layers = d.get("no_rope_layers")
        if layers is None:
            layers = default_no_rope_layers(n, int(d.get("no_rope_layer_interval", 4)))
        if len(layers) != n:
            raise ValueError(f"no_rope_layers has {len(layers)} entries for {n} layers")
        return {"extras": {"no_rope_layers": [int(bool(x)) for x in layers]}}

    def gguf_options(self, g, shapes, fields, aux):
        return {"extras": {"no_rope_layers": default_no_rope_layers(fields["num_hidden_layers"])}}

    def hf_extra(self, cfg):
        return {"no_rope_layers": list(cfg.extras["no_rope_layers"]), "use_sliding_window": cfg.sliding_window is not None,
                "sliding_window": cfg.sliding_window, "mlp_bias": False}

    def rotary_for_layer(self, cfg, i, rotaries):
        return rotaries["default"] if cfg.extras["no_rope_layers"][i] else None


SMOLLM3 = register(SmolLM3Family())
