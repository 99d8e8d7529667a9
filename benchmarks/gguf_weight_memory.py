"""Memory of a GGUF model's weights kept quantized, against the file size.

    python benchmarks/gguf_weight_memory.py [PATH.gguf]   (default: the SmolLM2-135M-Instruct Q4_1 GGUF)

Loads every tensor with `lmrs.models.gguf_quantized.load_gguf_tensors` (quantized types stay quantized in
the kernels' tiled layout, float tensors keep their stored dtype) and prints: the bytes the tensors hold
(per GGML type) against the file size, and how much the process's resident memory grew over the load (the
file's memory map is released after loading, so this is what the weights cost a server; the metadata parse
leaves freed heap that `malloc_trim` returns, as the engine does when idle). The dense copies
the current loader makes are given for scale: float32 and bfloat16 of every parameter.
"""

from __future__ import annotations

import gc
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    from lmrs.engine.memory import release_free_memory
    from lmrs.models.gguf_quantized import load_gguf_tensors
    from lmrs.models.quantized import QuantizedTensor

    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        from lmrs.models.loader import default_model_path

        path = default_model_path()
    gc.collect()
    release_free_memory()
    before = rss_bytes()
    loaded = load_gguf_tensors(path)
    gc.collect()
    after = rss_bytes()
    release_free_memory()  # what the engine does when idle: the metadata parse's freed heap goes back
    trimmed = rss_bytes()
    by_type: dict[str, list[int]] = {}
    params = 0
    for name, t in loaded.tensors.items():
        kind = loaded.types[name]
        held = t.nbytes if isinstance(t, QuantizedTensor) else t.numel() * t.element_size()
        entry = by_type.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += held
        params += t.rows * t.in_features if isinstance(t, QuantizedTensor) else t.numel()
    f = loaded.file_bytes
    print(f"file: {path}")
    print(f"file size:                {f:>14,} bytes")
    for kind, (count, held) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
        print(f"  {kind:<6} {count:>4} tensors {held:>14,} bytes")
    print(f"tensors held:             {loaded.nbytes:>14,} bytes = {loaded.nbytes / f:.3f} x the file")
    print(f"process RSS growth:       {after - before:>14,} bytes = {(after - before) / f:.3f} x the file")
    print(f"  after malloc_trim:      {trimmed - before:>14,} bytes = {(trimmed - before) / f:.3f} x the file "
          "(the rest: library pages first touched, allocator slack)")
    print(f"for scale: {params:,} parameters = {4 * params / 1e6:.0f} MB in float32, {2 * params / 1e6:.0f} MB in "
          f"bfloat16")


if __name__ == "__main__":
    main()
