"""Resident memory an engine's model costs: RSS growth over loading a model and one short generation.

    python benchmarks/engine_load_memory.py [--model PATH] [--dtype auto] [--gguf-weights quantized|dequantize]
                                            [--kv-cache-memory 16MiB]

Imports lmrs and PyTorch first (libraries are not the model), trims the heap (`malloc_trim`), reads the
resident set size, then builds `Engine(model, kv_cache_memory=...)`, generates 8 tokens, drops the
loader's leftovers, trims again and reads the RSS. With `--warm-up tiny` (the default) a tiny
Q4_K_M GGUF model is loaded, run and dropped first, so the one-time costs of the libraries (code pages
run for the first time, thread pools, the GGUF reader's and tokenizer library's first-use state: about
25 MB, the same for any model, measured with `--warm-up none`) are not charged to the model. Prints one JSON line: the growth of VmRSS and of
its two parts, RssAnon (private memory: weights, KV cache, tokenizer, heap) and RssFile (file-backed
pages: library code run for the first time, the same for any model), the file size, the KV cache
bytes and the resident weight bytes (`lmrs.models.weight_bytes.model_weight_bytes`).
The memory acceptance test (tests/test_gguf_memory.py) runs it in a fresh process.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))


def rss() -> dict[str, int]:
    """VmRSS (all resident pages), RssAnon (private memory: heap, tensors) and RssFile (file-backed
    pages: shared library code first run, clean and shared with other processes), in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) * 1024
    return out


def warm_up_libraries(Engine, SamplingParams) -> None:
    """Load, run and drop a tiny Q4_K_M GGUF llama (hidden 256, 2 layers), so that library code and
    first-use state (torch's and the Rust kernels' thread pools, the tokenizer library, the GGUF reader)
    are in place before the measured load."""
    import tempfile
    from pathlib import Path

    from lmrs.models.testing_gguf import write_gguf
    from lmrs.models.testing_hf import make_tiny_family_model

    with tempfile.TemporaryDirectory() as tmp:
        folder, _, _ = make_tiny_family_model("llama", Path(tmp) / "hf", hidden_size=256, intermediate_size=512)
        path = write_gguf(folder, Path(tmp) / "tiny.Q4_K_M.gguf", "Q4_K_M")
        engine = Engine(os.fspath(path), progress=False, kv_cache_memory="1MiB")
        engine.generate(["What is the capital of France?"], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        del engine
    gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a .gguf file or model folder (default: SmolLM2-135M Q4_1)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--gguf-weights", default="quantized", choices=["quantized", "dequantize"])
    ap.add_argument("--kv-cache-memory", default="16MiB")
    ap.add_argument("--warm-up", default="tiny", choices=["tiny", "none"],
                    help="load, run and drop a tiny GGUF model first (library first-use costs are not the model's)")
    args = ap.parse_args()

    from lmrs import Engine, SamplingParams
    from lmrs.engine.memory import release_free_memory
    from lmrs.models.loader import default_model_path, load_model_files
    from lmrs.models.weight_bytes import model_weight_bytes

    path = args.model or default_model_path()
    if args.warm_up == "tiny":
        warm_up_libraries(Engine, SamplingParams)
    gc.collect()
    release_free_memory()
    before = rss()
    if args.gguf_weights == "quantized":  # what the engine does by default
        engine = Engine(path, dtype=args.dtype, progress=False, kv_cache_memory=args.kv_cache_memory)
    else:  # dense copies (the path before weights were kept quantized)
        loaded = load_model_files(path, progress=False, gguf_weights="dequantize")
        engine = Engine(loaded=loaded, dtype=args.dtype, progress=False, kv_cache_memory=args.kv_cache_memory)
        loaded.weights = {}
        del loaded
    out = engine.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    gc.collect()
    release_free_memory()
    after = rss()
    parts = engine.engine.parts
    model = parts.model
    kv_bytes = parts.runner.kv_cache.nbytes
    file_bytes = os.path.getsize(path) if os.path.isfile(path) else 0
    print(json.dumps({"model": path, "dtype": args.dtype, "gguf_weights": args.gguf_weights, "warm_up": args.warm_up,
                      "file_bytes": file_bytes, "kv_cache_bytes": kv_bytes,
                      "rss_growth_bytes": after["VmRSS"] - before["VmRSS"],
                      "anon_growth_bytes": after["RssAnon"] - before["RssAnon"],
                      "file_pages_growth_bytes": after["RssFile"] - before["RssFile"],
                      "weight_bytes": model_weight_bytes(model),
                      "tokens": out[0].token_ids}))


if __name__ == "__main__":
    main()
