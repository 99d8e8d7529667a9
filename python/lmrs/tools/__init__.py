"""Tool calling: parsers of the tool-call formats models are trained on (one-shot and streaming), and the
translation of an API request's ``tools`` / ``tool_choice`` / ``parallel_tool_calls``."""

from .choice import ToolPlan, plan_tools
from .hermes import HermesToolParser
from .llama3_json import Llama3JsonToolParser
from .mistral import MistralToolParser
from .parser_base import ToolCallStream, ToolParser
from .registry import TOOL_PARSERS, detect_tool_parser, get_tool_parser
from .types import ToolCall, ToolParseResult, ToolStreamDelta, new_call_id

__all__ = ["ToolPlan", "plan_tools", "HermesToolParser", "Llama3JsonToolParser", "MistralToolParser",
           "ToolCallStream", "ToolParser", "TOOL_PARSERS", "detect_tool_parser", "get_tool_parser", "ToolCall",
           "ToolParseResult", "ToolStreamDelta", "new_call_id"]
