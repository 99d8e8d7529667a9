"""SamplingParams: what a user asks of one generation, validated with messages that name the field."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmrs._core import MAX_LOGPROBS
from lmrs.engine.errors import InvalidParameter

__all__ = ["SamplingParams", "InvalidParameter", "MAX_LOGPROBS"]


@dataclass
class SamplingParams:
    """Sampling and stopping parameters of one request (vLLM / OpenAI meanings).

    temperature 0 means greedy. `max_tokens` new tokens at most (0: only prefill, useful for
    sessions). `stop` strings end the text (not included unless `include_stop_str_in_output`).
    `logprobs`: return the log-probability of each generated token and this many top alternatives
    (at most `MAX_LOGPROBS`, the core's one limit). `logit_bias`: token id -> value in
    [-100, 100] added to that token's logit before sampling (OpenAI's field; the returned
    logprobs stay the model's own, as in vLLM).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = 16
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.validate()

    def validate(self) -> None:
        def num(name, lo=None, hi=None, lo_open=False, integer=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
                raise InvalidParameter(name, f"must be {'an integer' if integer else 'a number'}, got {v!r}")
            if v != v or v in (float("inf"), float("-inf")):
                raise InvalidParameter(name, f"must be finite, got {v!r}")
            if lo is not None and (v <= lo if lo_open else v < lo):
                raise InvalidParameter(name, f"must be {'>' if lo_open else '>='} {lo}, got {v!r}")
            if hi is not None and v > hi:
                raise InvalidParameter(name, f"must be <= {hi}, got {v!r}")

        num("temperature", 0.0)
        num("top_p", 0.0, 1.0, lo_open=True)
        num("top_k", integer=True)
        if self.top_k < -1:
            raise InvalidParameter("top_k", f"must be -1 or 0 (disabled) or a positive integer, got {self.top_k}")
        num("min_p", 0.0, 1.0)
        num("repetition_penalty", 0.0, lo_open=True)
        num("presence_penalty", -2.0, 2.0)
        num("frequency_penalty", -2.0, 2.0)
        num("max_tokens", 0, integer=True)
        num("min_tokens", 0, integer=True)
        if self.min_tokens > self.max_tokens:
            raise InvalidParameter("min_tokens", f"({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.seed is not None:
            num("seed", integer=True)
        if self.logprobs is not None:
            num("logprobs", 0, MAX_LOGPROBS, integer=True)
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InvalidParameter("stop", f"every stop string must be a non-empty string, got {s!r}")
        for t in self.stop_token_ids:
            if isinstance(t, bool) or not isinstance(t, int) or t < 0:
                raise InvalidParameter("stop_token_ids", f"must be non-negative token ids, got {t!r}")

        if self.logit_bias is not None:
            self.logit_bias = _checked_logit_bias(self.logit_bias)

    def core_kwargs(self) -> dict:
        """Keyword arguments of `Core.add` for these parameters."""
        return dict(
            max_new_tokens=self.max_tokens,
            min_new_tokens=self.min_tokens,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos,
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            top_k=max(0, int(self.top_k)),
            min_p=float(self.min_p),
            repetition_penalty=float(self.repetition_penalty),
            presence_penalty=float(self.presence_penalty),
            frequency_penalty=float(self.frequency_penalty),
            seed=self.seed,
            logprobs=self.logprobs,
        )


LOGIT_BIAS_LIMIT = 100.0


def _checked_logit_bias(bias) -> dict[int, float] | None:
    """{token id: bias} with ids as ints and values in [-100, 100]; None when empty."""
    if not isinstance(bias, dict):
        raise InvalidParameter("logit_bias", f"must be a map of token id -> bias, got {type(bias).__name__}")
    out = {}
    for t, v in bias.items():
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise InvalidParameter("logit_bias", f"keys must be non-negative token ids, got {t!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -LOGIT_BIAS_LIMIT <= v <= LOGIT_BIAS_LIMIT:
            raise InvalidParameter("logit_bias", f"the bias of token {t} must be a number in [-100, 100], got {v!r}")
        out[t] = float(v)
    return out or None
