"""How long a /generate stream stalls while a large /v1/embeddings call runs.

    python benchmarks/bench_embedding_stall.py                 # starts `python -m lmrs.serve` (default model)
    python benchmarks/bench_embedding_stall.py --url http://127.0.0.1:23333   # an already running server
    python benchmarks/bench_embedding_stall.py --check-vectors # also compare with one forward pass per input

One greedy stream runs; after a few seconds of steady decoding, a /v1/embeddings call with
`--inputs` inputs of about `--tokens` tokens each is sent. It prints the stream's gaps between
chunks before the call (median, worst) and during it (worst, and how many chunks arrived), the
call's duration and throughput, and the worst gap as a ratio of the median gap before the call.
With --check-vectors, the largest difference between each returned vector and the model's final
hidden states of one plain forward pass over that input (in this process, same dtype), mean-
pooled and normalized: what /v1/embeddings returned before it went through the scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
SENTENCE = "The lighthouse keeper counted the waves and wrote each number in a small book. "


def make_inputs(tok, n: int, tokens: int) -> list[str]:
    """n different texts of about `tokens` tokens each."""
    out = []
    for i in range(n):
        text = f"Entry {i}. "
        while len(tok.encode(text + SENTENCE)) <= tokens:
            text += SENTENCE
        out.append(text)
    return out


def start_server(args) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from server_utils import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "lmrs.serve", "--server-name", "127.0.0.1", "--server-port", str(port),
           "--no-progress", *args.server_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        time.sleep(0.5)
    raise SystemExit("the server did not become healthy")


def stream(url: str, stamps: list, stop: threading.Event, started: threading.Event) -> None:
    body = {"prompt": "Write a very long story about a lighthouse and the sea.", "stream": True,
            "request_output_len": 100000, "ignore_eos": True, "temperature": 0}
    with requests.post(url + "/generate", json=body, stream=True, timeout=600) as r:
        for line in r.iter_lines(delimiter=b"\n"):
            if line:
                stamps.append(time.monotonic())
                started.set()
                if json.loads(line).get("finish_reason") or stop.is_set():
                    return


def gaps(stamps: list[float], t0: float, t1: float) -> list[float]:
    inside = [s for s in stamps if t0 <= s <= t1]
    pts = [max((s for s in stamps if s < t0), default=t0)] + inside
    after = [s for s in stamps if s > t1]
    if after:
        pts.append(after[0])  # the first chunk after the call closes the last gap
    return [b - a for a, b in zip(pts, pts[1:])]


def reference_vectors(texts: list[str], dtype: str):
    import numpy as np
    import torch

    from lmrs import Engine
    from lmrs.models.attention_metadata import AttentionMetadata
    from lmrs.runner.kv_cache import KVCache

    eng = Engine(dtype=dtype, kv_cache_memory="64MiB", progress=False)
    runner = eng.engine.runner
    model = runner.model
    bs = runner.kv_cache.block_size
    out = []
    for t in texts:
        ids = eng.encode(t)
        n, nb = len(ids), (len(ids) + bs - 1) // bs
        cfg = model.config
        scratch = KVCache(cfg.num_hidden_layers, nb + 1, bs, model.num_kv_heads, cfg.head_dim, model.dtype,
                          model.device)
        attn = AttentionMetadata(slot_mapping=torch.arange(bs, bs + n, dtype=torch.int32),
                                 block_table=torch.arange(1, nb + 1, dtype=torch.int32).unsqueeze(0),
                                 seq_lens=torch.tensor([n], dtype=torch.int32),
                                 query_start_loc=torch.tensor([0, n], dtype=torch.int32),
                                 num_decode_rows=1 if n == 1 else 0, max_query_len=n, max_seq_len=n)
        with torch.inference_mode():
            h = model.forward(torch.tensor(ids, dtype=torch.int32), torch.arange(n, dtype=torch.int32), attn,
                              scratch.layers).float()
        v = h.mean(dim=0)
        out.append((v / v.norm().clamp(min=1e-12)).numpy())
    return np.stack(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="an lmrs server already running (default: start one with the default model)")
    p.add_argument("--inputs", type=int, default=32)
    p.add_argument("--tokens", type=int, default=225)
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of decoding before the call")
    p.add_argument("--check-vectors", action="store_true")
    p.add_argument("--dtype", default="bfloat16", help="the served dtype (for --check-vectors)")
    p.add_argument("server_args", nargs="*", help="extra flags for the started server (after --)")
    args = p.parse_args(argv)

    from lmrs.models.loader import default_model_path
    from lmrs.models.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(default_model_path())
    texts = make_inputs(tok, args.inputs, args.tokens)
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    try:
        stamps, stop, started = [], threading.Event(), threading.Event()
        th = threading.Thread(target=stream, args=(url, stamps, stop, started), daemon=True)
        th.start()
        if not started.wait(300):
            raise SystemExit("the stream produced nothing")
        time.sleep(args.warmup)
        t_warm = stamps[0]
        t0 = time.monotonic()
        r = requests.post(url + "/v1/embeddings", json={"input": texts}, timeout=900)
        t1 = time.monotonic()
        time.sleep(1.0)
        stop.set()
        th.join(60)
        r.raise_for_status()
        body = r.json()
        before = gaps(stamps, t_warm, t0)[1:-1] or [float("nan")]
        during = gaps(stamps, t0, t1)
        n_tok = body["usage"]["prompt_tokens"]
        med = statistics.median(before)
        print(f"server: {url}   inputs: {len(texts)} x ~{n_tok // len(texts)} tokens ({n_tok} tokens)")
        print(f"stream before the call: median gap {med * 1000:.0f} ms, worst {max(before) * 1000:.0f} ms "
              f"({len(before)} gaps)")
        print(f"embeddings call: {t1 - t0:.2f} s ({n_tok / (t1 - t0):.0f} tokens/s)")
        print(f"stream during the call: worst gap {max(during) * 1000:.0f} ms over {len(during)} gaps "
              f"= {max(during) / med:.1f}x the median gap before it")
        if args.check_vectors:
            import numpy as np

            got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
            want = reference_vectors(texts, args.dtype)
            print(f"vectors vs one forward pass per input ({args.dtype}): max |diff| {np.abs(got - want).max():.2e}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
