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

# oneDNN (PyTorch's CPU matmuls) keeps a compiled primitive per (weight shape, row count); a server
# sees a new row count almost every prefill step, and with oneDNN's default of 1024 cached primitives
# the process grew by ~250 MB per soak round (each entry holds megabytes). 32 entries hold the
# five matmul shapes of several row counts; a miss costs far less than a step. Read by oneDNN on its first matmul, so set before any runs (the user's value wins).
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
