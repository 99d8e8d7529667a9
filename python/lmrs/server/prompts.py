"""Turning API prompts into token ids: whole conversations, and session continuations.

A session continuation must produce exactly the tokens that rendering the whole conversation
would add after the previous reply, so that an interactive session and a stateless client that
resends its history see the same tokens. `continuation()` renders a placeholder exchange followed
by the new messages and keeps only what follows the placeholder reply; the reply's end-of-turn token
is dropped when the session's history already ends with an EOS (the model generated it). That token
may be any of the model's EOS tokens (Gemma closes turns with <end_of_turn>, Llama 3 with
<|eot_id|>, Phi with <|end|>, while their tokenizers' eos_token is another one).
"""

from __future__ import annotations

from lmrs.models.chat_template import ChatTemplateError
from lmrs.server.errors import APIError

_USER = "\u2063lmrs-previous-user\u2063"
_REPLY = "\u2063lmrs-previous-reply\u2063"


class PromptBuilder:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.has_template = bool(tokenizer.chat_template)

    def encode_text(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=self.tok.add_bos_token)

    def conversation(self, messages: list[dict]) -> list[int]:
        """A whole conversation, rendered with the chat template and a generation prompt."""
        messages = _normalize(messages)
        if not self.has_template:
            return self.encode_text("\n".join(_content(m) for m in messages))
        try:
            return self.tok.encode_chat(messages, add_generation_prompt=True)
        except ChatTemplateError as e:
            raise APIError(400, f"messages: the model's chat template rejected them: {e}") from None

    def turn(self, messages: list[dict], session=None) -> list[int]:
        """Tokens for a request: the whole conversation, or (with the session record of a session
        that continues) only what extends its history."""
        if session is None:
            return self.conversation(messages)
        return self.continuation(messages, session.ends_with_eos)

    def continuation(self, messages: list[dict], history_ends_with_eos: bool) -> list[int]:
        """Tokens that extend a session's history with `messages` and a generation prompt."""
        messages = _normalize(messages)
        if not self.has_template:
            return self.encode_text("\n".join(_content(m) for m in messages))
        base = [{"role": "user", "content": _USER}, {"role": "assistant", "content": _REPLY}]
        try:
            text = self.tok.apply_chat_template(base + list(messages), add_generation_prompt=True)
        except ChatTemplateError:
            # Templates that insist on alternation or a leading system prompt: render the new
            # messages alone, without the template's conversation preamble.
            return self.conversation(messages)
        cut = text.find(_REPLY)
        if cut < 0:
            return self.conversation(messages)
        suffix = text[cut + len(_REPLY):]
        if history_ends_with_eos:
            eos = next((e for e in self._eos_strings() if suffix.startswith(e)), "")
            suffix = suffix[len(eos):]
        return self.tok.encode(suffix, add_special_tokens=False)

    def _eos_strings(self) -> list[str]:
        """The text of every EOS token of the model, longest first."""
        names = [self.tok.eos_token, *self.tok.convert_ids_to_tokens(list(self.tok.eos_token_ids))]
        return sorted({n for n in names if n}, key=len, reverse=True)


def _normalize(messages: list[dict]) -> list[dict]:
    """Messages as templates expect them: a `content` string always present."""
    return [{**m, "content": _content(m)} for m in messages]


def _content(m: dict) -> str:
    c = m.get("content")
    if isinstance(c, list):
        return "\n".join(p.get("text", "") for p in c if isinstance(p, dict))
    return c or ""
