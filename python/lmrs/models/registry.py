"""The family registry: Hugging Face architecture class / model_type / GGUF architecture -> `Family`.

Family files (`lmrs.models.families.*`) call `register` when imported; the first lookup imports
them all. `build_model` is the one way to turn a config and weights into a runnable model.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .errors import UnsupportedModelError
from .linear import SINGLE, ParallelContext

__all__ = ["register", "get_family", "family_names", "families", "family_for_hf_config", "family_for_gguf",
           "supported_list", "supported_gguf_architectures", "build_model"]

_FAMILIES: dict[str, Any] = {}
_loaded = False


def register(family):
    """Add a family (an instance of `lmrs.models.family.Family`); returns it."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import families  # noqa: F401  (registers every family)


def families() -> list:
    _ensure_loaded()
    return list(_FAMILIES.values())


def family_names() -> tuple[str, ...]:
    _ensure_loaded()
    return tuple(_FAMILIES)


def get_family(name: str):
    _ensure_loaded()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UnsupportedModelError(f"unsupported model architecture {name!r}; lmrs supports: {supported_list()}") \
            from None


def supported_list() -> str:
    """"llama (LlamaForCausalLM), ..." for error messages."""
    return ", ".join(f"{f.name} ({', '.join(f.hf_architectures)})" for f in families())


def supported_gguf_architectures() -> tuple[str, ...]:
    return tuple(a for f in families() for a in f.gguf_architectures)


def family_for_hf_config(d: Mapping[str, Any]):
    """The family of a config.json dict: by its "architectures" classes, else its "model_type"."""
    archs = d.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    for cls in archs:
        for f in families():
            if cls in f.hf_architectures:
                return f
    model_type = d.get("model_type")
    if not archs and model_type:
        for f in families():
            if model_type in f.model_types:
                return f
    named = ", ".join(archs) if archs else (model_type or "<no 'architectures' or 'model_type' key>")
    raise UnsupportedModelError(f"unsupported model architecture {named!r}; lmrs supports: {supported_list()}")


def family_for_gguf(arch: str | None, path: str = ""):
    for f in families():
        if arch in f.gguf_architectures:
            return f
    raise UnsupportedModelError(
        f"{path}: unsupported GGUF architecture {arch!r}; lmrs supports: {', '.join(supported_gguf_architectures())}",
        path or None)


def build_model(config, weights: Mapping[str, torch.Tensor], *, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu", kernels=None, parallel: ParallelContext = SINGLE):
    """The runnable `DecoderModel` of a config and its HF-named weights. `kernels` defaults to
    the device's backend (`lmrs.kernels.get_backend`)."""
    if kernels is None:
        from lmrs.kernels import get_backend

        kernels = get_backend(str(device))
    return config.family.build(config, weights, dtype=dtype, device=device, kernels=kernels, parallel=parallel)
