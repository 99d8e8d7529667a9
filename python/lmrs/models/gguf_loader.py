"""Load a llama.cpp GGUF file: metadata -> :class:`ModelConfig`, tensors -> dequantized torch tensors.

Tensors are dequantized with ``gguf.quants.dequantize`` and renamed to Hugging Face names
(``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``...).  For the ``llama``
architecture, llama.cpp's converter permuted the rows of ``attn_q``/``attn_k`` (interleaved-pair RoPE);
:func:`unpermute_qk` undoes that so the weights work with Hugging Face ``rotate_half`` RoPE.  ``qwen2`` GGUFs
are not permuted.

GGUF stores dimensions innermost-first, so a tensor listed as ``[in, out]`` dequantizes to an
``(out, in)`` array, the same layout as a ``torch.nn.Linear`` weight.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .config import ModelConfig
from .errors import CorruptModelError, ModelNotFoundError, UnsupportedModelError, UnsupportedQuantizationError

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
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


@dataclass
class GGUFContents:
    """Everything :func:`load_gguf` read: config, HF-named float tensors and the raw metadata."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    path: str
    #: HF tensor name -> GGML type name in the file ("Q4_1", "F32"...)
    tensor_types: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- reading
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
        reader = gguf.GGUFReader(path, "r")
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
def _llama3_rope_from_factors(factors: np.ndarray, head_dim: int, theta: float, path: str) -> dict:
    """Recover Llama 3.x RoPE scaling parameters from llama.cpp's precomputed ``rope_freqs`` tensor."""
    factor = float(factors.max())
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    for orig in (8192, 4096, 16384, 32768, 131072):
        low, high = 1.0, 4.0
        wavelen = 2 * math.pi / freqs
        smooth = (orig / wavelen - low) / (high - low)
        expected = np.where(wavelen < orig / high, 1.0,
                            np.where(wavelen > orig / low, factor, 1 / ((1 - smooth) / factor + smooth)))
        if np.allclose(expected, factors, rtol=1e-3):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                    "original_max_position_embeddings": orig}
    raise UnsupportedModelError(
        f"{path}: the rope_freqs tensor does not match Llama 3 RoPE scaling; this RoPE variant is not supported",
        path)


def config_from_gguf(md: dict[str, Any], tensor_shapes: dict[str, tuple[int, ...]], *, path: str = "",
                     rope_freqs: np.ndarray | None = None) -> ModelConfig:
    """Build a :class:`ModelConfig` from GGUF metadata and the (GGUF-named, (out, in)) tensor shapes."""
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{path}: unsupported GGUF architecture {arch!r}; lmrs supports: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}",
            path)

    def key(name, default=None, required=False):
        value = md.get(f"{arch}.{name}", default)
        if required and value is None:
            raise CorruptModelError(f"{path}: GGUF metadata key {arch}.{name} is missing", path)
        return value

    hidden = int(key("embedding_length", required=True))
    heads = int(key("attention.head_count", required=True))
    kv_heads = key("attention.head_count_kv", heads)
    head_dim = int(key("attention.key_length", hidden // heads))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise UnsupportedModelError(f"{path}: attention key_length != value_length is not supported", path)
    if int(key("rope.dimension_count", head_dim)) != head_dim:
        raise UnsupportedModelError(f"{path}: partial rotary embeddings (rope.dimension_count "
                                    f"{key('rope.dimension_count')} != head_dim {head_dim}) are not supported", path)
    theta = float(key("rope.freq_base", 10000.0))

    rope_scaling = None
    scaling_type = key("rope.scaling.type", "none")
    factor = key("rope.scaling.factor", key("rope.scale_linear"))  # rope.scale_linear: older files
    if scaling_type not in ("none", "linear"):
        raise UnsupportedModelError(f"{path}: RoPE scaling type {scaling_type!r} is not supported "
                                    "(lmrs supports none, linear and llama3)", path)
    if factor is not None and float(factor) != 1.0 and (scaling_type == "linear" or key("rope.scale_linear")):
        rope_scaling = {"rope_type": "linear", "factor": float(factor)}
    if rope_freqs is not None:
        rope_scaling = _llama3_rope_from_factors(np.asarray(rope_freqs, dtype=np.float64), head_dim, theta, path)

    tokens = md.get("tokenizer.ggml.tokens")
    embd_rows = tensor_shapes.get("token_embd.weight", (None,))[0]
    vocab = len(tokens) if tokens else (key("vocab_size") or embd_rows)
    if embd_rows is not None and vocab != embd_rows:
        log.warning("%s: %d tokens in the vocabulary but token_embd has %d rows; using %d", path, vocab,
                    embd_rows, embd_rows)
        vocab = embd_rows
    ffn = key("feed_forward_length")
    if ffn is None and "blk.0.ffn_up.weight" in tensor_shapes:
        ffn = tensor_shapes["blk.0.ffn_up.weight"][0]
    eos = md.get("tokenizer.ggml.eos_token_id")
    extra_eos = [md[k] for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id") if md.get(k) is not None]
    eos_ids = list(dict.fromkeys(int(x) for x in ([eos] if eos is not None else []) + extra_eos))
    bos = md.get("tokenizer.ggml.bos_token_id")
    pad = md.get("tokenizer.ggml.padding_token_id")
    sliding = key("attention.sliding_window")
    try:
        return ModelConfig(
            architecture=arch,
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(ffn) if ffn is not None else 0,
            num_hidden_layers=int(key("block_count", required=True)),
            num_attention_heads=heads,
            num_key_value_heads=int(kv_heads),
            head_dim=head_dim,
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(key("context_length", 2048)),
            tie_word_embeddings="output.weight" not in tensor_shapes,
            attention_bias="blk.0.attn_q.bias" in tensor_shapes,
            bos_token_id=int(bos) if bos is not None else None,
            eos_token_ids=eos_ids,
            pad_token_id=int(pad) if pad is not None else None,
            torch_dtype=None,
            name=md.get("general.name") or os.path.basename(path),
            sliding_window=int(sliding) if sliding else None,
        )
    except ValueError as e:
        raise CorruptModelError(f"{path}: inconsistent GGUF metadata: {e}", path) from e


# ---------------------------------------------------------------------------------------------- tensors
def gguf_to_hf_name(name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None for unknown names."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK_RE.match(name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def permute_qk(w, n_head: int):
    """llama.cpp's converter permutation (HF layout -> GGUF layout) of q/k rows (or a 1-D bias)."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_qk(w, n_head: int):
    """Undo :func:`permute_qk` (GGUF layout -> HF layout); works on numpy arrays and torch tensors.

    ``w_hf = w.reshape(n_head, head_dim // 2, 2, in).swapaxes(1, 2).reshape(out, in)``
    """
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


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


def load_gguf(path: str | os.PathLike, *, progress: bool = True, dtype: torch.dtype = torch.float32) -> GGUFContents:
    """Read a GGUF model: config, HF-named weights (dequantized, q/k un-permuted for llama) and metadata.

    Raises ModelNotFoundError (no file), CorruptModelError (not GGUF, truncated, wrong shapes, missing tensors),
    UnsupportedModelError (architecture, unknown tensors) or UnsupportedQuantizationError.
    """
    path = os.fspath(path)
    reader = open_gguf(path)
    md = read_gguf_metadata(reader)
    shapes = {t.name: tuple(int(x) for x in reversed([int(s) for s in t.shape])) for t in reader.tensors}
    rope_freqs = None
    rope_tensor = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if rope_tensor is not None:
        rope_freqs = dequantize_tensor(rope_tensor, path)
    config = config_from_gguf(md, shapes, path=path, rope_freqs=rope_freqs)

    unknown = [t.name for t in reader.tensors if t.name != "rope_freqs.weight" and gguf_to_hf_name(t.name) is None]
    if unknown:
        raise UnsupportedModelError(
            f"{path}: unexpected tensors {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
            f"({len(unknown)} in all); this model variant is not supported", path)
    expected = config.weight_shapes()
    have = {gguf_to_hf_name(t.name) for t in reader.tensors}
    missing = [n for n in expected if n not in have]
    if missing:
        raise CorruptModelError(
            f"{path}: {len(missing)} tensors are missing, e.g. {missing[:5]}; the file is incomplete", path)

    permute = config.architecture == "llama"
    weights: dict[str, torch.Tensor] = {}
    types: dict[str, str] = {}
    tensors = [t for t in reader.tensors if t.name != "rope_freqs.weight"]
    bar = tqdm(tensors, desc=f"Loading {os.path.basename(path)}", unit="tensor", file=sys.stderr,
               disable=not progress, leave=False)
    for t in bar:
        hf = gguf_to_hf_name(t.name)
        arr = dequantize_tensor(t, path)
        if tuple(arr.shape) != expected[hf]:
            raise CorruptModelError(
                f"{path}: tensor {t.name!r} has shape {tuple(arr.shape)}, expected {expected[hf]} from the "
                "metadata", path)
        if permute and ".self_attn.q_proj." in hf:
            arr = unpermute_qk(arr, config.num_attention_heads)
        elif permute and ".self_attn.k_proj." in hf:
            arr = unpermute_qk(arr, config.num_key_value_heads)
        tensor = torch.from_numpy(np.ascontiguousarray(arr))
        weights[hf] = tensor if dtype == torch.float32 else tensor.to(dtype)
        types[hf] = t.tensor_type.name
    bar.close()
    del reader
    return GGUFContents(config=config, weights=weights, metadata=md, path=path, tensor_types=types)
