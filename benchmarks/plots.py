"""PNG plots for docs/benchmarks.md (matplotlib; install it with `.venv/bin/python -m pip install matplotlib`).

    plot_sweep(runs_by_engine, "output_throughput", "output tokens/s", path)
    plot_sweep(runs_by_engine, "median_ttft_ms", "TTFT p50 (ms)", path)
    plot_turns(multiturn_by_engine, path)
"""

from __future__ import annotations


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(runs_by_engine: dict[str, list[dict]], key: str, ylabel: str, path: str, title: str = "",
               logy: bool = False) -> None:
    """One line per engine: `key` of each run against its max_concurrency."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name, runs in runs_by_engine.items():
        pts = sorted((r["max_concurrency"], r[key]) for r in runs if r.get("max_concurrency"))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    xs = sorted({r["max_concurrency"] for runs in runs_by_engine.values() for r in runs if r.get("max_concurrency")})
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel(ylabel)
    ax.set_title(title or ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_turns(multiturn_by_engine: dict[str, dict], path: str, stat: str = "median") -> None:
    """TTFT per turn number, one line per engine/mode."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name, r in multiturn_by_engine.items():
        ys = r["ttft_per_turn_ms"][stat]
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=name)
    n = max((len(r["ttft_per_turn_ms"][stat]) for r in multiturn_by_engine.values()), default=0)
    ax.set_xticks(list(range(1, n + 1)))
    ax.set_xlabel("turn")
    ax.set_ylabel(f"TTFT {stat} (ms)")
    ax.set_title("Multi-turn: time to first token per turn")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
