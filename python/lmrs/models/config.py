"""Model hyper-parameters: :class:`ModelConfig`, read from / written to Hugging Face ``config.json`` dicts.

One dataclass for every family. The fields every decoder has come first; then the typed
cross-family options the layer library understands (activation, sliding-window layer types, partial
rotary, q/k norm, soft-caps, the query scale, mixture-of-experts); `extras` holds what only one
family reads (documented in that family's file, e.g. Gemma 3's local RoPE base or SmolLM3's NoPE
layers).

``ModelConfig.from_hf_dict`` picks the family from ``architectures`` / ``model_type`` (see
:mod:`lmrs.models.registry`) and lets it parse the dict; it understands transformers 4 spellings
(``rope_theta`` and ``rope_scaling`` at the top level, ``rope_scaling.type``, ``torch_dtype``) and
transformers 5 ones (``rope_parameters``, possibly per layer type, ``dtype``). ``to_hf_dict`` writes a
dict transformers reads back.

``rope_scaling`` is normalised to ``None`` (plain RoPE) or a dict with ``rope_type`` "linear"
(``factor``), "llama3" (``factor``, ``low_freq_factor``, ``high_freq_factor``,
``original_max_position_embeddings``) or "longrope" (``short_factor``, ``long_factor``,
``original_max_position_embeddings``, optional ``factor`` and ``attention_factor``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import UnsupportedModelError

__all__ = ["ModelConfig", "MoEConfig", "SUPPORTED_ROPE_TYPES", "LAYER_TYPES", "SUPPORTED_ACTIVATIONS"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")
#: ``layer_types`` values: full causal attention or sliding-window attention
LAYER_TYPES = ("full_attention", "sliding_attention")
#: gated MLP activations (``hidden_act`` / ``hidden_activation``)
SUPPORTED_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


@dataclass
class MoEConfig:
    """Mixture-of-experts MLP options (Qwen3-MoE's names)."""

    num_experts: int  # routed experts per sparse layer
    num_experts_per_tok: int  # top-k experts each token goes to
    moe_intermediate_size: int  # hidden size of each expert's MLP
    norm_topk_prob: bool = True  # renormalize the top-k routing weights to sum to 1
    decoder_sparse_step: int = 1  # every n-th layer is sparse ...
    mlp_only_layers: tuple[int, ...] = ()  # ... except these, which keep a dense MLP

    def is_sparse(self, layer: int) -> bool:
        return (layer not in self.mlp_only_layers and self.num_experts > 0
                and (layer + 1) % max(1, self.decoder_sparse_step) == 0)


@dataclass
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer of one of the supported families.

    ``architecture`` is the family name ("llama", "qwen3", "gemma3", ...: :mod:`lmrs.models.registry`).
    ``attention_bias`` means the q/k/v projections have biases (Qwen2); o_proj never has one.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    name: str = ""
    #: sliding-window span of the sliding layers (all layers when ``layer_types`` is None); None = none
    sliding_window: int | None = None
    #: the gated MLP's activation: "silu" (SwiGLU) or "gelu_pytorch_tanh" (GeGLU)
    hidden_act: str = "silu"
    #: per layer "full_attention" or "sliding_attention" (None: every layer the same)
    layer_types: list[str] | None = None
    #: fraction of each head's dimensions that RoPE rotates (Phi-4-mini: 0.75)
    partial_rotary_factor: float = 1.0
    #: per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3)
    qk_norm: bool = False
    #: attention scores become c * tanh(score / c) (Gemma 2); None = off
    attn_logit_softcapping: float | None = None
    #: output logits become c * tanh(logit / c) (Gemma 2); None = off
    final_logit_softcapping: float | None = None
    #: attention scale = query_pre_attn_scalar ** -0.5 (Gemma); None = head_dim ** -0.5
    query_pre_attn_scalar: float | None = None
    #: mixture-of-experts options (None: dense MLPs)
    moe: MoEConfig | None = None
    #: options only one family reads (documented in its file under lmrs.models.families)
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.moe, Mapping):
            self.moe = MoEConfig(**self.moe)
        if self.moe is not None:
            self.moe.mlp_only_layers = tuple(int(i) for i in self.moe.mlp_only_layers)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` / ``UnsupportedModelError`` with a clear message on inconsistent values."""
        from .registry import family_names, supported_list

        if self.architecture not in family_names():
            raise UnsupportedModelError(
                f"unsupported model architecture {self.architecture!r}; lmrs supports: {supported_list()}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads})")
        if not 0 < self.partial_rotary_factor <= 1:
            raise ValueError(f"partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}")
        if self.rotary_dim % 2 or self.rotary_dim == 0:
            raise ValueError(f"the rotary dimension (head_dim {self.head_dim} x partial_rotary_factor "
                             f"{self.partial_rotary_factor} = {self.rotary_dim}) must be even and positive")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type")
            if rope_type not in SUPPORTED_ROPE_TYPES[1:]:
                raise UnsupportedModelError(
                    f"unsupported RoPE scaling type {rope_type!r}; lmrs supports: {', '.join(SUPPORTED_ROPE_TYPES)}")
            if rope_type == "longrope":
                half = self.rotary_dim // 2
                for key in ("short_factor", "long_factor"):
                    if len(self.rope_scaling.get(key) or ()) != half:
                        raise ValueError(f"longrope {key} must have rotary_dim / 2 = {half} values, got "
                                         f"{len(self.rope_scaling.get(key) or ())}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise UnsupportedModelError(f"unsupported activation {self.hidden_act!r}; lmrs supports: "
                                        f"{', '.join(SUPPORTED_ACTIVATIONS)}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window must be positive or None, got {self.sliding_window}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers:
                raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad:
                raise UnsupportedModelError(f"unsupported layer types {bad}; lmrs supports: {', '.join(LAYER_TYPES)}")
            if "sliding_attention" in self.layer_types and not self.sliding_window:
                raise ValueError("layer_types has sliding_attention layers but sliding_window is not set")
        for name in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")
        if self.moe is not None:
            m = self.moe
            if m.num_experts < 1 or not 0 < m.num_experts_per_tok <= m.num_experts or m.moe_intermediate_size < 1:
                raise ValueError(f"inconsistent mixture-of-experts options: {m}")
        for tid in [self.bos_token_id, self.pad_token_id, *self.eos_token_ids]:
            if tid is not None and not 0 <= tid < self.vocab_size:
                raise ValueError(f"special token id {tid} is outside the vocabulary (size {self.vocab_size})")

    # ------------------------------------------------------------------ derived values
    @property
    def family(self):
        """The :class:`lmrs.models.family.Family` that parses, loads and builds this model."""
        from .registry import get_family

        return get_family(self.architecture)

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that RoPE rotates (transformers: int(head_dim * factor))."""
        return int(self.head_dim * self.partial_rotary_factor)

    def sliding_window_for(self, layer: int) -> int:
        """The sliding window of a layer (0: full attention)."""
        if not self.sliding_window:
            return 0
        if self.layer_types is None or self.layer_types[layer] == "sliding_attention":
            return int(self.sliding_window)
        return 0

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """The Hugging Face checkpoint tensor names and shapes this config requires."""
        return self.family.weight_shapes(self)

    def num_parameters(self) -> int:
        total = 0
        for shape in self.weight_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], *, name: str | None = None) -> "ModelConfig":
        """Build from a transformers ``config.json`` dict (transformers 4 or 5 spelling)."""
        from .registry import family_for_hf_config

        return family_for_hf_config(d).config_from_hf(d, name=name)

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers-compatible ``config.json`` dict."""
        return self.family.to_hf_dict(self)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
