"""Which tool-call format a model speaks: by name (``--tool-call-parser``) or from its chat template."""

from __future__ import annotations

from .hermes import HermesToolParser
from .llama3_json import Llama3JsonToolParser
from .mistral import MistralToolParser
from .parser_base import ToolParser

__all__ = ["TOOL_PARSERS", "get_tool_parser", "detect_tool_parser"]

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
}


def get_tool_parser(name: str) -> ToolParser:
    """The parser called ``name``; a ``ValueError`` lists the known ones."""
    cls = TOOL_PARSERS.get(name)
    if cls is None:
        raise ValueError(f"unknown tool call parser {name!r}; known: {', '.join(sorted(TOOL_PARSERS))}")
    return cls()


def detect_tool_parser(chat_template: str | None) -> ToolParser | None:
    """The format a chat template teaches its model, from the markers it contains; None when the template
    shows no tool-call format."""
    if not chat_template:
        return None
    if "<tool_call>" in chat_template:
        return HermesToolParser()
    if "[TOOL_CALLS]" in chat_template:
        return MistralToolParser()
    if "<|python_tag|>" in chat_template or ("ipython" in chat_template and '"parameters"' in chat_template):
        return Llama3JsonToolParser()
    return None
