"""Phi-3 / Phi-3.5 / Phi-4-mini (`Phi3ForCausalLM`).

The Llama block with fused checkpoint projections (`self_attn.qkv_proj` = [q | k | v] rows,
`mlp.gate_up_proj` = [gate | up] rows), partial rotary (`partial_rotary_factor`: Phi-4-mini
rotates 96 of 128 dims) and LongRoPE scaling (per-frequency short and long factors, cos and sin
scaled by the attention factor: see `lmrs.models.layers.rotary`). `sliding_window` (Phi-3-mini:
2047) applies to every layer, as in transformers. GGUF: `phi3` (not permuted; `attn_qkv`,
`ffn_up` holding gate and up; LongRoPE factors in `rope_factors_{short,long}.weight`,
`rope.scaling.attn_factor` and `rope.scaling.original_context_length`).
"""

from __future__ import annotations

from ..family import GGUF_BLOCK_NAMES, DecoderFamily
from ..hf_config import partial_rotary_factor
from ..layers import GatedMLP
from ..registry import register

_PHI3_BLOCK_NAMES = {**GGUF_BLOCK_NAMES, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}


class Phi3Family(DecoderFamily):
    name = "phi3"
    hf_architectures = ("Phi3ForCausalLM",)
    model_types = ("phi3",)
    gguf_architectures = ("phi3",)
    hf_defaults = dict(max_position_embeddings=4096, attention_bias=False, bos_token_id=1, eos_token_id=32000,
                       rms_norm_eps=1e-5)
    gguf_partial_rotary = True
    gguf_aux_tensors = ("rope_factors_long.weight", "rope_factors_short.weight")
    gguf_block_names = _PHI3_BLOCK_NAMES

    def hf_options(self, d, fields):
        return {"partial_rotary_factor": partial_rotary_factor(d)}

    def hf_extra(self, cfg):
        extra = {"partial_rotary_factor": cfg.partial_rotary_factor, "sliding_window": cfg.sliding_window}
        if cfg.rope_scaling and cfg.rope_scaling["rope_type"] == "longrope":
            extra["original_max_position_embeddings"] = cfg.rope_scaling["original_max_position_embeddings"]
        return extra

    def gguf_options(self, g, shapes, fields, aux):
        out = {}
        if "rope_factors_long.weight" in aux:
            orig = g.get("rope.scaling.original_context_length", fields["max_position_embeddings"])
            scaling = {"rope_type": "longrope",
                       "short_factor": [float(x) for x in aux["rope_factors_short.weight"].reshape(-1)],
                       "long_factor": [float(x) for x in aux["rope_factors_long.weight"].reshape(-1)],
                       "original_max_position_embeddings": int(orig)}
            if g.get("rope.scaling.attn_factor") is not None:
                scaling["attention_factor"] = float(g.get("rope.scaling.attn_factor"))
            out["rope_scaling"] = scaling
        if g.get("feed_forward_length") is None:
            out["intermediate_size"] = shapes["blk.0.ffn_up.weight"][0] // 2  # ffn_up holds gate and up
        return out

    def attention_shapes(self, cfg, p):
        h, q, kv = cfg.hidden_size, cfg.q_size, cfg.kv_size
        return {p + "self_attn.qkv_proj.weight": (q + 2 * kv, h), p + "self_attn.o_proj.weight": (h, q)}

    def mlp_shapes(self, cfg, n, p):
        h, i = cfg.hidden_size, cfg.intermediate_size
        return {p + "mlp.gate_up_proj.weight": (2 * i, h), p + "mlp.down_proj.weight": (h, i)}

    def qkv_projection(self, cfg, f, i):
        name = self.layer_prefix(i) + "self_attn.qkv_proj.weight"
        if f.parallel.size == 1:
            return f.column(name)
        q, kv = cfg.q_size, cfg.kv_size  # several ranks: each slices its heads out of q, k and v
        w = f.tensor(name)
        return f.qkv(w[:q], w[q:q + kv], w[q + kv:], **self.head_layout(cfg))

    def mlp(self, cfg, f, i):
        m = self.layer_prefix(i) + "mlp."
        if f.parallel.size > 1:  # each rank keeps its rows of gate and of up
            w = f.tensor(m + "gate_up_proj.weight")
            gate_up = f.column(w[:cfg.intermediate_size], w[cfg.intermediate_size:])
        else:
            gate_up = f.column(m + "gate_up_proj.weight")
        return GatedMLP(gate_up, f.row(m + "down_proj.weight"), f.kernels, self.activation(cfg))


PHI3 = register(Phi3Family())
