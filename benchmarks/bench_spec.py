"""Speculative decoding (n-gram drafts, or a draft model) against plain decoding: output tokens/s, same process, same
prompts, runs interleaved (the machine is shared: each repeat runs both engines back to back, the
order alternating).

    python benchmarks/bench_spec.py                      # copy c=1, chat c=1, chat c=32
    python benchmarks/bench_spec.py --repeats 3 --output-len 128 --sweep 4,8,16
    python benchmarks/bench_spec.py --json out.json
    python benchmarks/bench_spec.py --kernel-threads 1   # one thread per kernel call (a loaded machine)
    python benchmarks/bench_spec.py --draft-layers 2,4 --skip-ngram   # draft model: SmolLM2's first N layers

Workloads (greedy, SmolLM2-135M-Instruct, the served defaults: bfloat16 with the small-batch twins):
- copy: code editing, the output copies spans of the prompt ("add a docstring to each function,
  return the complete code", the code in a fenced block), one request at a time;
- chat: open questions, one at a time;
- chat c=32: 32 different questions at once (speculation is switched off above
  `spec_max_decode_rows` running sequences, so this measures the cost of the switch itself);
- --sweep: chat at each concurrency with the switch disabled, to place the threshold;
- --draft-layers N,...: a draft model (`speculative_model`), a layer-truncated copy of the target
  (its first N of 30 layers, same weights and tokenizer), on copy and chat at c=1.
Each timed run uses prompts of its own (never a cached prefix); generation stops at EOS or
--output-len, and the ratio is of output tokens per second (both engines produce the same text up
to bfloat16 rounding, so the same work). Acceptance rates are from the engine's counters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from lmrs import Engine, SamplingParams

FUNCS = ["parse_header", "load_rows", "merge_counts", "format_table", "check_limits", "read_config",
         "write_report", "split_words", "score_items", "find_pairs", "clean_text", "group_by_key"]
QUESTIONS = ["What is the capital of France?", "Explain photosynthesis briefly.", "Write a haiku about rain.",
             "Why is the sky blue?", "Give three tips for learning to cook.", "What is a prime number?",
             "Describe a cat to someone who has never seen one.", "How do airplanes fly?",
             "Name some uses of copper.", "What causes the seasons?", "Suggest a name for a bakery.",
             "How does a refrigerator work?", "What is the difference between weather and climate?",
             "Write a short poem about the moon.", "Why do we sleep?", "What is an atom?",
             "Give advice for a first job interview.", "How do bees make honey?", "What is inflation?",
             "Describe the water cycle.", "What are the planets of the solar system?", "How do vaccines work?",
             "What is a good breakfast?", "Explain gravity to a child.", "Why do leaves change colour?",
             "What is the tallest mountain?", "How do I tie a tie?", "What is machine learning?",
             "Why is exercise healthy?", "What are clouds made of?", "Tell me about the Roman Empire.",
             "How do magnets work?", "What is a volcano?", "Suggest a weekend hobby.", "What is democracy?",
             "How do fish breathe?", "Write a limerick about a dog.", "What is the speed of light?"]


def code_prompt(tok, i: int) -> list[int]:
    """A code-editing request whose answer copies most of the prompt."""
    names = [FUNCS[(i + j) % len(FUNCS)] for j in range(4)]
    body = "\n\n".join(f"def {n}(data, limit={10 + j}):\n    result = []\n    for item in data:\n"
                       f"        if len(result) >= limit:\n            break\n        result.append(item)\n"
                       f"    return result" for j, n in enumerate(names))
    # SmolLM2-135M answers "rename ... and return the whole file" with prose about pandas (it copied
    # nothing: 1.5 tokens a step even with perfect drafts); a fenced block and this request it copies
    msg = f"Add a one-line docstring to each function below. Return the complete code.\n\n```python\n{body}\n```"
    return tok.encode_chat([{"role": "user", "content": msg}])


def chat_prompt(tok, i: int) -> list[int]:
    return tok.encode_chat([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])


def timed(engine: Engine, prompts: list[list[int]], out_len: int) -> tuple[int, float, dict]:
    before = engine.stats()
    t0 = time.perf_counter()
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=out_len))
    dt = time.perf_counter() - t0
    after = engine.stats()
    spec = {k: after[k] - before[k] for k in ("spec_decode_num_drafts", "spec_decode_num_draft_tokens",
                                              "spec_decode_num_accepted_tokens")}
    return sum(len(o.outputs[0].token_ids) for o in outs), dt, spec


def compare(name: str, plain: Engine, spec: Engine, make, conc: int, repeats: int, out_len: int,
            offset: int) -> dict:
    tok = plain.tokenizer
    rates = {"plain": [], "spec": []}
    drafts = accepted = rows = 0
    for r in range(repeats):
        prompts = [make(tok, offset + r * conc + j) for j in range(conc)]
        order = [("plain", plain), ("spec", spec)] if r % 2 == 0 else [("spec", spec), ("plain", plain)]
        for label, eng in order:
            n, dt, st = timed(eng, prompts, out_len)
            rates[label].append(n / dt)
            if label == "spec":
                drafts += st["spec_decode_num_draft_tokens"]
                accepted += st["spec_decode_num_accepted_tokens"]
                rows += st["spec_decode_num_drafts"]
    ratios = [s / p for s, p in zip(rates["spec"], rates["plain"])]
    row = {"workload": name, "concurrency": conc,
           "plain_tok_s": round(statistics.median(rates["plain"]), 1),
           "spec_tok_s": round(statistics.median(rates["spec"]), 1),
           "ratio": round(statistics.median(ratios), 2), "ratio_min": round(min(ratios), 2),
           "ratio_max": round(max(ratios), 2),
           "acceptance": round(accepted / drafts, 3) if drafts else None,
           "tokens_per_verified_step": round((accepted + rows) / rows, 2) if rows else None}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--sweep", default="", help="comma-separated concurrencies for chat with the switch off")
    ap.add_argument("--skip-c32", action="store_true")
    ap.add_argument("--skip-ngram", action="store_true", help="no n-gram runs (with --draft-layers)")
    ap.add_argument("--draft-layers", default="", help="comma-separated: draft models of the target's first N layers")
    ap.add_argument("--kernel-threads", type=int, default=0,
                    help="threads of lmrs's CPU kernels (lmrs.kernels.cpu.THREADS; 0: all CPUs)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import lmrs.kernels.cpu as cpu_kernels

    cpu_kernels.THREADS = args.kernel_threads
    common = dict(dtype=args.dtype, progress=False, max_num_seqs=64)
    plain = Engine(**common)
    warm = [chat_prompt(plain.tokenizer, 10_000), code_prompt(plain.tokenizer, 10_000)]
    plain.generate(warm, SamplingParams(temperature=0, max_tokens=16))  # untimed warm-up on prompts never timed
    rows = []
    for n in (int(x) for x in args.draft_layers.split(",") if x):
        drafted = draft_engine(common, n, args.k)
        drafted.generate(warm, SamplingParams(temperature=0, max_tokens=16))
        rows.append(compare(f"copy, draft {n} layers", plain, drafted, code_prompt, 1, args.repeats, args.output_len, 0))
        rows.append(compare(f"chat, draft {n} layers", plain, drafted, chat_prompt, 1, args.repeats, args.output_len, 0))
        drafted.close()
    if args.skip_ngram:
        return report(rows, args.json)
    spec = Engine(**common, speculative_method="ngram", num_speculative_tokens=args.k)
    spec.generate(warm, SamplingParams(temperature=0, max_tokens=16))
    rows += [compare("copy (code edit)", plain, spec, code_prompt, 1, args.repeats, args.output_len, 0),
             compare("chat", plain, spec, chat_prompt, 1, args.repeats, args.output_len, 0)]
    if not args.skip_c32:
        rows.append(compare("chat", plain, spec, chat_prompt, 32, max(2, args.repeats - 1), args.output_len, 100))
    if args.sweep:
        nolimit = Engine(**common, speculative_method="ngram", num_speculative_tokens=args.k, spec_max_decode_rows=0)
        nolimit.generate(warm, SamplingParams(temperature=0, max_tokens=16))
        for c in (int(x) for x in args.sweep.split(",")):
            r = compare("chat, switch off", plain, nolimit, chat_prompt, c, 2, args.output_len, 1000 + 50 * c)
            rows.append(r)
            r = compare("copy, switch off", plain, nolimit, code_prompt, c, 2, args.output_len, 2000 + 50 * c)
            rows.append(r)
    report(rows, args.json)


def draft_engine(common: dict, layers: int, k: int) -> Engine:
    """The target with a draft model: its own first `layers` layers (loaded like the target's)."""
    from lmrs.engine.loading import gguf_weights_mode
    from lmrs.engine.config import EngineConfig
    from lmrs.models.loader import default_model_path, load_model_files
    from lmrs.models.testing_draft import truncated_model

    cfg = EngineConfig(**common)
    full = load_model_files(default_model_path(), progress=False, gguf_weights=gguf_weights_mode(cfg, "cpu"))
    return Engine(**common, draft_loaded=truncated_model(full, layers), num_speculative_tokens=k)


def report(rows: list[dict], json_path: str | None) -> None:
    print("\n| workload | concurrency | plain tok/s | spec tok/s | ratio (min-max) | acceptance | tokens/verified row |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['workload']} | {r['concurrency']} | {r['plain_tok_s']} | {r['spec_tok_s']} | "
              f"{r['ratio']}x ({r['ratio_min']}-{r['ratio_max']}) | {r['acceptance']} | {r['tokens_per_verified_step']} |")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
