"""Kernel backends. Both implement the interface of `reference.py`:

- `reference`: PyTorch ops (the CPU path, and the ground truth for tests);
- `cuda`: custom CUDA kernels from `cuda/*.cu`, compiled with NVRTC and launched through CuPy.

`get_backend(device)` returns the module to use for a device.
"""


def get_backend(device: str):
    """The kernel module for `device` ("cpu" -> reference, "cuda" -> CUDA kernels)."""
    if str(device).startswith("cuda"):
        from lmrs.kernels import cuda

        return cuda
    from lmrs.kernels import reference

    return reference
