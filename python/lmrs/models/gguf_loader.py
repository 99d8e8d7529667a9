"""Load a llama.cpp GGUF file: metadata -> :class:`ModelConfig`, tensors -> dequantized torch tensors.

The file's ``general.architecture`` picks the model family (:mod:`lmrs.models.registry`), which
reads its metadata and maps its tensors onto Hugging Face names (``blk.3.attn_q.weight`` ->
``model.layers.3.self_attn.q_proj.weight``), undoing what llama.cpp's converter did (the q/k row
permutation of LLaMA-style RoPE, Gemma's ``1 + w`` norms, stacked experts, InternLM2's split
``wqkv``). Tensors are dequantized with ``gguf.quants.dequantize``, or, with ``keep_quantized``, the
quantized ones stay :class:`~lmrs.models.quantized.QuantizedTensor` (the family's mapping reorders and
concatenates their rows; nothing is dequantized); ``tensor_types`` records each weight's GGUF type.

GGUF stores dimensions innermost-first, so a tensor listed as ``[in, out]`` dequantizes to an
``(out, in)`` array, the same layout as a ``torch.nn.Linear`` weight.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .config import ModelConfig
from .errors import CorruptModelError, ModelNotFoundError, UnsupportedModelError, UnsupportedQuantizationError
from .family import permute_qk, unpermute_qk

__all__ = [
    "GGUFContents",
    "SUPPORTED_TENSOR_TYPES",
    "open_gguf",
    "read_gguf_metadata",
    "config_from_gguf",
    "gguf_to_hf_name",
    "permute_qk",
    "unpermute_qk",
    "dequantize_tensor",
    "load_gguf",
]

log = logging.getLogger(__name__)

#: GGML tensor types the loader dequantizes (all through gguf.quants.dequantize)
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                          "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def supported_gguf_architectures() -> tuple[str, ...]:
    from .registry import supported_gguf_architectures as archs

    return archs()


@dataclass
class GGUFContents:
    """Everything :func:`load_gguf` read: config, HF-named float tensors and the raw metadata."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    path: str
    #: HF tensor name -> GGML type name in the file ("Q4_1", "F32"...; "Q4_K+Q6_K" for a weight
    #: assembled from tensors of several types)
    tensor_types: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- reading
_STRING, _ARRAY = 8, 9  # GGUFValueType codes


def _compact_reader_class():
    """``gguf.GGUFReader`` with arrays read compactly: a scalar array is one numpy view (not one per
    element) and a string array holds ``bytes`` objects. The stock reader makes two numpy views per
    string, so a 49k-token vocabulary and its merges cost ~160 MB while reading and leave ~12 MB of heap
    behind; this keeps ``fields`` readable the same way (``parts`` / ``data`` / ``types``)."""
    import gguf

    class CompactGGUFReader(gguf.GGUFReader):
        def _get_field_parts(self, orig_offs, raw_type):
            if raw_type != _ARRAY or self.byte_order != "I":
                return super()._get_field_parts(orig_offs, raw_type)
            offs = orig_offs
            raw_itype = self._get(offs, np.uint32)
            alen = self._get(offs + 4, np.uint64)
            offs += 12
            n, itype = int(alen[0]), int(raw_itype[0])
            types = [gguf.GGUFValueType(raw_type)]
            if n == 0 or itype == _ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            types.append(gguf.GGUFValueType(itype))
            if itype == _STRING:
                buf = self.data
                parts: list = [raw_itype, alen]
                for _ in range(n):
                    slen = int.from_bytes(buf[offs: offs + 8].tobytes(), "little")
                    parts.append(buf[offs + 8: offs + 8 + slen].tobytes())
                    offs += 8 + slen
                return offs - orig_offs, parts, list(range(2, n + 2)), types
            nptype = self.gguf_scalar_to_np.get(types[-1])
            if nptype is None:
                return super()._get_field_parts(orig_offs, raw_type)
            values = self._get(offs, nptype, n)
            return 12 + int(values.nbytes), [raw_itype, alen, values], [2], types

    return CompactGGUFReader


def open_gguf(path: str | os.PathLike):
    """Open a GGUF file with ``gguf.GGUFReader``, turning failures into :mod:`lmrs.models.errors` types."""
    import gguf

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelNotFoundError(f"GGUF file not found: {path}", path)
    if os.path.isdir(path):
        raise ModelNotFoundError(f"{path} is a folder, not a GGUF file", path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise CorruptModelError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); pass a llama.cpp .gguf file "
            "or a Hugging Face model folder", path)
    try:
        reader = _compact_reader_class()(path, "r")
    except Exception as e:  # the reader raises ValueError/IndexError/... on damaged files
        raise CorruptModelError(
            f"{path} is a damaged or truncated GGUF file ({type(e).__name__}: {e}); download it again", path) from e
    size = os.path.getsize(path)
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise CorruptModelError(
                f"{path} is truncated: tensor {t.name!r} ends at byte {t.data_offset + t.n_bytes} but the file "
                f"has {size} bytes; download it again", path)
    return reader


def _field_value(f) -> Any:
    from gguf import GGUFValueType

    if not f.types:
        return None
    main = f.types[0]
    if main == GGUFValueType.ARRAY:
        sub = f.types[-1]
        if len(f.types) > 2 and f.types[1] == GGUFValueType.ARRAY:
            return None  # nested arrays are not used by anything lmrs reads
        if sub == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
        if not f.data:
            return []
        return np.concatenate([f.parts[i] for i in f.data]).tolist()
    if main == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")
    return f.parts[f.data[0]].tolist()[0]


def read_gguf_metadata(reader) -> dict[str, Any]:
    """All GGUF key/values as plain Python values (strings, numbers, bools, lists)."""
    return {name: _field_value(f) for name, f in reader.fields.items()}


# ---------------------------------------------------------------------------------------------- config
def config_from_gguf(md: dict[str, Any], tensor_shapes: dict[str, tuple[int, ...]], *, path: str = "",
                     aux: dict[str, np.ndarray] | None = None) -> ModelConfig:
    """Build a :class:`ModelConfig` from GGUF metadata and the (GGUF-named, (out, in)) tensor shapes;
    `aux` holds auxiliary tensors (``rope_freqs.weight``, LongRoPE factors) already read."""
    from .registry import family_for_gguf

    family = family_for_gguf(md.get("general.architecture"), path)
    return family.config_from_gguf(md, tensor_shapes, path=path, aux=aux)


# ---------------------------------------------------------------------------------------------- tensors
def gguf_to_hf_name(name: str, architecture: str = "llama") -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (for `architecture`'s
    family); None for unknown names."""
    from .registry import family_for_gguf

    return family_for_gguf(architecture).gguf_to_hf_name(name)


def dequantize_tensor(t, path: str = "") -> np.ndarray:
    """Dequantize a ``gguf.ReaderTensor`` to a writable float32 array shaped (out, in) (or (n,) for 1-D)."""
    import gguf

    qtype = t.tensor_type.name
    if qtype not in SUPPORTED_TENSOR_TYPES:
        raise UnsupportedQuantizationError(
            f"{path}: tensor {t.name!r} uses quantization type {qtype}, which lmrs cannot load; supported types: "
            f"{', '.join(SUPPORTED_TENSOR_TYPES)}. Use a GGUF quantized with one of these (e.g. Q4_K_M or Q8_0).",
            path, tensor_name=t.name, tensor_type=qtype)
    shape = tuple(int(x) for x in reversed([int(s) for s in t.shape]))
    arr = gguf.quants.dequantize(t.data, t.tensor_type)
    arr = np.asarray(arr, dtype=np.float32)
    if qtype == "F32" or not arr.flags.writeable or not arr.flags.c_contiguous:  # F32 is a view of the mmap
        arr = np.array(arr, dtype=np.float32, copy=True, order="C")
    if arr.size != math.prod(shape):
        raise CorruptModelError(f"{path}: tensor {t.name!r} has {arr.size} values, expected shape {shape}", path)
    return arr.reshape(shape)


def load_gguf(path: str | os.PathLike, *, progress: bool = True, dtype: torch.dtype = torch.float32,
              keep_quantized: bool = False) -> GGUFContents:
    """Read a GGUF model: config, HF-named weights (dequantized, mapped by the family) and metadata.

    With `keep_quantized`, tensors of the types the CPU kernels run as they are (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    Q4_K, Q5_K, Q6_K; 2-D or stacked) become :class:`~lmrs.models.quantized.QuantizedTensor` straight from the
    file's block bytes (no float copy is made): the family maps them with row permutations and concatenations
    only. Float tensors and other types are read as without it.

    Raises ModelNotFoundError (no file), CorruptModelError (not GGUF, truncated, wrong shapes, missing tensors),
    UnsupportedModelError (architecture, unknown tensors) or UnsupportedQuantizationError.
    """
    from .registry import family_for_gguf

    path = os.fspath(path)
    reader = open_gguf(path)
    md = read_gguf_metadata(reader)
    family = family_for_gguf(md.get("general.architecture"), path)
    shapes = {t.name: tuple(int(x) for x in reversed([int(s) for s in t.shape])) for t in reader.tensors}
    aux_names = set(family.gguf_aux_tensors)
    aux = {t.name: dequantize_tensor(t, path) for t in reader.tensors if t.name in aux_names}
    config = family.config_from_gguf(md, shapes, path=path, aux=aux)

    tensors = [t for t in reader.tensors if t.name not in aux_names]
    unknown = [t.name for t in tensors if family.gguf_to_hf_name(t.name) is None]
    if unknown:
        raise UnsupportedModelError(
            f"{path}: unexpected tensors {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
            f"({len(unknown)} in all); this model variant is not supported", path)
    expected = config.weight_shapes()

    weights: dict[str, torch.Tensor] = {}
    types: dict[str, str] = {}
    pending: dict = {}
    bar = tqdm(tensors, desc=f"Loading {os.path.basename(path)}", unit="tensor", file=sys.stderr,
               disable=not progress, leave=False)
    kept_types = {}
    if keep_quantized:
        from .quantized import KEPT_QUANTIZED, QuantizedTensor

        kept_types = KEPT_QUANTIZED
    for t in bar:
        qtype = t.tensor_type.name
        pending["qtype"] = qtype  # for families that assemble one weight from several tensors
        if int(t.tensor_type) in kept_types and len(t.shape) >= 2:
            try:
                src = QuantizedTensor.from_reader_tensor(t)
            except ValueError as e:
                raise CorruptModelError(f"{path}: tensor {t.name!r}: {e}", path) from e
        else:
            src = dequantize_tensor(t, path)
        for hf, arr in family.gguf_tensors(config, t.name, src, pending):
            if hf not in expected:
                raise UnsupportedModelError(f"{path}: tensor {t.name!r} ({hf}) is not part of this {config.architecture} "
                                            "model's layout", path)
            if tuple(arr.shape) != expected[hf]:
                raise CorruptModelError(
                    f"{path}: tensor {t.name!r} has shape {tuple(arr.shape)}, expected {expected[hf]} from the "
                    "metadata", path)
            if isinstance(arr, np.ndarray):
                tensor = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
                weights[hf] = tensor if dtype == torch.float32 else tensor.to(dtype)
            else:  # a QuantizedTensor, kept as it is
                weights[hf] = arr
            parts = pending.pop(("types", hf), None)
            types[hf] = "+".join(dict.fromkeys(parts)) if parts else qtype
    bar.close()
    missing = [n for n in expected if n not in weights]
    if missing:
        raise CorruptModelError(
            f"{path}: {len(missing)} tensors are missing, e.g. {missing[:5]}; the file is incomplete", path)
    del reader
    return GGUFContents(config=config, weights=weights, metadata=md, path=path, tensor_types=types)
