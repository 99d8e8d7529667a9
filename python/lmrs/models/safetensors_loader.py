"""Load a Hugging Face model folder: ``config.json`` + ``*.safetensors`` (single file or sharded).

Sharded checkpoints are found through ``model.safetensors.index.json`` (its ``weight_map``); without an index
every ``*.safetensors`` file in the folder is read.  Tensors keep the checkpoint dtype (the caller converts).
``generation_config.json`` eos ids are merged into the config's ``eos_token_ids``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .config import ModelConfig
from .errors import CorruptModelError, ModelLoadError, ModelNotFoundError, UnsupportedModelError

__all__ = ["load_hf_config", "find_safetensors_files", "load_safetensors_weights", "load_hf_folder"]

log = logging.getLogger(__name__)

#: checkpoint tensors that are not weights (old Llama checkpoints saved RoPE buffers)
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except ValueError as e:
        raise CorruptModelError(f"{path} is not valid JSON: {e}", path) from e
    if not isinstance(data, dict):
        raise CorruptModelError(f"{path} must hold a JSON object", path)
    return data


def load_hf_config(folder: str | os.PathLike) -> ModelConfig:
    """``config.json`` (+ ``generation_config.json`` eos ids) -> :class:`ModelConfig`."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelNotFoundError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder; pass a folder with "
            "config.json + *.safetensors (+ tokenizer.json), or a .gguf file", folder)
    d = _read_json(cfg_path)
    try:
        config = ModelConfig.from_hf_dict(d, name=d.get("_name_or_path") or folder.name)
    except ModelLoadError as e:
        raise type(e)(f"{cfg_path}: {e}", cfg_path) from None
    except (ValueError, TypeError) as e:
        raise CorruptModelError(f"{cfg_path}: {e}", cfg_path) from e
    gen_path = folder / "generation_config.json"
    if gen_path.is_file():
        gen = _read_json(gen_path)
        eos = gen.get("eos_token_id")
        gen_eos = [int(x) for x in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]
        merged = list(dict.fromkeys(config.eos_token_ids + gen_eos))
        changes = {"eos_token_ids": merged}
        if config.bos_token_id is None and gen.get("bos_token_id") is not None:
            changes["bos_token_id"] = int(gen["bos_token_id"])
        if config.pad_token_id is None and isinstance(gen.get("pad_token_id"), int):
            changes["pad_token_id"] = gen["pad_token_id"]
        config = config.replace(**changes)
    return config


def find_safetensors_files(folder: str | os.PathLike) -> tuple[list[Path], dict[str, str] | None]:
    """The shard files to read and, for an indexed checkpoint, the index's tensor -> file map."""
    folder = Path(folder)
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CorruptModelError(f"{index_path} has no 'weight_map'", index_path)
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CorruptModelError(
                f"{folder}: shard files listed in model.safetensors.index.json are missing: {', '.join(missing)}; "
                "download them again", folder)
        return files, weight_map
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
            raise UnsupportedModelError(
                f"{folder} only has PyTorch pickle weights (*.bin/*.pt); lmrs reads *.safetensors. Convert them, "
                "e.g. load with transformers and save_pretrained(..., safe_serialization=True)", folder)
        gguf = sorted(folder.glob("*.gguf"))
        hint = f"; to use the GGUF file pass its path: {gguf[0]}" if gguf else ""
        raise ModelNotFoundError(f"{folder} has config.json but no *.safetensors weights{hint}", folder)
    return files, None


def load_safetensors_weights(folder: str | os.PathLike, config: ModelConfig, *,
                             progress: bool = True) -> dict[str, torch.Tensor]:
    """Read every tensor ``config`` needs (names as in Hugging Face checkpoints), in the checkpoint dtype.

    Raises CorruptModelError listing missing tensors or wrong shapes.  Extra tensors are ignored with a
    warning; a tied model's ``lm_head.weight`` is dropped.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    files, _ = find_safetensors_files(folder)
    expected = config.weight_shapes()
    rename = config.family.checkpoint_name
    weights: dict[str, torch.Tensor] = {}
    extra: list[str] = []
    handles = []
    try:
        for f in files:
            handles.append((f, safe_open(str(f), framework="pt", device="cpu")))
    except (SafetensorError, OSError) as e:
        raise CorruptModelError(f"{folder}: cannot read {f.name}: {e}; the file is damaged, download it again",
                                f) from e
    total = sum(len(list(h.keys())) for _, h in handles)
    bar = tqdm(total=total, desc=f"Loading {folder.name}", unit="tensor", file=sys.stderr,
               disable=not progress, leave=False)
    try:
        for f, h in handles:
            for stored in h.keys():
                bar.update(1)
                name = rename(stored)
                if name is None:
                    continue
                if name not in expected:
                    if not (name.endswith(_IGNORED_SUFFIXES) or name == "lm_head.weight"):
                        extra.append(name)
                    continue
                try:
                    tensor = h.get_tensor(stored)
                except (SafetensorError, OSError, RuntimeError) as e:
                    raise CorruptModelError(f"{f}: cannot read tensor {stored!r}: {e}", f) from e
                if tuple(tensor.shape) != expected[name]:
                    raise CorruptModelError(
                        f"{f}: tensor {stored!r} has shape {tuple(tensor.shape)} but config.json implies "
                        f"{expected[name]}", f)
                weights[name] = tensor
    finally:
        bar.close()
    missing = [n for n in expected if n not in weights]
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise CorruptModelError(f"{folder}: the checkpoint is missing tensors: {shown}", folder)
    if extra:
        log.warning("%s: ignoring %d unexpected tensors, e.g. %s", folder, len(extra), extra[:5])
    return weights


def load_hf_folder(folder: str | os.PathLike, *, progress: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """``(config, weights)`` of a Hugging Face model folder."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelNotFoundError(f"model folder not found: {folder}", folder)
    config = load_hf_config(folder)
    return config, load_safetensors_weights(folder, config, progress=progress)
