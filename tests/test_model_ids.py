"""Model ids resolved through the local Hugging Face cache (never downloaded): `Engine("owner/name")`,
`owner/name:QUANT` picking a GGUF file, clear errors naming the cache, `lmrs serve api_server
owner/name` over HTTP, and `lmrs models` listing what the cache holds. The cache is a temporary
folder laid out like huggingface_hub's (refs, snapshots, blobs) holding tiny models; any network
connection attempt fails the tests."""

import hashlib
import json
import os
import socket

import pytest
import requests

from lmrs import Engine, SamplingParams
from lmrs.cli import main as cli_main
from lmrs.models.errors import ModelLoadError, ModelNotFoundError
from lmrs.models.hub import cached_models, gguf_quant_of, hub_cache_dir, parse_model_id, resolve_model
from lmrs.models.testing_gguf import write_gguf
from lmrs.models.testing_hf import make_tiny_family_model

from server_utils import ServerProcess


def add_to_cache(cache, repo_id: str, files: dict, *, commit: str | None = None) -> str:
    """Store `files` (name -> bytes) as huggingface_hub does: blobs, a snapshot of links, refs/main."""
    base = cache / f"models--{repo_id.replace('/', '--')}"
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    for name, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        blob = base / "blobs" / sha
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return commit


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A hub cache with a tiny Qwen3 folder, a GGUF repo of three quantizations, and a model lmrs
    cannot load."""
    root = tmp_path_factory.mktemp("hf")
    folder, _, _ = make_tiny_family_model("qwen3", root / "src")
    add_to_cache(root / "hub", "tiny-org/Tiny-Qwen3", {p.name: p.read_bytes() for p in folder.iterdir()})
    ggufs = {}
    for quant in ("F16", "Q8_0", "Q4_K_M"):
        path = write_gguf(folder, root / f"Tiny-Qwen3-{quant}.gguf", quant)
        ggufs[path.name] = path.read_bytes()
    add_to_cache(root / "hub", "tiny-org/Tiny-Qwen3-GGUF", {**ggufs, "README.md": b"# tiny"})
    gpt2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 8}
    add_to_cache(root / "hub", "tiny-org/Tiny-GPT2", {"config.json": json.dumps(gpt2).encode(),
                                                      "model.safetensors": b"\0" * 16})
    return root / "hub", folder


@pytest.fixture(autouse=True)
def offline(cache, monkeypatch):
    """The cache in HF_HUB_CACHE, and no network: a connection beyond loopback raises."""
    monkeypatch.setenv("HF_HUB_CACHE", str(cache[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    connect = socket.socket.connect

    def loopback_only(sock, address):
        if not (isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1", "localhost")):
            raise AssertionError(f"network access attempted: {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


def test_parse_model_ids():
    assert parse_model_id("Qwen/Qwen3-0.6B") == parse_model_id("Qwen/Qwen3-0.6B")
    m = parse_model_id("unsloth/Qwen3-0.6B-GGUF:Q4_K_M")
    assert (m.repo_id, m.quant, m.revision) == ("unsloth/Qwen3-0.6B-GGUF", "Q4_K_M", None)
    m = parse_model_id("org/model@v1.0:Q8_0")
    assert (m.repo_id, m.revision, m.quant) == ("org/model", "v1.0", "Q8_0")
    for path in ("model.gguf", "./org/model", "/abs/org/model", "~/org/model", "a/b/c"):
        assert parse_model_id(path) is None, path
    assert gguf_quant_of("Qwen3-0.6B-Q4_K_M.gguf") == "Q4_K_M"
    assert gguf_quant_of("qwen3-0.6b.q8_0.gguf") == "Q8_0"
    assert gguf_quant_of("Qwen3-0.6B-UD-Q4_K_XL.gguf") == "UD-Q4_K_XL"
    assert gguf_quant_of("model-f16-00001-of-00002.gguf") == "F16"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"


def test_engine_loads_a_cached_model_id(cache):
    sp = SamplingParams(temperature=0, max_tokens=8, min_tokens=8)
    by_id = Engine("tiny-org/Tiny-Qwen3", dtype="float32", kv_cache_memory="16MiB", progress=False)
    by_path = Engine(str(cache[1]), dtype="float32", kv_cache_memory="16MiB", progress=False)
    assert by_id.engine.model_config.architecture == "qwen3"
    assert by_id.generate([[30, 40, 50]], sp)[0].token_ids == by_path.generate([[30, 40, 50]], sp)[0].token_ids


def test_gguf_repo_quant_picks_the_file(cache):
    assert resolve_model("tiny-org/Tiny-Qwen3-GGUF:Q8_0").endswith("Tiny-Qwen3-Q8_0.gguf")
    assert resolve_model("tiny-org/Tiny-Qwen3-GGUF:q8_0").endswith("Tiny-Qwen3-Q8_0.gguf")
    assert resolve_model("tiny-org/Tiny-Qwen3-GGUF").endswith("Tiny-Qwen3-Q4_K_M.gguf")  # llama.cpp's default
    eng = Engine("tiny-org/Tiny-Qwen3-GGUF:F16", dtype="float32", kv_cache_memory="16MiB", progress=False)
    assert eng.engine.model_config.architecture == "qwen3"
    with pytest.raises(ModelNotFoundError, match="no Q5_K_M GGUF.*cached quantizations: F16, Q4_K_M, Q8_0"):
        resolve_model("tiny-org/Tiny-Qwen3-GGUF:Q5_K_M")
    with pytest.raises(ModelNotFoundError, match="has no GGUF files"):
        resolve_model("tiny-org/Tiny-Qwen3:Q8_0")


def test_missing_model_names_the_cache(cache):
    with pytest.raises(ModelNotFoundError, match=f"not in the local Hugging Face cache \\({cache[0]}\\).*never downloads"):
        Engine("nobody/Not-Cached", progress=False)
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        resolve_model("tiny-org/Tiny-Qwen3@no-such-branch")
    assert resolve_model("no_such_file.gguf") is None
    with pytest.raises(ModelLoadError, match="unsupported model architecture 'GPT2LMHeadModel'"):
        Engine("tiny-org/Tiny-GPT2", progress=False)


def test_lmrs_models_lists_the_cache(cache, capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {cache[0]}" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(lines) == {"tiny-org/Tiny-Qwen3", "tiny-org/Tiny-Qwen3-GGUF:F16", "tiny-org/Tiny-Qwen3-GGUF:Q8_0",
                          "tiny-org/Tiny-Qwen3-GGUF:Q4_K_M"}
    assert lines["tiny-org/Tiny-Qwen3"][1:3] == ["qwen3", "safetensors"]
    assert lines["tiny-org/Tiny-Qwen3-GGUF:Q8_0"][1:4] == ["qwen3", "gguf", "Q8_0"]
    assert cli_main(["models", "--all", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    gpt2 = next(r for r in rows if r["model"] == "tiny-org/Tiny-GPT2")
    assert not gpt2["loadable"] and "GPT2LMHeadModel" in gpt2["problem"]
    folder = next(r for r in rows if r["model"] == "tiny-org/Tiny-Qwen3")
    assert folder["size_bytes"] == sum(p.stat().st_size for p in cache[1].iterdir())
    assert {m.model_id for m in cached_models() if m.loadable} == set(lines)


def test_serve_a_model_id_over_http(cache):
    env = {"HF_HUB_CACHE": str(cache[0]), "HF_HUB_OFFLINE": "1"}
    s = ServerProcess("tiny-org/Tiny-Qwen3-GGUF:Q8_0", "--dtype", "float32", "--kv-cache-memory", "16MiB", env=env)
    try:
        models = requests.get(s.url + "/v1/models", timeout=10).json()["data"]
        assert [m["id"] for m in models] == ["tiny-org/Tiny-Qwen3-GGUF:Q8_0"]
        r = requests.post(s.url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny-org/Tiny-Qwen3-GGUF:Q8_0", "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    finally:
        s.stop()
    missing = ServerProcess("nobody/Not-Cached", env=env, wait=False)
    assert missing.proc.wait(60) == 2
    assert "not in the local Hugging Face cache" in missing.logs() and str(cache[0]) in missing.logs()
