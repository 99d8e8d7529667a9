"""A chat request's output side, translated once for every chat-shaped API (Chat Completions, and the
Responses API, which calls the same functions with its own body):

    chat = await translate_chat(state, messages, body)   # tools, tool_choice, response_format ... -> plan
    ids = state.prompts.conversation(chat.messages, chat.tools)
    grammar = await compile_constraint(state, chat.spec)

`translate_chat` validates the tool fields (`tools`, `tool_choice`, `parallel_tool_calls`, in the Chat
Completions shapes or the Responses API's flattened ones), the output format (`response_format`,
`structured_outputs`, `guided_*`, `text.format`) and the tool-call history in `messages`; every fault is
an HTTP 400 naming the field. `prepare_chat` does all three steps, compiling the grammar while the
prompt is rendered.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from lmrs.server.grammars import compile_constraint, field_error, spec_of
from lmrs.structured import FieldError, GrammarSpec
from lmrs.tools import ToolParser, ToolPlan, plan_tools

if TYPE_CHECKING:
    from lmrs.server.state import ServerState

__all__ = ["ChatTranslation", "translate_chat", "prepare_chat", "CHAT_OUTPUT_FIELDS"]

#: The body fields `translate_chat` reads (besides the messages).
CHAT_OUTPUT_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                      "guided_grammar", "guided_whitespace_pattern", "text", "tools", "tool_choice",
                      "parallel_tool_calls")


@dataclass
class ChatTranslation:
    """What a chat request asks of its output."""

    messages: list[dict]  # for the chat template (tool-call arguments as objects)
    tools: list[dict] | None  # the template's `tools` argument (Chat Completions tool objects)
    tool_plan: ToolPlan  # mode, forced function, parallel calls
    parser: ToolParser | None  # the tool-call parser to run over the output (None: plain content)
    spec: GrammarSpec | None  # the output constraint: the response format or the forcing tool grammar

    @property
    def tool_names(self) -> list[str]:
        return self.tool_plan.tool_names


async def translate_chat(state: "ServerState", messages: list[dict], body: Mapping[str, Any]) -> ChatTranslation:
    """Validate and translate a chat request's output fields (see the module docstring)."""
    response_spec = spec_of(body)
    tools, choice, parallel = body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls")
    parser = state.grammars.tool_parser if tools or choice not in (None, "none") else None
    special = (lambda _: None)
    if parser is not None and (choice not in (None, "none", "auto") or response_spec is not None):
        # forced calls: the grammar names the format's markers by token id where they are special tokens
        special = (await state.grammars.compiler()).special_token_id
    try:
        plan = plan_tools(tools, choice, parallel, parser=parser, special=special, response_spec=response_spec)
        rendered = _history(messages, state.tokenizer.chat_template or "", parser)
    except FieldError as e:
        raise field_error(e) from None
    return ChatTranslation(messages=rendered, tools=plan.tools or None, tool_plan=plan,
                           parser=parser if plan.parse_calls else None, spec=plan.grammar)


async def prepare_chat(state: "ServerState", messages: list[dict], body: Mapping[str, Any], render):
    """`translate_chat`, then `render(chat)` (the prompt ids, or whatever the route needs from the
    template) while the grammar compiles. Returns `(chat, render's result, grammar or None)`."""
    chat = await translate_chat(state, messages, body)
    if chat.spec is None:
        return chat, render(chat), None
    compiling = asyncio.ensure_future(compile_constraint(state, chat.spec))
    try:
        rendered = render(chat)
    except BaseException:
        compiling.cancel()
        await asyncio.gather(compiling, return_exceptions=True)
        raise
    return chat, rendered, await compiling


def _history(messages: list[dict], template: str, parser: ToolParser | None) -> list[dict]:
    """Messages for the template: assistant `tool_calls` checked, their JSON-text arguments parsed into
    objects (what templates iterate over); where the template has no notion of tool calls, the calls
    are written into the assistant's content in the model's format so the model still sees them."""
    out = []
    template_knows_calls = "tool_calls" in template
    for i, m in enumerate(messages):
        calls = m.get("tool_calls")
        if not calls:
            out.append(m)
            continue
        if m.get("role") != "assistant":
            raise FieldError(f"messages[{i}].tool_calls", "only assistant messages have tool_calls")
        parsed = []
        for j, call in enumerate(calls):
            where = f"messages[{i}].tool_calls[{j}]"
            fn = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
                raise FieldError(f"{where}.function.name", "is required (a string)")
            args = fn.get("arguments", "{}")
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except ValueError:
                    raise FieldError(f"{where}.function.arguments", "is not valid JSON") from None
            parsed.append({**call, "type": "function", "function": {"name": fn["name"], "arguments": args}})
        msg = {**m, "tool_calls": parsed}
        if not template_knows_calls:
            text = "\n".join(_call_text(c["function"], parser) for c in parsed)
            content = m.get("content") or ""
            msg["content"] = f"{content}\n{text}" if content else text
        out.append(msg)
    return out


def _call_text(fn: dict, parser: ToolParser | None) -> str:
    body = json.dumps({"name": fn["name"], "arguments": fn["arguments"]}, ensure_ascii=False)
    name = parser.name if parser is not None else "hermes"
    if name == "mistral":
        return f"[TOOL_CALLS][{body}]"
    if name == "llama3_json":
        return body
    return f"<tool_call>\n{body}\n</tool_call>"
