"""Merging repeated benchmark runs (medians and ranges) and the markdown tables of compare.py."""

from __future__ import annotations

def _fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


NUMERIC_KEYS = ("output_throughput", "request_throughput", "total_token_throughput", "max_output_tokens_per_s",
                "duration")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _merge(points: list[dict]) -> dict:
    """One result from the same point of several repeats: medians of the numbers, summed failures,
    every repeat's output tok/s kept in `repeats_output_throughput` (the spread)."""
    out = dict(points[0])
    for k, v in points[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (k in NUMERIC_KEYS or k.endswith("_ms")):
            out[k] = _median([p[k] for p in points])
    out["failed"] = sum(p.get("failed", 0) for p in points)
    out["output_len_mismatches"] = [m for p in points for m in p.get("output_len_mismatches") or []]
    out["repeats_output_throughput"] = [p["output_throughput"] for p in points]
    if "ttft_per_turn_ms" in points[0]:
        turns = len(points[0]["ttft_per_turn_ms"]["median"])
        out["ttft_per_turn_ms"] = {"median": [_median([p["ttft_per_turn_ms"]["median"][t] for p in points])
                                              for t in range(turns)]}
        out["repeats_ttft_per_turn_ms"] = [p["ttft_per_turn_ms"]["median"] for p in points]
    return out


def aggregate(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """name -> one engine result (the shape run_engine returns) with every point merged over the repeats."""
    engines = {}
    for name, reps in runs.items():
        e: dict = {}
        for key in reps[0]:
            if key == "fixed":
                by_c: dict = {}
                for rep in reps:
                    for r in rep.get("fixed", []):
                        by_c.setdefault(r["max_concurrency"], []).append(r)
                e["fixed"] = [_merge(v) for _, v in sorted(by_c.items())]
            else:
                e[key] = _merge([rep[key] for rep in reps if key in rep])
        engines[name] = e
    return engines


def _spread(r: dict, key: str = "output_throughput") -> str:
    """"481.3 (412.0-520.1)": the median and the range over the repeats."""
    reps = r.get("repeats_" + key) or [r[key]]
    if len(reps) == 1:
        return f"{r[key]:.1f}"
    return f"{r[key]:.1f} ({min(reps):.1f}-{max(reps):.1f})"


def fixed_table(engines: dict[str, dict]) -> str:
    lines = ["| server | concurrency | req/s | output tok/s | TTFT p50 / p90 / p99 (ms) | TPOT p50 / p90 / p99 (ms) "
             "| ITL p50 / p90 / p99 (ms) | errors |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in engines.items():
        for r in e.get("fixed", []):
            lines.append(f"| {name} | {r['max_concurrency']} | {r['request_throughput']:.2f} | "
                         f"{_spread(r)} | "
                         + " | ".join("/".join(f"{r[f'p{p}_{m}_ms']:.0f}" for p in (50, 90, 99))
                                      for m in ("ttft", "tpot", "itl"))
                         + f" | {r['failed'] + len(r.get('output_len_mismatches') or [])} |")
    return "\n".join(lines)


def ratio_table(engines: dict[str, dict], peer: str | None) -> str:
    if not peer or peer not in engines:
        return "_(no peer run: no ratios)_"
    peer_by_c = {r["max_concurrency"]: r for r in engines[peer].get("fixed", [])}
    concs = sorted(peer_by_c)
    lines = ["| lmrs / llama-server, output tok/s | " + " | ".join(f"c={c}" for c in concs) + " |",
             "|---|" + "---:|" * len(concs)]
    for name, e in engines.items():
        if name == peer:
            continue
        by_c = {r["max_concurrency"]: r for r in e.get("fixed", [])}
        cells = []
        for c in concs:
            a, b = by_c.get(c), peer_by_c.get(c)
            if not (a and b and b["output_throughput"] > 0):
                cells.append("-")
                continue
            cell = f"{a['output_throughput'] / b['output_throughput']:.2f}x"
            pairs = list(zip(a.get("repeats_output_throughput", []), b.get("repeats_output_throughput", [])))
            if len(pairs) > 1:  # repeat i of one server against repeat i of the other
                ratios = [x / y for x, y in pairs if y > 0]
                cell += f" ({min(ratios):.2f}-{max(ratios):.2f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| llama-server itself, output tok/s | "
                 + " | ".join(_spread(peer_by_c[c]) for c in concs) + " |")
    return "\n".join(lines)


def sharegpt_table(engines: dict[str, dict]) -> str:
    lines = ["| server | requests ok/failed | input / output tokens | req/s | output tok/s | TTFT p50 / p99 (ms) "
             "| TPOT p50 / p99 (ms) | E2EL p50 (ms) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in engines.items():
        r = e.get("sharegpt")
        if r:
            lines.append(f"| {name} | {r['completed']}/{r['failed']} | {r['total_input_tokens']} / "
                         f"{r['total_output_tokens']} | {r['request_throughput']:.2f} | {r['output_throughput']:.1f} | "
                         f"{r['p50_ttft_ms']:.0f} / {r['p99_ttft_ms']:.0f} | {r['p50_tpot_ms']:.0f} / "
                         f"{r['p99_tpot_ms']:.0f} | {r['p50_e2el_ms']:.0f} |")
    return "\n".join(lines)


def multiturn_runs(engines: dict[str, dict]) -> dict[str, dict]:
    runs = {}
    for name, e in engines.items():
        for key, mode in (("multiturn_sessions", "sessions (/generate)"),
                          ("multiturn_stateless", "stateless (chat, history resent)")):
            if key in e:
                runs[f"{name}, {mode}"] = e[key]
    return runs


def multiturn_table(engines: dict[str, dict], peer: str | None) -> str:
    runs = multiturn_runs(engines)
    if not runs:
        return ""
    turns = max(len(r["ttft_per_turn_ms"]["median"]) for r in runs.values())
    lines = ["| server, mode | " + " | ".join(f"turn {t}" for t in range(1, turns + 1)) + " | errors |",
             "|---|" + "---:|" * (turns + 1)]
    for name, r in runs.items():
        lines.append(f"| {name} | " + " | ".join(f"{x:.0f}" for x in r["ttft_per_turn_ms"]["median"])
                     + f" | {r['failed']} |")
    peer_run = next((r for n, r in runs.items() if peer and n.startswith(peer)), None)
    if peer_run:
        pm = peer_run["ttft_per_turn_ms"]["median"]
        for name, r in runs.items():
            if peer and name.startswith(peer):
                continue
            lines.append(f"| ratio {name} / llama-server | "
                         + " | ".join(f"{a / b:.2f}" if b > 0 else "-"
                                      for a, b in zip(r["ttft_per_turn_ms"]["median"], pm)) + " | |")
    return "\n".join(lines)


def goals(engines: dict[str, dict], peer: str | None) -> str:
    if not peer or peer not in engines:
        return "_(no peer run)_"
    peer_by_c = {r["max_concurrency"]: r["output_throughput"] for r in engines[peer].get("fixed", [])}
    runs = multiturn_runs(engines)
    peer_mt = next((r for n, r in runs.items() if n.startswith(peer)), None)
    lines = []
    for name, e in engines.items():
        if name == peer:
            continue
        by_c = {r["max_concurrency"]: r["output_throughput"] for r in e.get("fixed", [])}
        for c, want in ((1, 1.2), (32, 5.0)):  # issue 15: c=1 stays >= 1.2x, c=32 >= 5x
            if c in by_c and c in peer_by_c and peer_by_c[c] > 0:
                ratio = by_c[c] / peer_by_c[c]
                lines.append(f"- {name}, concurrency {c}: {ratio:.2f}x llama-server (goal >= {want:g}x): "
                             f"**{'met' if ratio >= want else 'not met'}**")
        for mode_name, r in runs.items():
            if not mode_name.startswith(name + ",") or not peer_mt:
                continue
            mine, theirs = r["ttft_per_turn_ms"]["median"], peer_mt["ttft_per_turn_ms"]["median"]
            worst = max((a / b for a, b in zip(mine, theirs) if b > 0), default=float("nan"))
            flat = mine[-1] <= mine[0]
            lines.append(f"- {mode_name}: worst turn TTFT ratio {worst:.2f} (goal <= 0.5): "
                         f"**{'met' if worst <= 0.5 else 'not met'}**; turn {len(mine)} {mine[-1]:.0f} ms vs "
                         f"turn 1 {mine[0]:.0f} ms (goal: not slower): **{'met' if flat else 'not met'}**")
    return "\n".join(lines)


def strip(r: dict) -> dict:
    """A run without its per-request lists (kept: the summary, per-turn TTFTs, distinct errors)."""
    drop = {"input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors", "turn_ttfts_ms"}
    out = {k: v for k, v in r.items() if k not in drop}
    out["distinct_errors"] = sorted({e for e in r.get("errors", []) if e})[:10]
    return out
