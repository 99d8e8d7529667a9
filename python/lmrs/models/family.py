"""`Family`: everything lmrs knows about one model family, in one object.

A family reads its configuration (Hugging Face ``config.json`` and llama.cpp GGUF metadata), names
its checkpoint tensors (``weight_shapes``), maps GGUF tensors onto those names, and wires the layer
library (`lmrs.models.layers`) into a `DecoderModel`. The base class here is the Llama-shaped
decoder (pre-norm blocks, fused q/k/v and gate/up projections, one RoPE); a family file under
`lmrs.models.families` subclasses it and overrides only what differs (a few class attributes and
hooks), then registers an instance (`lmrs.models.registry.register`).

Checkpoint names are the Hugging Face ones (``model.layers.3.self_attn.q_proj.weight``): GGUF
files are renamed (and un-permuted, re-packed...) into them, so both sources build through the
same code and a GGUF converts into a loadable Hugging Face folder.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, Mapping

import numpy as np
import torch

from .config import ModelConfig
from .decoder import DecoderModel
from .errors import CorruptModelError, UnsupportedModelError
from .gguf_config import GGUFMetadata, gguf_common_fields
from .hf_config import common_fields, layer_types
from .layers import (AttentionSpec, GatedMLP, LayerFactory, LMHead, PreNormBlock, RotaryEmbedding, SelfAttention,
                     SparseMoE, TokenEmbedding)
from .layers.mlp import ACTIVATIONS
from .linear import SINGLE, ParallelContext
from ..parallel.sharding import head_shard
from .quantized import QuantizedTensor

__all__ = ["Family", "DecoderFamily", "GGUF_GLOBAL_NAMES", "GGUF_BLOCK_NAMES", "permute_qk", "unpermute_qk"]

#: llama.cpp global tensor names -> Hugging Face names
GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
#: llama.cpp per-block tensor stems -> Hugging Face module paths (Llama layout)
GGUF_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def permute_qk(w, n_head: int):
    """llama.cpp's converter permutation (HF layout -> GGUF layout) of q/k rows (or a 1-D bias)."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_qk(w, n_head: int):
    """Undo :func:`permute_qk` (GGUF layout -> HF layout); works on numpy arrays, torch tensors and
    :class:`~lmrs.models.quantized.QuantizedTensor` (a row permutation of its quantized rows)."""
    if isinstance(w, QuantizedTensor):
        from .gguf_quantized import llama_qk_row_order

        return w.permute_rows(llama_qk_row_order(n_head, w.rows // n_head))
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


class Family(ABC):
    """Interface of a model family (see `DecoderFamily` for the Llama-shaped implementation)."""

    #: the `ModelConfig.architecture` value
    name: str = ""
    #: transformers model classes (`config.json` "architectures"); the first is written by to_hf_dict
    hf_architectures: tuple[str, ...] = ()
    #: `config.json` "model_type" values (used when "architectures" is absent)
    model_types: tuple[str, ...] = ()
    #: llama.cpp `general.architecture` values this family loads
    gguf_architectures: tuple[str, ...] = ()
    #: GGUF tensors the loader reads as auxiliary values (RoPE factors), not weights
    gguf_aux_tensors: tuple[str, ...] = ()

    @abstractmethod
    def config_from_hf(self, d: Mapping[str, Any], *, name: str | None = None) -> ModelConfig:
        """The ModelConfig of a config.json dict."""

    @abstractmethod
    def to_hf_dict(self, cfg: ModelConfig) -> dict[str, Any]:
        """A config.json dict transformers reads back."""

    @abstractmethod
    def weight_shapes(self, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
        """The checkpoint tensors (Hugging Face names) and their shapes."""

    def checkpoint_name(self, name: str) -> str | None:
        """The name a checkpoint tensor goes by in `weight_shapes` (None: a tensor lmrs does not use,
        skipped silently, e.g. a multimodal checkpoint's vision tower)."""
        return name

    @abstractmethod
    def config_from_gguf(self, md: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], *, path: str = "",
                         aux: Mapping[str, np.ndarray] | None = None) -> ModelConfig:
        """The ModelConfig of GGUF metadata and tensor shapes."""

    @abstractmethod
    def gguf_to_hf_name(self, name: str) -> str | None:
        """The checkpoint name of a GGUF tensor (None: not part of this family's layout)."""

    @abstractmethod
    def gguf_tensors(self, cfg: ModelConfig, name: str, array: np.ndarray | QuantizedTensor,
                     pending: dict) -> list[tuple[str, np.ndarray | QuantizedTensor]]:
        """Checkpoint-named arrays (or weights kept quantized) for one GGUF tensor."""

    @abstractmethod
    def build(self, cfg: ModelConfig, weights: Mapping[str, torch.Tensor], *, dtype: torch.dtype,
              device: torch.device | str, kernels, parallel: ParallelContext = SINGLE) -> DecoderModel:
        """The runnable model."""


class DecoderFamily(Family):
    """A Llama-shaped decoder family; subclasses change class attributes and override hooks."""

    #: defaults for `config.json` keys that may be missing (transformers' class defaults)
    hf_defaults: dict = {}
    #: RoPE base when the config gives none
    default_theta: float = 10000.0
    #: RMSNorm weights are stored as w and applied as (1 + w) (Gemma)
    norm_offset: float = 0.0
    #: per-head q/k RMSNorm weights (`self_attn.q_norm` / `k_norm`)
    qk_norm: bool = False
    #: llama.cpp's converter permuted q/k rows for interleaved RoPE (undone on load)
    gguf_permuted_qk: bool = False
    #: GGUF `rope.dimension_count` may be smaller than head_dim (partial rotary)
    gguf_partial_rotary: bool = False
    #: GGUF tensors read as auxiliary values, not weights
    gguf_aux_tensors: tuple[str, ...] = ("rope_freqs.weight",)
    gguf_block_names: dict = GGUF_BLOCK_NAMES
    gguf_global_names: dict = GGUF_GLOBAL_NAMES
    #: module paths inside a layer
    attn_prefix = "self_attn."
    mlp_prefix = "mlp."
    input_norm = "input_layernorm"
    post_attention_norm = "post_attention_layernorm"
    #: names of the q and k projections (whose GGUF rows may be permuted)
    q_name, k_name = "q_proj", "k_proj"

    # ================================================================== config.json
    def config_from_hf(self, d: Mapping[str, Any], *, name: str | None = None) -> ModelConfig:
        fields = common_fields(d, self.name, self.hf_defaults, name=name, default_theta=self.default_theta)
        act = d.get("hidden_act", d.get("hidden_activation", self.hf_defaults.get("hidden_act", "silu")))
        if act not in ACTIVATIONS:
            raise UnsupportedModelError(f"unsupported activation hidden_act={act!r}; lmrs supports "
                                        f"{', '.join(sorted(ACTIVATIONS))}")
        if d.get("mlp_bias"):
            raise UnsupportedModelError("mlp_bias=true (biases on the MLP projections) is not supported")
        fields["hidden_act"] = "silu" if act == "swish" else ("gelu_pytorch_tanh" if act == "gelu_tanh" else act)
        fields["qk_norm"] = self.qk_norm
        fields.update(self.sliding_options(d, fields["num_hidden_layers"]))
        fields.update(self.hf_options(d, fields))
        return ModelConfig(**fields)

    def sliding_options(self, d: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
        """`sliding_window` and `layer_types` (transformers: `use_sliding_window` gates the window
        where the family has that switch; `layer_types` marks which layers slide)."""
        window = d.get("sliding_window")
        if "use_sliding_window" in d and not d.get("use_sliding_window"):
            window = None
        types = layer_types(d, num_layers)
        if not window:
            return {"sliding_window": None, "layer_types": None}
        if types is not None and "sliding_attention" not in types:
            return {"sliding_window": None, "layer_types": None}
        return {"sliding_window": int(window), "layer_types": types}

    def hf_options(self, d: Mapping[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        """Family-specific `ModelConfig` fields from a config.json dict."""
        return {}

    def to_hf_dict(self, cfg: ModelConfig) -> dict[str, Any]:
        d: dict[str, Any] = {
            "architectures": [self.hf_architectures[0]],
            "model_type": self.model_types[0] if self.model_types else self.name,
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": cfg.hidden_act,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta,
            "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "attention_bias": cfg.attention_bias,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": (cfg.eos_token_ids[0] if len(cfg.eos_token_ids) == 1
                             else list(cfg.eos_token_ids) or None),
            "pad_token_id": cfg.pad_token_id,
            "initializer_range": 0.02,
            "use_cache": True,
        }
        if cfg.torch_dtype:
            d["torch_dtype"] = cfg.torch_dtype
        if cfg.name:
            d["_name_or_path"] = cfg.name
        d.update(self.hf_extra(cfg))
        return d

    def hf_extra(self, cfg: ModelConfig) -> dict[str, Any]:
        """Family-specific config.json keys."""
        return {}

    # ================================================================== checkpoint names
    def layer_prefix(self, i: int) -> str:
        return f"model.layers.{i}."

    embed_name = "model.embed_tokens.weight"
    final_norm_name = "model.norm.weight"
    lm_head_name = "lm_head.weight"

    def weight_shapes(self, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
        """The checkpoint tensors and shapes (`lm_head` only when untied)."""
        shapes: dict[str, tuple[int, ...]] = {self.embed_name: (cfg.vocab_size, cfg.hidden_size)}
        for n in range(cfg.num_hidden_layers):
            p = self.layer_prefix(n)
            for name in self.layer_norm_names():
                shapes[p + name + ".weight"] = (cfg.hidden_size,)
            shapes.update(self.attention_shapes(cfg, p))
            shapes.update(self.mlp_shapes(cfg, n, p))
        shapes[self.final_norm_name] = (cfg.hidden_size,)
        if not cfg.tie_word_embeddings:
            shapes[self.lm_head_name] = (cfg.vocab_size, cfg.hidden_size)
        return shapes

    def layer_norm_names(self) -> tuple[str, ...]:
        return (self.input_norm, self.post_attention_norm)

    def attention_shapes(self, cfg: ModelConfig, p: str) -> dict[str, tuple[int, ...]]:
        h, q, kv = cfg.hidden_size, cfg.q_size, cfg.kv_size
        a = p + self.attn_prefix
        shapes = {a + "q_proj.weight": (q, h), a + "k_proj.weight": (kv, h), a + "v_proj.weight": (kv, h),
                  a + "o_proj.weight": (h, q)}
        if cfg.attention_bias:
            shapes.update({a + "q_proj.bias": (q,), a + "k_proj.bias": (kv,), a + "v_proj.bias": (kv,)})
        if cfg.qk_norm:
            shapes.update({a + "q_norm.weight": (cfg.head_dim,), a + "k_norm.weight": (cfg.head_dim,)})
        return shapes

    def mlp_shapes(self, cfg: ModelConfig, n: int, p: str) -> dict[str, tuple[int, ...]]:
        h, m = cfg.hidden_size, p + self.mlp_prefix
        if cfg.moe is not None and cfg.moe.is_sparse(n):
            e, i = cfg.moe.num_experts, cfg.moe.moe_intermediate_size
            shapes = {m + "gate.weight": (e, h)}
            for x in range(e):
                shapes.update({f"{m}experts.{x}.gate_proj.weight": (i, h), f"{m}experts.{x}.up_proj.weight": (i, h),
                               f"{m}experts.{x}.down_proj.weight": (h, i)})
            return shapes
        i = cfg.intermediate_size
        return {m + "gate_proj.weight": (i, h), m + "up_proj.weight": (i, h), m + "down_proj.weight": (h, i)}

    # ================================================================== GGUF
    def config_from_gguf(self, md: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], *, path: str = "",
                         aux: Mapping[str, np.ndarray] | None = None) -> ModelConfig:
        g = GGUFMetadata(md, md.get("general.architecture"), path)
        fields = gguf_common_fields(g, shapes, architecture=self.name, aux=aux,
                                    partial_rotary=self.gguf_partial_rotary)
        fields["qk_norm"] = self.qk_norm
        fields.update(self.gguf_options(g, shapes, fields, aux or {}))
        try:
            return ModelConfig(**fields)
        except ValueError as e:
            raise CorruptModelError(f"{path}: inconsistent GGUF metadata: {e}", path) from e

    def gguf_options(self, g: GGUFMetadata, shapes: Mapping[str, tuple[int, ...]], fields: dict[str, Any],
                     aux: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Family-specific `ModelConfig` fields from GGUF metadata."""
        return {}

    def gguf_to_hf_name(self, name: str) -> str | None:
        """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None for unknown names."""
        if name in self.gguf_global_names:
            return self.gguf_global_names[name]
        m = _BLOCK_RE.match(name)
        if m and m.group(2) in self.gguf_block_names:
            return f"{self.layer_prefix(int(m.group(1)))}{self.gguf_block_names[m.group(2)]}.{m.group(3)}"
        return None

    def gguf_tensors(self, cfg: ModelConfig, name: str, array: np.ndarray,
                     pending: dict) -> list[tuple[str, np.ndarray]]:
        """HF-named arrays for one GGUF tensor (un-permuted q/k, norm offsets removed). `pending`
        is per-load scratch for families that combine several GGUF tensors into one. `array` may be a
        QuantizedTensor (a weight kept quantized): only row permutations and concatenations apply to it."""
        hf = self.gguf_to_hf_name(name)
        if self.gguf_permuted_qk and f"{self.attn_prefix}{self.q_name}." in hf:
            array = unpermute_qk(array, cfg.num_attention_heads)
        elif self.gguf_permuted_qk and f"{self.attn_prefix}{self.k_name}." in hf:
            array = unpermute_qk(array, cfg.num_key_value_heads)
        if self.norm_offset and hf.endswith("norm.weight"):
            array = array - np.float32(self.norm_offset)  # llama.cpp's converter stored w + offset
        return [(hf, array)]

    # ================================================================== the model
    def build(self, cfg: ModelConfig, weights: Mapping[str, torch.Tensor], *, dtype: torch.dtype,
              device: torch.device | str, kernels, parallel: ParallelContext = SINGLE) -> DecoderModel:
        missing = [k for k in self.weight_shapes(cfg) if k not in weights]
        if missing:
            raise ValueError(f"weights are missing {len(missing)} tensors, e.g. {missing[:3]}")
        device = torch.device(device)
        f = LayerFactory(weights, dtype=dtype, device=device, kernels=kernels, eps=cfg.rms_norm_eps,
                         parallel=parallel)
        embedding = TokenEmbedding(weights[self.embed_name], dtype=dtype, device=device,
                                   scale=self.embedding_scale(cfg), parallel=parallel)
        rotaries = self.rotary_embeddings(cfg, kernels, device)
        layers = [self.build_layer(cfg, f, i, rotaries) for i in range(cfg.num_hidden_layers)]
        norm = f.norm(self.final_norm_name, offset=self.norm_offset)
        untied = not cfg.tie_word_embeddings and self.lm_head_name in weights
        head = LMHead.build(embedding, weights[self.lm_head_name] if untied else None, kernels, dtype=dtype,
                            soft_cap=cfg.final_logit_softcapping, parallel=parallel)
        return DecoderModel(cfg, embedding=embedding, layers=layers, norm=norm, head=head, dtype=dtype, device=device,
                            kernels=kernels, num_heads=self.heads(cfg, parallel)[0],
                            num_kv_heads=self.heads(cfg, parallel)[1], rotaries=list(rotaries.values()))

    @staticmethod
    def heads(cfg: ModelConfig, parallel: ParallelContext) -> tuple[int, int]:
        """This rank's (query heads, KV heads)."""
        hs = head_shard(cfg.num_attention_heads, cfg.num_key_value_heads, parallel.size, parallel.rank)
        return hs.q_count, hs.kv_count

    def embedding_scale(self, cfg: ModelConfig) -> float | None:
        """Factor on the token embeddings (Gemma: sqrt(hidden_size)); None = 1."""
        return None

    def attention_scale(self, cfg: ModelConfig) -> float:
        if cfg.query_pre_attn_scalar:
            return float(cfg.query_pre_attn_scalar) ** -0.5
        return cfg.head_dim ** -0.5

    def sliding_window(self, cfg: ModelConfig, i: int) -> int:
        """Layer i's window for the kernels (0: full). A window that can never bite (at least
        max_position_embeddings) is 0, so full-attention kernels serve it."""
        w = cfg.sliding_window_for(i)
        return 0 if w >= cfg.max_position_embeddings else w

    def rotary_embeddings(self, cfg: ModelConfig, kernels, device) -> dict[str, RotaryEmbedding]:
        """The model's RoPE tables by name (shared by the layers that use them)."""
        return {"default": RotaryEmbedding.for_config(cfg, kernels, device)}

    def rotary_for_layer(self, cfg: ModelConfig, i: int, rotaries: dict[str, RotaryEmbedding]) -> RotaryEmbedding | None:
        return rotaries["default"]

    def build_layer(self, cfg: ModelConfig, f: LayerFactory, i: int, rotaries: dict[str, RotaryEmbedding]):
        p = self.layer_prefix(i)
        return PreNormBlock(f.norm(p + self.input_norm + ".weight", offset=self.norm_offset),
                            self.attention(cfg, f, i, rotaries),
                            f.norm(p + self.post_attention_norm + ".weight", offset=self.norm_offset),
                            self.mlp(cfg, f, i))

    def attention_spec(self, cfg: ModelConfig, f: LayerFactory, i: int) -> AttentionSpec:
        heads, kv_heads = self.heads(cfg, f.parallel)
        return AttentionSpec(heads, kv_heads, cfg.head_dim, self.attention_scale(cfg),
                             sliding_window=self.sliding_window(cfg, i),
                             soft_cap=float(cfg.attn_logit_softcapping or 0.0))

    def qkv_projection(self, cfg: ModelConfig, f: LayerFactory, i: int):
        a = self.layer_prefix(i) + self.attn_prefix
        biases = [a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"] if cfg.attention_bias else None
        return f.qkv(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight", biases,
                     **self.head_layout(cfg))

    @staticmethod
    def head_layout(cfg: ModelConfig) -> dict:
        """The keyword arguments of `LayerFactory.qkv` / `o_proj` for this model's heads."""
        return dict(num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim)

    def attention(self, cfg: ModelConfig, f: LayerFactory, i: int, rotaries) -> SelfAttention:
        a = self.layer_prefix(i) + self.attn_prefix
        q_norm = k_norm = None
        if cfg.qk_norm:
            q_norm = f.head_norm(a + "q_norm.weight", offset=self.norm_offset)
            k_norm = f.head_norm(a + "k_norm.weight", offset=self.norm_offset)
        return SelfAttention(self.attention_spec(cfg, f, i), self.qkv_projection(cfg, f, i),
                             f.o_proj(a + "o_proj.weight", **self.head_layout(cfg)), f.kernels, rotary=self.rotary_for_layer(cfg, i, rotaries),
                             q_norm=q_norm, k_norm=k_norm)

    def activation(self, cfg: ModelConfig) -> str:
        return ACTIVATIONS[cfg.hidden_act]

    def mlp(self, cfg: ModelConfig, f: LayerFactory, i: int):
        m = self.layer_prefix(i) + self.mlp_prefix
        if cfg.moe is not None and cfg.moe.is_sparse(i):
            e = cfg.moe.num_experts
            gate_up = [f.column(f"{m}experts.{x}.gate_proj.weight", f"{m}experts.{x}.up_proj.weight") for x in range(e)]
            # experts split by their intermediate features; one all-reduce for the whole block
            down = [f.row(f"{m}experts.{x}.down_proj.weight", reduce=False) for x in range(e)]
            return SparseMoE(f.tensor(m + "gate.weight"), gate_up, down, f.kernels, top_k=cfg.moe.num_experts_per_tok,
                             norm_topk_prob=cfg.moe.norm_topk_prob, activation=self.activation(cfg),
                             parallel=f.parallel)
        return GatedMLP(f.column(m + "gate_proj.weight", m + "up_proj.weight"), f.row(m + "down_proj.weight"),
                        f.kernels, self.activation(cfg))
