"""Rejection sampling of speculative drafts keeps the target distribution: the verification rule
on known distributions (many draws, a total-variation bound that the usual mistakes fail), and
sampled requests of a tiny model with n-gram drafts against the model's exact distribution."""

import numpy as np
import pytest
import torch

from lmrs import Engine, SamplingParams
from lmrs.runner.spec_verify import accept_random

P = torch.tensor([[0.10, 0.30, 0.05, 0.25, 0.30, 0.00],
                  [0.40, 0.10, 0.10, 0.10, 0.10, 0.20],
                  [0.20, 0.20, 0.20, 0.20, 0.10, 0.10]])
N = 12000
BOUND = 0.03  # sampling noise of the TV distance at N draws over 6 tokens is about 0.01


def _tv(counts: np.ndarray, p: np.ndarray) -> float:
    return 0.5 * float(np.abs(counts / counts.sum() - p).sum())


def _first_tokens(rule, drafts, q=None, n=N, seed=0):
    """First (and, after an accepted first draft, second) tokens of `n` verifications. With a
    draft distribution `q`, each trial's drafts are drawn from it (as a draft model does)."""
    g = torch.Generator().manual_seed(seed)
    firsts, seconds = np.zeros(6), np.zeros(6)
    for _ in range(n):
        if q is not None:
            drafts = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(len(q))]
        out = rule(P[: len(drafts) + 1], np.array(drafts), q, g)
        firsts[out[0]] += 1
        if len(out) > 1 and out[0] == drafts[0]:
            seconds[out[1]] += 1
    return firsts, seconds


def _accept_then_resample_p(probs, drafts, q, g):
    """A broken rule: on rejection, draw again from p (the rejected draft keeps its mass)."""
    probs = probs / probs.sum(-1, keepdim=True)
    d = int(drafts[0])
    if float(torch.rand((), generator=g)) < float(probs[0, d]):
        return [d]
    return [int(torch.multinomial(probs[0], 1, generator=g))]


def _ratio_then_resample_p(probs, drafts, q, g):
    """A broken rule: accept with min(1, p/q), but on rejection draw from p, not max(0, p - q)."""
    d = int(drafts[0])
    if float(torch.rand((), generator=g)) < min(1.0, float(probs[0, d] / q[0, d])):
        return [d]
    return [int(torch.multinomial(probs[0], 1, generator=g))]


def test_point_mass_drafts_keep_the_target_distribution():
    firsts, seconds = _first_tokens(accept_random, [1, 3])
    assert _tv(firsts, P[0].numpy()) < BOUND
    # after the first draft was accepted, the second token follows the second position's p
    assert seconds.sum() > 2000
    assert _tv(seconds, P[1].numpy()) < 2 * BOUND
    broken, _ = _first_tokens(_accept_then_resample_p, [1, 3])
    assert _tv(broken, P[0].numpy()) > 3 * BOUND  # the test catches a wrong residual


def test_draft_model_probabilities_keep_the_target_distribution():
    q = torch.tensor([[0.05, 0.60, 0.05, 0.10, 0.10, 0.10],
                      [0.20, 0.20, 0.20, 0.20, 0.10, 0.10]])
    firsts, _ = _first_tokens(accept_random, [0, 0], q)
    assert _tv(firsts, P[0].numpy()) < BOUND
    wrong, _ = _first_tokens(_ratio_then_resample_p, [0, 0], q)
    assert _tv(wrong, P[0].numpy()) > 3 * BOUND  # the test catches a rule without the residual


def test_a_draft_outside_the_support_is_never_accepted():
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        out = accept_random(P[:2], np.array([5]), None, g)  # p(5) = 0 at the first position
        assert out[0] != 5 and len(out) == 1


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from lmrs.models.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=5)


def test_sampled_requests_follow_the_model_distribution(tiny_folder):
    """Many sampled requests whose second token is verified against an n-gram draft: the second
    token's distribution matches the exact one computed from the model's logprobs."""
    plain = Engine(str(tiny_folder), dtype="float32", progress=False, kv_cache_memory="8MiB")
    spec = Engine(str(tiny_folder), dtype="float32", progress=False, kv_cache_memory="8MiB", seed=7,
                  max_num_seqs=512, speculative_method="ngram", num_speculative_tokens=2, spec_max_decode_rows=0)
    top_k = 3

    def dist(ids):
        """The sampled row's distribution after `ids` (top-k of the raw logprobs, renormalised)."""
        o = plain.generate([ids], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, logprobs=top_k))[0]
        top = o.outputs[0].logprobs[0]["top"]
        p = np.exp(np.array([lp for _, lp in top]))
        return {t: v for (t, _), v in zip(top, p / p.sum())}

    # A prompt that holds each likely first token, after the prompt's last token (drafts come from
    # 2-gram matches up) and followed by a likely second one, so the n-gram drafter proposes a
    # plausible second token (accepted sometimes, rejected often).
    base = [11, 40, 73, 12, 99]
    prompt, successor = base, {}
    for _ in range(8):
        new = [t for t in dist(prompt) if t not in successor]
        if not new:
            break
        for t1 in new:
            p2 = dist(prompt + [t1])
            successor[t1] = max(p2, key=p2.get)
        prompt = [x for t, s in successor.items() for x in (base[-1], t, s)] + base
    exact: dict[int, float] = {}
    for t1, w in dist(prompt).items():
        for t2, v in dist(prompt + [t1]).items():
            exact[t2] = exact.get(t2, 0.0) + w * v
    n = 512
    params = SamplingParams(temperature=1.0, top_k=top_k, max_tokens=3, ignore_eos=True)
    outs = spec.generate([prompt] * n, params)
    st = spec.stats()
    assert st["spec_decode_num_drafts"] > n // 2, st  # most second tokens were verified drafts
    assert 20 < st["spec_decode_num_accepted_tokens"] < st["spec_decode_num_draft_tokens"] - 20, st
    keys = sorted(exact)
    counts = np.array([sum(o.outputs[0].token_ids[1] == k for o in outs) for k in keys], dtype=float)
    assert counts.sum() == n  # every second token is one the model allows
    # noise of the TV distance at 512 draws over these few tokens is about 0.03
    assert _tv(counts, np.array([exact[k] for k in keys])) < 0.08
