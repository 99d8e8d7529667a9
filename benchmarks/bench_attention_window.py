"""CPU paged attention with a sliding window: decode and prefill cost against full attention at a
long context, measured in the same run (the Rust kernels of `lmrs.kernels.cpu`).

    python benchmarks/bench_attention_window.py [--context 32768] [--batch 4] [--repeats 5] [--json PATH]

For each head layout (Mistral-7B: 32 query / 8 KV heads of 128, window 4096; Gemma-3-1B: 4 / 1
heads of 256, window 512), with every sequence `context` tokens long in shuffled blocks of 16:

- decode: one query per sequence, full attention vs the window, and full attention over a context
  of exactly `window` tokens (the floor a windowed step should stay at, whatever the context);
- prefill: one sequence's 256-token chunk after `context - 256` cached tokens, full vs the window.

Times are the best of `repeats` rounds (a quarter of them for prefill) after a warm-up round, the
variants taking turns within a round (which tames a shared machine's noise); the ratios are what
to read: full / window
(the saving) and window-at-context / full-at-window (about 1: the windowed cost does not grow with
the context). The blocks before the window are set to the null block 0 in the windowed calls, as a
scheduler that frees them would leave them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import torch  # noqa: E402

LAYOUTS = [  # (name, q heads, kv heads, head dim, window)
    ("Mistral-7B", 32, 8, 128, 4096),
    ("Gemma-3-1B", 4, 1, 256, 512),
]


def best_seconds(fns: dict, repeats: int) -> dict:
    """Best time of each callable over `repeats` rounds, the callables taking turns within a round
    (so a load change on a shared machine hits them all alike), after one warm-up round."""
    best = {name: float("inf") for name in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r:
                best[name] = min(best[name], time.perf_counter() - t)
    return best


def make_cache(batch: int, context: int, hk: int, d: int, bs: int, dtype, g):
    """Caches holding `batch` sequences of `context` tokens in shuffled blocks (block 0 unused)."""
    nblk = -(-context // bs)
    nb = batch * nblk + 1
    kc = torch.randn(nb, bs, hk, d, generator=g).to(dtype)
    vc = torch.randn(nb, bs, hk, d, generator=g).to(dtype)
    bt = (torch.randperm(nb - 1, generator=g)[: batch * nblk] + 1).view(batch, nblk).to(torch.int32)
    return kc, vc, bt


def windowed_table(bt: torch.Tensor, first_query_pos: int, window: int, bs: int) -> torch.Tensor:
    """The block table with the blocks wholly before the window replaced by the null block 0."""
    out = bt.clone()
    out[:, : max(0, first_query_pos + 1 - window) // bs] = 0
    return out


def run(args) -> dict:
    from lmrs.kernels import cpu

    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    bs, results = 16, []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernels isa: {cpu.isa()}, {args.dtype}, "
          f"context {args.context}, batch {args.batch}")
    for name, hq, hk, d, window in LAYOUTS:
        kc, vc, bt = make_cache(args.batch, args.context, hk, d, bs, dtype, g)
        scale = d ** -0.5
        # decode
        q = torch.randn(args.batch, hq, d, generator=g).to(dtype)
        lens = torch.full((args.batch,), args.context, dtype=torch.int32)
        short = torch.full((args.batch,), window, dtype=torch.int32)
        bt_win = windowed_table(bt, args.context - 1, window, bs)
        t = best_seconds({
            "full": lambda: cpu.decode_attention(q, kc, vc, bt, lens, scale),
            "window": lambda: cpu.decode_attention(q, kc, vc, bt_win, lens, scale, sliding_window=window),
            "floor": lambda: cpu.decode_attention(q, kc, vc, bt, short, scale),
        }, args.repeats)
        t_full, t_win, t_floor = t["full"], t["window"], t["floor"]
        row = {"layout": name, "phase": "decode", "window": window, "full_ms": t_full * 1e3,
               "window_ms": t_win * 1e3, "full_at_window_ms": t_floor * 1e3,
               "full_over_window": t_full / t_win, "window_over_floor": t_win / t_floor}
        results.append(row)
        print(f"{name:<11} decode  B={args.batch}: full {t_full * 1e3:8.2f} ms, window {window} {t_win * 1e3:7.2f} ms "
              f"-> {t_full / t_win:5.1f}x faster; full attention over {window} tokens {t_floor * 1e3:7.2f} ms "
              f"(window at {args.context} / that = {t_win / t_floor:4.2f})", flush=True)
        # prefill: one sequence's 256-token chunk after the rest of its context is cached
        chunk = 256
        qp = torch.randn(chunk, hq, d, generator=g).to(dtype)
        qsl = torch.tensor([0, chunk], dtype=torch.int32)
        bt1, lens1 = bt[:1], lens[:1]
        bt_win = windowed_table(bt1, args.context - chunk, window, bs)
        t = best_seconds({
            "full": lambda: cpu.prefill_attention(qp, kc, vc, bt1, lens1, qsl, scale),
            "window": lambda: cpu.prefill_attention(qp, kc, vc, bt_win, lens1, qsl, scale, sliding_window=window),
        }, max(1, args.repeats // 4))
        t_full, t_win = t["full"], t["window"]
        results.append({"layout": name, "phase": "prefill", "window": window, "full_ms": t_full * 1e3,
                        "window_ms": t_win * 1e3, "full_over_window": t_full / t_win})
        print(f"{name:<11} prefill {chunk}x1: full {t_full * 1e3:8.1f} ms, window {window} {t_win * 1e3:7.1f} ms "
              f"-> {t_full / t_win:5.1f}x faster", flush=True)
        del kc, vc
    return {"context": args.context, "batch": args.batch, "dtype": args.dtype, "rows": results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    res = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
