"""Request and response schemas of OpenAI's Responses API (`/v1/responses`): input items (messages,
function_call, function_call_output), the request, the response object and its stream events. The
other routes' schemas are in protocol.py (whose `_Request` / `_Response` bases these share)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, model_validator

from lmrs.server.protocol import Temperature, TopP, _Request, _Response

#: Input item types of the Responses API this server takes; others get 400 naming the item.
RESPONSE_ITEM_TYPES = ("message", "function_call", "function_call_output")


class ResponseInputText(_Request):
    type: Literal["input_text", "output_text"] = Field(
        description="input_text (user, system, developer) or output_text (a previous assistant reply)")
    text: str


class ResponseInputMessage(_Request):
    """A message item (`type` may be left out, as in OpenAI's easy input messages)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Union[str, list[ResponseInputText]]

    @model_validator(mode="before")
    @classmethod
    def _supported_item(cls, data):
        if isinstance(data, dict) and data.get("type", "message") not in RESPONSE_ITEM_TYPES:
            raise ValueError(f"type: item type {data.get('type')!r} is not supported by this server "
                             f"(supported: {', '.join(RESPONSE_ITEM_TYPES)})")
        return data


class ResponseFunctionCallItem(_Request):
    """A tool call the model made (an earlier response's `function_call` output item, sent back)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, description="The call's id; its function_call_output answers it")
    name: str = Field(min_length=1)
    arguments: str = Field(description="The arguments, JSON text")
    id: Optional[str] = Field(None, description="The output item's id (fc_...), ignored")
    status: Optional[str] = None


class ResponseFunctionCallOutputItem(_Request):
    """The result of a tool call, rendered as the chat template's tool message."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, description="The function_call this answers")
    output: Union[str, list[ResponseInputText]] = Field(description="The tool's result (text)")
    id: Optional[str] = None
    status: Optional[str] = None


def _item_tag(item) -> str:
    """Which item model validates an input item (the tags start upper-case, so error locations
    leave them out: `input.0.call_id`, not `input.0.FunctionCall.call_id`)."""
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", "message")
    if not isinstance(kind, str):  # not a type name: the message model says so (400 naming input.N.type)
        return "Message"
    return {"function_call": "FunctionCall", "function_call_output": "FunctionCallOutput"}.get(kind, "Message")


ResponseInputItem = Annotated[Union[Annotated[ResponseInputMessage, Tag("Message")],
                                    Annotated[ResponseFunctionCallItem, Tag("FunctionCall")],
                                    Annotated[ResponseFunctionCallOutputItem, Tag("FunctionCallOutput")]],
                              Discriminator(_item_tag)]


class ResponseTextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: Optional[str] = None
    json_schema: Optional[dict[str, Any]] = Field(None, alias="schema", description="With type json_schema")
    description: Optional[str] = None
    strict: Optional[bool] = None


class ResponseTextConfig(_Request):
    format: Optional[ResponseTextFormat] = None


class ResponsesRequest(_Request):
    """OpenAI's Responses API. `previous_response_id` continues the server-side session holding
    that response's KV cache, so a follow-up prefills only its new input."""

    model: Optional[str] = Field(None, description="The served model's name (see /v1/models)")
    input: Union[str, Annotated[list[ResponseInputItem], Field(min_length=1)]] = Field(
        description="A user message, or a list of items: messages, function_call (a call made earlier) and "
                    "function_call_output (its result)")
    instructions: Optional[str] = Field(None, description="A system message for this response (not carried over "
                                                          "to follow-ups, as in OpenAI's API)")
    previous_response_id: Optional[str] = Field(None, description="Continue the conversation of this stored response")
    max_output_tokens: Optional[int] = Field(None, ge=1, description="Most new tokens (default 512)")
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    stream: bool = False
    store: bool = Field(True, description="Keep the response (and its session) for GET and previous_response_id; "
                                          "false: nothing is kept after the call")
    text: Optional[ResponseTextConfig] = Field(None, description="format: text, json_object or json_schema (the "
                                                                 "reply is generated under the schema)")
    tools: Optional[list[dict[str, Any]]] = Field(
        None, description='Function tools: [{"type": "function", "name", "description", "parameters", "strict"}] '
                          '(built-in server-side tools such as web_search: 400)')
    tool_choice: Optional[Union[str, dict[str, Any]]] = Field(
        None, description='"none", "auto", "required" or {"type": "function", "name": ...}; required and a named '
                          'function generate the arguments under the function\'s schema')
    parallel_tool_calls: Optional[bool] = Field(None, description="false: at most one call per response")
    metadata: Optional[dict[str, str]] = None
    user: Optional[str] = None


class ResponseOutputText(_Response):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)


class ResponseOutputMessage(_Response):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[ResponseOutputText]


class ResponseFunctionCall(_Response):
    id: str = Field(description="fc_...")
    type: Literal["function_call"] = "function_call"
    call_id: str = Field(description="call_...: send the result back as a function_call_output with this id")
    name: str
    arguments: str = Field(description="JSON text")
    status: Literal["in_progress", "completed", "incomplete"]


class ResponseInputTokensDetails(_Response):
    cached_tokens: int = Field(description="Input tokens whose KV came from the session or the prefix cache")


class ResponseOutputTokensDetails(_Response):
    reasoning_tokens: int = 0


class ResponseUsage(_Response):
    input_tokens: int = Field(description="Context tokens: the whole conversation so far plus the new input")
    input_tokens_details: ResponseInputTokensDetails
    output_tokens: int
    output_tokens_details: ResponseOutputTokensDetails
    total_tokens: int


class ResponseObject(_Response):
    id: str = Field(description="resp_...")
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    model: str
    output: list[Union[ResponseOutputMessage, ResponseFunctionCall]]
    instructions: Optional[str] = None
    previous_response_id: Optional[str] = None
    max_output_tokens: Optional[int] = None
    temperature: float
    top_p: float
    store: bool
    error: Optional[dict[str, Any]] = None
    incomplete_details: Optional[dict[str, Any]] = None
    usage: Optional[ResponseUsage] = None


class ResponseStreamEvent(_Response):
    """One Server-Sent Event (`event: <type>`): response.created, response.in_progress,
    response.output_item.added, response.content_part.added, response.output_text.delta,
    response.output_text.done, response.content_part.done, response.output_item.done (for a
    function_call item: response.output_item.added, response.function_call_arguments.delta and .done,
    response.output_item.done), response.completed (or response.incomplete, response.failed, error)."""

    type: str
    sequence_number: int


class ResponseDeleted(_Response):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True
