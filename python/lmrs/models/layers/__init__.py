"""The layer library model families are wired from (like vLLM's `model_executor/layers`).

- `norm`: RMSNorm (plain and Gemma's `1 + w`), per-head q/k RMSNorm;
- `rotary`: RoPE variants (default, linear, llama3, LongRoPE, partial) as `RotaryEmbedding`;
- `attention`: `SelfAttention` over the paged KV cache (window, soft-cap, scale, q/k norm, NoPE);
- `mlp`: gated MLPs (SiLU, GeGLU); `moe`: top-k routed experts, grouped by expert;
- `embedding`: token embedding (with scale) and the output head (refinement, soft-cap, tying);
- `blocks`: pre-norm (Llama) and sandwich (Gemma) decoder blocks;
- `factory`: checkpoint tensors -> layers (the one place fused projections are built);
- `step`: the per-forward `StepContext`.
"""

from .attention import AttentionSpec, SelfAttention
from .blocks import PreNormBlock, SandwichBlock
from .embedding import LMHead, TokenEmbedding
from .factory import LayerFactory
from .mlp import ACTIVATIONS, GatedMLP
from .moe import SparseMoE
from .norm import HeadRMSNorm, RMSNorm
from .rotary import RotaryEmbedding
from .step import StepContext

__all__ = ["AttentionSpec", "SelfAttention", "PreNormBlock", "SandwichBlock", "LMHead", "TokenEmbedding",
           "LayerFactory", "ACTIVATIONS", "GatedMLP", "SparseMoE", "HeadRMSNorm", "RMSNorm", "RotaryEmbedding",
           "StepContext"]
