"""Shared readers of llama.cpp GGUF metadata, for the family files: the keys every decoder has.

Keys are ``{arch}.name`` (``qwen3.embedding_length``...), tensor shapes are (out, in) with
llama.cpp's tensor names (``blk.0.ffn_up.weight``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping

import numpy as np

from .errors import CorruptModelError, UnsupportedModelError

__all__ = ["GGUFMetadata", "gguf_common_fields", "llama3_rope_from_factors"]

log = logging.getLogger(__name__)


class GGUFMetadata:
    """Typed access to one architecture's GGUF keys."""

    def __init__(self, md: Mapping[str, Any], arch: str, path: str = ""):
        self.md = md
        self.arch = arch
        self.path = path

    def get(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        value = self.md.get(f"{self.arch}.{name}", default)
        if required and value is None:
            raise CorruptModelError(f"{self.path}: GGUF metadata key {self.arch}.{name} is missing", self.path)
        return value

    def has(self, name: str) -> bool:
        return f"{self.arch}.{name}" in self.md


def llama3_rope_from_factors(factors: np.ndarray, head_dim: int, theta: float, path: str) -> dict:
    """Recover Llama 3.x RoPE scaling parameters from llama.cpp's precomputed ``rope_freqs`` tensor."""
    factor = float(factors.max())
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    for orig in (8192, 4096, 16384, 32768, 131072, *(2 ** k for k in range(4, 22))):
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


def gguf_common_fields(g: GGUFMetadata, shapes: Mapping[str, tuple[int, ...]], *, architecture: str,
                       aux: Mapping[str, np.ndarray] | None = None, partial_rotary: bool = False) -> dict[str, Any]:
    """The `ModelConfig` keyword arguments every GGUF architecture stores the same way.

    `aux` holds the non-weight tensors the loader read (``rope_freqs.weight``: Llama 3 RoPE scaling).
    With `partial_rotary`, ``rope.dimension_count`` < head_dim becomes ``partial_rotary_factor``;
    otherwise it must equal head_dim.
    """
    md, path = g.md, g.path
    aux = aux or {}
    hidden = int(g.get("embedding_length", required=True))
    heads = int(g.get("attention.head_count", required=True))
    kv_heads = g.get("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer arrays: all equal in the families lmrs runs
        if len(set(kv_heads)) != 1:
            raise UnsupportedModelError(f"{path}: per-layer KV head counts are not supported", path)
        kv_heads = kv_heads[0]
    head_dim = int(g.get("attention.key_length", hidden // heads))
    if int(g.get("attention.value_length", head_dim)) != head_dim:
        raise UnsupportedModelError(f"{path}: attention key_length != value_length is not supported", path)
    rope_dims = int(g.get("rope.dimension_count", head_dim))
    partial = 1.0
    if rope_dims != head_dim:
        if not partial_rotary:
            raise UnsupportedModelError(f"{path}: partial rotary embeddings (rope.dimension_count {rope_dims} != "
                                        f"head_dim {head_dim}) are not supported for {g.arch}", path)
        partial = rope_dims / head_dim
    theta = float(g.get("rope.freq_base", 10000.0))

    rope_scaling = None
    scaling_type = g.get("rope.scaling.type", "none")
    factor = g.get("rope.scaling.factor", g.get("rope.scale_linear"))  # rope.scale_linear: older files
    if scaling_type not in ("none", "linear", "longrope"):
        raise UnsupportedModelError(f"{path}: RoPE scaling type {scaling_type!r} is not supported "
                                    "(lmrs supports none, linear, llama3 and longrope)", path)
    if factor is not None and float(factor) != 1.0 and (scaling_type == "linear" or g.get("rope.scale_linear")):
        rope_scaling = {"rope_type": "linear", "factor": float(factor)}
    if "rope_freqs.weight" in aux:
        rope_scaling = llama3_rope_from_factors(np.asarray(aux["rope_freqs.weight"], dtype=np.float64), head_dim,
                                                theta, path)

    tokens = md.get("tokenizer.ggml.tokens")
    embd_rows = shapes.get("token_embd.weight", (None,))[0]
    vocab = len(tokens) if tokens else (g.get("vocab_size") or embd_rows)
    if embd_rows is not None and vocab != embd_rows:
        log.warning("%s: %d tokens in the vocabulary but token_embd has %d rows; using %d", path, vocab,
                    embd_rows, embd_rows)
        vocab = embd_rows
    ffn = g.get("feed_forward_length")
    if isinstance(ffn, list):
        ffn = max(ffn)
    if ffn is None and "blk.0.ffn_up.weight" in shapes:
        ffn = shapes["blk.0.ffn_up.weight"][0]
    eos = md.get("tokenizer.ggml.eos_token_id")
    extra_eos = [md[k] for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id") if md.get(k) is not None]
    eos_ids = list(dict.fromkeys(int(x) for x in ([eos] if eos is not None else []) + extra_eos))
    bos = md.get("tokenizer.ggml.bos_token_id")
    pad = md.get("tokenizer.ggml.padding_token_id")
    sliding = g.get("attention.sliding_window")
    return dict(
        architecture=architecture,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(ffn) if ffn else 0,
        num_hidden_layers=int(g.get("block_count", required=True)),
        num_attention_heads=heads,
        num_key_value_heads=int(kv_heads),
        head_dim=head_dim,
        rms_norm_eps=float(g.get("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=int(g.get("context_length", 2048)),
        tie_word_embeddings="output.weight" not in shapes,
        attention_bias="blk.0.attn_q.bias" in shapes,
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_ids=eos_ids,
        pad_token_id=int(pad) if pad is not None else None,
        torch_dtype=None,
        name=md.get("general.name") or os.path.basename(path),
        sliding_window=int(sliding) if sliding else None,
        partial_rotary_factor=partial,
    )
