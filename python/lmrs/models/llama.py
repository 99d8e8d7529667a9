"""The Llama-family decoder (Llama 2/3, SmolLM2, Mistral, Qwen2 with q/k/v bias) over a paged KV cache.

One forward pass runs every row of a step at once (prefill chunks and decodes in one varlen batch):
embeddings -> N x [RMSNorm -> fused QKV -> RoPE -> write K/V through the slot mapping -> paged
attention -> o_proj -> residual + RMSNorm -> fused gate/up -> SiLU*up -> down_proj] -> final norm.
The kernels (`lmrs.kernels.reference` on the CPU, `lmrs.kernels.cuda` on NVIDIA GPUs) share one
interface; matrix products stay with PyTorch.

Precision: float32 everywhere reproduces Hugging Face float32 exactly. With bfloat16 / float16 the
weights and matrix products use that dtype, but the residual stream, RMSNorm, RoPE, softmax and
attention products stay in float32, and the output head's top candidates are recomputed in
float32 (`compute_logits`). Small batches on the CPU run on quantized twins that reproduce GGUF
weights exactly and take float32 activations (`lmrs.models.quant`): there every activation is
float32 and only the KV cache is 16-bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention_metadata import AttentionMetadata
from .config import ModelConfig
from .linear import SINGLE, ColumnParallelLinear, Linear, ParallelContext, RowParallelLinear
from .rope import inv_freq_for


class DecoderLayer:
    """Weights of one transformer block, fused for fewer, larger matrix products."""

    def __init__(self, cfg: ModelConfig, w: dict, i: int, dtype, device, ctx: ParallelContext):
        p = f"model.layers.{i}."

        def src(name):  # the checkpoint tensor (kept as `.source` for weight-only quantization)
            return w[p + name].to(device=device)

        def norm_weight(name):  # float32 on the CPU: the norms compute in float32 anyway
            return w[p + name].to(device=device, dtype=torch.float32 if device.type == "cpu" else dtype)

        def linear(cls, weight, bias=None):
            lin = cls(weight.to(dtype), None if bias is None else bias.to(dtype), ctx)
            lin.source = weight
            return lin

        qkv = torch.cat([src("self_attn.q_proj.weight"), src("self_attn.k_proj.weight"), src("self_attn.v_proj.weight")])
        bias = None
        if cfg.attention_bias:
            bias = torch.cat([src("self_attn.q_proj.bias"), src("self_attn.k_proj.bias"), src("self_attn.v_proj.bias")])
        self.qkv_proj = linear(ColumnParallelLinear, qkv, bias)
        self.o_proj = linear(RowParallelLinear, src("self_attn.o_proj.weight"))
        self.gate_up_proj = linear(ColumnParallelLinear, torch.cat([src("mlp.gate_proj.weight"), src("mlp.up_proj.weight")]))
        self.down_proj = linear(RowParallelLinear, src("mlp.down_proj.weight"))
        self.input_layernorm = norm_weight("input_layernorm.weight")
        self.post_attention_layernorm = norm_weight("post_attention_layernorm.weight")

    def linears(self) -> list[Linear]:
        return [self.qkv_proj, self.o_proj, self.gate_up_proj, self.down_proj]

    def float32_activations(self, rows: int) -> bool:
        """Whether every product of a `rows`-row step runs on a quantized twin taking float32."""
        return all(lin.accepts_float32(rows) for lin in self.linears())


class LlamaModel:
    """Inference-only Llama-family model with a paged KV cache."""

    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        kernels=None,
        parallel: ParallelContext = SINGLE,
    ):
        if kernels is None:
            from lmrs.kernels import get_backend

            kernels = get_backend(str(device))
        self.config = config
        self.dtype = dtype
        self.device = torch.device(device)
        self.kernels = kernels
        self.parallel = parallel
        cfg = config
        self.num_heads = cfg.num_attention_heads // parallel.size
        self.num_kv_heads = max(1, cfg.num_key_value_heads // parallel.size)
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.eps = cfg.rms_norm_eps
        missing = [k for k in cfg.weight_shapes() if k not in weights]
        if missing:
            raise ValueError(f"weights are missing {len(missing)} tensors, e.g. {missing[:3]}")
        self.embed_tokens = weights["model.embed_tokens.weight"].to(device=device, dtype=dtype).contiguous()
        self.layers = [DecoderLayer(cfg, weights, i, dtype, self.device, parallel) for i in range(cfg.num_hidden_layers)]
        norm_dtype = torch.float32 if self.device.type == "cpu" else dtype
        self.norm = weights["model.norm.weight"].to(device=device, dtype=norm_dtype)
        if cfg.tie_word_embeddings or "lm_head.weight" not in weights:
            self.lm_head = Linear(self.embed_tokens)
            self.lm_head.source = weights["model.embed_tokens.weight"]
        else:
            self.lm_head = Linear(weights["lm_head.weight"].to(device=device, dtype=dtype))
            self.lm_head.source = weights["lm_head.weight"]
        self.cos_sin_cache = kernels.rope_cos_sin_cache(inv_freq_for(cfg), cfg.max_position_embeddings).to(self.device)
        # Mixed precision: float32 embedding table (residual stream) and output head (refinement).
        self.embed_f32 = None
        self.head_f32 = None
        if dtype != torch.float32:
            self.embed_f32 = weights["model.embed_tokens.weight"].to(device=device, dtype=torch.float32).contiguous()
            head = weights.get("lm_head.weight") if not cfg.tie_word_embeddings else None
            self.head_f32 = (head.to(device=device, dtype=torch.float32).contiguous()
                             if head is not None else self.embed_f32)

    def linears(self) -> list[Linear]:
        """Every projection of every layer (for weight-only quantization)."""
        return [lin for layer in self.layers for lin in layer.linears()]

    def drop_sources(self) -> None:
        """Free the checkpoint copies kept for quantization."""
        for lin in [*self.linears(), self.lm_head]:
            lin.source = None

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm, for every input token."""
        k = self.kernels
        t = input_ids.shape[0]
        # activation dtype: float32 when every product of this step runs on a float32-capable
        # quantized twin (small batches), else the model dtype (dense 16-bit products)
        cd = torch.float32 if self.layers and self.layers[0].float32_activations(t) else self.dtype
        residual = F.embedding(input_ids, self.embed_f32 if self.embed_f32 is not None else self.embed_tokens)
        x = k.rms_norm(residual, self.layers[0].input_layernorm, self.eps, cd) if self.layers else residual
        last = len(self.layers) - 1
        fused_rope = getattr(k, "rotary_embedding_and_cache", None)
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv_proj(x)
            k_cache, v_cache = kv_caches[i]
            if fused_rope is not None:  # q rotated in place, k rotated straight into the cache
                fused_rope(positions, qkv, self.num_heads, self.num_kv_heads, self.head_dim, self.cos_sin_cache, True,
                           k_cache, v_cache, attn.slot_mapping)
                q = qkv[:, : self.q_size]
            else:
                q = self._rope_and_cache(positions, qkv, k_cache, v_cache, attn.slot_mapping)
            o = k.paged_attention(
                q.view(t, self.num_heads, self.head_dim),
                k_cache,
                v_cache,
                attn.block_table,
                attn.seq_lens,
                attn.query_start_loc,
                attn.num_decode_rows,
                self.scale,
                attn.max_query_len,
                attn.max_seq_len,
            )
            attn_out = layer.o_proj(o.reshape(t, self.q_size))
            x, residual = k.fused_add_rms_norm(attn_out, residual, layer.post_attention_layernorm, self.eps, cd)
            mlp = layer.down_proj(k.silu_and_mul(layer.gate_up_proj(x)))
            if i < last:
                x, residual = k.fused_add_rms_norm(mlp, residual, self.layers[i + 1].input_layernorm, self.eps, cd)
            else:
                x, residual = k.fused_add_rms_norm(mlp, residual, self.norm, self.eps, torch.float32)
        return x

    def _rope_and_cache(self, positions, qkv, k_cache, v_cache, slot_mapping) -> torch.Tensor:
        """RoPE on q and k, then k and v into the paged cache, for backends without the fused
        `rotary_embedding_and_cache`; returns the rotated q (contiguous)."""
        k = self.kernels
        t = qkv.shape[0]
        q = qkv[:, : self.q_size].contiguous()
        kk = qkv[:, self.q_size : self.q_size + self.kv_size].contiguous()
        v = qkv[:, self.q_size + self.kv_size :]
        k.rotary_embedding(positions, q, kk, self.cos_sin_cache, self.head_dim, True)
        k.reshape_and_cache(kk.view(t, self.num_kv_heads, self.head_dim), v.reshape(t, self.num_kv_heads, self.head_dim),
                            k_cache, v_cache, slot_mapping)
        return q

    REFINE_TOP = 32

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [rows, vocab] for final hidden states (float32 [rows, hidden]).

        In float32 this is one product. Otherwise the product runs in the model dtype and the
        REFINE_TOP largest logits of each row are recomputed in float32 from float32 weights, so
        the tokens that matter (argmax, top-k, log-probabilities) carry float32 precision.
        """
        rows = hidden.shape[0]
        x = hidden.float() if self.lm_head.accepts_float32(rows) else hidden.to(self.dtype)
        logits = self.lm_head(x).float()
        if self.head_f32 is None:
            return logits
        refine = getattr(self.kernels, "refine_top_logits", None)
        if refine is None:
            from lmrs.kernels.reference import refine_top_logits as refine
        return refine(logits, hidden.float().contiguous(), self.head_f32, self.REFINE_TOP)
