"""The engine's tokenizer: a thin, fast wrapper around a Rust ``tokenizers.Tokenizer``.

Load it from a Hugging Face folder (:meth:`Tokenizer.from_hf_folder`: ``tokenizer.json`` plus
``tokenizer_config.json`` / ``chat_template.jinja`` / ``generation_config.json``) or from a GGUF file's
metadata (:meth:`Tokenizer.from_gguf`).  ``encode``/``decode`` call straight into the Rust tokenizer.

Semantics follow transformers' fast tokenizers: special-token strings in the text (``<|im_start|>``) always
become their ids; ``add_special_tokens=True`` applies the tokenizer's post-processor (e.g. BOS); no
``clean_up_tokenization_spaces`` is applied when decoding.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import tokenizers
from tokenizers.decoders import DecodeStream

from .chat_template import render_chat_template
from .errors import CorruptModelError, ModelNotFoundError

__all__ = ["Tokenizer"]

log = logging.getLogger(__name__)


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as a string or an AddedToken dict."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get("content")
    return str(value)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorruptModelError(f"cannot read {path}: {e}", path) from e


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


class Tokenizer:
    """Text <-> token ids, special tokens and chat-template rendering for one model."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        extra_eos_token_ids: Iterable[int] = (),
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        chat_template: str | None = None,
        model_max_length: int | None = None,
    ):
        self._tk = tokenizer
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self.bos_token_id = self._id_of(bos_token)
        self.eos_token_id = self._id_of(eos_token)
        self.unk_token_id = self._id_of(unk_token)
        self.pad_token_id = self._id_of(pad_token)
        # a token string whose id is unknown is dropped (set to None) together with its id
        self.bos_token = bos_token if self.bos_token_id is not None else None
        self.eos_token = eos_token if self.eos_token_id is not None else None
        self.unk_token = unk_token if self.unk_token_id is not None else None
        self.pad_token = pad_token if self.pad_token_id is not None else None
        eos = [self.eos_token_id] if self.eos_token_id is not None else []
        self.eos_token_ids: list[int] = list(dict.fromkeys(eos + [int(i) for i in extra_eos_token_ids]))
        if self.eos_token is None and self.eos_token_ids:
            self.eos_token = self._tk.id_to_token(self.eos_token_ids[0])
            self.eos_token_id = self.eos_token_ids[0]
        self._added = self._tk.get_added_tokens_decoder()
        specials = {i for i, t in self._added.items() if t.special}
        specials.update(i for i in (self.bos_token_id, self.eos_token_id, self.unk_token_id, self.pad_token_id)
                        if i is not None)
        specials.update(self.eos_token_ids)
        self.all_special_ids: set[int] = specials

    def _id_of(self, token: str | None) -> int | None:
        if token is None:
            return None
        tid = self._tk.token_to_id(token)
        if tid is None:
            log.warning("special token %r is not in the tokenizer's vocabulary; ignoring it", token)
        return tid

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_hf_folder(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json``, ``chat_template.jinja``/``.json``,
        ``generation_config.json``) from a Hugging Face model folder."""
        folder = Path(path)
        tj = folder / "tokenizer.json"
        if not tj.is_file():
            hint = (" (only a SentencePiece tokenizer.model is present; lmrs needs the fast tokenizer.json, which "
                    "transformers writes with AutoTokenizer.from_pretrained(...).save_pretrained(...))"
                    if (folder / "tokenizer.model").exists() else "")
            raise ModelNotFoundError(f"no tokenizer.json in {folder}{hint}", folder)
        try:
            tk = tokenizers.Tokenizer.from_file(str(tj))
        except Exception as e:
            raise CorruptModelError(f"cannot parse {tj}: {e}", tj) from e
        cfg = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
        gen = (_read_json(folder / "generation_config.json")
               if (folder / "generation_config.json").is_file() else {})
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
            template = named.get("default") or next(iter(named.values()), None)
        if template is None and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        if template is None and (folder / "chat_template.json").is_file():
            template = _read_json(folder / "chat_template.json").get("chat_template")
        max_len = cfg.get("model_max_length")
        return cls(
            tk,
            bos_token=_token_content(cfg.get("bos_token")),
            eos_token=_token_content(cfg.get("eos_token")),
            unk_token=_token_content(cfg.get("unk_token")),
            pad_token=_token_content(cfg.get("pad_token")),
            extra_eos_token_ids=_ids(gen.get("eos_token_id")),
            add_bos_token=bool(cfg.get("add_bos_token", False)),
            add_eos_token=bool(cfg.get("add_eos_token", False)),
            chat_template=template,
            model_max_length=int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e12 else None,
        )

    @classmethod
    def from_gguf(cls, source: Any) -> "Tokenizer":
        """Build from a GGUF file: ``source`` is a path, a ``gguf.GGUFReader`` or a metadata dict
        (as returned by :func:`lmrs.models.gguf_loader.read_gguf_metadata`)."""
        from .gguf_loader import open_gguf, read_gguf_metadata
        from .gguf_tokenizer import build_tokenizer_from_gguf

        if isinstance(source, (str, os.PathLike)):
            source = open_gguf(source)
        md = source if isinstance(source, Mapping) else read_gguf_metadata(source)
        info = build_tokenizer_from_gguf(md)
        ctx = md.get(f"{md.get('general.architecture')}.context_length")
        return cls(
            info.tokenizer,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
            unk_token=info.unk_token,
            pad_token=info.pad_token,
            extra_eos_token_ids=info.extra_eos_ids,
            add_bos_token=info.add_bos_token,
            add_eos_token=info.add_eos_token,
            chat_template=info.chat_template,
            model_max_length=int(ctx) if ctx else None,
        )

    # ------------------------------------------------------------------------------------------- saving
    def save_hf(self, folder: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (readable by transformers and
        :meth:`from_hf_folder`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._tk.save(str(folder / "tokenizer.json"))
        added = {
            str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
            for i, t in sorted(self._added.items())
        }
        cfg: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.model_max_length or 1000000000000000019884624838656,
            "added_tokens_decoder": added,
        }
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                                      encoding="utf-8")

    # ------------------------------------------------------------------------------------------- encode/decode
    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying Rust tokenizer."""
        return self._tk

    @property
    def vocab_size(self) -> int:
        """Number of token ids including added tokens (transformers' ``len(tokenizer)``)."""
        return self._tk.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings in it map to their ids.  With ``add_special_tokens``
        the post-processor runs (BOS for models that add it)."""
        ids = self._tk.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
                ids.insert(0, self.bos_token_id)
            if self.add_eos_token and self.eos_token_id is not None and (not ids or ids[-1] != self.eos_token_id):
                ids.append(self.eos_token_id)
        return ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """``encode`` for many texts (parallel in Rust)."""
        if add_special_tokens and (self.add_bos_token or self.add_eos_token):
            return [self.encode(t, True) for t in texts]
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped when ``skip_special_tokens``."""
        if not isinstance(ids, list):
            ids = [int(i) for i in ids]  # tuples, numpy arrays, torch tensors
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_stream(self, skip_special_tokens: bool = True) -> DecodeStream:
        """An incremental detokenizer: ``s = tok.decode_stream(); s.step(tok.backend, token_id) -> str | None``."""
        return DecodeStream(skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        """Vocabulary strings of ids (byte-level BPE shows spaces as ``Ġ``)."""
        if isinstance(ids, int):
            return self._tk.id_to_token(ids)
        return [self._tk.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | None | list[int | None]:
        if isinstance(tokens, str):
            return self._tk.token_to_id(tokens)
        return [self._tk.token_to_id(t) for t in tokens]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Join vocabulary strings back into text with the tokenizer's decoder."""
        decoder = self._tk.decoder
        return decoder.decode(list(tokens)) if decoder is not None else "".join(tokens)

    def get_vocab(self) -> dict[str, int]:
        return self._tk.get_vocab(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, str]:
        """The named special tokens that are set, e.g. {"bos_token": "<|im_start|>", ...}."""
        named = {"bos_token": self.bos_token, "eos_token": self.eos_token, "unk_token": self.unk_token,
                 "pad_token": self.pad_token}
        return {k: v for k, v in named.items() if v is not None}

    # ------------------------------------------------------------------------------------------- chat
    def apply_chat_template(self, messages: Iterable[Mapping[str, Any]], add_generation_prompt: bool = True, *,
                            chat_template: str | None = None, fallback: str = "chatml", **extra: Any) -> str:
        """Render ``messages`` with the model's chat template (or ``chat_template``) to a prompt string.

        Without any template: ``fallback="chatml"`` uses a plain ChatML template, ``"error"`` raises
        :class:`lmrs.models.chat_template.ChatTemplateError`.  Extra keyword arguments (``tools``,
        ``enable_thinking``...) become template variables.
        """
        variables = {**self.special_tokens, **extra}
        return render_chat_template(chat_template or self.chat_template, messages,
                                    add_generation_prompt=add_generation_prompt, fallback=fallback, **variables)

    def encode_chat(self, messages: Iterable[Mapping[str, Any]], add_generation_prompt: bool = True,
                    **kwargs: Any) -> list[int]:
        """Token ids of the rendered chat (like transformers' ``apply_chat_template(tokenize=True)``: the
        template's own special tokens only, no extra BOS)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt, **kwargs),
                           add_special_tokens=False)

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
                f"eos_ids={self.eos_token_ids}, chat_template={'yes' if self.chat_template else 'no'})")

