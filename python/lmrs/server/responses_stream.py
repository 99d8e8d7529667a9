"""The Responses API's response objects and its Server-Sent Events.

A stream is `event: <type>` + `data: {json}` pairs, each with a `sequence_number`, in the order
the `openai` SDK's stream accumulator expects: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta (one per
new text), response.output_text.done, response.content_part.done, response.output_item.done, then
response.completed (response.incomplete when max_output_tokens ended it). A failure mid-stream
sends an `error` event and response.failed.

With tools, the model's text goes through the tool-call parser as it streams: text outside calls
is a message item as above (opened at its first text), each call a function_call item:
response.output_item.added (name and call_id known, arguments ""), response.function_call_arguments.delta
per piece of arguments, response.function_call_arguments.done, response.output_item.done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from lmrs.engine.outputs import FinishReason
from lmrs.server.errors import APIError
from lmrs.server.requests import RequestTimeout
from lmrs.server.responses_items import function_call_item, message_item, new_item_id, output_items
from lmrs.server.streaming import dumps, start_sse
from lmrs.tools import ToolStreamDelta

if TYPE_CHECKING:
    from lmrs.server.protocol_responses import ResponsesRequest
    from lmrs.server.requests import RequestGroup
    from lmrs.tools import ToolCallStream, ToolParser


def response_usage(usage: dict | None) -> dict | None:
    """The chat-style usage of a RequestGroup in the Responses API's words."""
    if usage is None:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"]}


def response_body(rid: str, created: int, model: str, req: "ResponsesRequest", *, status: str,
                  output: list[dict], usage: dict | None = None, error: dict | None = None,
                  incomplete: dict | None = None) -> dict:
    fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else None
    return {"id": rid, "object": "response", "created_at": created, "status": status, "model": model,
            "output": output, "error": error, "incomplete_details": incomplete, "instructions": req.instructions,
            "previous_response_id": req.previous_response_id, "max_output_tokens": req.max_output_tokens,
            "temperature": req.temperature, "top_p": req.top_p, "store": req.store,
            "parallel_tool_calls": req.parallel_tool_calls is not False, "tool_choice": req.tool_choice or "auto",
            "tools": req.tools or [], "text": {"format": fmt or {"type": "text"}}, "truncation": "disabled",
            "metadata": req.metadata or {}, "user": req.user, "usage": response_usage(usage)}


def ended_by_limit(finish: FinishReason | None) -> bool:
    """A token limit ended the reply (the response is incomplete)."""
    return finish in (FinishReason.LENGTH, FinishReason.REFUSED)


class ResponseEvents:
    """One response's objects and events. Its first message item's id is fixed at creation; with
    `parser` (the request has tools) the reply is split into message and function_call items."""

    def __init__(self, rid: str, created: int, model: str, req: "ResponsesRequest",
                 parser: "ToolParser | None" = None, tool_names: list[str] | None = None):
        self.rid, self.created, self.model, self.req = rid, created, model, req
        self.parser, self.tool_names = parser, list(tool_names or [])
        self.item_id = new_item_id("msg")
        self.seq = 0
        self.resp: web.StreamResponse | None = None
        self.items: list[dict] = []  # streamed output items (their final shapes once closed)
        self._open: dict | None = None  # the streamed item still open: {"index", "text" | "call"}

    def output_items(self, text: str, finish: FinishReason | None) -> list[dict]:
        """A whole (not streamed) reply's output items."""
        status = "incomplete" if ended_by_limit(finish) else "completed"
        return output_items(text, self.parser, self.tool_names, self.item_id, status)

    def body(self, status: str, output: list[dict], **kw) -> dict:
        return response_body(self.rid, self.created, self.model, self.req, status=status, output=output, **kw)

    def final_body(self, outcome) -> dict:
        """The finished response: completed, or incomplete when a token limit ended it."""
        if ended_by_limit(outcome.finish):
            return self.body("incomplete", outcome.items, usage=outcome.usage,
                             incomplete={"reason": "max_output_tokens"})
        return self.body("completed", outcome.items, usage=outcome.usage)

    async def send(self, event_type: str, **fields) -> None:
        data = {"type": event_type, "sequence_number": self.seq, **fields}
        self.seq += 1
        await self.resp.write(f"event: {event_type}\ndata: {dumps(data)}\n\n".encode())

    # ---- streamed items ----
    async def _open_message(self) -> None:
        index = len(self.items)
        item_id = self.item_id if index == 0 else new_item_id("msg")
        self.items.append(message_item(item_id, "", "in_progress"))
        self._open = {"index": index, "text": []}
        await self.send("response.output_item.added", output_index=index, item=self.items[index])
        await self.send("response.content_part.added", part={"type": "output_text", "text": "", "annotations": []},
                        item_id=item_id, output_index=index, content_index=0)

    async def _text(self, text: str) -> None:
        if self._open is None or "text" not in self._open:
            await self._close("completed")
            await self._open_message()
        self._open["text"].append(text)
        index = self._open["index"]
        await self.send("response.output_text.delta", delta=text, logprobs=[], item_id=self.items[index]["id"],
                        output_index=index, content_index=0)

    async def _open_call(self, call) -> None:
        await self._close("completed")
        index = len(self.items)
        self.items.append(function_call_item(new_item_id("fc"), call, "in_progress"))
        self._open = {"index": index, "call": call}
        await self.send("response.output_item.added", output_index=index, item=self.items[index])

    async def _arguments(self, piece: str) -> None:
        index = self._open["index"]
        await self.send("response.function_call_arguments.delta", delta=piece, item_id=self.items[index]["id"],
                        output_index=index)

    async def _close(self, status: str) -> None:
        """Close the open item: its .done events, with its final shape."""
        if self._open is None:
            return
        index, item_id = self._open["index"], self.items[self._open["index"]]["id"]
        if "text" in self._open:
            item = message_item(item_id, "".join(self._open["text"]), status)
            where = {"item_id": item_id, "output_index": index, "content_index": 0}
            await self.send("response.output_text.done", text=item["content"][0]["text"], logprobs=[], **where)
            await self.send("response.content_part.done", part=item["content"][0], **where)
        else:
            item = function_call_item(item_id, self._open["call"], status)
            await self.send("response.function_call_arguments.done", arguments=item["arguments"], name=item["name"],
                            item_id=item_id, output_index=index)
        self.items[index] = item
        self._open = None
        await self.send("response.output_item.done", output_index=index, item=item)

    async def _piece(self, piece: ToolStreamDelta, calls: "ToolCallStream") -> None:
        """What the tool-call parser made of new text: message text, calls begun, argument pieces."""
        if piece.content:
            await self._text(piece.content)
        for entry in piece.tool_calls:
            if "id" in entry:
                await self._open_call(calls.calls[entry["index"]])
            args = entry.get("function", {}).get("arguments")
            if args:
                await self._arguments(args)

    async def stream(self, request: web.Request, group: "RequestGroup", outcome) -> web.StreamResponse:
        """Run the call as a stream of events; `outcome.set` when it ends normally."""
        self.resp = await start_sse(request)
        await self.send("response.created", response=self.body("in_progress", []))
        await self.send("response.in_progress", response=self.body("in_progress", []))
        calls = self.parser.stream(self.tool_names) if self.parser is not None else None
        if calls is None:
            await self._open_message()
        text, finish, error = [], None, None
        try:
            async for _, d in group.deltas():
                if d.text:
                    text.append(d.text)
                if calls is None:
                    if d.text:
                        await self._text(d.text)
                else:
                    piece = calls.feed(d.text) if d.text else ToolStreamDelta()
                    if d.finished:
                        piece.merge(calls.finish())
                    await self._piece(piece, calls)
                if d.finished:
                    finish, error = d.finish_reason, d.error
            if finish == FinishReason.ERROR:
                raise APIError(503, error or "generation failed")
        except (RequestTimeout, APIError) as e:
            message = group.timeout_error().message if isinstance(e, RequestTimeout) else e.message
            await self.send("error", code="server_error", message=message, param=None)
            await self.send("response.failed", response=self.body(
                "failed", [], error={"code": "server_error", "message": message}))
            await self.resp.write_eof()
            return self.resp
        if not self.items:  # no text and no calls: an empty message
            await self._open_message()
        await self._close("incomplete" if ended_by_limit(finish) else "completed")
        outcome.set("".join(text), finish, group.usage(), self.items)
        final = self.final_body(outcome)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        await self.send(kind, response=final)
        await self.resp.write_eof()
        return self.resp
