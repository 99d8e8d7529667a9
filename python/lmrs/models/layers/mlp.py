"""Gated MLPs: down(act(gate(x)) * up(x)) with gate and up fused into one projection.

`activation` is "silu" (SwiGLU: Llama, Qwen, Phi, InternLM) or "gelu_tanh" (GeGLU: Gemma's
`gelu_pytorch_tanh`); the activation-and-multiply is one kernel call.
"""

from __future__ import annotations

import torch

from ..linear import Linear

__all__ = ["GatedMLP", "ACTIVATIONS", "activation_op"]

#: Hugging Face `hidden_act` / `hidden_activation` values -> the lmrs activation
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


def activation_op(kernels, activation: str):
    """The backend's fused activation-and-multiply op for an activation name."""
    if activation == "silu":
        return kernels.silu_and_mul
    if activation == "gelu_tanh":
        return kernels.gelu_tanh_and_mul
    raise ValueError(f"unknown gated activation {activation!r} (silu, gelu_tanh)")


class GatedMLP:
    """gate_up_proj output [gate | up] -> act(gate) * up -> down_proj."""

    def __init__(self, gate_up_proj: Linear, down_proj: Linear, kernels, activation: str = "silu"):
        if gate_up_proj.out_features % 2:
            raise ValueError("the fused gate/up projection needs an even number of outputs")
        self.gate_up_proj = gate_up_proj
        self.down_proj = down_proj
        self.act_and_mul = activation_op(kernels, activation)

    def linears(self) -> list[Linear]:
        return [self.gate_up_proj, self.down_proj]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_and_mul(self.gate_up_proj(x)))
