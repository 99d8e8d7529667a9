"""GPU-only tests (skipped without a usable CUDA device; see conftest.py)."""
