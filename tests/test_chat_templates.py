"""Each family's chat template renders exactly as transformers' `apply_chat_template` renders it:
system prompts (and Gemma 2's missing system role, an error in both), multi-turn histories,
generation prompts on and off, tools where the template has them (tool definitions, assistant tool
calls and tool results), Qwen3 / SmolLM3 thinking switches and reasoning in the history.

The templates are written from each family's published format (`lmrs.models.testing_templates`);
lmrs renders them with its own jinja2 environment (`lmrs.models.chat_template`), transformers with
its own, from the same tokenizer folder. Contents are strings: lmrs joins OpenAI-style lists of text
parts into one string before rendering (as vLLM does), where transformers hands the list over.
"""

import pytest

from lmrs.models.chat_template import ChatTemplateError
from lmrs.models.testing_hf import write_family_tokenizer
from lmrs.models.testing_templates import FORMATS, PHI3_TEMPLATE
from lmrs.models.tokenizer import Tokenizer

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}},
                   "required": ["city"]}}}]

CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [{"role": "system", "content": "You are terse."},
               {"role": "user", "content": "What is the capital of France?"}],
    "multi_turn": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hello, how can I help?"},
                   {"role": "user", "content": "  Tell me a joke.  "}],
    "system_multi_turn": [{"role": "system", "content": "Answer in French."},
                          {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Bonjour"},
                          {"role": "user", "content": "Thank you!"}],
    "unicode": [{"role": "user", "content": "Ünïcödé 🙂\n中文 \"quoted\" {{ not jinja }}"}],
}
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "{\"temp\": 21}"},
]
THINKING = [{"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
            {"role": "user", "content": "and 3+3?"}]

VARIANTS = {**{f: None for f in FORMATS}, "phi3-mini": PHI3_TEMPLATE}


_PAIRS: dict = {}


@pytest.fixture
def pair(request, tmp_path_factory):
    """(variant, format, lmrs Tokenizer, transformers tokenizer) from one tokenizer folder, built
    once per variant (the test's `variant` parameter)."""
    from transformers import AutoTokenizer

    variant = request.node.callspec.params["variant"]
    if variant not in _PAIRS:
        family = "phi3" if variant == "phi3-mini" else variant
        folder = write_family_tokenizer(family, tmp_path_factory.mktemp(variant), VARIANTS[variant])
        _PAIRS[variant] = (variant, FORMATS[family], Tokenizer.from_hf_folder(folder),
                           AutoTokenizer.from_pretrained(str(folder)))
    return _PAIRS[variant]


WITH_TOOLS = [v for v in VARIANTS if v in FORMATS and FORMATS[v].has_tools]
WITH_THINKING = [v for v in VARIANTS if v in FORMATS and FORMATS[v].thinking]


def render_both(lm, hf, messages, **kw):
    ours = lm.apply_chat_template(messages, **kw)
    theirs = hf.apply_chat_template(messages, tokenize=False, **kw)
    return ours, theirs


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_conversations_render_like_transformers(pair, variant, name, generation_prompt):
    variant, fmt, lm, hf = pair
    messages = CONVERSATIONS[name]
    if "system" in name and not fmt.has_system:
        with pytest.raises(ChatTemplateError, match="System role not supported"):
            lm.apply_chat_template(messages, add_generation_prompt=generation_prompt)
        with pytest.raises(Exception, match="System role not supported"):
            hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return
    ours, theirs = render_both(lm, hf, messages, add_generation_prompt=generation_prompt)
    assert ours == theirs
    assert ("Tell me a joke." in ours) == (name == "multi_turn")  # the messages are really rendered


@pytest.mark.parametrize("variant", WITH_TOOLS)
def test_tools_render_like_transformers(pair, variant):
    variant, fmt, lm, hf = pair
    ours, theirs = render_both(lm, hf, CONVERSATIONS["user"], tools=TOOLS, add_generation_prompt=True)
    assert ours == theirs and "get_weather" in ours
    if variant.startswith("qwen"):
        ours, theirs = render_both(lm, hf, TOOL_CONVERSATION, tools=TOOLS, add_generation_prompt=True)
        assert ours == theirs and "<tool_response>" in ours and '"city": "Paris"' in ours


@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("variant", WITH_THINKING)
def test_thinking_switch_and_reasoning_history(pair, variant, thinking):
    variant, fmt, lm, hf = pair
    ours, theirs = render_both(lm, hf, THINKING, add_generation_prompt=True, enable_thinking=thinking)
    assert ours == theirs
    if variant.startswith("qwen3"):
        assert "add them" not in ours  # reasoning of earlier turns is dropped
        assert ours.endswith("<think>\n\n</think>\n\n") != thinking


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_alternation_errors_match(pair, variant):
    variant, fmt, lm, hf = pair
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    try:
        theirs = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - the template raised: lmrs must raise too
        with pytest.raises(ChatTemplateError, match="alternate"):
            lm.apply_chat_template(messages, add_generation_prompt=True)
        assert "alternate" in str(e)
    else:
        assert lm.apply_chat_template(messages, add_generation_prompt=True) == theirs
