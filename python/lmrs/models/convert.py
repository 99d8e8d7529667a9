"""Convert a GGUF file into a Hugging Face model folder (``lmrs convert GGUF OUTDIR``).

The folder holds ``model.safetensors`` (dequantized weights with Hugging Face names, q/k un-permuted,
``lm_head`` omitted when tied to the embedding), ``config.json``, ``generation_config.json``,
``tokenizer.json`` and ``tokenizer_config.json`` (with the chat template).  transformers and
:func:`lmrs.models.loader.load_model_files` both load it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from .errors import ModelLoadError

__all__ = ["convert_gguf_to_hf", "main", "DTYPES"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32", *,
                       progress: bool = True) -> Path:
    """Write a Hugging Face folder for ``gguf_path`` into ``out_dir`` (created if needed); returns it."""
    from safetensors.torch import save_file

    from .gguf_loader import load_gguf
    from .tokenizer import Tokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    contents = load_gguf(gguf_path, progress=progress, dtype=DTYPES[dtype])
    tokenizer = Tokenizer.from_gguf(contents.metadata)
    eos = list(dict.fromkeys(contents.config.eos_token_ids + tokenizer.eos_token_ids))
    config = contents.config.replace(torch_dtype=dtype, eos_token_ids=eos)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {name: t.contiguous() for name, t in contents.weights.items()}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n", encoding="utf-8")
    gen = {"bos_token_id": config.bos_token_id,
           "eos_token_id": eos[0] if len(eos) == 1 else eos,
           "pad_token_id": config.pad_token_id}
    (out / "generation_config.json").write_text(
        json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2) + "\n", encoding="utf-8")
    tokenizer.model_max_length = tokenizer.model_max_length or config.max_position_embeddings
    tokenizer.save_hf(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``lmrs convert GGUF OUTDIR [--dtype float32|bfloat16|float16] [--no-progress]``."""
    parser = argparse.ArgumentParser(
        prog="lmrs convert",
        description="Convert a llama.cpp GGUF model (any architecture lmrs loads: llama, qwen2, qwen3, qwen3moe, "
                    "gemma2, gemma3, phi3, smollm3, internlm2) into a Hugging Face safetensors folder.")
    parser.add_argument("gguf", help="path of the .gguf file")
    parser.add_argument("outdir", help="output folder (created if needed; existing files are overwritten)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="dtype of the written weights (default: float32)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        out = convert_gguf_to_hf(args.gguf, args.outdir, args.dtype, progress=not args.no_progress)
    except ModelLoadError as e:
        print(f"lmrs convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
