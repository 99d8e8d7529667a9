"""RMSNorm layers: the plain one (Llama: `w * x / rms(x)`), Gemma's `(1 + w)` variant (stored as
`1 + w`, computed in float32 at load: bit-identical to transformers' `x / rms(x) * (1.0 + w)` in
float32), and the per-head q/k norm of Qwen3 and Gemma 3 (one RMSNorm over each head's D values).

The statistics always run in float32; the output dtype is the caller's (the step's compute dtype,
or float32 where the result joins the float32 residual stream).
"""

from __future__ import annotations

import torch

__all__ = ["RMSNorm", "HeadRMSNorm"]


def _norm_weight(weight: torch.Tensor, offset: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """float32 on the CPU (the norms compute in float32 anyway) and for offset weights (1 + w
    would lose most of w's bits in 16 bits); the model dtype on GPUs otherwise."""
    w = weight.to(device=device, dtype=torch.float32)
    if offset:
        return (w + float(offset)).contiguous()
    return w.contiguous() if device.type == "cpu" else w.to(dtype).contiguous()


class RMSNorm:
    """RMSNorm over the last dim with a learned weight (plus `offset`: 1.0 for Gemma)."""

    def __init__(self, weight: torch.Tensor, eps: float, kernels, *, offset: float = 0.0,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.weight = _norm_weight(weight, offset, dtype, torch.device(device))
        self.eps = float(eps)
        self.kernels = kernels

    def __call__(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """norm(x) in `out_dtype` (default x's dtype)."""
        return self.kernels.rms_norm(x, self.weight, self.eps, out_dtype)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor, out_dtype: torch.dtype | None = None):
        """residual += x (in place); returns (norm(residual) in out_dtype, residual)."""
        return self.kernels.fused_add_rms_norm(x, residual, self.weight, self.eps, out_dtype)


class HeadRMSNorm(RMSNorm):
    """RMSNorm over each head of [T, H * D] columns (q_norm / k_norm): the weight has D values."""

    def apply_(self, x: torch.Tensor, heads: int) -> None:
        """Normalize x [T, heads * D] (a view into the fused qkv output) in place."""
        t = x.shape[0]
        d = self.weight.shape[0]
        normed = self.kernels.rms_norm(x.reshape(t * heads, d).contiguous(), self.weight, self.eps, x.dtype)
        x.copy_(normed.view(t, heads * d))
