"""Tiny random models for tests: a Hugging Face folder (:func:`make_tiny_model`) or a GGUF file
(:func:`make_tiny_gguf`), each a few hundred KB and written in well under a second.

The tokenizer is a small byte-level BPE trained with ``tokenizers`` on a few sentences (deterministic), with
the special tokens ``<|endoftext|>`` (0), ``<|im_start|>`` (1, bos) and ``<|im_end|>`` (2, eos) and a
ChatML chat template.  Weights are random (seeded) with non-trivial norms and biases, so bugs that
ignore a norm weight or a bias change the output.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .chat_template import CHATML_TEMPLATE
from .config import ModelConfig

__all__ = ["make_tiny_model", "make_tiny_gguf", "tiny_config", "tiny_tokenizer_json", "random_weights",
           "TINY_SPECIAL_TOKENS"]

TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "What is the capital of France? The capital of France is Paris.",
    "A refrigerator moves heat from the inside to the outside.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159",
    "Once upon a time there was a lighthouse keeper who lived by the sea.",
    "def main():\n    print('hello')\n    return 0\n",
    "Ünïcödé, emoji 🙂 and 中文 text appear sometimes.",
]


@functools.lru_cache(maxsize=8)
def tiny_tokenizer_json(vocab_size: int = 384) -> str:
    """A deterministic byte-level BPE (``tokenizer.json`` text) with at most ``vocab_size`` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(TINY_SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(TINY_SPECIAL_TOKENS)} for a byte-level BPE")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_CORPUS * 4, trainer)
    return tk.to_str()


def tiny_config(arch: str = "llama", *, vocab_size: int = 384, hidden_size: int = 64, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, intermediate_size: int | None = None,
                tie_word_embeddings: bool | None = None, rope_scaling: dict | None = None,
                rope_theta: float = 10000.0, max_position_embeddings: int = 512,
                dtype: str = "float32") -> ModelConfig:
    """The :class:`ModelConfig` of a tiny model (Qwen2: q/k/v biases and tied embeddings by default)."""
    if tie_word_embeddings is None:
        tie_word_embeddings = arch == "qwen2"
    return ModelConfig(
        architecture=arch, vocab_size=vocab_size, hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden_size // heads,
        rms_norm_eps=1e-6, rope_theta=rope_theta, rope_scaling=rope_scaling,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
        attention_bias=arch == "qwen2", bos_token_id=1, eos_token_ids=[2], pad_token_id=2, torch_dtype=dtype,
        name=f"tiny-{arch}")


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded float32 weights for every tensor ``config`` needs: linear ~ N(0, 1/fan_in), embeddings
    ~ N(0, 1), norms ~ 1 + N(0, 0.1), biases ~ N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in config.weight_shapes().items():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            t = torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        out[name] = t.contiguous()
    return out


def make_tiny_model(folder: str | os.PathLike, arch: str = "llama", *, vocab_size: int = 384,
                    hidden_size: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    intermediate_size: int | None = None, seed: int = 0, tie_word_embeddings: bool | None = None,
                    rope_scaling: dict | None = None, rope_theta: float = 10000.0,
                    max_position_embeddings: int = 512, dtype: str = "float32") -> Path:
    """Write a tiny random Hugging Face model folder and return its path.

    Files: ``config.json``, ``generation_config.json``, ``model.safetensors`` (in ``dtype``),
    ``tokenizer.json``, ``tokenizer_config.json`` (ChatML template).  ``arch`` is "llama", "qwen2" or
    "mistral".  Load it with :func:`lmrs.models.loader.load_model_files`.
    """
    from safetensors.torch import save_file

    from .tokenizer import Tokenizer

    config = tiny_config(arch, vocab_size=vocab_size, hidden_size=hidden_size, layers=layers, heads=heads,
                         kv_heads=kv_heads, intermediate_size=intermediate_size,
                         tie_word_embeddings=tie_word_embeddings, rope_scaling=rope_scaling,
                         rope_theta=rope_theta, max_position_embeddings=max_position_embeddings, dtype=dtype)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    weights = {k: v.to(torch_dtype) for k, v in random_weights(config, seed).items()}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}, indent=2) + "\n")
    from tokenizers import Tokenizer as RustTokenizer

    tok = Tokenizer(RustTokenizer.from_str(tiny_tokenizer_json(min(vocab_size, 384))),
                    bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>",
                    pad_token="<|im_end|>", chat_template=CHATML_TEMPLATE,
                    model_max_length=max_position_embeddings)
    tok.save_hf(out)
    return out


def _llama3_rope_factors(scaling: dict, head_dim: int, theta: float) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` tensor for Llama 3 RoPE scaling (as its HF -> GGUF converter writes it)."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    orig = scaling["original_max_position_embeddings"]
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < orig / high:
            out.append(1.0)
        elif wavelen > orig / low:
            out.append(factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def make_tiny_gguf(path: str | os.PathLike, arch: str = "llama", *, tensor_type: str = "F32",
                   quantize: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0,
                   **config_kwargs) -> tuple[Path, ModelConfig, dict[str, torch.Tensor]]:
    """Write a tiny random GGUF the way llama.cpp's converter does (q/k rows permuted for ``llama``).

    2-D weights are stored as ``tensor_type`` (quantized with ``gguf.quants.quantize``, or with
    ``quantize(float32 array) -> uint8 blocks`` when given); norms stay F32.  Returns the path, the config
    and the original float32 Hugging Face weights.  ``config_kwargs`` go to :func:`tiny_config`; Llama 3
    RoPE scaling is written as a ``rope_freqs`` tensor, linear scaling as ``rope.scaling.*`` keys.
    """
    import gguf

    from .gguf_loader import permute_qk

    config = tiny_config(arch, **config_kwargs)
    weights = random_weights(config, seed)
    qtype = gguf.GGMLQuantizationType[tensor_type]
    tok = json.loads(tiny_tokenizer_json(min(config.vocab_size, 384)))
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), config.vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    types = [3 if t in TINY_SPECIAL_TOKENS else 1 for t in tokens]

    w = gguf.GGUFWriter(os.fspath(path), arch)
    w.add_name(config.name)
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_rope_dimension_count(config.head_dim)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(config.rope_theta)
    if config.rope_scaling and config.rope_scaling["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(config.rope_scaling["factor"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)

    if config.rope_scaling and config.rope_scaling["rope_type"] == "llama3":
        w.add_tensor("rope_freqs.weight", _llama3_rope_factors(config.rope_scaling, config.head_dim,
                                                               config.rope_theta))
    hf_to_gguf = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                  "lm_head.weight": "output.weight"}
    block = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for name, tensor in weights.items():
        if name in hf_to_gguf:
            gname = hf_to_gguf[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{block[module]}.{kind}"
        arr = tensor.numpy()
        if arch == "llama" and ".q_proj." in name:
            arr = permute_qk(arr, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            arr = permute_qk(arr, config.num_key_value_heads)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, arr)
        elif quantize is not None:
            w.add_tensor(gname, quantize(arr), raw_dtype=qtype)
        else:
            data = gguf.quants.quantize(arr, qtype)
            w.add_tensor(gname, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path), config, weights
