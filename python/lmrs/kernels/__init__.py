"""Kernel backends. All implement the interface of `backend.py` (shapes and semantics in
`reference.py`):

- `reference`: PyTorch ops (the ground truth for tests, and every backend's fallback);
- `cpu`: Rust kernels from `src/cpu_kernels/` (AVX-512 when available), the CPU path;
- `cuda`: custom CUDA kernels from `cuda/*.cu`, compiled with NVRTC and launched through CuPy.

`get_backend(device)` returns the module to use for a device ("reference" forces the reference).
"""


def get_backend(device: str):
    """The kernel module for `device` ("cpu" -> Rust CPU kernels, "cuda" -> CUDA kernels,
    "reference" -> the PyTorch reference ops)."""
    name = str(device)
    if name.startswith("cuda"):
        from lmrs.kernels import cuda

        return cuda
    if name == "reference":
        from lmrs.kernels import reference

        return reference
    from lmrs.kernels import cpu

    return cpu
