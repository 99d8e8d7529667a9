"""Giving freed heap memory back to the operating system when the engine goes idle.

A burst of requests leaves glibc's malloc holding the pages of every freed temporary (activations,
logits, per-request buffers) in its arenas; the process's resident size then only ever grows. When
the engine has been idle for a moment it calls `release_free_memory()`, which asks glibc to return
free pages (`malloc_trim`). Elsewhere (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("lmrs.memory")

_malloc_trim = None
_looked_up = False


def _trim_function():
    global _malloc_trim, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            fn = libc.malloc_trim
            fn.argtypes = [ctypes.c_size_t]
            fn.restype = ctypes.c_int
            _malloc_trim = fn
        except (OSError, AttributeError):
            _malloc_trim = None
    return _malloc_trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; True when the C library supports it."""
    fn = _trim_function()
    if fn is None:
        return False
    fn(0)
    return True
