"""Model ids: Hugging Face repo ids resolved in the local Hugging Face cache, as vLLM and Ollama
users expect (`lmrs serve api_server Qwen/Qwen3-0.6B`, `Engine("Qwen/Qwen3-0.6B")`).

- ``owner/name`` (optionally ``@revision``): the cached snapshot of that repo (a Hugging Face
  folder, or a repo holding GGUF files);
- ``owner/name:QUANT`` (``unsloth/Qwen3-0.6B-GGUF:Q4_K_M``): the GGUF file of that quantization in
  the cached repo. Without ``:QUANT`` a GGUF repo gives its Q4_K_M file (llama.cpp's default), or
  its only GGUF file.

Nothing is ever downloaded: lookups use `huggingface_hub` with `local_files_only=True` (safe with
`HF_HUB_OFFLINE`, no network wait), and a model that is not cached is a `ModelNotFoundError` that
names the cache folder. The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
`~/.cache/huggingface/hub` (huggingface_hub's rules). `cached_models()` lists what the cache holds
and whether lmrs can load it (`lmrs models`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError, ModelNotFoundError

__all__ = ["ModelId", "parse_model_id", "hub_cache_dir", "resolve_model", "CachedModel", "cached_models",
           "DEFAULT_GGUF_QUANT"]

DEFAULT_GGUF_QUANT = "Q4_K_M"
_REPO = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@(?P<rev>[\w./-]+?))?(?::(?P<quant>[\w.-]+))?$")
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelId:
    """A parsed model id: repo, optional revision, optional GGUF quantization."""

    repo_id: str
    revision: str | None = None
    quant: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "") + (f":{self.quant}" if self.quant else "")


def parse_model_id(spec: str) -> ModelId | None:
    """The model id `spec` names, or None when it is not shaped like one (then it is a path)."""
    m = _REPO.match(str(spec).strip())
    if not m or spec.startswith((".", "/", "~")) or "//" in spec:
        return None
    return ModelId(m.group("repo"), m.group("rev"), m.group("quant"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at each call."""
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(cache).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                             "huggingface")
    return Path(home).expanduser() / "hub"


def _snapshot(mid: ModelId) -> Path:
    """The cached snapshot folder of a repo (never downloads)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(mid.repo_id, revision=mid.revision, cache_dir=str(cache), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError) as e:
        raise ModelNotFoundError(
            f"model {str(mid)!r} is not in the local Hugging Face cache ({cache}); lmrs never downloads: fetch it "
            f"first (e.g. `huggingface-cli download {mid.repo_id}`) or pass a local folder or .gguf file "
            f"({type(e).__name__})", cache) from None


def _gguf_files(folder: Path) -> list[Path]:
    """The model GGUF files of a snapshot (not vision projectors)."""
    return sorted(p for p in folder.rglob("*.gguf") if not p.name.lower().startswith("mmproj"))


def gguf_quant_of(name: str) -> str:
    """The quantization a GGUF file name carries ("Qwen3-0.6B-Q4_K_M.gguf" -> "Q4_K_M"), or ""."""
    stem = _SHARD.sub(".gguf", name)[: -len(".gguf")]
    m = re.search(r"(?:^|[-._])((?:UD-)?(?:I?Q\d\w*|F16|F32|BF16))$", stem, re.IGNORECASE)
    return m.group(1).upper() if m else ""


def _pick_gguf(mid: ModelId, folder: Path) -> Path:
    files = _gguf_files(folder)
    quants = {f: gguf_quant_of(f.name) for f in files}
    available = ", ".join(sorted({q or f.name for f, q in quants.items()})) or "none"
    if mid.quant:
        matches = [f for f, q in quants.items() if q == mid.quant.upper()]
        if not matches:
            raise ModelNotFoundError(f"{mid.repo_id} has no {mid.quant} GGUF file in the cache ({folder}); cached "
                                     f"quantizations: {available}", folder)
    elif len(files) == 1:
        matches = files
    else:
        matches = [f for f, q in quants.items() if q == DEFAULT_GGUF_QUANT]
        if not matches:
            raise ModelNotFoundError(f"{mid.repo_id} holds several GGUF files; pick one with "
                                     f"{mid.repo_id}:QUANT (cached: {available})", folder)
    if any(_SHARD.search(f.name) for f in matches):
        raise ModelLoadError(f"{matches[0].name} is split into several files; lmrs loads single-file GGUFs "
                             "(merge them with llama.cpp's gguf-split --merge)", matches[0])
    return matches[0]


def resolve_model(spec: str) -> str | None:
    """A filesystem path for `spec`: `spec` itself when it exists, the cached file or folder of a
    model id, None when `spec` is neither (a missing path). Raises ModelNotFoundError for a model id
    that is not cached."""
    if os.path.exists(os.path.expanduser(spec)):
        return spec
    mid = parse_model_id(spec)
    if mid is None:
        return None
    folder = _snapshot(mid)
    if mid.quant or not (folder / "config.json").is_file():
        if _gguf_files(folder):
            return str(_pick_gguf(mid, folder))
        if mid.quant:
            raise ModelNotFoundError(f"{mid.repo_id} has no GGUF files in the cache ({folder}); drop ':{mid.quant}' "
                                     "to load its Hugging Face folder", folder)
    return str(folder)


@dataclass
class CachedModel:
    """One loadable unit of the cache: a Hugging Face folder or a GGUF file."""

    model_id: str  # what to pass to lmrs ("owner/name" or "owner/name:QUANT")
    path: str  # the folder or file
    format: str  # "safetensors" or "gguf"
    family: str  # lmrs family name, or "" when not loadable
    quant: str  # dtype / GGUF type ("bfloat16", "Q4_K_M", ...), "" when unknown
    size_bytes: int
    problem: str = ""  # why lmrs cannot load it ("" when it can)

    @property
    def loadable(self) -> bool:
        return not self.problem


def _folder_entry(repo_id: str, folder: Path, size: int) -> CachedModel:
    from .registry import family_for_hf_config

    try:
        d = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        family = family_for_hf_config(d).name
        problem = ""
        if not any(folder.glob("*.safetensors")):
            problem = "no *.safetensors weights"
        elif not (folder / "tokenizer.json").is_file():
            problem = "no tokenizer.json"
    except (ModelLoadError, ValueError, OSError) as e:
        d, family, problem = {}, "", str(e).split(";")[0]
    return CachedModel(repo_id, str(folder), "safetensors", family, str(d.get("torch_dtype") or d.get("dtype") or ""),
                       size, problem)


def _gguf_entry(repo_id: str, path: Path, single: bool) -> CachedModel:
    from .gguf_loader import open_gguf, read_gguf_metadata
    from .registry import family_for_gguf

    quant = gguf_quant_of(path.name)
    model_id = repo_id if single else f"{repo_id}:{quant or path.name}"
    size = path.stat().st_size
    if _SHARD.search(path.name):
        return CachedModel(model_id, str(path), "gguf", "", quant, size, "split GGUF (merge it first)")
    try:
        md = read_gguf_metadata(open_gguf(path))
        family = family_for_gguf(md.get("general.architecture"), str(path)).name
        problem = ""
    except ModelLoadError as e:
        family, problem = "", str(e).split(";")[0].replace(f"{path}: ", "")
    return CachedModel(model_id, str(path), "gguf", family, quant, size, problem)


def cached_models() -> list[CachedModel]:
    """Every model repo in the hub cache: its Hugging Face folder and each of its GGUF files."""
    from huggingface_hub import scan_cache_dir

    cache = hub_cache_dir()
    if not cache.is_dir():
        return []
    out: list[CachedModel] = []
    for repo in sorted(scan_cache_dir(cache).repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        rev = next((r for r in repo.revisions if "main" in r.refs), None) or max(repo.revisions,
                                                                               key=lambda r: r.last_modified)
        folder = Path(rev.snapshot_path)
        ggufs = _gguf_files(folder)
        has_config = (folder / "config.json").is_file()
        if has_config:
            size = sum(f.size_on_disk for f in rev.files if not f.file_name.endswith(".gguf"))
            out.append(_folder_entry(repo.repo_id, folder, size))
        for g in ggufs:
            out.append(_gguf_entry(repo.repo_id, g, single=len(ggufs) == 1 and not has_config))
    return out
