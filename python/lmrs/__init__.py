"""lmrs: a small, fast LLM serving engine.

    from lmrs import Engine, SamplingParams
    engine = Engine("model.gguf", device="cpu", dtype="bfloat16")
    outs = engine.generate(["Tell me a joke"], SamplingParams(temperature=0, max_tokens=48))

The Rust core (`lmrs._core`) schedules and allocates KV blocks; Python runs the model
(PyTorch on the CPU, CUDA kernels through CuPy on NVIDIA GPUs) and serves HTTP (`lmrs.serve`).
Heavy imports (torch) happen on first use of `Engine`.
"""

__version__ = "0.1.0"

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
