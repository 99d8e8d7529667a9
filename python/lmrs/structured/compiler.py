"""Compiling grammar specs for one model: off the calling thread, cached, with a timeout.

- Compiles run on a small thread pool inside the Rust core with the GIL released, so neither the event
  loop nor the engine thread waits for them.
- The cache is keyed by the normalized spec (:attr:`GrammarSpec.key`), holds the last ``cache_size``
  results (LRU; invalid grammars are remembered too) and stores *futures*, so concurrent requests for
  the same new schema share one compile.
- A caller waits at most ``timeout_s``; then :class:`GrammarTimeoutError` (HTTP 400). The compile itself
  keeps running (llguidance bounds its work with its lexer-fuel and grammar-size limits) and its result
  stays cached, so a retry can succeed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
from collections import OrderedDict
from typing import Any, Iterable

from .. import _core
from .errors import GrammarError, GrammarTimeoutError
from .spec import GrammarSpec
from .vocab import token_table

__all__ = ["GrammarCompiler", "DEFAULT_COMPILE_TIMEOUT_S"]

DEFAULT_COMPILE_TIMEOUT_S = 10.0


class GrammarCompiler:
    """Turns :class:`GrammarSpec` into ``lmrs._core.Grammar`` objects for one vocabulary."""

    def __init__(self, vocab: "_core.GrammarVocab", *, special_tokens: dict[str, int] | None = None,
                 cache_size: int = 256, timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S, workers: int = 2):
        if cache_size < 1 or workers < 1 or timeout_s <= 0:
            raise ValueError("cache_size and workers must be >= 1 and timeout_s > 0")
        self.vocab = vocab
        self.special_tokens = dict(special_tokens or {})  # special token text -> id (tool-call markers)
        self.cache_size = cache_size
        self.timeout_s = timeout_s
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lmrs-grammar")
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], cf.Future] = OrderedDict()
        self._stats = {"hits": 0, "misses": 0, "compile_seconds": 0.0, "failures": 0, "timeouts": 0}

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, *, vocab_size: int | None = None,
                      eos_token_ids: Iterable[int] | None = None, **kwargs) -> "GrammarCompiler":
        """Build the vocabulary from an :class:`lmrs.models.tokenizer.Tokenizer`. ``vocab_size``: the logits
        width (default: the tokenizer's size); ``eos_token_ids``: default the tokenizer's."""
        table, special = token_table(tokenizer)
        eos = list(eos_token_ids if eos_token_ids is not None else tokenizer.eos_token_ids)
        vocab = _core.GrammarVocab(table, special, eos, vocab_size or len(table))
        names = {table[i].decode("utf-8", "replace"): i for i in special}
        return cls(vocab, special_tokens=names, **kwargs)

    def special_token_id(self, text: str) -> int | None:
        """The id of the special token spelled ``text`` (``[TOOL_CALLS]``), or None."""
        return self.special_tokens.get(text)

    # --------------------------------------------------------------------------------------- compile
    def submit(self, spec: GrammarSpec) -> cf.Future:
        """The future of ``spec``'s compiled grammar (cached, shared with concurrent callers)."""
        key = spec.key
        with self._lock:
            fut = self._cache.get(key)
            if fut is not None:
                self._cache.move_to_end(key)
                self._stats["hits"] += 1
                return fut
            self._stats["misses"] += 1
            fut = self._pool.submit(self._compile, spec)
            self._cache[key] = fut
            self._evict()
            return fut

    def _evict(self) -> None:
        over = len(self._cache) - self.cache_size
        if over <= 0:
            return
        for key in [k for k, f in self._cache.items() if f.done()][:over]:
            del self._cache[key]

    def _compile(self, spec: GrammarSpec) -> "_core.Grammar":
        t0 = time.perf_counter()
        try:
            return _core.Grammar.compile(self.vocab, spec.kind, spec.source)
        except _core.GrammarError as e:
            with self._lock:
                self._stats["failures"] += 1
            raise GrammarError(spec.field or "grammar", _describe(spec, str(e))) from None
        finally:
            with self._lock:
                self._stats["compile_seconds"] += time.perf_counter() - t0

    def compile(self, spec: GrammarSpec, timeout_s: float | None = None) -> "_core.Grammar":
        """Block until ``spec`` is compiled (at most ``timeout_s``, default the compiler's)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        fut = self.submit(spec)
        try:
            return fut.result(timeout=timeout)
        except cf.TimeoutError:
            self._timed_out()
            raise GrammarTimeoutError(spec.field or "grammar", timeout) from None

    async def compile_async(self, spec: GrammarSpec, timeout_s: float | None = None) -> "_core.Grammar":
        """``compile`` for the event loop: waits without blocking it."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        fut = asyncio.wrap_future(self.submit(spec))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            self._timed_out()
            raise GrammarTimeoutError(spec.field or "grammar", timeout) from None

    def _timed_out(self) -> None:
        with self._lock:
            self._stats["timeouts"] += 1

    def stats(self) -> dict:
        """Cache hits and misses, compile failures and timeouts, total compile seconds, cached entries."""
        with self._lock:
            return {**self._stats, "cached": len(self._cache)}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _describe(spec: GrammarSpec, message: str) -> str:
    what = {"json_schema": "invalid JSON schema", "regex": "invalid regular expression",
            "lark": "invalid grammar"}[spec.kind]
    message = message.removeprefix("invalid grammar: ")
    return f"{what}: {message}"
