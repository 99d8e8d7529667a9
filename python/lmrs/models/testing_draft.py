"""Draft models for speculative-decoding tests and benchmarks: a copy of a model with some of its
decoder layers (by default the first and last few: self-speculative "layer skipping"), its
embedding, final norm and head. It shares the tokenizer and, for a trained model, proposes tokens
the full model often accepts (the first layers alone do not: their output is not yet in the space
the final norm and head read)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch

from .loader import LoadedModel

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def kept_layers(total: int, layers: int) -> list[int]:
    """Which of `total` layers a `layers`-layer draft keeps: the first half and the last half."""
    if not 1 <= layers <= total:
        raise ValueError(f"layers must be in 1..{total}, got {layers}")
    first = (layers + 1) // 2
    return list(range(first)) + list(range(total - (layers - first), total))


def truncated_model(loaded: LoadedModel, layers: int, keep: list[int] | None = None) -> LoadedModel:
    """`loaded` with `layers` of its decoder layers (`keep`, default `kept_layers`), renumbered in
    order; the weights are shared, not copied."""
    keep = kept_layers(loaded.config.num_hidden_layers, layers) if keep is None else list(keep)
    new_index = {old: new for new, old in enumerate(keep)}
    weights, types = {}, {}
    for k, v in loaded.weights.items():
        m = _LAYER.match(k)
        if m is not None:
            if int(m.group(1)) not in new_index:
                continue
            name = f"model.layers.{new_index[int(m.group(1))]}.{k[m.end():]}"
        else:
            name = k
        weights[name] = v
        if k in loaded.tensor_types:
            types[name] = loaded.tensor_types[k]
    config = dataclasses.replace(loaded.config, num_hidden_layers=len(keep))
    source = f"{loaded.source}#layers={','.join(map(str, keep))}"
    return LoadedModel(config, weights, loaded.tokenizer, source, loaded.format, types)


def write_truncated(loaded: LoadedModel, layers: int, folder: str | os.PathLike,
                    dtype: torch.dtype = torch.bfloat16) -> Path:
    """A Hugging Face folder (config, safetensors in `dtype`, tokenizer) of `truncated_model`."""
    from safetensors.torch import save_file

    small = truncated_model(loaded, layers)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in small.weights.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    hf = small.config.to_hf_dict()
    hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    small.tokenizer.save_hf(out)
    return out
