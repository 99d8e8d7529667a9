"""How many bytes a built model's weights hold: :func:`model_weight_bytes`.

Walks a `DecoderModel`'s objects (layers, projections, quantized segments, small-batch twins, float32
head/embedding copies, oneDNN-prepacked weights, norms) and sums the storage of every tensor it reaches,
each storage once (a tied head that shares the embedding table counts it once). Used by the memory
acceptance tests and `benchmarks/engine_load_memory.py` to report resident weights against the file size.
"""

from __future__ import annotations

import torch

__all__ = ["model_weight_bytes"]

#: attributes that hold no weights of the model (the kernel backend, the config, shared RoPE tables, the CPU
#: program: the KV caches and the addresses of weights the layers hold)
_SKIPPED = frozenset({"kernels", "config", "rotaries", "rotary", "ctx", "device", "_program", "_program_kernels"})


def _storage(t: torch.Tensor) -> tuple[int, int]:
    """(identity, bytes) of a tensor's storage; a oneDNN-prepacked weight has none to ask."""
    if t.is_mkldnn or t.layout != torch.strided:
        return id(t), t.numel() * t.element_size()
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def model_weight_bytes(model) -> int:
    """Bytes of every tensor reachable from `model`'s attributes (see the module docstring)."""
    seen_objects: set[int] = set()
    seen_storage: set[int] = set()
    total = 0
    stack = [model]
    while stack:
        obj = stack.pop()
        if obj is None or isinstance(obj, (int, float, str, bool, bytes, torch.dtype, torch.device)):
            continue
        if id(obj) in seen_objects:
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            key, nbytes = _storage(obj)
            if key not in seen_storage:
                seen_storage.add(key)
                total += nbytes
            continue
        if isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
            continue
        if callable(obj) and not hasattr(obj, "__dict__") and not hasattr(type(obj), "__slots__"):
            continue  # functions, builtins
        fields = dict(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    fields[name] = getattr(obj, name)
        stack.extend(v for k, v in fields.items() if k not in _SKIPPED and not k.startswith("__"))
    return total
