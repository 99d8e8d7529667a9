"""The server's grammar services: one `GrammarCompiler` per model (its vocabulary built once, off the
event loop, as soon as the model is loaded), the model's tool-call parser, and the step every route
shares: a request body's output constraint -> a compiled grammar, with every fault an HTTP 400 that
names the field.

    grammar = await compile_constraint(state, spec_of(body))     # None: free text
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Mapping

from lmrs.server.errors import APIError
from lmrs.structured import FieldError, GrammarCompiler, GrammarSpec, spec_from_request
from lmrs.tools import ToolParser, detect_tool_parser, get_tool_parser

if TYPE_CHECKING:
    from lmrs.server.state import ServerState

__all__ = ["GrammarServices", "spec_of", "compile_constraint", "field_error"]


def field_error(e: FieldError) -> APIError:
    """A structured-output or tool field fault as the 400 every route answers."""
    return APIError(400, str(e))


class GrammarServices:
    """Per server: the compiler (built lazily, once) and the tool-call parser."""

    def __init__(self, state: "ServerState"):
        self.state = state
        self._compiler: GrammarCompiler | None = None
        self._building: asyncio.Future | None = None
        self._parser_known = False
        self._parser: ToolParser | None = None

    def _build(self) -> GrammarCompiler:
        info = self.state.info
        return GrammarCompiler.for_tokenizer(self.state.tokenizer, vocab_size=info.vocab_size,
                                             eos_token_ids=list(info.eos_token_ids),
                                             timeout_s=self.state.settings.grammar_compile_timeout)

    async def compiler(self) -> GrammarCompiler:
        """The model's compiler; the first call builds its vocabulary on a worker thread (the event
        loop keeps serving) and concurrent callers share that build."""
        if self._compiler is not None:
            return self._compiler
        if self._building is None:
            self._building = asyncio.get_running_loop().run_in_executor(None, self._build)
        try:
            self._compiler = await asyncio.shield(self._building)
        except ValueError as e:  # a tokenizer whose tokens cannot be mapped to bytes
            raise APIError(400, f"response_format: structured output is not available for this model: {e}") from None
        return self._compiler

    def warm_when_ready(self) -> None:
        """Build the compiler in the background once the model is loaded (so the first constrained
        request does not pay for the vocabulary)."""

        async def warm():
            while not self.state.engine.ready.is_set():
                if self.state.engine.error is not None:
                    return
                await asyncio.sleep(0.1)
            try:
                await self.compiler()
            except APIError:
                pass

        asyncio.get_running_loop().create_task(warm())

    @property
    def tool_parser(self) -> ToolParser | None:
        """`--tool-call-parser`, else the format the chat template shows, else None."""
        if not self._parser_known:
            name = self.state.settings.tool_call_parser
            self._parser = get_tool_parser(name) if name else detect_tool_parser(self.state.tokenizer.chat_template)
            self._parser_known = True
        return self._parser

    def stats(self) -> dict | None:
        return self._compiler.stats() if self._compiler is not None else None


def spec_of(body: Mapping[str, Any]) -> GrammarSpec | None:
    """The output constraint of a request body (`response_format`, `structured_outputs`, `guided_*`,
    `text.format`), or None. Raises APIError 400 naming the field."""
    try:
        return spec_from_request(body)
    except FieldError as e:
        raise field_error(e) from None


async def compile_constraint(state: "ServerState", spec: GrammarSpec | None):
    """`spec` compiled for the model (cached; off the event loop; the compile timeout answers 400), or
    None for free text."""
    if spec is None:
        return None
    compiler = await state.grammars.compiler()
    try:
        return await compiler.compile_async(spec)
    except FieldError as e:
        raise field_error(e) from None
