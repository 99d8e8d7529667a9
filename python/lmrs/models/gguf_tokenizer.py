"""Build a Hugging Face ``tokenizers.Tokenizer`` from GGUF tokenizer metadata.

Two GGUF tokenizer models are supported:

* ``tokenizer.ggml.model == "gpt2"``: byte-level BPE (Llama 3, Qwen2, SmolLM, GPT-2...).  Vocabulary from
  ``tokenizer.ggml.tokens``, merges from ``tokenizer.ggml.merges``.  The pre-tokenizer is chosen from
  ``tokenizer.ggml.pre`` using llama.cpp's table of split regexes (see :data:`PRE_TOKENIZER_FAMILIES`):

  - ``gpt2``: GPT-2's regex (``ByteLevel(use_regex=True)``);
  - ``digits+gpt2`` (``smollm``, ``starcoder``...): every digit split off first, then GPT-2's regex;
  - ``llama3`` (``llama-bpe``...): the Llama 3 regex (numbers in groups of up to 3);
  - ``qwen2``: the Qwen2 regex (single digits) with NFC normalisation.

  Unknown names fall back to GPT-2's regex with a warning.
* ``tokenizer.ggml.model == "llama"``: SentencePiece-style BPE with byte fallback (Llama 2, Mistral v0.x).
  Merges are rebuilt from ``tokenizer.ggml.scores`` like transformers' GGUF converter.

Token types (``tokenizer.ggml.token_type``): 3 = control -> special added token (``<|im_start|>``, ``<s>``),
4 = user defined -> normal added token, 2 = unknown -> special.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from .errors import UnsupportedModelError

__all__ = ["PRE_TOKENIZER_FAMILIES", "build_tokenizer_from_gguf", "pre_tokenizer_for", "GGUFTokenizerInfo"]

log = logging.getLogger(__name__)

TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 2, 3, 4
TOKEN_TYPE_UNUSED, TOKEN_TYPE_BYTE = 5, 6

_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

#: llama.cpp ``tokenizer.ggml.pre`` name -> split family
PRE_TOKENIZER_FAMILIES: dict[str, str] = {
    **dict.fromkeys(["default", "gpt2", "gpt-2", "phi-2", "roberta-bpe", "mpt", "olmo"], "gpt2"),
    **dict.fromkeys(["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"],
                    "digits+gpt2"),
    **dict.fromkeys(["llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe", "falcon3"], "llama3"),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"], "qwen2"),
}


def pre_tokenizer_for(pre_name: str | None) -> tuple[Any, Any]:
    """Return ``(normalizer_or_None, pre_tokenizer)`` for a GGUF ``tokenizer.ggml.pre`` name."""
    family = PRE_TOKENIZER_FAMILIES.get(pre_name or "default")
    if family is None:
        log.warning("unknown GGUF pre-tokenizer %r: falling back to the GPT-2 split regex; tokenization may "
                    "differ slightly from the original model", pre_name)
        family = "gpt2"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    if family == "gpt2":
        return None, byte_level
    if family == "digits+gpt2":
        return None, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    regex = _LLAMA3_REGEX if family == "llama3" else _QWEN2_REGEX
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    return (normalizers.NFC() if family == "qwen2" else None), pre


class GGUFTokenizerInfo:
    """What :func:`build_tokenizer_from_gguf` returns besides the tokenizer: special tokens and flags."""

    def __init__(self, tokenizer: Tokenizer, tokens: list[str], md: Mapping[str, Any]):
        def tok(key):
            tid = md.get(key)
            return tokens[int(tid)] if tid is not None and 0 <= int(tid) < len(tokens) else None

        self.tokenizer = tokenizer
        self.bos_token = tok("tokenizer.ggml.bos_token_id")
        self.eos_token = tok("tokenizer.ggml.eos_token_id")
        self.unk_token = tok("tokenizer.ggml.unknown_token_id")
        self.pad_token = tok("tokenizer.ggml.padding_token_id")
        # end-of-turn / end-of-message ids (Llama 3 <|eot_id|>, <|eom_id|>) also stop generation
        self.extra_eos_ids = [int(md[k]) for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
                              if md.get(k) is not None]
        self.add_bos_token = bool(md.get("tokenizer.ggml.add_bos_token", md.get("tokenizer.ggml.model") == "llama"))
        self.add_eos_token = bool(md.get("tokenizer.ggml.add_eos_token", False))
        self.chat_template = md.get("tokenizer.chat_template")


def _added_tokens(tokens: list[str], types: list[int] | None) -> tuple[list[AddedToken], list[AddedToken]]:
    special, normal = [], []
    if types is None:
        return special, normal
    for i, t in enumerate(types):
        if t in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN):
            special.append(AddedToken(tokens[i], special=True, normalized=False))
        elif t == TOKEN_TYPE_USER_DEFINED:
            normal.append(AddedToken(tokens[i], special=False, normalized=False))
    return special, normal


def _vocab_dict(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    dups = 0
    for i, t in enumerate(tokens):
        if t in vocab:
            dups += 1
            continue
        vocab[t] = i
    if dups:
        log.warning("GGUF vocabulary has %d duplicate token strings; the later copies are unreachable", dups)
    return vocab


def _bpe_tokenizer(tokens, md) -> Tokenizer:
    merges_raw = md.get("tokenizer.ggml.merges")
    if not merges_raw:
        raise UnsupportedModelError("GGUF byte-level BPE tokenizer has no tokenizer.ggml.merges")
    merges = [tuple(m.split(" ", 1)) for m in merges_raw]
    tk = Tokenizer(BPE(_vocab_dict(tokens), merges, fuse_unk=False, byte_fallback=False))
    normalizer, pre = pre_tokenizer_for(md.get("tokenizer.ggml.pre"))
    if normalizer is not None:
        tk.normalizer = normalizer
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    return tk


def _spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Rebuild BPE merges from SentencePiece scores (same procedure as transformers' GGUF converter)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for piece, pid in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                found.append((scores[pid], vocab[left], vocab[right], left, right))
    found.sort(key=lambda x: (-x[0], x[1], x[2]))
    return [(f[3], f[4]) for f in found]


def _spm_tokenizer(tokens, md) -> Tokenizer:
    scores = md.get("tokenizer.ggml.scores")
    if scores is None:
        raise UnsupportedModelError("GGUF SentencePiece ('llama') tokenizer has no tokenizer.ggml.scores")
    unk_id = md.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None else None
    merges = md.get("tokenizer.ggml.merges")
    merges = [tuple(m.split(" ", 1)) for m in merges] if merges else _spm_merges(tokens, list(scores))
    tk = Tokenizer(BPE(_vocab_dict(tokens), merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    add_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
    norm = [normalizers.Prepend("▁")] if add_prefix else []
    tk.normalizer = normalizers.Sequence(norm + [normalizers.Replace(" ", "▁")])
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tk.decoder = decoders.Sequence(dec)
    return tk


def build_tokenizer_from_gguf(md: Mapping[str, Any]) -> GGUFTokenizerInfo:
    """Build the tokenizer described by GGUF metadata ``md`` (a dict of ``tokenizer.ggml.*`` values)."""
    model = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    if not tokens:
        raise UnsupportedModelError("GGUF file has no tokenizer (tokenizer.ggml.tokens is missing)")
    tokens = list(tokens)
    if model == "gpt2":
        tk = _bpe_tokenizer(tokens, md)
    elif model == "llama":
        tk = _spm_tokenizer(tokens, md)
    else:
        raise UnsupportedModelError(
            f"unsupported GGUF tokenizer model {model!r}; lmrs supports 'gpt2' (byte-level BPE) and "
            "'llama' (SentencePiece BPE)")
    types = md.get("tokenizer.ggml.token_type")
    special, normal = _added_tokens(tokens, list(types) if types is not None else None)
    if special:
        tk.add_special_tokens(special)
    if normal:
        tk.add_tokens(normal)
    info = GGUFTokenizerInfo(tk, tokens, md)
    if types is None:  # no type table: at least make bos/eos/unk special
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                               for t in (info.bos_token, info.eos_token, info.unk_token) if t])
    post = bos_post_processor(info.bos_token, tk.token_to_id(info.bos_token) if info.bos_token else None,
                              info.add_bos_token)
    if post is not None:
        tk.post_processor = post
    return info


def bos_post_processor(bos_token: str | None, bos_id: int | None, add_bos: bool):
    """Post-processor that prepends BOS when ``add_bos`` (so ``encode(add_special_tokens=True)`` adds it)."""
    if add_bos and bos_token is not None and bos_id is not None:
        return processors.TemplateProcessing(
            single=f"{bos_token}:0 $A:0", pair=f"{bos_token}:0 $A:0 {bos_token}:1 $B:1",
            special_tokens=[(bos_token, bos_id)])
    return None
