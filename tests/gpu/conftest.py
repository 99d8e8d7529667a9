"""GPU tests: skipped as a whole, cleanly, where there is no usable CUDA device (torch must see one
and CuPy, which loads and launches the kernels, must see one too)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _why_no_gpu() -> str | None:
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return f"torch unavailable: {e}"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as e:  # noqa: BLE001
        return f"CuPy cannot use the GPU: {e}"
    return None


_REASON = _why_no_gpu()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if _REASON:
                item.add_marker(pytest.mark.skip(reason=_REASON))
