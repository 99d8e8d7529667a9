"""Tokenizer and chat-template tests: the real SmolLM2 GGUF tokenizer against the golden file, HF folder
round trips, pre-tokenizer families, a SentencePiece-style GGUF vocabulary and chat-template features."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lmrs.models.chat_template import CHATML_TEMPLATE, ChatTemplateError, render_chat_template
from lmrs.models.errors import ModelNotFoundError
from lmrs.models.gguf_tokenizer import build_tokenizer_from_gguf, pre_tokenizer_for
from lmrs.models.loader import default_model_path
from lmrs.models.testing import make_tiny_model
from lmrs.models.tokenizer import Tokenizer

GOLDEN = json.loads((Path(__file__).parent / "data" / "smollm2_golden.json").read_text())
PROMPTS = GOLDEN["prompts"]
CHAT_PROMPTS = [p for p in PROMPTS if p["messages"]]

ROUNDTRIP_TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n\nend",
    "Digits 0123456789 and 3.14159, -42, 1e10",
    "Ünïcödé àccents: café naïve façade",
    "Emoji: 🙂👍🏽🇫🇷 👨‍👩‍👧",
    "中文：你好，世界！日本語のテキスト。한국어 텍스트",
    "Math ∑∫√∞ ≠ ≤ and Greek αβγ, Cyrillic привет",
    "code: def f(x):\n    return x ** 2  # comment",
    "",
]


@pytest.fixture(scope="module")
def smol() -> Tokenizer:
    try:
        path = default_model_path()
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    return Tokenizer.from_gguf(path)


# ------------------------------------------------------------------------------------------------ golden
@pytest.mark.parametrize("prompt", CHAT_PROMPTS, ids=[p["id"] for p in CHAT_PROMPTS])
def test_golden_chat_template_and_ids(smol, prompt):
    assert smol.apply_chat_template(prompt["messages"]) == prompt["prompt_text"]
    assert smol.encode_chat(prompt["messages"]) == prompt["prompt_token_ids"]


@pytest.mark.parametrize("prompt", PROMPTS, ids=[p["id"] for p in PROMPTS])
def test_golden_encode_decode(smol, prompt):
    assert smol.encode(prompt["prompt_text"]) == prompt["prompt_token_ids"]
    # add_bos_token is false in this GGUF: add_special_tokens adds nothing
    assert smol.encode(prompt["prompt_text"], add_special_tokens=True) == prompt["prompt_token_ids"]
    assert smol.decode(prompt["output_token_ids"]) == prompt["output_text"]
    assert smol.decode(prompt["output_token_ids"], skip_special_tokens=False) == prompt["output_text_with_special"]
    assert smol.decode(prompt["output_token_ids_ignore_eos"], skip_special_tokens=False) == \
        prompt["output_text_ignore_eos"]


def test_golden_special_tokens(smol):
    sp = GOLDEN["header"]["special_tokens"]
    assert smol.bos_token_id == sp["bos_id"] and smol.bos_token == sp["bos"]
    assert smol.eos_token_id == sp["eos_id"] and smol.eos_token == sp["eos"]
    assert smol.pad_token_id == sp["pad_id"] and smol.unk_token_id == sp["unk_id"]
    assert smol.eos_token_ids == [2]
    assert {0, 1, 2} <= smol.all_special_ids and 504 not in smol.all_special_ids
    assert smol.vocab_size == len(smol) == 49152
    assert smol.chat_template == GOLDEN["header"]["chat_template"]
    assert smol.convert_ids_to_tokens([504, 351, 1]) == ["The", "Ġwith", "<|im_start|>"]
    assert smol.convert_tokens_to_ids("<|im_end|>") == 2


def test_special_token_strings_map_to_ids(smol):
    ids = smol.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(1) == 1
    assert smol.decode(ids) == "user\nHi"
    assert smol.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nHi<|im_end|>"


@pytest.mark.parametrize("text", ROUNDTRIP_TEXTS)
def test_roundtrip(smol, text):
    ids = smol.encode(text)
    assert smol.decode(ids) == text
    assert smol.convert_tokens_to_string(smol.convert_ids_to_tokens(ids)) == text


def test_digits_are_split_individually(smol):
    # the "smollm" pre-tokenizer splits every digit before the GPT-2 regex
    assert smol.convert_ids_to_tokens(smol.encode("x 12345")) == ["x", "Ġ", "1", "2", "3", "4", "5"]


def test_encode_batch_and_decode_stream(smol):
    texts = ROUNDTRIP_TEXTS[:6]
    assert smol.encode_batch(texts) == [smol.encode(t) for t in texts]
    ids = smol.encode(ROUNDTRIP_TEXTS[5] + ROUNDTRIP_TEXTS[6])
    stream = smol.decode_stream()
    pieces = [stream.step(smol.backend, i) for i in ids]
    assert "".join(p for p in pieces if p) == smol.decode(ids)


def test_save_hf_roundtrip(smol, tmp_path):
    smol.save_hf(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == smol.chat_template
    assert cfg["bos_token"] == "<|im_start|>" and cfg["eos_token"] == "<|im_end|>" and cfg["add_bos_token"] is False
    assert cfg["added_tokens_decoder"]["1"]["special"] is True
    again = Tokenizer.from_hf_folder(tmp_path)
    for p in PROMPTS:
        assert again.encode(p["prompt_text"]) == p["prompt_token_ids"]
        assert again.decode(p["output_token_ids"]) == p["output_text"]
    for p in CHAT_PROMPTS:
        assert again.encode_chat(p["messages"]) == p["prompt_token_ids"]
    for t in ROUNDTRIP_TEXTS:
        assert again.encode(t) == smol.encode(t)
    assert (again.bos_token_id, again.eos_token_ids, again.all_special_ids) == \
        (smol.bos_token_id, smol.eos_token_ids, smol.all_special_ids)


# ------------------------------------------------------------------------------------------------ HF folders
def test_from_hf_folder_variants(tmp_path):
    folder = make_tiny_model(tmp_path / "m")
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    # AddedToken-dict special tokens, template moved to chat_template.jinja, eos list in generation_config
    cfg["bos_token"] = {"__type": "AddedToken", "content": "<|im_start|>", "special": True}
    template = cfg.pop("chat_template")
    cfg_path.write_text(json.dumps(cfg))
    (folder / "chat_template.jinja").write_text(template)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tok = Tokenizer.from_hf_folder(folder)
    assert tok.bos_token_id == 1 and tok.eos_token_ids == [2, 0] and tok.chat_template == template
    # named-template list form
    cfg["chat_template"] = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]
    cfg_path.write_text(json.dumps(cfg))
    assert Tokenizer.from_hf_folder(folder).chat_template == "DEFAULT"
    # add_bos_token=true prepends BOS with add_special_tokens=True only
    cfg["add_bos_token"] = True
    cfg_path.write_text(json.dumps(cfg))
    tok = Tokenizer.from_hf_folder(folder)
    assert tok.encode("Hello", add_special_tokens=True) == [1] + tok.encode("Hello")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelNotFoundError, match="tokenizer.json"):
        Tokenizer.from_hf_folder(folder)


# ------------------------------------------------------------------------------------------------ GGUF vocabularies
def test_pre_tokenizer_families(caplog):
    def split(name, text):
        _, pre = pre_tokenizer_for(name)
        return [piece for piece, _ in pre.pre_tokenize_str(text)]

    assert split("llama-bpe", "x 12345") == ["x", "Ġ", "123", "45"]
    assert split("qwen2", "x 12345") == ["x", "Ġ", "1", "2", "3", "4", "5"]
    assert split("smollm", "x 12345") == ["x", "Ġ", "1", "2", "3", "4", "5"]
    assert split("gpt-2", "x 12345") == ["x", "Ġ12345"]
    assert split("llama-bpe", "Hello world's") == ["Hello", "Ġworld", "'s"]
    with caplog.at_level(logging.WARNING):
        assert split("no-such-pre", "x 12345") == ["x", "Ġ12345"]
    assert "no-such-pre" in caplog.text


def _spm_metadata():
    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "▁he", "llo", "▁hello", "▁w", "or", "▁wor", "ld", "▁world"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + pieces
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.chat_template": None}


def test_sentencepiece_gguf_vocabulary():
    tok = Tokenizer.from_gguf(_spm_metadata())
    ids = tok.encode("hello world")
    assert tok.convert_ids_to_tokens(ids) == ["▁hello", "▁world"]
    assert tok.decode(ids) == "hello world"
    # SPM GGUFs add BOS by default; unknown characters fall back to byte tokens and decode back
    assert tok.encode("hello", add_special_tokens=True) == [1] + tok.encode("hello")
    ids = tok.encode("hello 🙂")
    assert "<0xF0>" in tok.convert_ids_to_tokens(ids)
    assert tok.decode(ids) == "hello 🙂"
    assert tok.decode([1] + ids + [2], skip_special_tokens=True) == "hello 🙂"


def test_gguf_tokenizer_errors():
    md = _spm_metadata()
    md["tokenizer.ggml.model"] = "bert"
    with pytest.raises(Exception, match="unsupported GGUF tokenizer model 'bert'"):
        build_tokenizer_from_gguf(md)
    with pytest.raises(Exception, match="no tokenizer"):
        build_tokenizer_from_gguf({"tokenizer.ggml.model": "gpt2"})


# ------------------------------------------------------------------------------------------------ chat templates
def test_chat_template_raise_exception():
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}ok"
    assert render_chat_template(template, [{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(ChatTemplateError, match="first message must be user"):
        render_chat_template(template, [{"role": "system", "content": "x"}])


def test_chat_template_list_content_parts(smol):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                          {"type": "text", "text": "of France?"}]}]
    flat = [{"role": "user", "content": "What is the capital\nof France?"}]
    assert smol.apply_chat_template(parts) == smol.apply_chat_template(flat)
    with pytest.raises(ChatTemplateError, match="image_url"):
        smol.apply_chat_template([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_chat_template_missing_template_fallback(tmp_path):
    msgs = [{"role": "user", "content": "Hi"}]
    expected = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat_template(None, msgs) == expected
    assert render_chat_template(None, msgs, add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat_template(None, msgs, fallback="error")
    tok = Tokenizer.from_hf_folder(make_tiny_model(tmp_path / "m"))
    tok.chat_template = None
    assert tok.apply_chat_template(msgs) == expected
    with pytest.raises(ChatTemplateError):
        tok.apply_chat_template(msgs, fallback="error")


def test_chat_template_environment_features():
    msgs = [{"role": "user", "content": "héllo <b>"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "stop"}]
    # tojson keeps non-ASCII and does not HTML-escape; indent works
    assert render_chat_template("{{ messages[0] | tojson }}", msgs) == '{"role": "user", "content": "héllo <b>"}'
    assert render_chat_template("{{ {'a': 1} | tojson(indent=2) }}", msgs) == '{\n  "a": 1\n}'
    # loopcontrols, trim_blocks / lstrip_blocks, generation blocks, strftime_now, special-token variables
    t = ("{% for m in messages %}\n  {% if loop.index > 2 %}{% break %}{% endif %}\n"
         "{% generation %}{{ m.content }}|{% endgeneration %}\n{% endfor %}")
    assert render_chat_template(t, msgs) == "héllo <b>|a|"
    assert len(render_chat_template("{{ strftime_now('%Y-%m-%d') }}", msgs)) == 10
    assert render_chat_template("{{ bos_token }}{{ messages|length }}{{ eos_token }}{{ tools is none }}", msgs,
                                bos_token="<s>", eos_token="</s>") == "<s>3</s>True"
    assert render_chat_template("{{ extra_var }}", msgs, extra_var="X") == "X"
    with pytest.raises(ChatTemplateError, match="invalid chat template"):
        render_chat_template("{% for %}", msgs)
    assert render_chat_template(CHATML_TEMPLATE, msgs[:1]).startswith("<|im_start|>user\nhéllo <b><|im_end|>")
