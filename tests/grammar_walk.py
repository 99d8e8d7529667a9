"""Random walks under a grammar's token mask, for the structured-output tests and the benchmark.

A walk starts a matcher, and at each step fills the real mask, picks one allowed token and commits it,
until it picks EOS. Early steps pick uniformly among all allowed tokens (so walks wander through
escapes, unicode, whitespace, long numbers); with growing probability later steps pick among the allowed
tokens that contain a closing character (``" } ] ,``) or EOS, so every walk ends in a few hundred tokens.
"""

from __future__ import annotations

import functools
import random

import numpy as np

CLOSERS = set(b'"}],')


class Walker:
    def __init__(self, token_bytes: list[bytes], eos_ids: list[int], vocab_size: int, patience: int = 40):
        self.token_bytes = token_bytes
        self.eos = set(eos_ids)
        self.vocab_size = vocab_size
        self.patience = patience
        closing = np.zeros(vocab_size, dtype=bool)
        for i, b in enumerate(token_bytes):
            closing[i] = bool(CLOSERS.intersection(b)) or i in self.eos
        self.closing = closing

    def allowed(self, mask_row: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(mask_row.view(np.uint8), bitorder="little")[: self.vocab_size]
        return np.flatnonzero(bits)

    def walk(self, grammar, rng: random.Random, max_tokens: int = 3000,
             stubborn: bool = False) -> tuple[list[int], bytes]:
        """Token ids (EOS last) and the bytes of the text before EOS. ``stubborn``: a model that never
        closes what it may continue (it picks among the allowed tokens without a closing character or
        EOS whenever there are some)."""
        m = grammar.matcher()
        mask = np.zeros((1, (self.vocab_size + 31) // 32), dtype=np.int32)
        out: list[int] = []
        for step in range(max_tokens):
            m.fill_next_token_bitmask(mask, 0)
            allowed = self.allowed(mask[0])
            assert len(allowed), f"empty mask after {out}"
            pick_from = allowed
            if stubborn:
                open_ = allowed[~self.closing[allowed]]
                pick_from = open_ if len(open_) else allowed
            elif rng.random() < min(1.0, step / self.patience):
                closing = allowed[self.closing[allowed]]
                if len(closing):
                    pick_from = closing
            tok = int(pick_from[rng.randrange(len(pick_from))])
            m.commit(tok)
            out.append(tok)
            if tok in self.eos:
                assert m.is_stopped()
                return out, b"".join(self.token_bytes[t] for t in out[:-1])
        raise AssertionError(f"walk did not finish in {max_tokens} tokens")


def accepts(grammar, tokens) -> bool:
    """Whether ``grammar`` takes ``tokens`` and is then complete."""
    m = grammar.matcher()
    try:
        for t in tokens:
            m.commit(t)
    except ValueError:
        return False
    return m.is_accepting()


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    from lmrs.models.loader import default_model_path
    from lmrs.models.tokenizer import Tokenizer

    return Tokenizer.from_gguf(default_model_path())
