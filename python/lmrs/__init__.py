"""lmrs: a small, fast LLM serving engine.

    from lmrs import Engine, SamplingParams
    engine = Engine("model.gguf", device="cpu", dtype="bfloat16")
    outs = engine.generate(["Tell me a joke"], SamplingParams(temperature=0, max_tokens=48))

The Rust core (`lmrs._core`) schedules and allocates KV blocks; Python runs the model
(PyTorch on the CPU, CUDA kernels through CuPy on NVIDIA GPUs) and serves HTTP (`lmrs.serve`).
Heavy imports (torch) happen on first use of `Engine`.
"""

import os as _os

__version__ = "0.1.0"

# PyTorch's CPU matmuls keep compiled kernels per (weight shape, row count) in two caches: ideep's
# (LRU_CACHE_CAPACITY) and oneDNN's (ONEDNN_PRIMITIVE_CACHE_CAPACITY), both 1024 entries by default.
# A server sees a new row count almost every step, and entries hold up to megabytes, so a busy server
# grew by 50-250 MB per 30 s of soak load for many minutes. Bounded here (a miss costs far less than a
# step); read on the first matmul, so set before any runs; a user's own values win.
_os.environ.setdefault("LRU_CACHE_CAPACITY", "64")
_os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")

__all__ = ["Engine", "SamplingParams", "RequestOutput", "CompletionOutput", "__version__"]


def __getattr__(name):
    if name in ("Engine",):
        from lmrs.engine.engine import Engine

        return Engine
    if name in ("SamplingParams",):
        from lmrs.engine.params import SamplingParams

        return SamplingParams
    if name in ("RequestOutput", "CompletionOutput"):
        from lmrs.engine import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module 'lmrs' has no attribute {name!r}")
