"""Shared readers of Hugging Face ``config.json`` dicts, for the family files.

They accept transformers 4 spellings (``rope_theta`` / ``rope_scaling`` at the top level,
``rope_scaling.type``, ``torch_dtype``) and transformers 5 ones (``rope_parameters``, possibly one
dict per layer type, ``dtype``).
"""

from __future__ import annotations

from typing import Any, Mapping

from .config import LAYER_TYPES, SUPPORTED_ROPE_TYPES
from .errors import UnsupportedModelError

__all__ = ["rope_parameters", "normalize_rope", "common_fields", "layer_types", "as_id_list", "first_key"]


def as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def first_key(d: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """The value of the first of `keys` present (and not None) in `d`."""
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def rope_parameters(d: Mapping[str, Any], layer_type: str = "full_attention") -> dict[str, Any]:
    """The RoPE parameters of one layer type, merged from ``rope_scaling`` (transformers 4) and
    ``rope_parameters`` (transformers 5, flat or keyed by layer type)."""
    params = d.get("rope_parameters")
    if isinstance(params, Mapping) and any(isinstance(params.get(t), Mapping) for t in LAYER_TYPES):
        params = params.get(layer_type) or {}
    merged: dict[str, Any] = {}
    for src in (d.get("rope_scaling") if layer_type == "full_attention" else None, params):
        if isinstance(src, Mapping):
            merged.update(src)
    return merged


def normalize_rope(d: Mapping[str, Any], layer_type: str = "full_attention", *,
                   default_theta: float = 10000.0) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) of a layer type: rope_scaling is None (plain RoPE) or a dict with
    ``rope_type`` linear / llama3 / longrope and that type's keys."""
    merged = rope_parameters(d, layer_type)
    theta = merged.get("rope_theta", d.get("rope_theta") if layer_type == "full_attention" else None)
    theta = default_theta if theta is None else theta
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if rope_type == "su":  # early Phi-3 name for LongRoPE
        rope_type = "longrope"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"unsupported RoPE scaling type {rope_type!r}; lmrs supports: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        return float(theta), None
    if rope_type == "longrope":
        orig = merged.get("original_max_position_embeddings", d.get("original_max_position_embeddings"))
        if orig is None or "short_factor" not in merged or "long_factor" not in merged:
            raise UnsupportedModelError(
                f"longrope RoPE scaling needs short_factor, long_factor and original_max_position_embeddings "
                f"(got {sorted(merged)})")
        out: dict[str, Any] = {"rope_type": "longrope", "short_factor": [float(x) for x in merged["short_factor"]],
                               "long_factor": [float(x) for x in merged["long_factor"]],
                               "original_max_position_embeddings": int(orig)}
        for key in ("factor", "attention_factor"):
            if merged.get(key) is not None:
                out[key] = float(merged[key])
        return float(theta), out
    if "factor" not in merged:
        raise UnsupportedModelError(f"RoPE scaling {rope_type!r} needs a 'factor' (got {dict(merged)!r})")
    out = {"rope_type": rope_type, "factor": float(merged["factor"])}
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key not in merged:
                raise UnsupportedModelError(f"llama3 RoPE scaling needs {key!r} (got {dict(merged)!r})")
        out["low_freq_factor"] = float(merged["low_freq_factor"])
        out["high_freq_factor"] = float(merged["high_freq_factor"])
        out["original_max_position_embeddings"] = int(merged["original_max_position_embeddings"])
    return float(theta), out


def partial_rotary_factor(d: Mapping[str, Any]) -> float:
    """``partial_rotary_factor`` at the top level or inside the RoPE parameters (default 1)."""
    value = d.get("partial_rotary_factor")
    if value is None:
        value = rope_parameters(d).get("partial_rotary_factor", 1.0)
    return float(value)


def layer_types(d: Mapping[str, Any], num_layers: int) -> list[str] | None:
    """``layer_types`` as written in the config (validated later), or None."""
    types = d.get("layer_types")
    if types is None:
        return None
    return [str(t) for t in types]


def common_fields(d: Mapping[str, Any], architecture: str, defaults: Mapping[str, Any], *,
                  name: str | None = None, default_theta: float = 10000.0) -> dict[str, Any]:
    """The `ModelConfig` keyword arguments every family reads the same way. `defaults` holds the
    family's values for keys a config.json may omit (max_position_embeddings, attention_bias,
    bos_token_id, eos_token_id, tie_word_embeddings, rms_norm_eps, head_dim)."""
    try:
        hidden = int(d["hidden_size"])
        heads = int(d["num_attention_heads"])
        kv_heads = d.get("num_key_value_heads")
        head_dim = d.get("head_dim") or defaults.get("head_dim")
        rope_theta, rope_scaling = normalize_rope(d, default_theta=default_theta)
        eos = as_id_list(d["eos_token_id"] if "eos_token_id" in d else defaults.get("eos_token_id"))
        fields = dict(
            architecture=architecture,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(kv_heads) if kv_heads is not None else heads,
            head_dim=int(head_dim) if head_dim is not None else hidden // heads,
            rms_norm_eps=float(first_key(d, "rms_norm_eps", default=defaults.get("rms_norm_eps", 1e-6))),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", defaults.get("max_position_embeddings", 2048))),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", defaults.get("tie_word_embeddings", False))),
            attention_bias=bool(d.get("attention_bias", defaults.get("attention_bias", False))),
            bos_token_id=d.get("bos_token_id", defaults.get("bos_token_id")),
            eos_token_ids=eos,
            pad_token_id=d.get("pad_token_id"),
            torch_dtype=d.get("dtype", d.get("torch_dtype")),
            name=name or d.get("_name_or_path") or "",
        )
    except KeyError as e:
        raise ValueError(f"config.json is missing the required key {e.args[0]!r}") from None
    if isinstance(fields["pad_token_id"], list):
        fields["pad_token_id"] = fields["pad_token_id"][0] if fields["pad_token_id"] else None
    return fields
