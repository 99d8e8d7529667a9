"""Structured output and tool calls on a running lmrs server, each figure a ratio against its own
unconstrained baseline measured in the same run (issue 14's targets).

    python benchmarks/bench_structured.py [--base-url URL] [--quick] [--json PATH]

Without ``--base-url`` it starts ``python -m lmrs.serve --tool-call-parser hermes`` on a free port (the
embedded SmolLM2-135M-Instruct) and stops it at the end.

1. Output tok/s of chat requests with a 10-field JSON schema on every request vs the same workload
   unconstrained (``ignore_eos``, same ``max_tokens``), at concurrency 16 and 1 (target >= 0.85x / 0.9x).
2. Time to first token of the first request with a new 10-field schema (a cache miss: compile on the
   request's path) vs an unconstrained request (target <= 1.5x); median of several schemas.
3. The longest gap between chunks of other streams in the 3 s after a 128-tool ``tool_choice:
   "required"`` request (new tools: uncached compile) is submitted, against the longest gap in the 3 s
   before it (target: <= 250 ms added).
4. Outputs under each of 5 schemas validated with ``jsonschema`` (200 each; ``--quick``: 20).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import time

import aiohttp
import jsonschema

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from bench_grammar import ten_field_schema  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a JSON record of a user of a web service."}]
# per validity output: the 5 schemas' objects are 2 fields, median 15-30 tokens in the compact layout
# (numbers bounded, strings up to maxLength; the longest seen 75): not a budget that hides runaways
VALIDITY_MAX_TOKENS = 96

VALIDITY_SCHEMAS = {
    "person": {"type": "object", "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 16},
                                                "age": {"type": "integer", "minimum": 0, "maximum": 120}},
               "required": ["name", "age"], "additionalProperties": False},
    "enum_bool": {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
                                                   "bright": {"type": "boolean"}},
                  "required": ["colour", "bright"], "additionalProperties": False},
    "int_array": {"type": "object", "properties": {"values": {"type": "array", "items": {"type": "integer",
                                                                                          "minimum": 0,
                                                                                          "maximum": 999},
                                                              "minItems": 2, "maxItems": 4}},
                  "required": ["values"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {"point": {"type": "object", "properties": {
        "x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"], "additionalProperties": False},
        "label": {"type": ["string", "null"], "maxLength": 10}},
        "required": ["point", "label"], "additionalProperties": False},
    "pattern": {"type": "object", "properties": {"date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"},
                                                 "code": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"}},
                "required": ["date", "code"], "additionalProperties": False},
}


def tools_128(tag: str) -> list[dict]:
    tools = []
    for i in range(128):
        kinds = [{"type": "string", "maxLength": 12}, {"type": "integer", "minimum": 0, "maximum": 9999},
                 {"type": "boolean"}]
        props = {f"p{j}": kinds[j % 3] for j in range(4)}
        tools.append({"type": "function", "function": {
            "name": f"tool_{tag}_{i}", "description": f"Benchmark tool {i} ({tag})",
            "parameters": {"type": "object", "properties": props, "required": list(props),
                           "additionalProperties": False}}})
    return tools


class Client:
    def __init__(self, url: str, session: aiohttp.ClientSession):
        self.url, self.session = url, session

    async def chat(self, body: dict, on_chunk=None) -> dict:
        """Stream a chat completion; returns ttft, end time, text, tool-call argument text, tokens."""
        body = {"model": None, "messages": PROMPT, "stream": True, "stream_options": {"include_usage": True}, **body}
        body = {k: v for k, v in body.items() if v is not None}
        t0 = time.perf_counter()
        out = {"ttft": None, "text": "", "args": "", "tokens": 0, "finish": None, "start": t0}
        async with self.session.post(self.url + "/v1/chat/completions", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
            async for line in r.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                c = json.loads(line[6:])
                if c.get("usage"):
                    out["tokens"] = c["usage"]["completion_tokens"]
                for ch in c.get("choices", []):
                    d = ch.get("delta", {})
                    got = d.get("content") or d.get("tool_calls")
                    if got and out["ttft"] is None:
                        out["ttft"] = time.perf_counter() - t0
                    if got and on_chunk is not None:
                        on_chunk(time.perf_counter())
                    out["text"] += d.get("content") or ""
                    for tc in d.get("tool_calls") or []:
                        out["args"] += tc.get("function", {}).get("arguments") or ""
                    if ch.get("finish_reason"):
                        out["finish"] = ch["finish_reason"]
        out["end"] = time.perf_counter()
        return out


def schema_format(schema: dict, name: str = "record") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


async def throughput(client: Client, conc: int, n: int, max_tokens: int, constrained: bool) -> dict:
    fmt = schema_format(ten_field_schema("throughput")) if constrained else None
    sem = asyncio.Semaphore(conc)

    async def one(i):
        async with sem:
            return await client.chat({"max_tokens": max_tokens, "temperature": 1.0, "seed": i,
                                      "ignore_eos": not constrained, "response_format": fmt})

    t0 = time.perf_counter()
    outs = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    tokens = sum(o["tokens"] for o in outs)
    return {"tok_s": tokens / wall, "tokens": tokens, "wall_s": wall}


async def ttft(client: Client, reps: int) -> dict:
    free, new = [], []
    for i in range(reps):
        free.append((await client.chat({"max_tokens": 2, "temperature": 0.0}))["ttft"])
        tag = f"ttft-{os.getpid()}-{time.time_ns()}-{i}"
        new.append((await client.chat({"max_tokens": 2, "temperature": 0.0,
                                        "response_format": schema_format(ten_field_schema(tag))}))["ttft"])
    return {"unconstrained_ms": statistics.median(free) * 1e3, "new_schema_ms": statistics.median(new) * 1e3}


async def stall(client: Client, streams: int, max_tokens: int = 160, window: float = 3.0) -> dict:
    """Other streams' longest inter-chunk gap in the `window` seconds after a 128-tool request is
    submitted (parse, plan, compile, admission, first steps) vs the same length of time just before."""
    stamps: list[list[float]] = [[] for _ in range(streams)]
    bg = [asyncio.ensure_future(client.chat({"max_tokens": max_tokens, "ignore_eos": True, "temperature": 1.0},
                                            on_chunk=stamps[i].append)) for i in range(streams)]
    while min(len(s) for s in stamps) < 5:
        await asyncio.sleep(0.05)
    await asyncio.sleep(window)
    t_submit = time.perf_counter()
    tag = str(time.time_ns() % 100_000)
    big = await client.chat({"max_tokens": 96, "temperature": 0.0, "tools": tools_128(tag),
                             "tool_choice": "required", "parallel_tool_calls": False})
    await asyncio.gather(*bg)

    def max_gap(lo, hi):
        gaps = [b - a for s in stamps for a, b in zip(s, s[1:]) if lo <= b and a <= hi]
        return max(gaps) if gaps else 0.0

    base = max_gap(t_submit - window, t_submit)
    during = max_gap(t_submit, t_submit + window)
    return {"window_s": window, "baseline_max_gap_ms": base * 1e3, "max_gap_during_ms": during * 1e3,
            "added_ms": max(0.0, during - base) * 1e3, "tool_request_s": big["end"] - big["start"],
            "tool_call_valid": big["finish"] == "tool_calls"}


async def validity(client: Client, count: int, conc: int, schemas=None) -> dict:
    sem = asyncio.Semaphore(conc)
    results = {}

    async def one(schema, i):
        async with sem:
            o = await client.chat({"max_tokens": VALIDITY_MAX_TOKENS, "temperature": 1.0, "seed": i,
                                   "response_format": schema_format(schema)})
        try:
            jsonschema.validate(json.loads(o["text"]), schema)
            return o, None
        except (ValueError, jsonschema.ValidationError) as e:
            return o, {"seed": i, "finish_reason": o["finish"], "tokens": o["tokens"], "text": o["text"],
                       "error": str(e).splitlines()[0][:200]}

    for name in schemas or VALIDITY_SCHEMAS:
        schema = VALIDITY_SCHEMAS[name]
        outs = await asyncio.gather(*(one(schema, i) for i in range(count)))
        bad = [f for _, f in outs if f is not None]
        tokens = sorted(o["tokens"] for o, _ in outs)
        # an invalid output is reported with its finish reason: "length" is an output cut off by max_tokens
        results[name] = {"valid": count - len(bad), "total": count,
                         "cut_off": sum(f["finish_reason"] == "length" for f in bad),
                         "finish_reasons": dict(collections.Counter(o["finish"] for o, _ in outs)),
                         "tokens_median": statistics.median(tokens), "tokens_max": tokens[-1], "invalid": bad[:5]}
    return results


async def main_async(args) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        client = Client(args.base_url, session)
        await client.chat({"max_tokens": 2, "response_format": schema_format(ten_field_schema("warm"))})  # warm-up
        res = {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg()[0], "quick": args.quick}
        n16 = 16 if args.quick else 48
        parts = set(args.parts)
        for conc, n in ((16, n16), (1, 2 if args.quick else 8)) if "throughput" in parts else ():
            free = await throughput(client, conc, n, args.max_tokens, False)
            con = await throughput(client, conc, n, args.max_tokens, True)
            res[f"throughput_c{conc}"] = {"unconstrained": free, "schema": con,
                                          "ratio": con["tok_s"] / free["tok_s"]}
            print(f"c={conc}: unconstrained {free['tok_s']:.1f} tok/s, 10-field schema {con['tok_s']:.1f} tok/s, "
                  f"ratio {con['tok_s'] / free['tok_s']:.3f}", flush=True)
        if "ttft" not in parts:
            return await _rest(client, args, res, parts)
        t = await ttft(client, 3 if args.quick else 7)
        t["ratio"] = t["new_schema_ms"] / t["unconstrained_ms"]
        res["ttft"] = t
        print(f"TTFT: unconstrained {t['unconstrained_ms']:.0f} ms, new 10-field schema {t['new_schema_ms']:.0f} ms, "
              f"ratio {t['ratio']:.3f}", flush=True)
        return await _rest(client, args, res, parts)


async def _rest(client: Client, args, res: dict, parts: set) -> dict:
    if "stall" in parts:
        s = await stall(client, 4, 100 if args.quick else 160)
        res["stall_128_tools"] = s
        print(f"128-tool required request: other streams' longest gap in the {s['window_s']:g} s after it was "
              f"submitted {s['max_gap_during_ms']:.0f} ms vs {s['baseline_max_gap_ms']:.0f} ms in the {s['window_s']:g} s "
              f"before (added {s['added_ms']:.0f} ms); the request took {s['tool_request_s']:.1f} s, valid call: "
              f"{s['tool_call_valid']}", flush=True)
    if "validity" in parts:
        v = await validity(client, args.count or (20 if args.quick else 200), 16, args.schemas)
        res["validity"] = v
        print("validity: " + ", ".join(f"{k} {x['valid']}/{x['total']} ({x['cut_off']} cut off by max_tokens; "
                                       f"finish {x['finish_reasons']}; tokens median {x['tokens_median']:g}, "
                                       f"max {x['tokens_max']})" for k, x in v.items()), flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default=None, help="a running server (default: start one)")
    ap.add_argument("--quick", action="store_true", help="fewer requests (20 outputs per schema, 2 at concurrency 1)")
    ap.add_argument("--count", type=int, default=None, help="outputs per validity schema (default 200, quick 20)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per throughput request")
    ap.add_argument("--server-args", default="", help="extra arguments of the started server")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--parts", nargs="+", default=["throughput", "ttft", "stall", "validity"],
                    choices=["throughput", "ttft", "stall", "validity"], help="what to measure")
    ap.add_argument("--schemas", nargs="+", default=None, choices=list(VALIDITY_SCHEMAS),
                    help="validity: only these schemas")
    args = ap.parse_args(argv)
    srv = None
    if args.base_url is None:
        from server_utils import ServerProcess

        srv = ServerProcess("--tool-call-parser", "hermes", *args.server_args.split(), timeout=600)
        args.base_url = srv.url
    try:
        res = asyncio.run(main_async(args))
    finally:
        if srv is not None:
            srv.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
