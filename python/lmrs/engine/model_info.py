"""ModelInfo: the facts about the served model that the server needs (name, vocabulary, EOS ids,
context and session lengths, hidden size), frozen when the engine is built so the event loop
reads them without touching the engine thread's objects."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    name: str
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_model_len: int  # the context length requests are checked against
    session_len: int  # most tokens one session may hold (history + prompt + output)
    hidden_size: int  # the length of an embedding vector
