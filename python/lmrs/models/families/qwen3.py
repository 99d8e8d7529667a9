"""Qwen3 (dense) and Qwen3-MoE.

Qwen3: the Qwen2 block without q/k/v biases and with a per-head RMSNorm of q and k before RoPE
(`self_attn.q_norm` / `k_norm`, D weights each); `head_dim` is explicit (128, not hidden / heads).
Qwen3-MoE: the same attention; the MLP of sparse layers is a top-k softmax router (`mlp.gate`)
over `num_experts` SwiGLU experts (`mlp.experts.{e}.{gate,up,down}_proj`), top-k weights
renormalized when `norm_topk_prob`; `decoder_sparse_step` / `mlp_only_layers` keep some layers
dense. GGUF: `qwen3` and `qwen3moe` (not permuted; experts stacked in `ffn_{gate,up,down}_exps`
[E, rows, cols] tensors, split per expert on load; llama.cpp always renormalizes the top-k weights).
"""

from __future__ import annotations

import numpy as np

from ..config import MoEConfig
from ..family import GGUF_BLOCK_NAMES
from ..quantized import QuantizedTensor
from ..registry import register
from .llama import Qwen2Family


class Qwen3Family(Qwen2Family):
    name = "qwen3"
    hf_architectures = ("Qwen3ForCausalLM",)
    model_types = ("qwen3",)
    gguf_architectures = ("qwen3",)
    hf_defaults = dict(max_position_embeddings=32768, attention_bias=False, head_dim=128, bos_token_id=None,
                       eos_token_id=None)
    qk_norm = True


_STACKED = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}


class Qwen3MoeFamily(Qwen3Family):
    name = "qwen3_moe"
    hf_architectures = ("Qwen3MoeForCausalLM",)
    model_types = ("qwen3_moe",)
    gguf_architectures = ("qwen3moe",)
    gguf_block_names = {**GGUF_BLOCK_NAMES, "ffn_gate_inp": "mlp.gate",
                        **{k: f"mlp.experts.{v}" for k, v in _STACKED.items()}}

    def hf_options(self, d, fields):
        experts = d.get("num_experts", d.get("num_local_experts"))
        if not experts:
            raise ValueError("a Qwen3-MoE config.json needs num_experts")
        return {"moe": MoEConfig(
            num_experts=int(experts), num_experts_per_tok=int(d.get("num_experts_per_tok", 8)),
            moe_intermediate_size=int(d["moe_intermediate_size"]), norm_topk_prob=bool(d.get("norm_topk_prob", False)),
            decoder_sparse_step=int(d.get("decoder_sparse_step", 1)),
            mlp_only_layers=tuple(int(i) for i in d.get("mlp_only_layers") or ()))}

    def hf_extra(self, cfg):
        m = cfg.moe
        return {**super().hf_extra(cfg), "num_experts": m.num_experts, "num_experts_per_tok": m.num_experts_per_tok,
                "moe_intermediate_size": m.moe_intermediate_size, "norm_topk_prob": m.norm_topk_prob,
                "decoder_sparse_step": m.decoder_sparse_step, "mlp_only_layers": list(m.mlp_only_layers)}

    def gguf_options(self, g, shapes, fields, aux):
        n = fields["num_hidden_layers"]
        dense = tuple(i for i in range(n) if f"blk.{i}.ffn_gate_inp.weight" not in shapes)
        experts = int(g.get("expert_count", required=True))
        inter = g.get("expert_feed_forward_length")
        if inter is None:
            sparse = next(i for i in range(n) if i not in dense)
            inter = shapes[f"blk.{sparse}.ffn_gate_exps.weight"][1]
        if dense and not fields["intermediate_size"]:
            fields["intermediate_size"] = shapes[f"blk.{dense[0]}.ffn_up.weight"][0]
        if not fields["intermediate_size"]:
            fields["intermediate_size"] = int(inter)  # unused: every layer is sparse
        return {"moe": MoEConfig(num_experts=experts, num_experts_per_tok=int(g.get("expert_used_count", required=True)),
                                 moe_intermediate_size=int(inter),
                                 norm_topk_prob=bool(g.get("expert_weights_norm", True)),
                                 decoder_sparse_step=1, mlp_only_layers=dense)}

    def gguf_tensors(self, cfg, name, array, pending):
        stem = name.split(".")[2] if name.startswith("blk.") else ""
        if stem in _STACKED:  # [E, rows, cols] -> one tensor per expert
            prefix = self.gguf_to_hf_name(name).rsplit(".", 2)[0]  # model.layers.N.mlp.experts
            return [(f"{prefix}.{e}.{_STACKED[stem]}.weight",
                     array[e] if isinstance(array, QuantizedTensor) else np.ascontiguousarray(array[e]))
                    for e in range(array.shape[0])]
        return super().gguf_tensors(cfg, name, array, pending)


QWEN3 = register(Qwen3Family())
QWEN3_MOE = register(Qwen3MoeFamily())
