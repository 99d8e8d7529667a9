"""One /metrics page from every replica's: each sample gains a `replica` label, and each metric
family's HELP/TYPE lines appear once (Prometheus rejects a page that repeats them). No Ray here."""

from __future__ import annotations

import re

_NAME = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)")


def _family_of(sample_name: str, families: dict) -> str:
    """A sample's family: its own name, or the name less a histogram/counter suffix."""
    if sample_name in families:
        return sample_name
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created", "_gcount", "_gsum"):
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in families:
            return sample_name[: -len(suffix)]
    return sample_name


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def with_label(line: str, label: str, value: str) -> str:
    """`name{a="b"} 1` -> `name{label="value",a="b"} 1`; `name 1` -> `name{label="value"} 1`."""
    m = _NAME.match(line)
    if not m:
        return line
    name, rest = m.group(1), line[m.end():]
    pair = f'{label}="{_escape(value)}"'
    if rest.startswith("{"):
        inner = rest[1:]
        return f"{name}{{{pair}{'' if inner.startswith('}') else ','}{inner}"
    return f"{name}{{{pair}}}{rest}"


def merge_metrics(pages: dict[str, str], label: str = "replica") -> str:
    """Replica name -> its /metrics text => one page, families in first-seen order."""
    families: dict[str, dict] = {}  # family -> {"meta": [HELP/TYPE lines], "samples": [lines]}
    for replica, text in pages.items():
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    fam = families.setdefault(parts[2], {"meta": [], "samples": []})
                    if not any(m.split(None, 2)[1] == parts[1] for m in fam["meta"]):
                        fam["meta"].append(line)
                continue
            m = _NAME.match(line)
            if not m:
                continue
            fam = families.setdefault(_family_of(m.group(1), families), {"meta": [], "samples": []})
            fam["samples"].append(with_label(line, label, replica))
    out = []
    for fam in families.values():
        out.extend(fam["meta"])
        out.extend(fam["samples"])
    return "\n".join(out) + "\n"
