"""InternLM2 / InternLM2.5 (`InternLM2ForCausalLM`, remote code: not in transformers).

The Llama block with its own tensor names (`attention.wqkv` / `wo`, `feed_forward.w1` (gate) /
`w3` (up) / `w2` (down), `attention_norm`, `ffn_norm`, `model.tok_embeddings`, `output`) and a
packed `wqkv` whose rows are grouped per KV head: for each of the Hk groups, its Hq / Hk query
heads, then its key head, then its value head (D rows each). The rows are regrouped into [q | k | v]
at load, an exact permutation. `bias` puts biases on wqkv and wo. RoPE "dynamic" scaling (NTK,
InternLM2.5) changes nothing below `max_position_embeddings`, which bounds lmrs' context, so it
runs as plain RoPE. GGUF: `internlm2` (llama.cpp's converter split wqkv into attn_q/k/v and
permuted q/k rows; both are undone on load, so a GGUF converts back into the packed layout).
"""

from __future__ import annotations

import numpy as np
import torch

from ..family import GGUF_BLOCK_NAMES, DecoderFamily
from ..layers import GatedMLP
from ..quantized import QuantizedTensor
from ..registry import register

_NAMES = {
    "attn_norm": "attention_norm",
    "attn_q": "attention.wq",  # transient: packed into attention.wqkv
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1",
    "ffn_up": "feed_forward.w3",
    "ffn_down": "feed_forward.w2",
}
assert set(_NAMES) <= set(GGUF_BLOCK_NAMES)


def pack_wqkv(q, k, v, num_kv_heads: int, head_dim: int):
    """[q | k | v] rows (q: Hq*D, k and v: Hk*D) -> InternLM2's grouped wqkv rows (numpy or torch)."""
    cols = q.shape[1:]
    group = q.shape[0] // (num_kv_heads * head_dim)
    parts = [q.reshape(num_kv_heads, group, head_dim, *cols), k.reshape(num_kv_heads, 1, head_dim, *cols),
             v.reshape(num_kv_heads, 1, head_dim, *cols)]
    cat = np.concatenate(parts, axis=1) if isinstance(q, np.ndarray) else torch.cat(parts, dim=1)
    return cat.reshape(-1, *cols)


class PackedQKV:
    """InternLM2's packed ``wqkv`` weight held as its q, k and v parts kept quantized (a K-quant mix stores
    ``attn_v`` in another type than ``attn_q`` / ``attn_k``, so one quantized weight cannot hold the packed
    rows): :func:`unpack_wqkv` returns the parts, :meth:`dequantize` the packed float32 rows."""

    def __init__(self, q, k, v, num_kv_heads: int, head_dim: int):
        self.q, self.k, self.v = q, k, v  #: the parts (QuantizedTensor or float tensors), HF q / k / v rows
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.shape = (q.shape[0] + k.shape[0] + v.shape[0], q.shape[-1])  #: the packed weight's shape

    def dequantize(self) -> torch.Tensor:
        parts = [x.dequantize() if isinstance(x, QuantizedTensor) else torch.as_tensor(x).float()
                 for x in (self.q, self.k, self.v)]
        return pack_wqkv(*parts, self.num_kv_heads, self.head_dim)

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in (self.q, self.k, self.v))


def unpack_wqkv(w, num_heads: int, num_kv_heads: int, head_dim: int):
    """InternLM2's grouped wqkv rows -> (q, k, v) rows (numpy, torch or QuantizedTensor)."""
    if isinstance(w, PackedQKV):
        return w.q, w.k, w.v
    cols = w.shape[1:]
    group = num_heads // num_kv_heads
    g = w.reshape(num_kv_heads, group + 2, head_dim, *cols)
    return (g[:, :group].reshape(-1, *cols), g[:, group].reshape(-1, *cols), g[:, group + 1].reshape(-1, *cols))


class InternLM2Family(DecoderFamily):
    name = "internlm2"
    hf_architectures = ("InternLM2ForCausalLM",)
    model_types = ("internlm2",)
    gguf_architectures = ("internlm2",)
    hf_defaults = dict(max_position_embeddings=2048, attention_bias=False, bos_token_id=1, eos_token_id=2)
    gguf_permuted_qk = True
    gguf_block_names = _NAMES
    gguf_global_names = {"token_embd.weight": "model.tok_embeddings.weight", "output_norm.weight": "model.norm.weight",
                         "output.weight": "output.weight"}
    embed_name = "model.tok_embeddings.weight"
    lm_head_name = "output.weight"
    attn_prefix = "attention."
    mlp_prefix = "feed_forward."
    input_norm = "attention_norm"
    post_attention_norm = "ffn_norm"
    q_name, k_name = "wq", "wk"  # the GGUF's split parts (transient names)

    def config_from_hf(self, d, *, name=None):
        d = dict(d)
        scaling = d.get("rope_scaling")
        if isinstance(scaling, dict) and scaling.get("type", scaling.get("rope_type")) == "dynamic":
            d["rope_scaling"] = None  # dynamic NTK: plain RoPE up to max_position_embeddings (see above)
        d.setdefault("attention_bias", bool(d.get("bias", False)))
        return super().config_from_hf(d, name=name)

    def hf_extra(self, cfg):
        return {"bias": cfg.attention_bias, "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                                                         "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}}

    def attention_shapes(self, cfg, p):
        h, q, kv = cfg.hidden_size, cfg.q_size, cfg.kv_size
        shapes = {p + "attention.wqkv.weight": (q + 2 * kv, h), p + "attention.wo.weight": (h, q)}
        if cfg.attention_bias:
            shapes.update({p + "attention.wqkv.bias": (q + 2 * kv,), p + "attention.wo.bias": (h,)})
        return shapes

    def mlp_shapes(self, cfg, n, p):
        h, i = cfg.hidden_size, cfg.intermediate_size
        f = p + "feed_forward."
        return {f + "w1.weight": (i, h), f + "w3.weight": (i, h), f + "w2.weight": (h, i)}

    def qkv_projection(self, cfg, f, i):
        a = self.layer_prefix(i) + "attention."
        unpack = lambda t: unpack_wqkv(t, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)  # noqa: E731
        biases = list(unpack(f.tensor(a + "wqkv.bias"))) if cfg.attention_bias else None
        return f.qkv(*unpack(f.weight(a + "wqkv.weight")), biases, **self.head_layout(cfg))

    def attention(self, cfg, f, i, rotaries):
        from ..layers import SelfAttention

        a = self.layer_prefix(i) + "attention."
        o_bias = a + "wo.bias" if cfg.attention_bias else None
        return SelfAttention(self.attention_spec(cfg, f, i), self.qkv_projection(cfg, f, i), f.o_proj(a + "wo.weight", o_bias, **self.head_layout(cfg)),
                             f.kernels, rotary=self.rotary_for_layer(cfg, i, rotaries))

    def mlp(self, cfg, f, i):
        m = self.layer_prefix(i) + "feed_forward."
        return GatedMLP(f.column(m + "w1.weight", m + "w3.weight"), f.row(m + "w2.weight"), f.kernels,
                        self.activation(cfg))

    def gguf_tensors(self, cfg, name, array, pending):
        out = super().gguf_tensors(cfg, name, array, pending)
        hf, arr = out[0]
        part = next((x for x in ("wq", "wk", "wv") if hf.endswith(f".attention.{x}.{hf.rsplit('.', 1)[1]}")), None)
        if part is None:
            return out
        packed = hf.replace(f".attention.{part}.", ".attention.wqkv.")
        parts = pending.setdefault(packed, {})
        parts[part] = arr
        pending.setdefault(("types", packed), []).append(pending.get("qtype", ""))
        if len(parts) < 3:
            return []
        del pending[packed]
        q, k, v = parts["wq"], parts["wk"], parts["wv"]
        if any(isinstance(x, QuantizedTensor) for x in (q, k, v)):  # kept quantized: the parts, unpacked at build
            q, k, v = (x if isinstance(x, QuantizedTensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                       for x in (q, k, v))
            return [(packed, PackedQKV(q, k, v, cfg.num_key_value_heads, cfg.head_dim))]
        return [(packed, pack_wqkv(q, k, v, cfg.num_key_value_heads, cfg.head_dim))]


INTERNLM2 = register(InternLM2Family())
