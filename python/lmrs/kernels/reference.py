"""Reference kernels: PyTorch ops with the interface every kernel backend implements.

These run the CPU path and are the ground truth the CUDA kernels are tested against.

Shapes and layouts (T = tokens in the step, B = rows, Hq/Hk = query/KV heads, D = head dim):

- KV cache of one layer: `k_cache`, `v_cache` of shape [num_blocks, block_size, Hk, D] ("NHD"),
  in the model dtype. Token at position p of a row lives in block `block_table[row, p // bs]` at
  offset `p % bs`; its flat slot is `block * bs + offset` (the plan's `slot_mapping`).
- `block_table`: int32 [B, max_blocks] (padded with the null block 0); `seq_lens`: int32 [B],
  the KV length of each row after this step; `query_start_loc`: int32 [B + 1].
- Row r's queries are the last `qlen = qsl[r+1] - qsl[r]` positions of its sequence:
  `seq_lens[r] - qlen ... seq_lens[r] - 1`. A query at position p attends to keys 0..p (causal),
  the cached prefix included; with `sliding_window` W > 0 only to keys p - W < j <= p (the W
  latest keys, itself included).
- `soft_cap` > 0 (Gemma 2): each scaled score s = scale * q.k becomes soft_cap * tanh(s / soft_cap)
  before masking and softmax; 0 means no capping.
- Decode rows (qlen == 1) come first in every plan: `num_decode_rows` of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "reference"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """RMSNorm over the last dim, computed in float32, returned in `out_dtype` (default x's dtype).

    With float32 everywhere this is exactly Hugging Face's LlamaRMSNorm. With a float32 x (the
    residual stream) and a bfloat16 out_dtype, the product with the weight is rounded once.
    """
    out_dtype = out_dtype or x.dtype
    xf = x.float()
    var = xf.pow(2).mean(-1, keepdim=True)
    normed = xf * torch.rsqrt(var + eps)
    if out_dtype == torch.float32 and weight.dtype == torch.float32:
        return weight * normed
    return (normed * weight.float()).to(out_dtype)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       out_dtype: torch.dtype | None = None):
    """residual += x; return (rms_norm(residual) in out_dtype (default x's dtype), residual).

    `residual` is updated in place and may be float32 while x is bfloat16 / float16 (the
    mixed-precision residual stream)."""
    residual.add_(x)
    return rms_norm(residual, weight, eps, out_dtype or x.dtype), residual


def rope_cos_sin_cache(inv_freq: torch.Tensor, max_positions: int, attention_scaling: float = 1.0) -> torch.Tensor:
    """float32 [max_positions, D]: cos in the first D/2 columns, sin in the last D/2.

    Computed exactly as Hugging Face does (position * inv_freq in float32, then cos/sin).
    """
    pos = torch.arange(max_positions, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq.float())
    return torch.cat([freqs.cos() * attention_scaling, freqs.sin() * attention_scaling], dim=-1)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    head_dim: int,
    is_neox: bool = True,
    *,
    rotary_dim: int | None = None,
) -> None:
    """Rotate q [T, Hq*D] and k [T, Hk*D] in place by their positions.

    Only the first `rotary_dim` (even, <= D; None = D) dimensions of each head rotate (partial
    rotary, e.g. Phi-3); the others pass through, and `cos_sin_cache` has `rotary_dim` columns.
    is_neox=True: Hugging Face `rotate_half` (pairs i and i + rotary_dim/2); False: GPT-J /
    llama.cpp adjacent pairs (2i, 2i+1).
    """
    rdim = head_dim if rotary_dim is None else int(rotary_dim)
    if rdim <= 0 or rdim % 2 or rdim > head_dim:
        raise ValueError(f"rotary_dim: expected a positive even int <= head_dim {head_dim}, got {rotary_dim!r}")
    half = rdim // 2
    cs = cos_sin_cache.index_select(0, positions.long())
    cos = cs[:, :half].unsqueeze(1)
    sin = cs[:, half:].unsqueeze(1)
    for t in (q, k):
        x = t.view(t.shape[0], -1, head_dim)[..., :rdim]
        if is_neox:
            x1, x2 = x[..., :half].float(), x[..., half:].float()
            c = torch.cat([cos, cos], dim=-1)
            s = torch.cat([sin, sin], dim=-1)
            rot = torch.cat([-x2, x1], dim=-1)
            out = x.float() * c + rot * s
        else:
            x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
            o1 = x1 * cos - x2 * sin
            o2 = x2 * cos + x1 * sin
            out = torch.stack([o1, o2], dim=-1).flatten(-2)
        x.copy_(out.to(x.dtype))


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2I] = [gate | up] -> silu(gate) * up [T, I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2I] = [gate | up] -> gelu(gate, approximate="tanh") * up [T, I] (GeGLU: Gemma)."""
    gate, up = x.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up


def reshape_and_cache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write key/value [T, Hk, D] into the paged cache at their slots (slot < 0 is skipped)."""
    nb, bs, hk, d = k_cache.shape
    slots = slot_mapping.long()
    if bool((slots < 0).any()):
        keep = slots >= 0
        slots, key, value = slots[keep], key[keep], value[keep]
    k_cache.view(nb * bs, hk, d).index_copy_(0, slots, key.to(k_cache.dtype))
    v_cache.view(nb * bs, hk, d).index_copy_(0, slots, value.to(v_cache.dtype))


def rotary_embedding_and_cache(positions, qkv, num_heads: int, num_kv_heads: int, head_dim: int, cos_sin_cache,
                               is_neox: bool, k_cache, v_cache, slot_mapping, *, rotary_dim: int | None = None) -> None:
    """qkv [T, (Hq + 2 Hk) * D] = [q | k | v] (the fused projection's output): `rotary_embedding`
    of q (in place) and k, then `reshape_and_cache` of k and v. The k columns afterwards are
    unspecified (backends may leave them unrotated). Optional: the model composes the two calls
    itself for a backend without it."""
    t = qkv.shape[0]
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    q = qkv[:, :q_size].contiguous()
    k = qkv[:, q_size : q_size + kv_size].contiguous()
    rotary_embedding(positions, q, k, cos_sin_cache, head_dim, is_neox, rotary_dim=rotary_dim)
    qkv[:, :q_size] = q
    reshape_and_cache(k.view(t, num_kv_heads, head_dim), qkv[:, q_size + kv_size :].reshape(t, num_kv_heads, head_dim),
                      k_cache, v_cache, slot_mapping)


def refine_top_logits(logits: torch.Tensor, hidden: torch.Tensor, head_f32: torch.Tensor, k: int) -> torch.Tensor:
    """In place: the `k` largest logits of each row of `logits` [R, V] (float32) recomputed as
    hidden [R, H] @ head_f32[id] in float32; returns logits. Optional, like the above."""
    top = logits.topk(min(int(k), logits.shape[1]), dim=-1).indices  # [R, K]
    exact = torch.einsum("rh,rkh->rk", hidden.float(), head_f32[top])
    return logits.scatter_(1, top, exact)


def _gather_context(cache: torch.Tensor, block_row: torch.Tensor, length: int) -> torch.Tensor:
    """[length, Hk, D] of one row's context, read through its block table row."""
    bs = cache.shape[1]
    nblk = (length + bs - 1) // bs
    blocks = cache.index_select(0, block_row[:nblk].long())
    return blocks.reshape(nblk * bs, cache.shape[2], cache.shape[3])[:length]


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seq_len: int | None = None,
    *,
    sliding_window: int = 0,
    soft_cap: float = 0.0,
) -> torch.Tensor:
    """One query per row: q [B, Hq, D] against each row's seq_lens[r] cached keys -> [B, Hq, D].

    GQA: query head h reads KV head h // (Hq // Hk). Softmax in float32. `sliding_window` and
    `soft_cap` as in the module docstring (the query is at position seq_lens[r] - 1).
    """
    b, hq, d = q.shape
    if b == 0:
        return q.new_empty((0, hq, d))
    _, bs, hk, _ = k_cache.shape
    group = hq // hk
    lens = seq_lens.long()
    max_len = int(max_seq_len) if max_seq_len is not None else int(lens.max())
    nblk = (max_len + bs - 1) // bs
    bt = block_table[:, :nblk].long()
    k = k_cache[bt].reshape(b, nblk * bs, hk, d)  # [B, L, Hk, D]
    v = v_cache[bt].reshape(b, nblk * bs, hk, d)
    qg = q.view(b, hk, group, d).float()
    scores = torch.einsum("bhgd,blhd->bhgl", qg, k.float()) * scale  # [B, Hk, G, L]
    if soft_cap > 0:
        scores = torch.tanh(scores / soft_cap) * soft_cap
    keys = torch.arange(nblk * bs).unsqueeze(0)
    pad = keys >= lens.unsqueeze(1)  # [B, L]
    if sliding_window > 0:
        pad |= keys <= lens.unsqueeze(1) - 1 - int(sliding_window)
    scores.masked_fill_(pad[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhgl,blhd->bhgd", probs, v.float())
    return out.reshape(b, hq, d).to(q.dtype)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    max_query_len: int | None = None,
    *,
    sliding_window: int = 0,
    soft_cap: float = 0.0,
) -> torch.Tensor:
    """Variable-length causal attention: q [T, Hq, D] of rows with any query length, each row's
    context (cached prefix + this chunk, already written to the cache) read through the block
    table -> [T, Hq, D]. `sliding_window` and `soft_cap` as in the module docstring."""
    t, hq, d = q.shape
    out = torch.empty_like(q)
    hk = k_cache.shape[2]
    qsl = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for r in range(len(lens)):
        a, bnd = qsl[r], qsl[r + 1]
        qlen, kvlen = bnd - a, lens[r]
        if qlen == 0:
            continue
        k = _gather_context(k_cache, block_table[r], kvlen)
        v = _gather_context(v_cache, block_table[r], kvlen)
        qr = q[a:bnd].transpose(0, 1).float()  # [Hq, qlen, D], softmax and products in float32
        kr = k.transpose(0, 1).float()  # [Hk, L, D]
        vr = v.transpose(0, 1).float()
        if hk != hq:
            kr = kr.repeat_interleave(hq // hk, dim=0)
            vr = vr.repeat_interleave(hq // hk, dim=0)
        ctx = kvlen - qlen
        if ctx == 0 and sliding_window <= 0 and soft_cap <= 0:
            o = F.scaled_dot_product_attention(qr, kr, vr, is_causal=True, scale=scale)
        else:
            qpos = torch.arange(ctx, kvlen).unsqueeze(1)
            keys = torch.arange(kvlen).unsqueeze(0)
            allowed = keys <= qpos  # [qlen, L]
            if sliding_window > 0:
                allowed &= keys > qpos - int(sliding_window)
            if soft_cap > 0:
                scores = torch.tanh(qr @ kr.transpose(1, 2) * scale / soft_cap) * soft_cap
                o = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ vr
            else:
                o = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=allowed, scale=scale)
        out[a:bnd] = o.transpose(0, 1).to(out.dtype)
    return out


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    num_decode_rows: int,
    scale: float,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    *,
    sliding_window: int = 0,
    soft_cap: float = 0.0,
) -> torch.Tensor:
    """Attention for a whole plan: the leading `num_decode_rows` rows (one query each) through
    `decode_attention`, the rest through `prefill_attention`. q [T, Hq, D] -> [T, Hq, D]."""
    nd = int(num_decode_rows)
    rows = seq_lens.shape[0]
    opts = dict(sliding_window=sliding_window, soft_cap=soft_cap)
    if nd == rows:
        return decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale, max_seq_len, **opts)
    if nd == 0:
        return prefill_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale, max_query_len,
                                 **opts)
    out = torch.empty_like(q)
    out[:nd] = decode_attention(q[:nd], k_cache, v_cache, block_table[:nd], seq_lens[:nd], scale, **opts)
    qsl = query_start_loc[nd:] - query_start_loc[nd]
    out[nd:] = prefill_attention(
        q[nd:], k_cache, v_cache, block_table[nd:], seq_lens[nd:], qsl, scale, max_query_len, **opts
    )
    return out
