"""A request's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` -> a :class:`ToolPlan`: the tools
to show the chat template, whether to parse tool calls out of the output, and the grammar that forces
the calls when ``tool_choice`` is ``required`` or names a function.

Chat Completions shapes (``{"type": "function", "function": {"name", "description", "parameters",
"strict"}}``, ``tool_choice: {"type": "function", "function": {"name"}}``) and the Responses API's
flattened ones (``{"type": "function", "name", ...}``, ``tool_choice: {"type": "function", "name"}``) are
both accepted; tools come out in the Chat Completions shape, which chat templates expect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..structured.errors import FieldError
from ..structured.spec import GrammarSpec
from .parser_base import SpecialTokenLookup, ToolParser

__all__ = ["ToolPlan", "plan_tools", "MAX_TOOLS"]

MAX_TOOLS = 512
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_EMPTY_PARAMS = {"type": "object", "properties": {}}


@dataclass
class ToolPlan:
    """What a request's tool fields mean for generation."""

    tools: list[dict] = field(default_factory=list)  # Chat Completions tool objects, for the chat template
    mode: str = "none"  # "none" | "auto" | "required" | "function" (a named function is forced)
    forced_name: str | None = None  # the function of mode "function"
    parallel: bool = True  # more than one call allowed
    parse_calls: bool = False  # run the tool-call parser over the output
    grammar: GrammarSpec | None = None  # the output constraint for this request (None: free text)

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    def schemas(self) -> list[tuple[str, dict]]:
        return [(t["function"]["name"], t["function"].get("parameters") or _EMPTY_PARAMS) for t in self.tools]


def _normalize_tool(tool: Any, i: int) -> dict:
    where = f"tools[{i}]"
    if not isinstance(tool, Mapping):
        raise FieldError(where, "must be an object")
    if tool.get("type", "function") != "function":
        raise FieldError(f"{where}.type", f"{tool.get('type')!r} tools are not supported by this server (only "
                                          f"'function' tools: built-in server-side tools are not run here)")
    if "function" in tool:
        fn, where_fn = tool["function"], f"{where}.function"
        if not isinstance(fn, Mapping):
            raise FieldError(where_fn, "must be an object")
    else:  # the Responses API's flattened tool
        fn, where_fn = tool, where
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise FieldError(f"{where_fn}.name", "must be 1-64 letters, digits, '_', '.' or '-'")
    desc = fn.get("description")
    if desc is not None and not isinstance(desc, str):
        raise FieldError(f"{where_fn}.description", "must be a string")
    params = fn.get("parameters")
    if params is not None and not isinstance(params, Mapping):
        raise FieldError(f"{where_fn}.parameters", "must be a JSON schema object")
    if params is not None and params.get("type", "object") != "object":
        raise FieldError(f"{where_fn}.parameters.type", "must be 'object' (arguments are a JSON object)")
    strict = fn.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise FieldError(f"{where_fn}.strict", "must be a boolean")
    out = {"name": name}
    if desc is not None:
        out["description"] = desc
    out["parameters"] = dict(params) if params is not None else dict(_EMPTY_PARAMS)
    if strict is not None:
        out["strict"] = strict
    return {"type": "function", "function": out}


def _forced_name(choice: Mapping, names: Sequence[str]) -> str:
    if choice.get("type") != "function":
        raise FieldError("tool_choice.type", f"must be 'function', got {choice.get('type')!r}")
    if "function" in choice:
        fn = choice["function"]
        where = "tool_choice.function.name"
        if not isinstance(fn, Mapping):
            raise FieldError("tool_choice.function", "must be an object")
        name = fn.get("name")
    else:
        where, name = "tool_choice.name", choice.get("name")
    if not isinstance(name, str):
        raise FieldError(where, "must be a string")
    if name not in names:
        raise FieldError(where, f"no function named {name!r} in tools (known: {', '.join(names) or 'none'})")
    return name


def plan_tools(tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None, *,
               parser: ToolParser | None, special: SpecialTokenLookup = lambda _: None,
               response_spec: GrammarSpec | None = None) -> ToolPlan:
    """Validate the tool fields and decide the plan.

    ``parser``: the model's tool-call format (None when it has none: then tools are an error unless
    ``tool_choice`` is ``none``). ``special``: marker text -> special token id, for the grammar.
    ``response_spec``: the request's output format; with ``auto`` and a JSON format the output is
    either that JSON or tool calls; with ``required`` / a named function the calls are forced instead.
    """
    if tools is not None and not isinstance(tools, (list, tuple)):
        raise FieldError("tools", "must be a list of tools")
    tools = list(tools or [])
    if len(tools) > MAX_TOOLS:
        raise FieldError("tools", f"has {len(tools)} tools; the limit is {MAX_TOOLS}")
    normalized = [_normalize_tool(t, i) for i, t in enumerate(tools)]
    names = [t["function"]["name"] for t in normalized]
    for i, n in enumerate(names):
        if n in names[:i]:
            where = "tools[%d].function.name" % i if "function" in tools[i] else "tools[%d].name" % i
            raise FieldError(where, f"duplicate function name {n!r}")
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise FieldError("parallel_tool_calls", "must be a boolean")
    parallel = parallel_tool_calls is not False

    if tool_choice is None:
        mode = "auto" if normalized else "none"
    elif isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise FieldError("tool_choice", f"must be 'none', 'auto', 'required' or a function, got {tool_choice!r}")
        mode = tool_choice
    elif isinstance(tool_choice, Mapping):
        mode = "function"
    else:
        raise FieldError("tool_choice", "must be a string or an object")
    if mode != "none" and not normalized:
        raise FieldError("tool_choice", f"{mode!r} needs a non-empty 'tools' list")
    plan = ToolPlan(tools=normalized, mode=mode, parallel=parallel, grammar=response_spec)
    if mode == "none":
        return plan
    if parser is None:
        raise FieldError("tools", "this model's chat template shows no tool-call format; start the server "
                                  "with --tool-call-parser (hermes, llama3_json or mistral) to use tools")
    plan.parse_calls = True
    if mode == "function":
        plan.forced_name = _forced_name(tool_choice, names)
        chosen = [s for s in plan.schemas() if s[0] == plan.forced_name]
        plan.parallel = False
        plan.grammar = GrammarSpec("lark", parser.calls_grammar(chosen, False, special), "tool_choice")
    elif mode == "required":
        plan.grammar = GrammarSpec("lark", parser.calls_grammar(plan.schemas(), parallel, special), "tools")
    elif response_spec is not None and response_spec.kind == "json_schema":
        calls = parser.calls_grammar(plan.schemas(), parallel, special)
        content = "%json " + response_spec.source
        grammar = _rename_start(calls, "tool_calls") + f"start: answer | tool_calls\nanswer: {content}\n"
        plan.grammar = GrammarSpec("lark", grammar, response_spec.field)
    return plan


def _rename_start(lark: str, new: str) -> str:
    """Rename a grammar's ``start`` rule (the tool-call grammars define it on their first line)."""
    lines = lark.splitlines()
    renamed = [(f"{new}:" + line[len("start:"):]) if line.startswith("start:") else line for line in lines]
    if renamed == lines:
        raise ValueError("grammar has no start rule")
    return "\n".join(renamed) + "\n"

