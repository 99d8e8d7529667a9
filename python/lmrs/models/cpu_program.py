"""The CPU forward pass as one Rust call (`lmrs._core.CpuDecoderProgram`).

A decode step of a small model is a few hundred kernel calls; each one's Python wrapper (checks,
output allocation, the call) costs a few microseconds beside the kernel: about 2 ms of a 6.5 ms
one-row step of SmolLM2-135M. `CpuProgram` hands the whole layer stack to Rust once per step:
the same kernels in the same order with the same operands as the Python blocks, so the hidden
states are bit for bit those of `DecoderModel`'s layer loop (`tests/test_cpu_program.py`).

It covers the common decoder: every layer a `PreNormBlock` of a full-RoPE `SelfAttention` (no
q/k norm, window or soft-cap) and a SiLU `GatedMLP`, every projection a GGUF weight kept
quantized (`QuantizedLinear`), the Rust CPU kernels, one rank, and steps whose products all run
on the Rust kernels (not the dequantize + oneDNN GEMM path of large bfloat16 batches).
Everything else runs the layer loop. `LMRS_CPU_PROGRAM=0` turns it off (benchmarks, tests).
"""

from __future__ import annotations

import os

import torch

from lmrs import _core
from lmrs.kernels import cpu as cpu_kernels

from . import quantized_dense_gemm as _dense
from .layers.attention import SelfAttention
from .layers.blocks import PreNormBlock
from .layers.mlp import GatedMLP
from .layers.norm import RMSNorm
from .quantized import QuantizedLinear

__all__ = ["CpuProgram", "build_cpu_program", "enabled"]

_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def enabled() -> bool:
    """Whether models may run their CPU steps as one program (`LMRS_CPU_PROGRAM`, default on)."""
    return os.environ.get("LMRS_CPU_PROGRAM", "1").strip().lower() not in ("0", "off", "false", "no")


def _segments(lin: QuantizedLinear) -> list[tuple[int, int, int, int, int]]:
    """(ggml type, rows, packed address, packed bytes, bias address or 0) of each weight segment."""
    out = []
    col = 0
    for s in lin.segments:
        bias = 0 if lin.bias is None else lin.bias.data_ptr() + 4 * col
        out.append((int(s.qtype), s.rows, s.packed.data_ptr(), s.packed.numel(), bias))
        col += s.rows
    return out


def _norm_ok(norm, hidden: int) -> bool:
    w = getattr(norm, "weight", None)
    return (type(norm) is RMSNorm and w is not None and w.dtype == torch.float32 and w.is_contiguous()
            and w.is_cpu and w.numel() == hidden)


def _layer_ok(layer, hidden: int, spec0) -> bool:
    """Whether a layer is the block the program runs (same shapes as the first)."""
    if type(layer) is not PreNormBlock or type(layer.attn) is not SelfAttention or type(layer.mlp) is not GatedMLP:
        return False
    attn, mlp = layer.attn, layer.mlp
    spec, rot = attn.spec, attn.rotary
    if (spec != spec0 or spec.sliding_window or spec.soft_cap or attn.q_norm is not None or attn.k_norm is not None
            or attn.kernels is not cpu_kernels or rot is None or rot.partial is not None):
        return False
    table = rot.cos_sin_cache
    if (table.dtype != torch.float32 or not table.is_contiguous() or not table.is_cpu or table.dim() != 2
            or table.shape[1] != spec.head_dim):
        return False
    if mlp.act_and_mul is not cpu_kernels.silu_and_mul:
        return False
    if not all(type(lin) is QuantizedLinear for lin in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)):
        return False
    return _norm_ok(layer.input_norm, hidden) and _norm_ok(layer.post_attention_norm, hidden)


def _caches_ok(kv_caches, n_layers: int, spec) -> bool:
    if len(kv_caches) != n_layers:
        return False
    first = kv_caches[0][0]
    want = (spec.num_kv_heads, spec.head_dim)
    for k, v in kv_caches:
        if (k.dtype not in _CODE or v.dtype != k.dtype or k.dtype != first.dtype or k.shape != first.shape
                or v.shape != k.shape or k.dim() != 4 or tuple(k.shape[2:]) != want or not k.is_cpu or not v.is_cpu
                or not k.is_contiguous() or not v.is_contiguous()):
            return False
    return True


def _operands(layer) -> tuple:
    """The objects a layer's program operands come from (held by the program: their tensors stay alive)."""
    attn, mlp = layer.attn, layer.mlp
    return (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj, layer.input_norm, layer.input_norm.weight,
            layer.post_attention_norm, layer.post_attention_norm.weight, attn.rotary.cos_sin_cache)


def _same(a: tuple, b: tuple) -> bool:
    return all(x is y for x, y in zip(a, b))


class CpuProgram:
    """One model's layers over one set of KV caches as a `CpuDecoderProgram`."""

    def __init__(self, model, kv_caches):
        layers = model.layers
        spec = layers[0].attn.spec
        mlp0 = layers[0].mlp
        k0 = kv_caches[0][0]
        nb, bs = k0.shape[0], k0.shape[1]
        self.cache_dtype = k0.dtype
        self.hidden = model.config.hidden_size
        self.kv_caches = kv_caches  # held: the program has their addresses
        self.tables = [layer.attn.rotary.cos_sin_cache for layer in layers]  # ditto (and checked per step)
        self.program = _core.CpuDecoderProgram(
            self.hidden, spec.num_heads, spec.num_kv_heads, spec.head_dim, mlp0.down_proj.in_features,
            float(spec.scale), _CODE[self.cache_dtype], nb, bs, model.norm.weight.data_ptr(), float(model.norm.eps))
        for layer, (k, v), table in zip(layers, kv_caches, self.tables):
            attn, mlp = layer.attn, layer.mlp
            self.program.add_layer(
                layer.input_norm.weight.data_ptr(), float(layer.input_norm.eps),
                layer.post_attention_norm.weight.data_ptr(), float(layer.post_attention_norm.eps),
                _segments(attn.qkv_proj), _segments(attn.o_proj), _segments(mlp.gate_up_proj),
                _segments(mlp.down_proj), table.data_ptr(), table.shape[0], bool(attn.rotary.is_neox),
                k.data_ptr(), v.data_ptr())
        self.layers = layers
        self.final_norm = (model.norm, model.norm.weight)
        # every object whose tensors' addresses the program holds, to notice one swapped after the build
        self.operands = [_operands(layer) for layer in layers]

    def current(self, model, kv_caches) -> bool:
        """Whether this program still matches the model's layers (their projections, norms and RoPE tables)
        and caches: a swapped one would leave the program reading the old tensors."""
        return (kv_caches is self.kv_caches and model.layers is self.layers
                and self.final_norm[0] is model.norm and self.final_norm[1] is model.norm.weight
                and all(_same(_operands(layer), ops) for layer, ops in zip(self.layers, self.operands)))

    def covers(self, rows: int, compute_dtype: torch.dtype) -> bool:
        """Whether a step of `rows` rows computing in `compute_dtype` runs here (every product on the Rust
        kernels, the activations' dtype one the attention and cache kernels take)."""
        if compute_dtype != torch.float32 and compute_dtype != self.cache_dtype:
            return False
        return not (compute_dtype == torch.bfloat16 and _dense.dense_gemm_pays(rows))

    def run(self, x: torch.Tensor, positions: torch.Tensor, attn, compute_dtype: torch.dtype) -> torch.Tensor:
        """float32 final hidden states [T, hidden] from the float32 embeddings x [T, hidden] (used as the
        residual stream, updated in place)."""
        t = x.shape[0]
        if x.dtype != torch.float32 or not x.is_contiguous() or x.shape[1] != self.hidden:
            x = x.float().contiguous()
        out = torch.empty((t, self.hidden), dtype=torch.float32)
        _, pos = cpu_kernels._index(positions)
        _, slots = cpu_kernels._index(attn.slot_mapping)
        meta = cpu_kernels._attn_meta(attn.block_table, attn.seq_lens, attn.query_start_loc)
        if meta is None:
            raise ValueError("the attention metadata must be CPU tensors")
        rows, bt, bt_stride, max_blocks, sl, qsl, _ = meta
        self.program.run(t, _CODE[compute_dtype], x.data_ptr(), out.data_ptr(), pos, slots, bt, bt_stride, max_blocks,
                         sl, qsl, rows, cpu_kernels.THREADS)
        return out


def build_cpu_program(model, kv_caches) -> CpuProgram | None:
    """A program for this model and caches, or None when the model is not the block it covers."""
    if not enabled() or model.device.type != "cpu" or model.kernels is not cpu_kernels or not model.layers:
        return None
    spec = model.layers[0].attn.spec if isinstance(getattr(model.layers[0], "attn", None), SelfAttention) else None
    if spec is None or not _core.cpu_attention_supports_head_dim(spec.head_dim):
        return None
    hidden = model.config.hidden_size
    if not all(_layer_ok(layer, hidden, spec) for layer in model.layers) or not _norm_ok(model.norm, hidden):
        return None
    if not _caches_ok(kv_caches, len(model.layers), spec):
        return None
    return CpuProgram(model, kv_caches)
