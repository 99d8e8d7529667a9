"""Kernel backends. All implement the interface of `reference.py`:

- `reference`: PyTorch ops (the ground truth for tests, and the fallback of the CPU backend);
- `cpu`: Rust kernels from `src/cpu_kernels/` (AVX-512 when available), the CPU path;
- `cuda`: custom CUDA kernels from `cuda/*.cu`, compiled with NVRTC and launched through CuPy.

`get_backend(device)` returns the module to use for a device.
"""


def get_backend(device: str):
    """The kernel module for `device` ("cpu" -> Rust CPU kernels, "cuda" -> CUDA kernels)."""
    if str(device).startswith("cuda"):
        from lmrs.kernels import cuda

        return cuda
    from lmrs.kernels import cpu

    return cpu
