"""The `lmrs` console script.

    lmrs serve api_server [MODEL] [flags]    the HTTP server (same as python -m lmrs.serve)
    lmrs serve ray [MODEL] --replicas R [flags]  R replicas behind Ray Serve, sessions pinned (lmrs[ray])
    lmrs serve api_client URL [--session-id N]   terminal chat client of a running server
    lmrs serve gradio URL [--server-name H --server-port P]   browser chat UI of a running server
    lmrs convert GGUF OUTDIR [--dtype ...]   GGUF -> Hugging Face folder (safetensors + tokenizer)
    lmrs models [--all] [--json]             models in the local Hugging Face cache that lmrs can load
    lmrs bench serve [flags]                 serving benchmark against any OpenAI-compatible server
"""

from __future__ import annotations

import sys

USAGE = __doc__


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        if not rest or rest[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        sub, rest = rest[0], rest[1:]
        if sub == "api_server":
            from lmrs.serve import main as serve_main

            return serve_main(rest, prog="lmrs serve api_server")
        if sub == "ray":
            from lmrs.ray_serve.serve_ray import main as ray_main

            return ray_main(rest)
        if sub == "api_client":
            from lmrs.client.api_client import main as client_main

            return client_main(rest)
        if sub == "gradio":
            from lmrs.client.webui import main as webui_main

            return webui_main(rest)
        print(f"lmrs serve: unknown command {sub!r} (api_server, ray, api_client, gradio)", file=sys.stderr)
        return 2
    if cmd == "convert":
        from lmrs.models.convert import main as convert_main

        return convert_main(rest)
    if cmd == "models":
        return models_main(rest)
    if cmd == "bench":
        if rest and rest[0] == "serve":
            sys.path.insert(0, _benchmarks_dir())
            from bench_serving import main as bench_main

            return bench_main(rest[1:])
        print("lmrs bench: unknown command (serve)", file=sys.stderr)
        return 2
    print(f"lmrs: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


def models_main(argv) -> int:
    """`lmrs models`: what the Hugging Face cache holds that lmrs loads (family, format, size)."""
    import argparse
    import json

    from lmrs.models.hub import cached_models, hub_cache_dir

    p = argparse.ArgumentParser(prog="lmrs models", description="List the models in the local Hugging Face cache "
                                "($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub) that lmrs can load; "
                                "pass the MODEL column to `lmrs serve api_server` or `Engine(...)`.")
    p.add_argument("--all", action="store_true", help="also list what lmrs cannot load, with the reason")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    args = p.parse_args(argv)
    models = [m for m in cached_models() if args.all or m.loadable]
    if args.json:
        for m in models:
            print(json.dumps({"model": m.model_id, "family": m.family, "format": m.format, "quant": m.quant,
                              "size_bytes": m.size_bytes, "path": m.path, "loadable": m.loadable,
                              "problem": m.problem}))
        return 0
    print(f"cache: {hub_cache_dir()}")
    if not models:
        print("no loadable models" + ("" if args.all else " (--all lists the others)"))
        return 0
    rows = [(m.model_id, m.family or "-", m.format + (f" {m.quant}" if m.quant else ""), _size(m.size_bytes),
             m.problem) for m in models]
    head = ("MODEL", "FAMILY", "FORMAT", "SIZE", "PROBLEM" if args.all else "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths)) + ("  " + r[4] if r[4] else "")
        print(line.rstrip())
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _benchmarks_dir() -> str:
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, "benchmarks"), os.path.join(here, "..", "..", "benchmarks")):
        if os.path.isfile(os.path.join(cand, "bench_serving.py")):
            return os.path.abspath(cand)
    return here


if __name__ == "__main__":
    sys.exit(main())
