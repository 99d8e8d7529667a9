"""`DecoderModel`: a decoder-only transformer over a paged KV cache, assembled by a family file.

One forward pass runs every row of a step at once (prefill chunks and decodes in one varlen batch):

    embedding -> N x block(hidden, residual) -> final norm -> (for sampled rows) output head

The family decides the blocks (`lmrs.models.layers.blocks`), the embedding scale, the head's
tying and soft-cap; this class only runs them and exposes what the engine needs: `forward`,
`compute_logits`, `linears()` and `lm_head` (for weight-only quantization), `num_kv_heads` and
`config.head_dim` (for the KV cache).

Precision: float32 everywhere reproduces Hugging Face float32. With bfloat16 / float16 the weights
and matrix products use that dtype, but the residual stream, norms, RoPE, softmax and attention
products stay in float32, and the output head's top candidates are recomputed in float32. Small
batches on the CPU run on quantized twins that take float32 activations (`lmrs.models.quant`):
there every activation is float32 and only the KV cache is 16-bit. GGUF weights kept quantized take
float32 activations at one row; 2 to 8 rows of 4- to 6-bit weights take bfloat16 ones with AVX512-BF16
(its streaming kernel is 2x faster there), except in mixture-of-experts models (`compute_dtype`). Decode steps
of more than 8 rows may round the activations of 4-bit and Q8_0 products to 8 bits (`int8_decode`, AVX512-VNNI).
"""

from __future__ import annotations

import torch

from .attention_metadata import AttentionMetadata
from .cpu_program import build_cpu_program
from .linear import Linear
from .quantized import STREAMING_ROWS, set_int8_activations
from .layers.embedding import LMHead, TokenEmbedding
from .layers.moe import SparseMoE
from .layers.norm import RMSNorm
from .layers.step import StepContext

__all__ = ["DecoderModel"]


class DecoderModel:
    """Inference-only decoder with a paged KV cache (built by `lmrs.models.build_model`)."""

    def __init__(self, config, *, embedding: TokenEmbedding, layers: list, norm: RMSNorm, head: LMHead,
                 dtype: torch.dtype, device: torch.device | str, kernels, num_heads: int, num_kv_heads: int,
                 rotaries: list | None = None):
        self.config = config
        self.embedding = embedding
        self.layers = layers
        self.norm = norm
        self.head = head
        self.dtype = dtype
        self.device = torch.device(device)
        self.kernels = kernels
        self.num_heads = num_heads  # this rank's query heads
        self.num_kv_heads = num_kv_heads  # this rank's KV heads (the KV cache's width)
        self.head_dim = config.head_dim
        self.rotaries = list(rotaries or [])  # the RoPE tables the layers share
        # mixture-of-experts layers keep float32 activations at streaming sizes (`compute_dtype`)
        self.has_moe = any(isinstance(getattr(layer, "mlp", None), SparseMoE) for layer in layers)
        # CPU: the layer stack as one Rust call (`cpu_program`); None until the first step, False where
        # it does not apply; rebuilt when the caches, RoPE tables or kernel module change
        self._program = None
        self._program_kernels = None
        # CPU decode steps of more than 8 rows with 4-bit / Q8_0 GGUF weights kept quantized: activations
        # rounded to 8 bits for the VNNI products (set by the engine from `cpu_decode_activations`)
        self.int8_decode = False

    def set_max_model_len(self, max_model_len: int) -> None:
        """Tell the model the longest sequence it will see (LongRoPE picks its factors by it)."""
        for rotary in self.rotaries:
            rotary.select_for_context(int(max_model_len))

    @property
    def lm_head(self) -> Linear:
        """The output projection (a `Linear`, for weight-only quantization)."""
        return self.head.linear

    def linears(self) -> list[Linear]:
        """Every projection of every layer (for weight-only quantization); not the output head."""
        return [lin for layer in self.layers for lin in layer.linears()]

    def drop_sources(self) -> None:
        """Free the checkpoint copies kept for quantization."""
        for lin in [*self.linears(), self.lm_head]:
            lin.source = None
        self.embedding.source = None

    def compute_dtype(self, rows: int) -> torch.dtype:
        """float32 when every product of a `rows`-row step runs on a quantized twin taking float32
        activations (small CPU batches), else the model dtype (dense 16-bit products)."""
        if self.dtype == torch.float32 or not self.layers:
            return self.dtype
        if all(lin.accepts_float32(rows) for lin in self.layers[0].linears()):
            return torch.float32
        if rows <= STREAMING_ROWS and self.has_moe:
            # bfloat16 rounding of the router's input flips near-tied expert choices (whole different
            # experts, not a rounding of the result): small batches keep the float32 model's routing
            return torch.float32
        return self.dtype

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """float32 hidden states [T, hidden] after the final norm, for every input token."""
        rows = input_ids.shape[0]
        compute_dtype = self.compute_dtype(rows)
        if self.device.type == "cpu":
            # 8-bit activations in decode steps only: prompts keep bfloat16 products, so the KV cache every
            # later token attends to is not rounded to 8 bits
            set_int8_activations(self.int8_decode and rows > STREAMING_ROWS and attn.num_decode_rows == rows)
        program = self._cpu_program(kv_caches)
        if program is not None and program.covers(rows, compute_dtype):
            return program.run(self.embedding(input_ids), positions, attn, compute_dtype)
        step = StepContext(positions, attn, compute_dtype)
        x = self.embedding(input_ids)
        residual = None
        for layer, kv in zip(self.layers, kv_caches):
            x, residual = layer(x, residual, step, kv)
        if residual is None:
            return self.norm(x, torch.float32)
        return self.norm.add_and_norm(x, residual, torch.float32)[0]

    def _cpu_program(self, kv_caches):
        """The layer stack as one Rust call (`cpu_program`) for these caches, built on first use; None where
        it does not apply (other devices, kernels, blocks or weight formats)."""
        if self.device.type != "cpu":
            return None
        prog = self._program
        if prog is not None and (prog is False or prog.current(self, kv_caches)) and self._program_kernels is self.kernels:
            return prog or None
        self._program = build_cpu_program(self, kv_caches) or False
        self._program_kernels = self.kernels
        return self._program or None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [rows, vocab] for final hidden states (float32 [rows, hidden])."""
        return self.head(hidden)
