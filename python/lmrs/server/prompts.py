"""Turning API prompts into token ids: whole conversations, and session turns.

A session turn is sent to the core in two forms, because only the core knows, when the turn is
admitted, what the session holds then: the whole conversation (used when the session has no
history: new, dropped by the idle or count limits, or restarted) and the continuation, the
tokens that rendering the whole conversation would add after the previous reply (so an
interactive session and a stateless client that resends its history see the same tokens).
`continuation()` renders a placeholder exchange followed by the new messages and keeps only what
follows the placeholder reply; its leading end-of-turn token (closing the previous reply) is marked
so the core drops it when the history already ends with EOS (the model generated it). That token
may be any of the model's EOS tokens (Gemma closes turns with <end_of_turn>, Llama 3 with
<|eot_id|>, Phi with <|end|>, while their tokenizers' eos_token is another one).
"""

from __future__ import annotations

from lmrs.engine.request import SessionTurn
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

    def conversation(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """A whole conversation, rendered with the chat template and a generation prompt. `tools`:
        the template's `tools` argument (function definitions)."""
        messages = _normalize(messages)
        if not self.has_template:
            return self.encode_text("\n".join(_content(m) for m in messages))
        try:
            return self.tok.encode_chat(messages, add_generation_prompt=True, **_tools_kw(tools))
        except ChatTemplateError as e:
            raise APIError(400, f"messages: the model's chat template rejected them: {e}") from None

    def session_turn(self, messages: list[dict], session_id: int, *, sequence_start: bool, sequence_end: bool,
                     owner: str | None, tools: list[dict] | None = None) -> tuple[list[int], SessionTurn]:
        """A session turn: (the whole-conversation form, the turn with its continuation form)."""
        if not messages:
            return [], SessionTurn(session_id, sequence_start, sequence_end, (), 0, owner)
        whole = self.conversation(messages, tools)
        cont, eos_prefix = self.continuation(messages, tools)
        return whole, SessionTurn(session_id, sequence_start, sequence_end, tuple(cont), eos_prefix, owner)

    def continuation(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], int]:
        """Tokens that extend a session's history with `messages` and a generation prompt, and
        how many of them close the previous reply with EOS (dropped when the history has it)."""
        messages = _normalize(messages)
        if not self.has_template:
            return self.encode_text("\n".join(_content(m) for m in messages)), 0
        base = [{"role": "user", "content": _USER}, {"role": "assistant", "content": _REPLY}]
        try:
            text = self.tok.apply_chat_template(base + list(messages), add_generation_prompt=True,
                                                **_tools_kw(tools))
        except ChatTemplateError:
            # Templates that insist on alternation or a leading system prompt: render the new
            # messages alone, without the template's conversation preamble.
            return self.conversation(messages, tools), 0
        cut = text.find(_REPLY)
        if cut < 0:
            return self.conversation(messages, tools), 0
        suffix = text[cut + len(_REPLY):]
        ids = self.tok.encode(suffix, add_special_tokens=False)
        eos = next((e for e in self._eos_strings() if suffix.startswith(e)), "")
        if eos:
            rest = self.tok.encode(suffix[len(eos):], add_special_tokens=False)
            k = len(ids) - len(rest)
            if k > 0 and ids[k:] == rest:
                return ids, k
        return ids, 0

    def _eos_strings(self) -> list[str]:
        """The text of every EOS token of the model, longest first."""
        names = [self.tok.eos_token, *self.tok.convert_ids_to_tokens(list(self.tok.eos_token_ids))]
        return sorted({n for n in names if n}, key=len, reverse=True)


def _tools_kw(tools: list[dict] | None) -> dict:
    return {"tools": tools} if tools else {}


def _normalize(messages: list[dict]) -> list[dict]:
    """Messages as templates expect them: a `content` string always present."""
    return [{**m, "content": _content(m)} for m in messages]


def _content(m: dict) -> str:
    c = m.get("content")
    if isinstance(c, list):
        return "\n".join(p.get("text", "") for p in c if isinstance(p, dict))
    return c or ""
