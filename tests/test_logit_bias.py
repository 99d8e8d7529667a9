"""logit_bias in the sampler and SamplingParams (no model): the bias moves only its own request's
row, greedy and random draws follow it, the returned logprobs stay the model's, and bad maps are
refused naming the field. The HTTP side (OpenAI routes, the SDK) is in test_server_responses.py."""

import numpy as np
import pytest
import torch

from lmrs import SamplingParams
from lmrs.engine.errors import InvalidParameter
from lmrs.runner.sampler import Sampler
from test_sampling import LOGITS, fake_plan


def plan_with_ids(n, req_ids, **per_row):
    p = fake_plan(n, **per_row)
    p.req_ids = np.asarray(req_ids, dtype=np.uint64)
    p.sample_rows = np.arange(n, dtype=np.int32)
    return p


def test_bias_moves_only_its_row_and_logprobs_stay_raw():
    s = Sampler(eos_token_ids=[], seed=1)
    s.set_logit_bias(11, {6: 100.0, 0: -100.0})
    logits = LOGITS.repeat(3, 1)
    before = logits.clone()
    out = s(logits, plan_with_ids(3, [10, 11, 12], temperature=0.0, logprobs=2))
    assert out.token_ids.tolist() == [0, 6, 0]  # row 1 forced to 6; rows 0 and 2 untouched
    assert torch.equal(logits, before)  # the caller's logits are not modified
    raw = torch.log_softmax(LOGITS, -1)
    assert out.logprobs[1] == pytest.approx(float(raw[6]), abs=1e-6)  # the model's logprob, not ~0
    assert out.top_ids[1] == [0, 1]  # top alternatives of the raw distribution
    s.drop_logit_bias(11)
    assert s(LOGITS.repeat(3, 1), plan_with_ids(3, [10, 11, 12], temperature=0.0)).token_ids.tolist() == [0, 0, 0]


def test_ban_holds_for_random_draws_and_plain_greedy_is_off_while_a_bias_is_set():
    s = Sampler(eos_token_ids=[], seed=3)
    n = 4000
    s.set_logit_bias(7, {0: -100.0, 1: -100.0})
    plan = plan_with_ids(n, [7] * n)
    toks = s(LOGITS.repeat(n, 1), plan).token_ids
    assert not np.isin(toks, [0, 1]).any()
    assert (toks == 2).mean() > 0.3  # the renormalized distribution: token 2 is now the likeliest
    assert not s.is_plain_greedy(plan_with_ids(1, [7], temperature=0.0))
    s.drop_logit_bias(7)
    assert s.is_plain_greedy(plan_with_ids(1, [7], temperature=0.0))


@pytest.mark.parametrize("bias, message", [
    ({5: 100.5}, "logit_bias: the bias of token 5 must be a number in [-100, 100]"),
    ({-1: 1.0}, "logit_bias: keys must be non-negative token ids"),
    ({"5": 1.0}, "logit_bias: keys must be non-negative token ids"),
    ({5: float("nan")}, "logit_bias: the bias of token 5"),
])
def test_bad_bias_is_refused_naming_the_field(bias, message):
    with pytest.raises(InvalidParameter, match=message.replace("[", r"\[").replace("]", r"\]")):
        SamplingParams(logit_bias=bias)


def test_empty_bias_is_none():
    assert SamplingParams(logit_bias={}).logit_bias is None
    assert SamplingParams(logit_bias={3: 2}).logit_bias == {3: 2.0}
