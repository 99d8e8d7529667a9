"""Read a GGUF file's tensors with the quantized ones kept quantized.

:func:`load_gguf_tensors` returns every tensor under its GGUF name (``blk.0.attn_q.weight``...): tensors of a
type the CPU kernels keep quantized (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) become
:class:`~lmrs.models.quantized.QuantizedTensor` straight from the file's block bytes (no float copy is ever
made), float tensors (F32, F16, BF16: norms, biases, some mixes' embeddings) become torch tensors in their
stored dtype, and other types (Q2_K, Q3_K, the I-quants) are dequantized to float32 with a warning, or refused.
Shapes are in torch order ([out, in]; GGUF lists dimensions innermost first). The file is memory-mapped while
reading and released afterwards, so the process keeps only the packed copies.

The renaming to Hugging Face names and the model config stay with ``gguf_loader``; :func:`llama_qk_row_order`
gives the row order that undoes llama.cpp's q/k permutation for ``QuantizedTensor.permute_rows``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from .errors import CorruptModelError, UnsupportedQuantizationError
from .gguf_loader import open_gguf
from .quantized import KEPT_QUANTIZED, QuantizedTensor

__all__ = ["GgufTensors", "load_gguf_tensors", "llama_qk_row_order", "FLOAT_TYPES"]

log = logging.getLogger(__name__)

#: GGML types read as float torch tensors (their stored dtype)
FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class GgufTensors:
    """What :func:`load_gguf_tensors` read."""

    #: GGUF tensor name -> QuantizedTensor (kept quantized) or torch tensor (float types, or dequantized)
    tensors: dict[str, QuantizedTensor | torch.Tensor]
    #: GGUF tensor name -> GGML type name in the file ("Q4_K", "F32"...)
    types: dict[str, str]
    path: str
    #: size of the GGUF file in bytes
    file_bytes: int
    #: names of tensors of other quantized types that were dequantized to float32
    dequantized: list[str] = field(default_factory=list)

    @property
    def quantized_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values() if isinstance(t, QuantizedTensor))

    @property
    def float_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values() if isinstance(t, torch.Tensor))

    @property
    def nbytes(self) -> int:
        """Bytes held by all tensors."""
        return self.quantized_bytes + self.float_bytes


def _float_tensor(t, type_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    arr = np.array(t.data)  # a copy: the file's mapping is released after loading
    if type_name == "BF16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16).reshape(shape)
    return torch.from_numpy(arr).reshape(shape)


def load_gguf_tensors(path: str | os.PathLike, names: Iterable[str] | None = None, *,
                      unsupported: str = "dequantize") -> GgufTensors:
    """Read the tensors of a GGUF file (all, or those in `names`) as described in the module docstring.

    `unsupported`: what to do with a quantized type the kernels do not keep quantized: "dequantize" (float32
    via ``gguf.quants.dequantize``, logged) or "error" (:class:`UnsupportedQuantizationError`).
    """
    import gguf

    if unsupported not in ("dequantize", "error"):
        raise ValueError(f"unsupported must be 'dequantize' or 'error', not {unsupported!r}")
    path = os.fspath(path)
    reader = open_gguf(path)
    wanted = None if names is None else set(names)
    tensors: dict[str, QuantizedTensor | torch.Tensor] = {}
    types: dict[str, str] = {}
    dequantized: list[str] = []
    for t in reader.tensors:
        if wanted is not None and t.name not in wanted:
            continue
        type_name = t.tensor_type.name
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        types[t.name] = type_name
        if int(t.tensor_type) in KEPT_QUANTIZED and len(shape) >= 2:
            try:
                tensors[t.name] = QuantizedTensor.from_reader_tensor(t)
            except ValueError as e:
                raise CorruptModelError(f"{path}: tensor {t.name!r}: {e}", path) from e
        elif type_name in FLOAT_TYPES:
            tensors[t.name] = _float_tensor(t, type_name, shape)
        elif unsupported == "error":
            raise UnsupportedQuantizationError(
                f"{path}: tensor {t.name!r} is {type_name}, which lmrs does not keep quantized (supported: "
                f"{', '.join(KEPT_QUANTIZED.values())}, and F32/F16/BF16)", path, t.name, type_name)
        else:
            try:
                w = gguf.quants.dequantize(t.data, t.tensor_type)
            except NotImplementedError as e:
                raise UnsupportedQuantizationError(
                    f"{path}: tensor {t.name!r} is {type_name}, which can be neither kept quantized nor "
                    "dequantized", path, t.name, type_name) from e
            tensors[t.name] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).reshape(shape)
            dequantized.append(t.name)
    if dequantized:
        log.warning("%s: %d tensors of types the kernels do not keep quantized were dequantized to float32 "
                    "(e.g. %s, %s)", path, len(dequantized), dequantized[0], types[dequantized[0]])
    if wanted is not None and wanted - tensors.keys():
        missing = sorted(wanted - tensors.keys())
        raise CorruptModelError(f"{path} has no tensor(s) {missing[:5]}", path)
    file_bytes = os.path.getsize(path)
    del reader  # releases the memory map once the tensors' views are gone
    return GgufTensors(tensors, types, path, file_bytes, dequantized)


def llama_qk_row_order(n_head: int, head_dim: int) -> torch.Tensor:
    """int64 [n_head * head_dim]: the row order that undoes llama.cpp's q/k permutation for Hugging Face
    ``rotate_half`` RoPE (row h*D + a*D/2 + b of the result is GGUF row h*D + 2b + a), for
    ``QuantizedTensor.permute_rows``; the same reordering as ``gguf_loader.unpermute_qk``."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    h = torch.arange(n_head).view(n_head, 1, 1)
    a = torch.arange(2).view(1, 2, 1)
    b = torch.arange(head_dim // 2).view(1, 1, head_dim // 2)
    return (h * head_dim + 2 * b + a).reshape(-1)
