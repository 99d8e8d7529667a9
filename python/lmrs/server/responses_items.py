"""The Responses API's items in the chat path's words, both ways.

Input items -> chat messages: a `message` item is a message (developer -> system); `function_call`
items become the `tool_calls` of an assistant message (joined to the assistant message just before
them, or one of their own: a reply that made several calls is one assistant turn); a
`function_call_output` is a `tool` message, which the chat template renders as its tool turn.
Arguments stay JSON text here, as the Chat Completions API has them; `chat_request.translate_chat`
parses them for the template.

A reply's text -> output items: run through the model's tool-call parser when the request has
tools, it is a `message` item (the text around the calls, left out when empty) and one
`function_call` item per call. The stored conversation keeps the reply as the chat message those
items make (`assistant_message`).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from lmrs.server.errors import APIError
from lmrs.tools import ToolCall, ToolParser

if TYPE_CHECKING:
    from lmrs.server.protocol_responses import ResponsesRequest

__all__ = ["input_messages", "check_call_outputs", "output_items", "message_item", "function_call_item",
           "assistant_message", "new_item_id"]


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _text(content) -> str:
    return content if isinstance(content, str) else "\n".join(p.text for p in content)


def input_messages(req: "ResponsesRequest") -> list[dict]:
    """The request's input as chat messages (see the module docstring)."""
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    out: list[dict] = []
    for item in req.input:
        if item.type == "function_call":
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item.type == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output)})
        else:
            out.append({"role": "system" if item.role == "developer" else item.role, "content": _text(item.content)})
    return out


def check_call_outputs(history: list[dict], new: list[dict]) -> None:
    """Every function_call_output of the new input answers a call of the conversation (400 naming
    the input item otherwise)."""
    known = {c["id"] for m in history + new for c in m.get("tool_calls") or ()}
    outputs = [m for m in new if m["role"] == "tool"]
    for m in outputs:
        if m["tool_call_id"] not in known:
            raise APIError(400, f"input: function_call_output call_id {m['tool_call_id']!r} answers no function_call "
                                f"of this conversation (send the function_call item, or previous_response_id)")


def message_item(item_id: str, text: str, status: str) -> dict:
    content = [] if status == "in_progress" else [
        {"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def function_call_item(item_id: str, call: ToolCall, status: str) -> dict:
    arguments = "" if status == "in_progress" else call.arguments
    return {"id": item_id, "type": "function_call", "call_id": call.id, "name": call.name, "arguments": arguments,
            "status": status}


def output_items(text: str, parser: ToolParser | None, tool_names: list[str], message_id: str,
                 status: str) -> list[dict]:
    """A whole reply's output items. `status` (completed or incomplete) is the last item's: a token
    limit cuts off only what was generated last (a call's arguments, then, are not whole JSON)."""
    if parser is None:
        return [message_item(message_id, text, status)]
    parsed = parser.parse(text, tool_names)
    if not parsed.tool_calls:
        return [message_item(message_id, parsed.content or "", status)]
    items = [message_item(message_id, parsed.content, "completed")] if parsed.content else []
    last = len(parsed.tool_calls) - 1
    return items + [function_call_item(new_item_id("fc"), c, status if i == last else "completed")
                    for i, c in enumerate(parsed.tool_calls)]


def assistant_message(items: list[dict], raw_text: str) -> dict:
    """The chat message a reply's output items make (kept in the stored conversation). A reply whose call
    was cut off (an incomplete function_call: its arguments are not JSON) is kept as the text the model
    wrote: it made no call a function_call_output could answer, and the history still renders."""
    if any(it["type"] == "function_call" and it["status"] == "incomplete" for it in items):
        return {"role": "assistant", "content": raw_text}
    text = "".join(part["text"] for it in items if it["type"] == "message" for part in it["content"])
    calls = [{"id": it["call_id"], "type": "function", "function": {"name": it["name"], "arguments": it["arguments"]}}
             for it in items if it["type"] == "function_call"]
    if not calls:
        return {"role": "assistant", "content": text}
    return {"role": "assistant", "content": text or None, "tool_calls": calls}
