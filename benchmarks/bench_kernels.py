"""Kernel benchmark: achieved memory bandwidth of each lmrs CUDA kernel against the card's own
device-to-device copy bandwidth measured in the same run, and time ratios against a peer on the same
shapes ("vs peer": peer time / lmrs time): prefill attention against PyTorch's
scaled_dot_product_attention; sliding-window decode against full attention at the same context; the
weight-only int4 / int8 product against dequantizing to bfloat16 + cuBLAS (and a dense bfloat16
cuBLAS product, for reference).

    python benchmarks/bench_kernels.py [--json PATH] [--quick]

Bandwidth = minimal bytes a kernel must move (inputs read once, outputs written once) / time.
Time: CUDA events around back-to-back launches queued behind a GPU spin (so Python launch
overhead is hidden), median of repeats after warm-up. Inputs rotate through enough copies to
exceed the L2 cache, so the numbers are DRAM bandwidth, not L2 hits. Without a GPU it says so and
exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import torch  # noqa: E402


class Bench:
    def __init__(self, repeats: int, l2_bytes: int):
        self.repeats = repeats
        self.l2 = l2_bytes

    def copies(self, per_copy_bytes: int) -> int:
        """Input sets to rotate through so one pass over them is >= 3x the L2 cache."""
        return max(1, min(64, math.ceil(3 * self.l2 / max(1, per_copy_bytes))))

    def time(self, fns) -> float:
        """Median seconds per call of the callables in `fns` (called round-robin)."""
        n = max(len(fns), 8)
        for i in range(n):  # warm-up (also compiles/loads the kernels)
            fns[i % len(fns)]()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(int(4e6) * n // 8 + int(4e6))  # keep the GPU busy while launches queue up
            start.record()
            for i in range(n):
                fns[i % len(fns)]()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / n)
        return statistics.median(times)


def copy_bandwidth(b: Bench) -> float:
    n = max(256 << 20, 4 * b.l2)
    src = torch.empty(n, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    t = b.time([lambda: dst.copy_(src)])
    return 2 * n / t


def make_paged(batch, ctx, hq, hk, d, bs, dtype, g):
    """A decode cache: `batch` sequences of `ctx` tokens in shuffled blocks."""
    nblk = -(-ctx // bs)
    nb = batch * nblk + 1
    kc = torch.randn(nb, bs, hk, d, device="cuda", dtype=dtype, generator=g)
    vc = torch.randn(nb, bs, hk, d, device="cuda", dtype=dtype, generator=g)
    bt = (torch.randperm(nb - 1, device="cuda", generator=g)[: batch * nblk] + 1).view(batch, nblk).int()
    sl = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, hq, d, device="cuda", dtype=dtype, generator=g)
    return q, kc, vc, bt, sl


def run(args) -> dict:
    from lmrs.kernels import cuda as K

    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20) or (50 << 20)
    b = Bench(args.repeats, l2)
    g = torch.Generator(device="cuda").manual_seed(0)
    peak = copy_bandwidth(b)
    rows: list[dict] = []

    def add(kernel, config, dtype, t, nbytes=None, flops=None, peer_t=None, peer=None):
        r = {"kernel": kernel, "config": config, "dtype": str(dtype).replace("torch.", ""), "us": t * 1e6}
        if nbytes is not None:
            r["GB/s"] = nbytes / t / 1e9
            r["pct_copy_bw"] = 100 * nbytes / t / peak
        if flops is not None:
            r["TFLOP/s"] = flops / t / 1e12
        if peer_t is not None:
            r["vs_peer"] = peer_t / t
            r["peer"] = peer
        rows.append(r)
        print(_fmt_row(r), flush=True)

    print(f"device: {props.name}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MiB")
    print(f"device-to-device copy: {peak / 1e9:.0f} GB/s (read + write)\n")
    print(_fmt_header())
    dtypes = [torch.float16, torch.bfloat16] if not args.quick else [torch.bfloat16]

    # --- row-wise kernels, SmolLM2-135M (hidden 576, intermediate 1536) and 4096-wide shapes
    for dt in dtypes:
        es = torch.finfo(dt).bits // 8
        for t, hidden in ((8192, 576), (8192, 4096)):
            n = b.copies(t * hidden * es * 2)
            xs = [torch.randn(t, hidden, device="cuda", dtype=dt, generator=g) for _ in range(n)]
            rs = [torch.randn(t, hidden, device="cuda", dtype=dt, generator=g) for _ in range(n)]
            w = torch.ones(hidden, device="cuda", dtype=dt)
            add("rms_norm", f"T={t} H={hidden}", dt,
                b.time([lambda x=x: K.rms_norm(x, w, 1e-6) for x in xs]), 2 * t * hidden * es)
            add("fused_add_rms_norm", f"T={t} H={hidden}", dt,
                b.time([lambda x=x, r=r: K.fused_add_rms_norm(x, r, w, 1e-6) for x, r in zip(xs, rs)]),
                4 * t * hidden * es)
            r32 = [r.float() for r in rs]  # the float32 residual stream next to 16-bit activations
            add("fused_add_rms_norm", f"T={t} H={hidden} f32 residual", dt,
                b.time([lambda x=x, r=r: K.fused_add_rms_norm(x, r, w, 1e-6) for x, r in zip(xs, r32)]),
                t * hidden * (2 * es + 8))
            del xs, rs, r32
        for t, inter in ((8192, 1536), (4096, 14336)):
            n = b.copies(t * inter * es * 3)
            xs = [torch.randn(t, 2 * inter, device="cuda", dtype=dt, generator=g) for _ in range(n)]
            add("silu_and_mul", f"T={t} I={inter}", dt, b.time([lambda x=x: K.silu_and_mul(x) for x in xs]),
                3 * t * inter * es)
            del xs
        for t, hq, hk, d in ((8192, 9, 3, 64), (8192, 32, 8, 128)):
            n = b.copies(t * (hq + 2 * hk) * d * es)
            qkvs = [torch.randn(t, (hq + 2 * hk) * d, device="cuda", dtype=dt, generator=g) for _ in range(n)]
            inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
            cs = K.rope_cos_sin_cache(inv.cuda(), 8192)
            pos = torch.arange(t, device="cuda", dtype=torch.int32)
            add("rotary_embedding", f"T={t} Hq={hq} Hk={hk} D={d}", dt,
                b.time([lambda x=x: K.rotary_embedding(pos, x[:, : hq * d], x[:, hq * d : (hq + hk) * d], cs, d)
                        for x in qkvs]),
                2 * t * (hq + hk) * d * es + t * d * 4)
            nb = -(-t // 16) + 1
            kc = torch.zeros(nb, 16, hk, d, device="cuda", dtype=dt)
            vc = torch.zeros_like(kc)
            slots = torch.randperm(t, device="cuda", generator=g).int()
            add("reshape_and_cache", f"T={t} Hk={hk} D={d}", dt,
                b.time([lambda x=x: K.reshape_and_cache(x[:, hq * d : (hq + hk) * d].view(t, hk, d),
                                                        x[:, (hq + hk) * d :].view(t, hk, d), kc, vc, slots)
                        for x in qkvs]),
                4 * t * hk * d * es)
            del qkvs, kc, vc

    # --- decode attention at 4k context
    decode_cfgs = [("SmolLM2-135M", 9, 3, 64, [1, 2, 4, 8, 16, 32, 64, 128, 256]),
                   ("Llama-3-8B", 32, 8, 128, [1, 4, 16, 64])]
    ctx, bs = 4096, 16
    for name, hq, hk, d, batches in decode_cfgs:
        for dt in dtypes:
            es = torch.finfo(dt).bits // 8
            for batch in batches if not args.quick else batches[::2]:
                kv_bytes = 2 * batch * ctx * hk * d * es
                n = b.copies(kv_bytes)
                sets = [make_paged(batch, ctx, hq, hk, d, bs, dt, g) for _ in range(n)]
                t = b.time([lambda s=s: K.decode_attention(*s, d**-0.5, ctx) for s in sets])
                sms = props.multi_processor_count
                splits, _ = K.decode_splits(batch * hk * -(-(hq // hk) // K.heads_per_cta(hq // hk)), ctx, sms)
                add("decode_attention", f"{name} ctx={ctx} B={batch} splits={splits}", dt, t,
                    kv_bytes + 2 * batch * hq * d * es + batch * (ctx // bs) * 4)
                del sets

    # --- prefill attention (compute-bound: TFLOP/s, and time ratio vs torch SDPA on dense K/V)
    import torch.nn.functional as F

    for name, hq, hk, d in (("SmolLM2-135M", 9, 3, 64), ("Llama-3-8B", 32, 8, 128)):
        for dt in dtypes:
            for qlens, ctxs in (([4096], [0]), ([512] * 8, [0] * 8), ([512], [3584])):
                sl_list = [a + c for a, c in zip(qlens, ctxs)]
                q, kc, vc, bt, _ = make_paged(len(qlens), max(sl_list), hq, hk, d, bs, dt, g)
                tq = sum(qlens)
                q = torch.randn(tq, hq, d, device="cuda", dtype=dt, generator=g)
                sl = torch.tensor(sl_list, dtype=torch.int32, device="cuda")
                qsl = torch.tensor([0] + list(torch.tensor(qlens).cumsum(0).tolist()), dtype=torch.int32, device="cuda")
                t = b.time([lambda: K.prefill_attention(q, kc, vc, bt, sl, qsl, d**-0.5, max(qlens))])
                flops = sum(4 * ql * (c + (ql + 1) / 2) * hq * d for ql, c in zip(qlens, ctxs))
                # peer: SDPA over the same rows with dense, contiguous K/V
                dense = []
                for ql, c in zip(qlens, ctxs):
                    qq = torch.randn(1, hq, ql, d, device="cuda", dtype=dt, generator=g)
                    kk = torch.randn(1, hq, ql + c, d, device="cuda", dtype=dt, generator=g)
                    vv = torch.randn_like(kk)
                    mask = None
                    if c:
                        mask = torch.arange(ql + c, device="cuda")[None, :] <= (torch.arange(ql, device="cuda")[:, None] + c)
                    dense.append((qq, kk, vv, mask))

                def sdpa():
                    for qq, kk, vv, mask in dense:
                        F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, is_causal=mask is None)

                peer = b.time([sdpa])
                add("prefill_attention", f"{name} q={qlens[0]}x{len(qlens)} ctx={ctxs[0]}", dt, t, flops=flops,
                    peer_t=peer, peer="torch SDPA, dense K/V")
                del q, kc, vc, dense
    torch.cuda.empty_cache()
    window_decode(b, add, g, args)
    quant_products(b, add, g, args)
    return {"device": props.name, "sms": props.multi_processor_count, "l2_bytes": l2,
            "copy_GBps": peak / 1e9, "rows": rows}


def window_decode(b: Bench, add, g, args) -> None:
    """Decode attention with a sliding window at a long context against full attention there (the
    windowed rows count only the K/V bytes inside the window)."""
    from lmrs.kernels import cuda as K

    ctx, bs, dt = 32768, 16, torch.bfloat16
    for name, hq, hk, d, window in (("Mistral-7B", 32, 8, 128, 4096), ("Gemma-3-27B", 32, 16, 128, 1024)):
        for batch in ((1, 16) if not args.quick else (16,)):
            sets = [make_paged(batch, ctx, hq, hk, d, bs, dt, g) for _ in range(b.copies(2 * batch * ctx * hk * d * 2))]
            full = b.time([lambda s=s: K.decode_attention(*s, d**-0.5, ctx) for s in sets])
            win = b.time([lambda s=s: K.decode_attention(*s, d**-0.5, ctx, sliding_window=window) for s in sets])
            cap = b.time([lambda s=s: K.decode_attention(*s, d**-0.5, ctx, sliding_window=window, soft_cap=50.0)
                          for s in sets])
            nbytes = 2 * batch * window * hk * d * 2
            add("decode_attention", f"{name} ctx={ctx} window={window} B={batch}", dt, win, nbytes, peer_t=full,
                peer="full attention, same context")
            add("decode_attention", f"{name} ctx={ctx} window={window} cap=50 B={batch}", dt, cap, nbytes,
                peer_t=full, peer="full attention, same context")
            del sets
    torch.cuda.empty_cache()


def quant_products(b: Bench, add, g, args) -> None:
    """Weight-only int4 / int8 products (decode-sized M) against dequantize-to-bfloat16 + cuBLAS;
    bytes = packed weight + x + y. A dense bfloat16 cuBLAS product is listed for reference."""
    import torch.nn.functional as F

    from lmrs.kernels import cuda as K
    from lmrs.kernels.cuda_quant import QuantizedWeight

    dt = torch.bfloat16

    def weight(bits, n, k):
        groups = k // 32
        scales = (torch.rand(n, groups, device="cuda", generator=g) * 0.01 + 1e-3).half()
        if bits == 4:
            codes = torch.randint(0, 256, (n, k // 2), device="cuda", generator=g, dtype=torch.uint8)
            return QuantizedWeight(4, codes, scales, (-8 * scales.float()).half())
        codes = torch.randint(-127, 128, (n, k), device="cuda", generator=g, dtype=torch.int8)
        return QuantizedWeight(8, codes, scales, None)

    shapes = ((4096, 4096), (14336, 4096), (4096, 14336)) if not args.quick else ((14336, 4096),)
    for n, k in shapes:
        for bits in (4, 8):
            probe = weight(bits, n, k)
            ws = [probe] + [weight(bits, n, k) for _ in range(b.copies(probe.nbytes) - 1)]
            for m in (1, 4, 8, 16):
                x = torch.randn(m, k, device="cuda", dtype=dt, generator=g)
                t = b.time([lambda w=w: K.quant_matmul(x, w) for w in ws])
                deq = b.time([lambda w=w: F.linear(x, K.quant_dequantize(w, dt)) for w in ws])
                add("quant_matmul", f"q{bits} N={n} K={k} M={m}", dt, t, probe.nbytes + 2 * m * (k + n),
                    peer_t=deq, peer="dequantize to bfloat16 + cuBLAS")
            del ws
        dense = [torch.randn(n, k, device="cuda", dtype=dt, generator=g) for _ in range(b.copies(2 * n * k))]
        x = torch.randn(1, k, device="cuda", dtype=dt, generator=g)
        add("linear (cuBLAS)", f"bf16 weight N={n} K={k} M=1", dt, b.time([lambda w=w: F.linear(x, w) for w in dense]),
            2 * n * k + 2 * (k + n))
        del dense
    torch.cuda.empty_cache()


def _fmt_header() -> str:
    return f"{'kernel':<20} {'config':<42} {'dtype':<9} {'time us':>9} {'GB/s':>8} {'% copy':>7} {'TFLOP/s':>8} {'vs peer':>8}"


def _fmt_row(r: dict) -> str:
    def f(k, fmt):
        return format(r[k], fmt) if k in r else ""

    return (f"{r['kernel']:<20} {r['config']:<42} {r['dtype']:<9} {r['us']:>9.1f} {f('GB/s', '8.0f'):>8} "
            f"{f('pct_copy_bw', '6.1f'):>7} {f('TFLOP/s', '8.2f'):>8} {f('vs_peer', '7.2f'):>8}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer shapes (one dtype, every other batch size)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA GPU here, nothing to measure")
        return 0
    try:
        from lmrs.kernels import cuda as K

        K.get_launcher()
    except RuntimeError as e:
        print(f"bench_kernels: CUDA kernels unavailable: {e}")
        return 0
    res = run(args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    quant = [r for r in res["rows"] if r["kernel"] == "quant_matmul" and r["config"].endswith(" M=1")]
    if quant:
        print(f"quantized products at M=1: {min(r['pct_copy_bw'] for r in quant):.1f}-"
              f"{max(r['pct_copy_bw'] for r in quant):.1f}% of copy bandwidth, "
              f"{min(r['vs_peer'] for r in quant):.2f}-{max(r['vs_peer'] for r in quant):.2f}x dequantize + cuBLAS")
    dec = [r for r in res["rows"] if r["kernel"] == "decode_attention" and "window" not in r["config"]]
    if dec:
        best = max(r["pct_copy_bw"] for r in dec)
        print(f"\ndecode attention at 4k context: best {best:.1f}% of copy bandwidth "
              f"({min(r['pct_copy_bw'] for r in dec):.1f}% worst, batch 1 included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
