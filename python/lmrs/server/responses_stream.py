"""The Responses API's response objects and its Server-Sent Events.

A stream is `event: <type>` + `data: {json}` pairs, each with a `sequence_number`, in the order
the `openai` SDK's stream accumulator expects: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta (one per
new text), response.output_text.done, response.content_part.done, response.output_item.done, then
response.completed (response.incomplete when max_output_tokens ended it). A failure mid-stream
sends an `error` event and response.failed.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from lmrs.engine.outputs import FinishReason
from lmrs.server.errors import APIError
from lmrs.server.requests import RequestTimeout
from lmrs.server.streaming import dumps, start_sse

if TYPE_CHECKING:
    from lmrs.server.protocol import ResponsesRequest
    from lmrs.server.requests import RequestGroup


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
    return {"id": rid, "object": "response", "created_at": created, "status": status, "model": model,
            "output": output, "error": error, "incomplete_details": incomplete, "instructions": req.instructions,
            "previous_response_id": req.previous_response_id, "max_output_tokens": req.max_output_tokens,
            "temperature": req.temperature, "top_p": req.top_p, "store": req.store, "parallel_tool_calls": False,
            "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}}, "truncation": "disabled",
            "metadata": req.metadata or {}, "user": req.user, "usage": response_usage(usage)}


class ResponseEvents:
    """One response's objects and events (its message item id is fixed at creation)."""

    def __init__(self, rid: str, created: int, model: str, req: "ResponsesRequest"):
        self.rid, self.created, self.model, self.req = rid, created, model, req
        self.item_id = f"msg_{uuid.uuid4().hex[:24]}"
        self.seq = 0
        self.resp: web.StreamResponse | None = None

    def message(self, text: str, status: str) -> dict:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status != "in_progress" \
            else []
        return {"id": self.item_id, "type": "message", "role": "assistant", "status": status, "content": content}

    def body(self, status: str, output: list[dict], **kw) -> dict:
        return response_body(self.rid, self.created, self.model, self.req, status=status, output=output, **kw)

    def final_body(self, outcome) -> dict:
        """The finished response: completed, or incomplete when a token limit ended it."""
        if outcome.finish in (FinishReason.LENGTH, FinishReason.REFUSED):
            return self.body("incomplete", [self.message(outcome.text, "incomplete")], usage=outcome.usage,
                             incomplete={"reason": "max_output_tokens"})
        return self.body("completed", [self.message(outcome.text, "completed")], usage=outcome.usage)

    async def send(self, event_type: str, **fields) -> None:
        data = {"type": event_type, "sequence_number": self.seq, **fields}
        self.seq += 1
        await self.resp.write(f"event: {event_type}\ndata: {dumps(data)}\n\n".encode())

    async def stream(self, request: web.Request, group: "RequestGroup", outcome) -> web.StreamResponse:
        """Run the call as a stream of events; `outcome.set` when it ends normally."""
        self.resp = await start_sse(request)
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        await self.send("response.created", response=self.body("in_progress", []))
        await self.send("response.in_progress", response=self.body("in_progress", []))
        await self.send("response.output_item.added", output_index=0, item=self.message("", "in_progress"))
        await self.send("response.content_part.added", part={"type": "output_text", "text": "", "annotations": []},
                        **where)
        text, finish, error = [], None, None
        try:
            async for _, d in group.deltas():
                if d.text:
                    text.append(d.text)
                    await self.send("response.output_text.delta", delta=d.text, logprobs=[], **where)
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
        full = "".join(text)
        outcome.set(full, finish, group.usage())
        final = self.final_body(outcome)
        item = final["output"][0]
        await self.send("response.output_text.done", text=full, logprobs=[], **where)
        await self.send("response.content_part.done", part=item["content"][0], **where)
        await self.send("response.output_item.done", output_index=0, item=item)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        await self.send(kind, response=final)
        await self.resp.write_eof()
        return self.resp
