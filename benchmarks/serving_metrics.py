"""Metrics of a serving benchmark run (bench_serving.py): throughput, TTFT / TPOT / ITL / E2EL
statistics in the field names of vLLM's `bench serve`, the printed report and the summary table."""

from __future__ import annotations

import math
import statistics

METRICS = ("ttft", "tpot", "itl", "e2el")
def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _pword(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def calc_metrics(inputs: list[int], outputs: list, duration: float, percentiles: list[float]) -> dict:
    ok = [o for o in outputs if o.success]
    input_lens = [o.prompt_tokens if o.prompt_tokens is not None else i for i, o in zip(inputs, outputs)]
    out_lens = [o.output_tokens if o.success else 0 for o in outputs]
    total_in = sum(input_lens[i] for i, o in enumerate(outputs) if o.success)
    total_out = sum(out_lens)
    vals = {
        "ttft": [o.ttft for o in ok],
        "tpot": [(o.latency - o.ttft) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1],
        "itl": [x for o in ok for x in o.itl],
        "e2el": [o.latency for o in ok],
    }
    # peak output tokens/s and concurrency over 1-second windows
    peak_tps, peak_conc = 0.0, 0
    if ok:
        t0 = min(o.start for o in outputs)
        bins: dict[int, int] = {}
        for o in ok:
            for t, n in o.token_times:
                bins[int(t - t0)] = bins.get(int(t - t0), 0) + n
        peak_tps = float(max(bins.values())) if bins else 0.0
        events = sorted([(o.start, 1) for o in ok] + [(o.start + o.latency, -1) for o in ok])
        cur = 0
        for _, d in events:
            cur += d
            peak_conc = max(peak_conc, cur)
    res = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(outputs) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration if duration > 0 else 0.0,
        "request_goodput": None,
        "output_throughput": total_out / duration if duration > 0 else 0.0,
        "total_token_throughput": (total_in + total_out) / duration if duration > 0 else 0.0,
        "max_output_tokens_per_s": peak_tps,
        "max_concurrent_requests": peak_conc,
        "input_lens": input_lens,
        "output_lens": out_lens,
        "ttfts": [o.ttft for o in outputs],
        "itls": [o.itl for o in outputs],
        "generated_texts": [o.text for o in outputs],
        "errors": [o.error for o in outputs],
        # every request with ignore_eos must return exactly the tokens it asked for; a server that stops
        # early (or runs long) would otherwise look faster (or slower) than it is
        "output_len_mismatches": [[i, o.expected_tokens, o.output_tokens] for i, o in enumerate(outputs)
                                  if o.success and o.expected_tokens and o.output_tokens != o.expected_tokens],
        "output_tokens_counted_by": sorted({o.counted_by for o in ok if o.counted_by}),
    }
    for m in METRICS:
        v = [x * 1000.0 for x in vals[m]]
        res[f"mean_{m}_ms"] = statistics.fmean(v) if v else 0.0
        res[f"median_{m}_ms"] = statistics.median(v) if v else 0.0
        res[f"std_{m}_ms"] = statistics.pstdev(v) if len(v) > 1 else 0.0
        for p in percentiles:
            res[f"p{_pword(p)}_{m}_ms"] = _pct(v, p)
    return res


def print_result(r: dict, percentiles: list[float]) -> None:
    w = 50
    title = f" Serving Benchmark Result ({r['label']}) "
    print(title.center(w, "="))
    rows = [("Backend / endpoint:", f"{r['backend']} {r['endpoint']}"),
            ("Dataset:", r["dataset_name"]),
            ("Traffic request rate:", r["request_rate"]),
            ("Max request concurrency:", r["max_concurrency"]),
            ("Successful requests:", r["completed"]),
            ("Failed requests:", r["failed"]),
            ("Benchmark duration (s):", f"{r['duration']:.2f}"),
            ("Total input tokens:", r["total_input_tokens"]),
            ("Total generated tokens:", r["total_output_tokens"]),
            ("Request throughput (req/s):", f"{r['request_throughput']:.2f}"),
            ("Output token throughput (tok/s):", f"{r['output_throughput']:.2f}"),
            ("Peak output token throughput (tok/s):", f"{r['max_output_tokens_per_s']:.2f}"),
            ("Total Token throughput (tok/s):", f"{r['total_token_throughput']:.2f}")]
    for k, v in rows:
        print(f"{k:<40}{v!s:<10}")
    names = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
             "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}
    for m in METRICS:
        print(names[m].center(w, "-"))
        print(f"{'Mean ' + m.upper() + ' (ms):':<40}{r[f'mean_{m}_ms']:<10.2f}")
        print(f"{'Median ' + m.upper() + ' (ms):':<40}{r[f'median_{m}_ms']:<10.2f}")
        for p in percentiles:
            print(f"{'P' + _pword(p) + ' ' + m.upper() + ' (ms):':<40}{r[f'p{_pword(p)}_{m}_ms']:<10.2f}")
    if "ttft_per_turn_ms" in r:
        print("TTFT per turn (ms)".center(w, "-"))
        t = r["ttft_per_turn_ms"]
        for i, (md, mn) in enumerate(zip(t["median"], t["mean"]), 1):
            print(f"{'Turn ' + str(i) + ' median / mean:':<40}{md:.1f} / {mn:.1f}")
    bad = r.get("output_len_mismatches") or []
    if bad:
        print(f"{'Wrong output lengths:':<40}{len(bad)} (request, asked, got: {bad[:3]})")
    errs = [e for e in r["errors"] if e]
    if errs:
        print("Errors".center(w, "-"))
        for e in sorted(set(errs))[:5]:
            print(f"  {errs.count(e)} x {e}")
    print("=" * w)


def summary_table(results: list[dict]) -> str:
    """One line per run: the sweep at a glance (markdown)."""
    hdr = ("| run | conc | rate | ok/err | req/s | out tok/s | TTFT p50/p90/p99 ms | TPOT p50/p90/p99 ms "
           "| ITL p50/p90/p99 ms |")
    lines = [hdr, "|" + "---|" * 9]
    for r in results:
        def trio(m):
            return "/".join(f"{r.get(f'p{p}_{m}_ms', 0):.0f}" for p in ("50", "90", "99"))
        lines.append(f"| {r['label']} | {r['max_concurrency'] or '-'} | {r['request_rate']} | "
                     f"{r['completed']}/{r['failed']} | {r['request_throughput']:.2f} | "
                     f"{r['output_throughput']:.1f} | {trio('ttft')} | {trio('tpot')} | {trio('itl')} |")
    return "\n".join(lines)
