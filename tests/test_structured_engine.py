"""Structured output inside the engine, with the real SmolLM2 model: masks only in steps with
constrained rows, one matcher per sequence, raw logprobs, preemption (recompute) keeping the matcher
state, stop strings, and a grammar that completes ending the request at once."""

import json
import re

import jsonschema
import pytest
from conftest import make_engine

from lmrs.engine import grammar_rows
from lmrs.engine.params import SamplingParams
from lmrs.runner import model_runner, sampler
from lmrs.structured import json_schema_spec, regex_spec

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def eng(smollm2):
    return make_engine(smollm2, dtype="float32")


def chat_ids(eng, text):
    return eng.tokenizer.encode_chat([{"role": "user", "content": text}])


class Counting:
    """Wraps a function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.fn(*a, **kw)


def test_steps_without_constrained_rows_never_touch_masks(eng, monkeypatch):
    fill = Counting(grammar_rows._core.fill_next_token_bitmasks)
    apply_s, apply_r = Counting(sampler.apply_token_bitmask_), Counting(model_runner.apply_token_bitmask_)
    prepare = Counting(grammar_rows.GrammarRows.prepare)
    monkeypatch.setattr(grammar_rows._core, "fill_next_token_bitmasks", fill)
    monkeypatch.setattr(sampler, "apply_token_bitmask_", apply_s)
    monkeypatch.setattr(model_runner, "apply_token_bitmask_", apply_r)
    monkeypatch.setattr(grammar_rows.GrammarRows, "prepare", lambda self, plan: prepare(self, plan))
    ids = chat_ids(eng, "Say hi.")
    free = SamplingParams(temperature=0.0, max_tokens=4, logprobs=1)
    eng.generate([ids, ids], free)
    assert (fill.calls, apply_s.calls, apply_r.calls, prepare.calls) == (0, 0, 0, 0)
    # the same counters do see a constrained request: the check above can fail
    out = eng.generate([ids], SamplingParams(temperature=0.0, max_tokens=6), grammar=regex_spec("[a-z]{1,3}", "r"))
    assert re.fullmatch("[a-z]{1,3}", out[0].text)
    assert fill.calls > 0 and apply_s.calls == fill.calls and prepare.calls == fill.calls
    assert not eng.engine.grammar_rows.matchers  # dropped when the request ended


def test_mixed_batch_n2_logprobs_and_early_end(eng):
    ids = chat_ids(eng, "Describe a person as JSON.")
    spec = json_schema_spec(PERSON, "schema")
    params = [SamplingParams(temperature=0.0, max_tokens=30, logprobs=2),
              SamplingParams(temperature=1.0, max_tokens=30, seed=7)]
    outs = eng.generate([ids] * 2, params, grammar=spec)
    for o in outs:
        assert o.finish_reason == "stop", o.text
        jsonschema.validate(json.loads(o.text), PERSON)
        # the grammar completed: the request ended without sampling EOS
        assert 2 not in o.token_ids
    lps = outs[0].outputs[0].logprobs
    assert len(lps) == len(outs[0].token_ids) and all(lp["logprob"] <= 0.0 for lp in lps)
    # the logprobs are the model's own, taken before the mask: the first step's top alternatives equal
    # those of an unconstrained request (they include tokens the grammar forbids)
    free = eng.generate([ids], SamplingParams(temperature=0.0, max_tokens=1, logprobs=2))[0]
    top_c, top_f = lps[0]["top"], free.outputs[0].logprobs[0]["top"]
    assert [t for t, _ in top_c] == [t for t, _ in top_f]
    assert [v for _, v in top_c] == pytest.approx([v for _, v in top_f], abs=1e-5)
    assert lps[0]["token_id"] == eng.tokenizer.encode("{", add_special_tokens=False)[0]


def test_stop_string_inside_constrained_output(eng):
    ids = chat_ids(eng, "Describe a person as JSON.")
    out = eng.generate([ids], SamplingParams(temperature=0.0, max_tokens=20, stop=['"age"']),
                       grammar=json_schema_spec(PERSON, "schema"))[0]
    assert out.finish_reason == "stop" and '"age"' not in out.text and out.text.startswith("{")


def test_preempted_constrained_requests_stay_valid(smollm2):
    eng = make_engine(smollm2, dtype="float32", num_blocks=7, block_size=16, max_num_batched_tokens=256)
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"},
                                                         "minItems": 6, "maxItems": 6}},
              "required": ["items"], "additionalProperties": False}
    ids = chat_ids(eng, "List six numbers as JSON.")
    outs = eng.generate([ids] * 3, SamplingParams(temperature=0.0, max_tokens=32),
                        grammar=json_schema_spec(schema, "schema"))
    assert eng.stats()["preemptions"] > 0
    for o in outs:
        assert o.finish_reason in ("stop", "length"), o.error
        if o.finish_reason == "stop":
            jsonschema.validate(json.loads(o.text), schema)
        else:  # cut by max_tokens: still a prefix the grammar allows
            assert o.text.startswith('{"items"') or o.text.startswith('{ "items"') or o.text.startswith("{")
