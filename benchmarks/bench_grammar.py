"""Structured-output costs over the SmolLM2 vocabulary (49152 tokens), against the sampler and the model
step measured in the same run.

    python benchmarks/bench_grammar.py [--rows 16] [--threads 1 2] [--no-model] [--json PATH]

Measured:
- vocabulary build (once per model) and compile time of a new 10-field JSON schema and of a
  128-tool ``tool_choice: "required"`` grammar (Hermes format), first mask included;
- mask computation per token (one matcher walking a real 10-field document token by token) and per
  step for ``--rows`` matchers at once (``fill_next_token_bitmasks``, GIL released);
- mask application to ``rows x 49152`` float32 logits, against the sampler's own time on the same logits
  (greedy and top-p sampling; ``lmrs.runner.sampler.Sampler``), best of 30 runs each;
- with the model (default): the decode step at ``--rows`` sequences and the prefill of a chat prompt, and
  the ratios the issue's targets are about: (step + masks) / step (throughput if masks are not
  overlapped with the forward; overlapped they cost ~0) and (prefill + compile) / prefill (first-request
  TTFT with a new schema, compile not overlapped).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def ten_field_schema(tag: str) -> dict:
    return {
        "type": "object", "description": f"benchmark {tag}",
        "properties": {
            "id": {"type": "integer"}, "name": {"type": "string"}, "email": {"type": "string"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150}, "score": {"type": "number"},
            "active": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
            "role": {"enum": ["admin", "user", "guest"]},
            "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                        "required": ["city", "zip"]},
            "notes": {"type": ["string", "null"]},
        },
        "required": ["id", "name", "email", "age", "score", "active", "tags", "role", "address", "notes"],
        "additionalProperties": False,
    }


def instance(i: int) -> dict:
    rng = random.Random(i)
    first = rng.choice(["Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara"])
    return {"id": 1000 + i, "name": f"{first} {rng.choice(['Lovelace', 'Hopper', 'Torvalds', 'Hamilton'])}",
            "email": f"{first.lower()}{i}@example.com", "age": rng.randint(18, 90),
            "score": round(rng.uniform(0, 100), 2), "active": rng.random() < 0.5,
            "tags": rng.sample(["ml", "systems", "compilers", "databases", "graphics"], k=rng.randint(1, 3)),
            "role": rng.choice(["admin", "user", "guest"]),
            "address": {"city": rng.choice(["Paris", "Lisbon", "Osaka"]), "zip": f"{rng.randint(10000, 99999)}"},
            "notes": None if rng.random() < 0.5 else "prefers email"}


def many_tools(n: int) -> list[dict]:
    props = {f"field_{j}": {"type": ["string", "integer", "boolean", "number"][j % 4]} for j in range(8)}
    return [{"type": "function", "function": {
        "name": f"tool_{i}", "description": f"tool number {i}",
        "parameters": {"type": "object", "properties": {**props, f"mode_{i}": {"enum": ["fast", "slow"]}},
                       "required": ["field_0", "field_1", f"mode_{i}"], "additionalProperties": False}}}
        for i in range(n)]


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def timed_on_copy(logits: torch.Tensor, fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        x = logits.clone()
        t = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t)
    return out


def fake_plan(rows: int, temperature: float, top_p: float):
    f32 = lambda v: np.full(rows, v, dtype=np.float32)  # noqa: E731
    i64 = lambda v: np.full(rows, v, dtype=np.int64)  # noqa: E731
    return SimpleNamespace(temperature=f32(temperature), top_p=f32(top_p), top_k=i64(0), min_p=f32(0.0),
                           seeds=i64(-1), logprobs=i64(-1), min_tokens=i64(0), num_generated=i64(5),
                           history_rows=np.zeros(0, dtype=np.int64), repetition_penalty=f32(1.0),
                           presence_penalty=f32(0.0), frequency_penalty=f32(0.0))


def model_times(rows: int) -> dict:
    """Median decode step with `rows` sequences and the prefill of one chat prompt (float32, CPU)."""
    from lmrs import Engine, SamplingParams
    from lmrs.models.loader import default_model_path, load_model_files

    loaded = load_model_files(default_model_path(), progress=False)
    engine = Engine(loaded=loaded, max_num_seqs=max(16, rows), kv_cache_memory="256MiB", progress=False)
    tk = loaded.tokenizer
    prompt = tk.encode(tk.apply_chat_template(
        [{"role": "user", "content": "Give me a JSON record for a user named Ada with ten fields."}],
        add_generation_prompt=True))
    greedy = SamplingParams(temperature=0, max_tokens=1)
    engine.generate([prompt], greedy)  # warm-up
    prefill = statistics.median(timed(lambda: engine.generate([prompt], greedy), 5))
    le = engine.engine
    for _ in range(rows):
        le.add_request(prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    while any(st.first_token_time is None for st in le.requests.values()):
        le.step()
    steps = []
    for _ in range(16):
        t = time.perf_counter()
        le.step()
        steps.append(time.perf_counter() - t)
    while le.has_unfinished():
        le.step()
    return {"prefill_s": prefill, "decode_step_s": statistics.median(steps), "prompt_tokens": len(prompt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-model", action="store_true", help="skip the model step and prefill")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from lmrs import _core
    from lmrs.models.loader import default_model_path
    from lmrs.models.tokenizer import Tokenizer
    from lmrs.runner.sampler import Sampler
    from lmrs.structured import GrammarCompiler, json_schema_spec
    from lmrs.structured.masks import allocate_token_bitmask, apply_token_bitmask_
    from lmrs.tools import get_tool_parser, plan_tools

    res: dict = {"torch_threads": torch.get_num_threads(), "rows": args.rows}
    tk = Tokenizer.from_gguf(default_model_path())
    t = time.perf_counter()
    compiler = GrammarCompiler.for_tokenizer(tk)
    res["vocab_build_s"] = time.perf_counter() - t
    vocab = compiler.vocab.vocab_size

    tag = f"{time.time_ns()}"
    spec = json_schema_spec(ten_field_schema(tag), "response_format.json_schema.schema")
    t = time.perf_counter()
    grammar = compiler.compile(spec)
    res["compile_10_field_s"] = time.perf_counter() - t
    plan = plan_tools(many_tools(128), "required", None, parser=get_tool_parser("hermes"))
    t = time.perf_counter()
    compiler.compile(plan.grammar, timeout_s=600)
    res["compile_128_tools_s"] = time.perf_counter() - t

    # one matcher, token by token through a real document
    doc = tk.encode(json.dumps(instance(0))) + [tk.eos_token_ids[0]]
    mask = allocate_token_bitmask(1, vocab).numpy()
    per_token = []
    for rep in range(3):
        m = grammar.matcher()
        for tok in doc:
            t = time.perf_counter()
            m.fill_next_token_bitmask(mask, 0)
            per_token.append(time.perf_counter() - t)
            m.commit(tok)
    res["mask_per_token_us"] = {"median": 1e6 * statistics.median(per_token),
                                "mean": 1e6 * statistics.fmean(per_token),
                                "p99": 1e6 * float(np.percentile(per_token, 99)), "doc_tokens": len(doc)}

    # `rows` matchers at different documents and positions, one step = fill all rows + commit
    docs = [tk.encode(json.dumps(instance(i))) for i in range(args.rows)]
    batch = allocate_token_bitmask(args.rows, vocab)
    for threads in args.threads:
        matchers = [grammar.matcher() for _ in range(args.rows)]
        pos = [i % 7 for i in range(args.rows)]
        for m, d, p in zip(matchers, docs, pos):
            m.commit_tokens(d[:p])
        steps = []
        for _ in range(min(len(d) for d in docs) - 8):
            t = time.perf_counter()
            _core.fill_next_token_bitmasks(matchers, batch.numpy(), list(range(args.rows)), threads=threads)
            steps.append(time.perf_counter() - t)
            for i, m in enumerate(matchers):
                m.commit(docs[i][pos[i]])
                pos[i] += 1
        res[f"masks_{args.rows}_rows_threads_{threads}_ms"] = 1e3 * statistics.median(steps)
        res[f"masks_{args.rows}_rows_threads_{threads}_ms_p99"] = 1e3 * float(np.percentile(steps, 99))

    # mask application vs the sampler on the same logits
    logits = torch.randn(args.rows, vocab)
    sampler = Sampler(tk.eos_token_ids, seed=0)
    greedy_plan, topp_plan = fake_plan(args.rows, 0.0, 1.0), fake_plan(args.rows, 0.7, 0.9)
    # best of 30 on fresh copies of the logits (a shared machine's noise only adds time)
    res["apply_mask_ms"] = 1e3 * min(timed_on_copy(logits, lambda x: apply_token_bitmask_(x, batch), 30))
    res["sampler_greedy_ms"] = 1e3 * min(timed_on_copy(logits, lambda x: sampler(x, greedy_plan), 30))
    res["sampler_top_p_ms"] = 1e3 * min(timed_on_copy(logits, lambda x: sampler(x, topp_plan), 30))

    if not args.no_model:
        res.update(model_times(args.rows))
    compiler.close()

    masks_ms = min(res[f"masks_{args.rows}_rows_threads_{t}_ms"] for t in args.threads)
    print(f"torch threads {res['torch_threads']}; vocabulary {vocab} tokens, built in {res['vocab_build_s']:.2f} s")
    print(f"compile: 10-field schema {1e3 * res['compile_10_field_s']:.1f} ms, "
          f"128-tool required grammar {1e3 * res['compile_128_tools_s']:.1f} ms")
    mt = res["mask_per_token_us"]
    print(f"mask per token (1 matcher, {mt['doc_tokens']}-token document): median {mt['median']:.0f} us, "
          f"mean {mt['mean']:.0f} us, p99 {mt['p99']:.0f} us")
    for threads in args.threads:
        print(f"masks for {args.rows} rows, {threads} thread(s): "
              f"{res[f'masks_{args.rows}_rows_threads_{threads}_ms']:.2f} ms per step (median), "
              f"p99 {res[f'masks_{args.rows}_rows_threads_{threads}_ms_p99']:.2f} ms")
    print(f"apply masks to {args.rows}x{vocab} logits: {res['apply_mask_ms']:.2f} ms; sampler: greedy "
          f"{res['sampler_greedy_ms']:.2f} ms, top-p {res['sampler_top_p_ms']:.2f} ms -> apply / sampler = "
          f"{res['apply_mask_ms'] / res['sampler_greedy_ms']:.2f}x (greedy), "
          f"{res['apply_mask_ms'] / res['sampler_top_p_ms']:.3f}x (top-p)")
    if not args.no_model:
        step, prefill = res["decode_step_s"], res["prefill_s"]
        extra = (masks_ms + res["apply_mask_ms"]) / 1e3
        print(f"model: decode step at {args.rows} rows {1e3 * step:.1f} ms, prefill of a "
              f"{res['prompt_tokens']}-token chat prompt {1e3 * prefill:.1f} ms")
        print(f"ratios: constrained/unconstrained throughput, masks not overlapped = "
              f"{step / (step + extra):.3f}x (overlapped with the forward: "
              f"{step / (step + res['apply_mask_ms'] / 1e3):.3f}x); "
              f"first-request TTFT with a new 10-field schema = {(prefill + res['compile_10_field_s']) / prefill:.2f}x")
        res["throughput_ratio_not_overlapped"] = step / (step + extra)
        res["ttft_ratio_new_schema"] = (prefill + res["compile_10_field_s"]) / prefill
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
