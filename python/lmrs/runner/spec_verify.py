"""Verification of speculative drafts: K+1 positions of a decode row checked in one forward pass.

A plan row that verifies K drafts has K+1 logits rows (its last token, then each draft;
`plan.num_drafts`, `plan.logits_indices`). Row j's logits at position i are the target model's
distribution for the token after draft i (position 0: after the row's last real token).

- Greedy rows accept the longest prefix of drafts equal to the target argmax, then take the
  argmax after the last accepted draft (the bonus token when all K are accepted): the output is
  the one plain greedy decoding gives.
- Random rows use rejection sampling, which keeps the target distribution p (the processed one:
  temperature, top-k, top-p, min-p). A draft d proposed with probability q(d) is accepted with
  probability min(1, p(d) / q(d)); on rejection the token is drawn from max(0, p - q)
  renormalised, and the verification of that row stops. The n-gram drafter proposes a single
  token (q is a point mass on d), so acceptance is p(d) and the residual is p without d. After K
  accepted drafts the bonus token is drawn from p at the last position.

Rows without drafts are sampled by the ordinary sampler (their only logits row), with every
parameter it supports; the core lets only rows without penalties, logprobs, seeds, grammars or
logit biases speculate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from lmrs.runner.sampler import Sampler, SampleOutput


def verify_drafts(logits: torch.Tensor, plan, sample_first: Callable[[torch.Tensor], SampleOutput],
                  generator: torch.Generator, draft_probs: list[torch.Tensor | None] | None = None
                  ) -> tuple[SampleOutput, np.ndarray, np.ndarray]:
    """`logits`: float32 [num_sampled + num_draft_tokens, V], each sampled row's logits rows in
    order (on any device). `sample_first`: the ordinary sampling of one logits row per sampled
    row (the runner's). `draft_probs[j]`: the draft model's distributions [K, V] of row j's
    drafts (None: point masses, n-gram drafts). Returns (the sampler's output for the first
    position of every sampled row, token ids of all rows concatenated, count per sampled row)."""
    num_drafts = plan.num_drafts.astype(np.int64)
    sizes = num_drafts + 1
    first = np.concatenate(([0], np.cumsum(sizes)[:-1]))  # each row's first logits row
    base = _select_rows(logits, first)
    sample = sample_first(base)
    tokens = [[int(t)] for t in sample.token_ids.tolist()]
    spec = np.nonzero(num_drafts > 0)[0]
    if len(spec):
        input_ids = plan.input_ids
        idx = plan.logits_indices
        temperature = plan.temperature
        greedy_rows = [j for j in spec.tolist() if temperature[j] <= 0]
        if greedy_rows:
            argmax = _argmax_rows(logits)
            for j in greedy_rows:
                a, k = int(first[j]), int(num_drafts[j])
                drafts = input_ids[idx[a + 1:a + k + 1]]
                targets = argmax[a:a + k + 1]
                tokens[j] = _accept_greedy(drafts, targets)
        for j in spec.tolist():
            if temperature[j] <= 0:
                continue
            a, k = int(first[j]), int(num_drafts[j])
            rows = logits[a:a + k + 1].float().cpu()
            probs = Sampler.processed_probs(rows, np.repeat(temperature[j], k + 1), np.repeat(plan.top_k[j], k + 1),
                                            np.repeat(plan.top_p[j], k + 1), np.repeat(plan.min_p[j], k + 1))
            drafts = input_ids[idx[a + 1:a + k + 1]]
            q = draft_probs[j] if draft_probs is not None else None
            tokens[j] = accept_random(probs, drafts, q, generator)
    counts = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    flat = np.fromiter((t for row in tokens for t in row), dtype=np.int64, count=int(counts.sum()))
    return sample, flat, counts


def _select_rows(logits: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """logits[rows]. On the CPU through numpy: single-threaded, while torch's row gather and
    argmax of a few rows run on its thread pool, whose barrier costs milliseconds (up to 14 ms
    measured for a [5, 49152] argmax) when the other cores are busy; one row takes ~20 us."""
    if logits.device.type == "cpu":
        return torch.from_numpy(logits.numpy()[rows])
    return logits.index_select(0, torch.from_numpy(rows).to(logits.device))


def _argmax_rows(logits: torch.Tensor) -> np.ndarray:
    """The argmax of every row (numpy on the CPU, see `_select_rows`)."""
    if logits.device.type == "cpu":
        return logits.numpy().argmax(axis=-1)
    return logits.argmax(dim=-1).cpu().numpy()


def _accept_greedy(drafts: np.ndarray, targets: np.ndarray) -> list[int]:
    """Accepted drafts (equal to the argmax before them), then the argmax after the last one."""
    out = []
    for d, t in zip(drafts.tolist(), targets.tolist()):
        if d != t:
            break
        out.append(d)
    out.append(int(targets[len(out)]))
    return out


def accept_random(probs: torch.Tensor, drafts: np.ndarray, q: torch.Tensor | None,
                  generator: torch.Generator) -> list[int]:
    """Rejection sampling over one row. `probs` [K+1, V]: the target's (unnormalised)
    distributions; `q` [K, V]: the draft's, or None for point masses on the drafts."""
    probs = probs / probs.sum(dim=-1, keepdim=True)
    out = []
    for i, d in enumerate(drafts.tolist()):
        p_i = probs[i]
        u = float(torch.rand((), generator=generator))
        if q is None:
            accept = u < float(p_i[d])
            residual = p_i.clone()
            residual[d] = 0.0
        else:
            qd = float(q[i, d])
            accept = qd > 0 and u < min(1.0, float(p_i[d]) / qd)
            residual = (p_i - q[i].to(p_i.dtype)).clamp_min(0.0)
        if accept:
            out.append(d)
            continue
        total = float(residual.sum())
        dist = residual / total if total > 0 else p_i
        out.append(int(torch.multinomial(dist, 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(probs[len(drafts)], 1, generator=generator)))
    return out
