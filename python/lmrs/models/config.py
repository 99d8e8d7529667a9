"""Model hyper-parameters: :class:`ModelConfig`, read from / written to Hugging Face ``config.json`` dicts.

``ModelConfig.from_hf_dict`` understands both transformers 4 spellings (``rope_theta`` and ``rope_scaling`` at
the top level, ``rope_scaling.type``, ``torch_dtype``) and transformers 5 spellings (``rope_parameters``
holding ``rope_theta`` and ``rope_type``, ``dtype``).  ``to_hf_dict`` writes a transformers-4 style dict,
which transformers 5 also reads.

``rope_scaling`` is normalised to ``None`` (plain RoPE, ``rope_type`` "default") or a dict with
``rope_type`` "linear" (``factor``) or "llama3" (``factor``, ``low_freq_factor``, ``high_freq_factor``,
``original_max_position_embeddings``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import UnsupportedModelError

__all__ = ["ModelConfig", "SUPPORTED_ARCHITECTURES", "HF_ARCHITECTURE_CLASSES"]

#: lmrs architecture name -> transformers model class name
HF_ARCHITECTURE_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}
SUPPORTED_ARCHITECTURES = tuple(HF_ARCHITECTURE_CLASSES)
_CLASS_TO_ARCH = {v: k for k, v in HF_ARCHITECTURE_CLASSES.items()}

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# transformers' per-architecture defaults for keys a config.json may omit
_ARCH_DEFAULTS = {
    "llama": dict(max_position_embeddings=2048, attention_bias=False, bos_token_id=1, eos_token_id=2),
    "mistral": dict(max_position_embeddings=4096 * 32, attention_bias=False, bos_token_id=1, eos_token_id=2),
    "qwen2": dict(max_position_embeddings=32768, attention_bias=True, bos_token_id=None, eos_token_id=None),
}


def _supported_list() -> str:
    return ", ".join(f"{a} ({c})" for a, c in HF_ARCHITECTURE_CLASSES.items())


def _resolve_architecture(d: Mapping[str, Any]) -> str:
    archs = d.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    for cls in archs:
        if cls in _CLASS_TO_ARCH:
            return _CLASS_TO_ARCH[cls]
    model_type = d.get("model_type")
    if model_type in HF_ARCHITECTURE_CLASSES and not archs:
        return model_type
    named = ", ".join(archs) if archs else (model_type or "<no 'architectures' or 'model_type' key>")
    raise UnsupportedModelError(
        f"unsupported model architecture {named!r}; lmrs supports: {_supported_list()}")


def _normalize_rope(d: Mapping[str, Any]) -> tuple[float, dict | None]:
    """Return (rope_theta, rope_scaling) from either transformers 4 or 5 keys."""
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    # transformers 5 may nest per-layer-type parameters: {"full_attention": {...}}
    if isinstance(params, Mapping) and "full_attention" in params and isinstance(params["full_attention"], Mapping):
        params = params["full_attention"]
    merged: dict[str, Any] = {}
    for src in (scaling, params):
        if isinstance(src, Mapping):
            merged.update(src)
    theta = d.get("rope_theta", merged.get("rope_theta", 10000.0))
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"unsupported RoPE scaling type {rope_type!r}; lmrs supports: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        return float(theta), None
    if "factor" not in merged:
        raise UnsupportedModelError(f"RoPE scaling {rope_type!r} needs a 'factor' (got {dict(merged)!r})")
    out: dict[str, Any] = {"rope_type": rope_type, "factor": float(merged["factor"])}
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key not in merged:
                raise UnsupportedModelError(f"llama3 RoPE scaling needs {key!r} (got {dict(merged)!r})")
        out["low_freq_factor"] = float(merged["low_freq_factor"])
        out["high_freq_factor"] = float(merged["high_freq_factor"])
        out["original_max_position_embeddings"] = int(merged["original_max_position_embeddings"])
    return float(theta), out


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


@dataclass
class ModelConfig:
    """Hyper-parameters of a decoder-only Llama-family transformer (Llama, Mistral, Qwen2).

    All three share the same block: RMSNorm -> GQA attention with RoPE -> RMSNorm -> SiLU-gated MLP.
    ``attention_bias`` means the q/k/v projections have biases (true for Qwen2); o_proj never has one.
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
    #: sliding-window attention span (Mistral v0.1, Qwen2 with use_sliding_window); None = full attention
    sliding_window: int | None = None

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` / ``UnsupportedModelError`` with a clear message on inconsistent values."""
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"unsupported model architecture {self.architecture!r}; lmrs supports: {_supported_list()}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type")
            if rope_type not in ("linear", "llama3"):
                raise UnsupportedModelError(
                    f"unsupported RoPE scaling type {rope_type!r}; lmrs supports: {', '.join(SUPPORTED_ROPE_TYPES)}")
        for tid in [self.bos_token_id, self.pad_token_id, *self.eos_token_ids]:
            if tid is not None and not 0 <= tid < self.vocab_size:
                raise ValueError(f"special token id {tid} is outside the vocabulary (size {self.vocab_size})")

    # ------------------------------------------------------------------ derived values
    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """The Hugging Face tensor names and shapes this config requires (``lm_head`` only when untied)."""
        h, i, q, kv = self.hidden_size, self.intermediate_size, self.q_size, self.kv_size
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h)}
        for n in range(self.num_hidden_layers):
            p = f"model.layers.{n}."
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "self_attn.q_proj.weight"] = (q, h)
            shapes[p + "self_attn.k_proj.weight"] = (kv, h)
            shapes[p + "self_attn.v_proj.weight"] = (kv, h)
            if self.attention_bias:
                shapes[p + "self_attn.q_proj.bias"] = (q,)
                shapes[p + "self_attn.k_proj.bias"] = (kv,)
                shapes[p + "self_attn.v_proj.bias"] = (kv,)
            shapes[p + "self_attn.o_proj.weight"] = (h, q)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
            shapes[p + "mlp.gate_proj.weight"] = (i, h)
            shapes[p + "mlp.up_proj.weight"] = (i, h)
            shapes[p + "mlp.down_proj.weight"] = (h, i)
        shapes["model.norm.weight"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes

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
        arch = _resolve_architecture(d)
        defaults = _ARCH_DEFAULTS[arch]
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedModelError(f"unsupported activation hidden_act={act!r}; lmrs supports silu")
        if d.get("mlp_bias"):
            raise UnsupportedModelError("mlp_bias=true (biases on the MLP projections) is not supported")
        try:
            hidden = int(d["hidden_size"])
            heads = int(d["num_attention_heads"])
            kv_heads = d.get("num_key_value_heads")
            head_dim = d.get("head_dim")
            rope_theta, rope_scaling = _normalize_rope(d)
            eos = _as_id_list(d["eos_token_id"] if "eos_token_id" in d else defaults["eos_token_id"])
            sliding = d.get("sliding_window")
            if arch == "qwen2" and not d.get("use_sliding_window", False):
                sliding = None
            cfg = cls(
                architecture=arch,
                vocab_size=int(d["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(kv_heads) if kv_heads is not None else heads,
                head_dim=int(head_dim) if head_dim is not None else hidden // heads,
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                rope_theta=rope_theta,
                rope_scaling=rope_scaling,
                max_position_embeddings=int(d.get("max_position_embeddings", defaults["max_position_embeddings"])),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                attention_bias=bool(d.get("attention_bias", defaults["attention_bias"])),
                bos_token_id=d.get("bos_token_id", defaults["bos_token_id"]),
                eos_token_ids=eos,
                pad_token_id=d.get("pad_token_id"),
                torch_dtype=d.get("dtype", d.get("torch_dtype")),
                name=name or d.get("_name_or_path") or "",
                sliding_window=int(sliding) if sliding else None,
            )
        except KeyError as e:
            raise ValueError(f"config.json is missing the required key {e.args[0]!r}") from None
        return cfg

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers-compatible ``config.json`` dict (transformers 4 spelling; transformers 5 reads it)."""
        d: dict[str, Any] = {
            "architectures": [HF_ARCHITECTURE_CLASSES[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (self.eos_token_ids[0] if len(self.eos_token_ids) == 1
                             else list(self.eos_token_ids) or None),
            "pad_token_id": self.pad_token_id,
            "initializer_range": 0.02,
            "use_cache": True,
        }
        if self.architecture == "llama":
            d["attention_bias"] = self.attention_bias
            d["mlp_bias"] = False
            d["pretraining_tp"] = 1
        if self.architecture == "mistral":
            d["sliding_window"] = self.sliding_window
        if self.architecture == "qwen2":
            d["use_sliding_window"] = self.sliding_window is not None
            d["sliding_window"] = self.sliding_window
            d["max_window_layers"] = self.num_hidden_layers
        if self.torch_dtype:
            d["torch_dtype"] = self.torch_dtype
        if self.name:
            d["_name_or_path"] = self.name
        return d

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
