"""Exceptions raised while locating, reading and validating model files.

Every error derives from :class:`ModelLoadError`, so callers (the CLI, the server start-up) can catch one
type and print ``str(err)``: each message names the file, says what is wrong and, where possible, how to fix
it.
"""

from __future__ import annotations

import os

__all__ = [
    "ModelLoadError",
    "ModelNotFoundError",
    "UnsupportedModelError",
    "UnsupportedQuantizationError",
    "CorruptModelError",
]


class ModelLoadError(Exception):
    """Base class: the model files could not be loaded.

    ``path`` is the file or folder concerned (may be None).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(message)


class ModelNotFoundError(ModelLoadError):
    """The path does not exist, or a folder lacks a required file (config.json, weights, tokenizer)."""


class UnsupportedModelError(ModelLoadError):
    """The files are readable but describe something lmrs cannot run (architecture, RoPE type, tokenizer...)."""


class UnsupportedQuantizationError(UnsupportedModelError):
    """A GGUF tensor uses a quantization type lmrs cannot dequantize.

    ``tensor_name`` and ``tensor_type`` name the offending tensor.
    """

    def __init__(self, message: str, path=None, tensor_name: str | None = None, tensor_type: str | None = None):
        super().__init__(message, path)
        self.tensor_name = tensor_name
        self.tensor_type = tensor_type


class CorruptModelError(ModelLoadError):
    """The files exist but are damaged or inconsistent (not GGUF, truncated, wrong shapes, missing tensors)."""
