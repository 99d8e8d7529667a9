"""A model's token table for the grammar engine: the bytes each token id decodes to, which ids are
control tokens, and the EOS ids.

Byte-level BPE vocabularies (GPT-2 style, what our GGUF and Hugging Face tokenizers use) store each byte
as a printable character (``Ġ`` for a space); SentencePiece-style ones use ``▁`` for a space and
``<0x0A>`` byte tokens. Added tokens (``<|im_end|>``, ``<tool_call>``) are their literal text.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

__all__ = ["token_table", "byte_decoder"]


def byte_decoder() -> dict[str, int]:
    """GPT-2's printable character -> byte map (the inverse of ``bytes_to_unicode``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _decoder_style(decoder: Any) -> str:
    """``byte_level``, ``sentencepiece`` or ``unknown`` from a tokenizer.json ``decoder`` entry."""
    if not isinstance(decoder, dict):
        return "unknown"
    kind = decoder.get("type")
    if kind == "ByteLevel":
        return "byte_level"
    if kind == "Metaspace":
        return "sentencepiece"
    if kind == "Sequence":
        styles = {_decoder_style(d) for d in decoder.get("decoders", [])}
        types = {d.get("type") for d in decoder.get("decoders", []) if isinstance(d, dict)}
        if "byte_level" in styles:
            return "byte_level"
        if "sentencepiece" in styles or "ByteFallback" in types or "Replace" in types:
            return "sentencepiece"
    return "unknown"


def token_table(tokenizer: Any, extra_special_ids: Iterable[int] = ()) -> tuple[list[bytes], list[int]]:
    """``(token_bytes, special_ids)`` of an :class:`lmrs.models.tokenizer.Tokenizer` (or a raw
    ``tokenizers.Tokenizer``): ``token_bytes[i]`` is what id ``i`` decodes to (``b""`` for an unused id),
    ``special_ids`` the control tokens. Raises ``ValueError`` for a vocabulary style it cannot map."""
    tk = getattr(tokenizer, "backend", tokenizer)
    spec = json.loads(tk.to_str())
    style = _decoder_style(spec.get("decoder"))
    if style == "unknown":
        raise ValueError(f"cannot map this tokenizer's tokens to bytes (decoder {spec.get('decoder')!r})")
    size = tk.get_vocab_size(with_added_tokens=True)
    table: list[bytes] = [b""] * size
    vocab: dict[str, int] = tk.get_vocab(with_added_tokens=False)
    byte_of = byte_decoder()
    for text, tid in vocab.items():
        if tid >= size:
            continue
        if style == "byte_level":
            try:
                table[tid] = bytes(byte_of[c] for c in text)
            except KeyError:
                table[tid] = text.encode("utf-8")
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            table[tid] = bytes([int(text[3:5], 16)])
        else:
            table[tid] = text.replace("\u2581", " ").encode("utf-8")
    special: set[int] = set(int(i) for i in extra_special_ids)
    for tid, added in tk.get_added_tokens_decoder().items():
        if tid < size:
            table[tid] = added.content.encode("utf-8")
            if added.special:
                special.add(tid)
    special.update(i for i in getattr(tokenizer, "all_special_ids", ()) if i < size)
    return table, sorted(special)
