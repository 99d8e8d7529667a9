"""Writing one generated section of docs/benchmarks.md, between its begin/end markers, keeping the
rest of the file (other scripts' sections and hand-written text) as it is."""

from __future__ import annotations

import os


def write_section(path: str, begin: str, end: str, text: str) -> None:
    """Replace the block between `begin` and `end` in `path` with `text` (append it if absent)."""
    old = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
    block = f"{begin}\n{text.strip()}\n{end}\n"
    if begin in old and end in old:
        rest = old[old.index(end) + len(end):].lstrip("\n")
        new = old[:old.index(begin)] + block + ("\n" + rest if rest else "")
    elif old:
        new = old.rstrip("\n") + "\n\n" + block
    else:
        new = "# Benchmarks\n\n" + block
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
