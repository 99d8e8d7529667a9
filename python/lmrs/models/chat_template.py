"""Render Hugging Face chat templates (Jinja2) the way transformers does.

Environment: ``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`` with the
``loopcontrols`` extension, a no-op ``{% generation %}`` block (transformers' assistant-mask marker), the
globals ``raise_exception`` and ``strftime_now``, and a ``tojson`` filter that keeps non-ASCII characters
(``ensure_ascii=False``) and supports ``indent``/``separators``/``sort_keys``.

Template variables: ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` (plus any other
special-token strings the tokenizer passes), ``tools`` (default None), ``documents`` (default None) and any
extra keyword arguments.

Messages whose ``content`` is a list of OpenAI-style parts (``{"type": "text", "text": ...}``) are flattened
to one string (text parts joined with ``"\\n"``, as vLLM does) because most templates expect a string.

When a model has no template, :func:`render_chat_template` uses :data:`CHATML_TEMPLATE` (fallback="chatml")
or raises :class:`ChatTemplateError` (fallback="error").
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, Iterable, Mapping

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "ChatTemplateError",
    "CHATML_TEMPLATE",
    "compile_chat_template",
    "normalize_messages",
    "render_chat_template",
]

#: Fallback for models without a template: ChatML, no default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """The chat template failed: ``raise_exception`` was called, the template is invalid, or no template."""


class _GenerationBlock(Extension):
    """``{% generation %}...{% endgeneration %}``: transformers marks assistant text with it; render as-is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str):
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    # Same as transformers: plain json.dumps, no HTML escaping (Jinja's builtin tojson escapes <>&').
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=32)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile (and cache) a chat template; raises :class:`ChatTemplateError` on a syntax error."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols, _GenerationBlock])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"invalid chat template (line {e.lineno}): {e.message}") from e


def _flatten_content(content: Any) -> Any:
    if not isinstance(content, (list, tuple)):
        return content
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, Mapping):
            raise ChatTemplateError(f"message content parts must be objects, got {type(part).__name__}")
        ptype = part.get("type", "text")
        if ptype not in ("text", "input_text"):
            raise ChatTemplateError(f"unsupported message content part type {ptype!r}: only text is supported")
        texts.append(part.get("text", ""))
    return "\n".join(texts)


def normalize_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copy messages into plain dicts, flattening list-of-parts ``content`` into a string."""
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            if hasattr(msg, "model_dump"):  # pydantic models
                msg = msg.model_dump(exclude_none=True)
            else:
                raise ChatTemplateError(f"message {i} must be a mapping with 'role' and 'content', got {msg!r}")
        m = dict(msg)
        if "content" in m:
            m["content"] = _flatten_content(m["content"])
        out.append(m)
    return out


def render_chat_template(
    template: str | None,
    messages: Iterable[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    tools: list | None = None,
    documents: list | None = None,
    fallback: str = "chatml",
    **extra: Any,
) -> str:
    """Render ``messages`` with ``template``.

    ``template=None`` uses :data:`CHATML_TEMPLATE` when ``fallback == "chatml"`` and raises
    :class:`ChatTemplateError` when ``fallback == "error"``.  Extra keyword arguments become template
    variables (e.g. ``enable_thinking``, ``unk_token``).  Any failure inside the template is reported as a
    :class:`ChatTemplateError`.
    """
    if template is None:
        if fallback == "error":
            raise ChatTemplateError(
                "this model has no chat template; pass a template or use the plain-text completion API")
        if fallback != "chatml":
            raise ValueError(f"fallback must be 'chatml' or 'error', got {fallback!r}")
        template = CHATML_TEMPLATE
    compiled = compile_chat_template(template)
    variables = dict(extra)
    variables.update(
        messages=normalize_messages(messages),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token if bos_token is not None else "",
        eos_token=eos_token if eos_token is not None else "",
        tools=tools,
        documents=documents,
    )
    try:
        return compiled.render(**variables)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template error: {e}") from e
    except (TypeError, KeyError, IndexError, AttributeError, ValueError) as e:
        raise ChatTemplateError(f"chat template failed on these messages: {type(e).__name__}: {e}") from e
