"""Request and response schemas of every route (pydantic). The OpenAPI document is generated from
these same classes (`openapi.py`), so the validation and the docs cannot drift apart.

Requests are validated strictly (a string is not a number, "yes" is not a boolean) and unknown
fields are ignored, as API.md asks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from lmrs.engine.params import MAX_LOGPROBS

MAX_N = 16
MAX_STOP = 16
#: finish_reason values on every route: a generation ends with "stop" (EOS, stop word, cancel, a
#: complete structured output), "length" (a token limit; a refused session turn), "tool_calls" (chat
#: completions: the reply is tool calls), or "error" (the request failed; its message is in `error`
#: on /generate, in an error event on the OpenAI streams).
FinishReasonName = Literal["stop", "length", "tool_calls", "error"]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- shared ---------------------------------------------------------------------------------
class TextPart(_Request):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[str, list[TextPart], None] = Field(
        None, description="Required, except on an assistant message that has tool_calls")
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_call_id: Optional[str] = None

    @model_validator(mode="after")
    def _content_present(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content (only an assistant message with tool_calls "
                             f"may leave it null)")
        return self


class ErrorResponse(_Response):
    object: Literal["error"] = "error"
    message: str = Field(description="What was wrong and how to fix it")
    type: str = Field(description="Error class, e.g. invalid_request_error")
    code: int = Field(description="The HTTP status")


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
StopStrings = Union[str, Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)], None]


class _StructuredOutput(_Request):
    """The output constraint fields every generating route takes (validated by lmrs.structured, whose
    errors name the field: HTTP 400)."""

    response_format: Optional[dict[str, Any]] = Field(
        None, description='OpenAI: {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
                          '"json_schema": {"name", "schema", "strict"}}: the output is JSON valid under the schema')
    structured_outputs: Optional[dict[str, Any]] = Field(
        None, description='vLLM\'s extension: exactly one of {"json": schema}, {"regex": "..."}, {"choice": '
                          '["a", "b"]}, {"grammar": "Lark or EBNF"}, {"json_object": true}; optional '
                          '"whitespace_pattern", "disable_any_whitespace"')
    guided_json: Any = Field(None, description="vLLM's older form of structured_outputs.json")
    guided_regex: Optional[str] = Field(None, description="vLLM's older form of structured_outputs.regex")
    guided_choice: Optional[list[str]] = Field(None, description="vLLM's older form of structured_outputs.choice")
    guided_grammar: Optional[str] = Field(None, description="vLLM's older form of structured_outputs.grammar")
    guided_whitespace_pattern: Optional[str] = None


# ---- /generate ------------------------------------------------------------------------------
class GenerateRequest(_StructuredOutput):
    """lmdeploy's session-aware generate (interactive mode)."""

    prompt: Union[str, list[ChatMessage]] = Field(
        description="The next user turn (wrapped by the chat template) or a whole conversation")
    session_id: int = Field(-1, ge=-1, le=2**63 - 1, validation_alias=AliasChoices("session_id", "instance_id"),
                            description="The session; -1: a fresh unnamed session for this request alone. "
                                        "`instance_id` is accepted as an alias")
    sequence_start: bool = Field(True, description="Start the session afresh, dropping what it held")
    sequence_end: bool = Field(False, description="End the session after this request and free its KV cache")
    stream: bool = False
    stop: bool = Field(False, description="Cancel the generation now running in this session")
    request_output_len: int = Field(512, ge=0, description="Most new tokens; 0: only update the session")
    top_p: TopP = 0.8
    top_k: int = Field(40, ge=0)
    temperature: Temperature = 0.8
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    stop_words: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)] = Field(
        default_factory=list, description="Stop strings (lmrs extension)")
    seed: Optional[int] = Field(None, ge=0, description="Makes sampling reproducible (lmrs extension)")


class GenerateResponse(_Response):
    text: str = Field(description="Generated text (streaming: only the new text of this chunk)")
    tokens: int = Field(description="Tokens generated so far in this request")
    finish_reason: Optional[FinishReasonName] = Field(
        None, description="Set on the last chunk: stop (EOS, a stop word, or a cancel), length (request_output_len "
                          "or session_len; a refused turn has no text and 0 tokens), error (see `error`)")
    error: Optional[str] = Field(None, description="Why the request failed (with finish_reason error)")


# ---- OpenAI: models -------------------------------------------------------------------------
class ModelPermission(_Response):
    id: str
    object: Literal["model_permission"] = "model_permission"
    created: int
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: Optional[str] = None
    is_blocking: bool = False


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lmrs"
    root: str
    parent: Optional[str] = None
    max_model_len: Optional[int] = Field(None, description="The context length (tokens)")
    permission: list[ModelPermission]


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- OpenAI: chat ---------------------------------------------------------------------------
class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_StructuredOutput):
    model: Optional[str] = Field(None, description="The served model's name (see /v1/models)")
    temperature: Temperature = 0.7
    top_p: TopP = 1.0
    n: int = Field(1, ge=1, le=MAX_N)
    stop: StopStrings = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    seed: Optional[int] = Field(None, ge=0)
    user: Optional[str] = None
    top_k: int = Field(0, ge=-1, description="lmdeploy extra; 0 or -1 disables")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    skip_special_tokens: bool = True
    logit_bias: Optional[dict[str, float]] = Field(
        None, description="Token id (as a string) -> bias in [-100, 100] added to its logit before sampling "
                          "(-100 bans the token, 100 all but forces it); returned logprobs stay the model's own")


class ChatCompletionRequest(_Sampling):
    messages: Union[list[ChatMessage], str] = Field(
        description="The conversation (with a session_id: only the new messages; empty only to end the session)")
    max_tokens: Optional[int] = Field(None, ge=0, description="Most new tokens (default 512)")
    max_completion_tokens: Optional[int] = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    session_id: int = Field(-1, ge=-1, le=2**63 - 1, description="lmdeploy extra: keep the conversation on the server")
    renew_session: bool = Field(False, description="With session_id: drop the session's history first")
    sequence_end: bool = Field(False, description="With session_id: end the session after this reply (with "
                                                  "`messages: []` and `max_tokens: 0`: at once, nothing generated)")
    tools: Optional[list[dict[str, Any]]] = Field(
        None, description='Functions the model may call: [{"type": "function", "function": {"name", '
                          '"description", "parameters": JSON schema}}], shown to the chat template')
    tool_choice: Union[str, dict[str, Any], None] = Field(
        None, description='"none", "auto" (default with tools), "required" (at least one call) or '
                          '{"type": "function", "function": {"name": ...}}; required and named calls are generated '
                          "under the function's schema, so their arguments always validate")
    parallel_tool_calls: Optional[bool] = Field(None, description="Allow more than one call (default true)")


class ToolCallFunction(_Response):
    name: str
    arguments: str = Field(description="The arguments as JSON text")


class ToolCallOut(_Response):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessageOut(_Response):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = Field(description="The reply's text (null when it is only tool calls)")
    tool_calls: Optional[list[ToolCallOut]] = None


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Response):
    content: Optional[list[TokenLogprob]] = None


class ChatChoice(_Response):
    index: int
    message: ChatMessageOut
    finish_reason: Optional[FinishReasonName] = None
    logprobs: Optional[ChoiceLogprobs] = None


class PromptTokensDetails(_Response):
    cached_tokens: int = Field(0, description="Prompt tokens served from the prefix cache or the session's KV")


class Usage(_Response):
    prompt_tokens: int = Field(description="Context tokens (with a session: its history and the new messages)")
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Optional[PromptTokensDetails] = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(_Response):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = Field(
        None, description="Pieces of tool calls: the first of a call has index, id, type and function.name; "
                          "later ones index and a function.arguments piece")


class ChatChunkChoice(_Response):
    index: int
    delta: ChatDelta
    finish_reason: Optional[FinishReasonName] = None
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Optional[Usage] = None


# ---- OpenAI: completions --------------------------------------------------------------------
class CompletionRequest(_Sampling):
    prompt: Union[str, Annotated[list[str], Field(min_length=1)], Annotated[list[int], Field(min_length=1)],
                  Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]]
    max_tokens: int = Field(16, ge=0)
    echo: bool = False
    suffix: Optional[str] = Field(None, description="Not supported (rejected with 400 when set)")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    temperature: Temperature = 1.0


class CompletionLogprobs(_Response):
    tokens: list[str]
    token_logprobs: list[Optional[float]]
    top_logprobs: list[Optional[dict[str, float]]]
    text_offset: list[int]


class CompletionChoice(_Response):
    index: int
    text: str
    finish_reason: Optional[FinishReasonName] = None
    logprobs: Optional[CompletionLogprobs] = None


class CompletionResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


# ---- OpenAI: embeddings ---------------------------------------------------------------------
class EmbeddingRequest(_Request):
    model: Optional[str] = None
    input: Union[str, Annotated[list[str], Field(min_length=1, max_length=256)],
                 Annotated[list[int], Field(min_length=1)],
                 Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1, max_length=256)]]
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[str] = None


class EmbeddingData(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class HealthResponse(_Response):
    status: str
    detail: Optional[str] = None


# ---- /tokenize and /detokenize (vLLM's shapes) ----------------------------------------------
class TokenizeRequest(_Request):
    """Either `prompt` (plain text) or `messages` (rendered with the chat template), not both."""

    model: Optional[str] = Field(None, description="The served model's name (see /v1/models)")
    prompt: Optional[str] = Field(None, description="Text to tokenize")
    messages: Optional[list[ChatMessage]] = Field(None, description="A conversation, rendered with the chat template")
    add_generation_prompt: bool = Field(True, description="With messages: end with the assistant turn's opening")
    add_special_tokens: Optional[bool] = Field(
        None, description="Add the tokenizer's special tokens (BOS for models that use one); default true for "
                          "`prompt`, false for `messages` (the chat template places its own)")

    @model_validator(mode="after")
    def _one_form(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        return self


class TokenizeResponse(_Response):
    tokens: list[int]
    count: int = Field(description="len(tokens)")
    max_model_len: int = Field(description="The context length (tokens)")


class DetokenizeRequest(_Request):
    model: Optional[str] = None
    tokens: list[int] = Field(description="Token ids to turn back into text (special tokens kept)")


class DetokenizeResponse(_Response):
    prompt: str
