"""Structured output: request fields -> one normalized :class:`GrammarSpec`, compiled (cached, off the
engine thread, with a timeout) into llguidance grammars inside the Rust core, per-sequence matchers that
fill token bitmasks, and the masks applied to logits (:mod:`lmrs.structured.masks`, which imports torch).

    compiler = GrammarCompiler.for_tokenizer(tokenizer, vocab_size=config.vocab_size)
    spec = spec_from_request(body)                      # FieldError -> HTTP 400
    grammar = await compiler.compile_async(spec)        # GrammarError / GrammarTimeoutError -> 400
    matcher = grammar.matcher()                         # one per sequence
"""

from .compiler import DEFAULT_COMPILE_TIMEOUT_S, GrammarCompiler
from .errors import FieldError, GrammarError, GrammarTimeoutError
from .request import spec_from_request, spec_from_response_format, spec_from_structured_outputs, spec_from_text_format
from .spec import GrammarSpec, choice_spec, grammar_spec, json_object_spec, json_schema_spec, regex_spec
from .vocab import token_table

__all__ = ["DEFAULT_COMPILE_TIMEOUT_S", "GrammarCompiler", "FieldError", "GrammarError", "GrammarTimeoutError",
           "spec_from_request", "spec_from_response_format", "spec_from_structured_outputs",
           "spec_from_text_format", "GrammarSpec", "choice_spec", "grammar_spec", "json_object_spec",
           "json_schema_spec", "regex_spec", "token_table"]
