"""The `lmrs` console script.

    lmrs serve api_server [MODEL] [flags]    the HTTP server (same as python -m lmrs.serve)
    lmrs serve api_client URL [--session-id N]   terminal chat client of a running server
    lmrs serve gradio URL [--server-name H --server-port P]   browser chat UI of a running server
    lmrs convert GGUF OUTDIR [--dtype ...]   GGUF -> Hugging Face folder (safetensors + tokenizer)
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
        if sub == "api_client":
            from lmrs.client.api_client import main as client_main

            return client_main(rest)
        if sub == "gradio":
            from lmrs.client.webui import main as webui_main

            return webui_main(rest)
        print(f"lmrs serve: unknown command {sub!r} (api_server, api_client, gradio)", file=sys.stderr)
        return 2
    if cmd == "convert":
        from lmrs.models.convert import main as convert_main

        return convert_main(rest)
    if cmd == "bench":
        if rest and rest[0] == "serve":
            sys.path.insert(0, _benchmarks_dir())
            from bench_serving import main as bench_main

            return bench_main(rest[1:])
        print("lmrs bench: unknown command (serve)", file=sys.stderr)
        return 2
    print(f"lmrs: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


def _benchmarks_dir() -> str:
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, "benchmarks"), os.path.join(here, "..", "..", "benchmarks")):
        if os.path.isfile(os.path.join(cand, "bench_serving.py")):
            return os.path.abspath(cand)
    return here


if __name__ == "__main__":
    sys.exit(main())
