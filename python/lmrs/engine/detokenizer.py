"""Incremental detokenization with UTF-8 and stop-string holdback.

Streamed pieces never contain a broken UTF-8 character (a token that ends mid-character is held
until the character completes) nor the start of a stop string that may still complete; joined,
the pieces equal the final text. The decode window uses a few prompt tokens as context so that
tokenizers that drop a leading space at the start of a decode (SentencePiece) still produce the
right text.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids=(), *, skip_special_tokens: bool = True,
                 stop: list[str] | None = None, include_stop_str_in_output: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        ctx = list(prompt_ids[-CONTEXT_TOKENS:]) if prompt_ids is not None else []
        self.ids = ctx  # decode window source: prompt context + output tokens
        self.prefix_offset = 0
        self.read_offset = len(ctx)
        self.text = ""  # decoded output text so far (complete characters only)
        self.sent = 0  # characters of `text` already handed out
        self.stop = [s for s in (stop or []) if s]
        self.max_stop = max((len(s) for s in self.stop), default=0)
        self.include_stop = include_stop_str_in_output
        self.stopped_by: str | None = None

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _advance(self, final: bool) -> str:
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith(REPLACEMENT)):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def add(self, token_id: int) -> str:
        """Feed one generated token; returns the text that is now safe to emit (may be "")."""
        if self.stopped_by is not None:
            return ""
        self.ids.append(int(token_id))
        piece = self._advance(final=False)
        if not piece:
            return ""
        start = max(0, len(self.text) - self.max_stop + 1)
        self.text += piece
        if self.stop:
            hit = self._find_stop(start)
            if hit is not None:
                idx, s = hit
                self.stopped_by = s
                self.text = self.text[: idx + len(s)] if self.include_stop else self.text[:idx]
                return self._emit(len(self.text))
            return self._emit(len(self.text) - self._holdback())
        return self._emit(len(self.text))

    def flush(self) -> str:
        """At the end of the request: everything still held back (an unfinished stop string
        prefix, or a dangling partial character)."""
        if self.stopped_by is None and self.read_offset < len(self.ids):
            self.text += self._advance(final=True)
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.sent)
        out = self.text[self.sent : upto]
        self.sent = upto
        return out

    def _find_stop(self, start: int):
        best = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        return best

    def _holdback(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        tail = self.text[-(self.max_stop - 1) :] if self.max_stop > 1 else ""
        for k in range(len(tail), 0, -1):
            piece = tail[-k:]
            if any(s.startswith(piece) for s in self.stop):
                return k
        return 0
