"""Per-row sampling from logits with each request's own parameters.

Order (as vLLM / Hugging Face): the raw logprobs (returned to the user: the model's own) -> grammar
masks of constrained rows (disallowed tokens -> -inf) -> penalties (repetition on context + output, presence / frequency on
the output) -> min_tokens EOS mask -> greedy rows take the argmax -> temperature -> top-k -> top-p ->
min-p -> a draw from the softmax. `logit_bias` (OpenAI) is added after
the raw logprobs are taken and before the penalties (`_apply_logit_bias`; free when no request
has one). Draws use the exponential race (argmax p / E, E ~ Exp(1)); a row
with a seed draws E from its own generator seeded by (seed, tokens generated so far), so its tokens
do not depend on what else is in the batch, or on preemption.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmrs.structured.masks import apply_token_bitmask_


@dataclass
class SampleOutput:
    token_ids: np.ndarray  # int64 [S]
    logprobs: np.ndarray | None = None  # float32 [S]: log p of each sampled token (raw model distribution)
    top_ids: list | None = None  # per row: int list of the top-N ids (N = that row's logprobs), or None
    top_logprobs: list | None = None  # per row: float list matching top_ids, or None


def _row_generator(seed: int, step: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 0x9E3779B1 + step * 0x85EBCA77 + 0x165667B1) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


class Sampler:
    """Samples one token per row. `eos_token_ids` are masked while a row is below its min_tokens."""

    def __init__(self, eos_token_ids: list[int], seed: int | None = None):
        self.eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long)
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else int(torch.seed()) & 0x7FFF_FFFF)
        # request id -> (token ids, biases) of requests with a logit_bias (the engine keeps it)
        self.logit_biases: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- logit_bias -------------------------------------------------------------------------
    def set_logit_bias(self, request_id: int, bias: dict[int, float] | None) -> None:
        """Register a request's logit_bias ({token id: value}); None or empty: nothing."""
        if bias:
            ids = torch.tensor(list(bias), dtype=torch.long)
            self.logit_biases[request_id] = (ids, torch.tensor(list(bias.values()), dtype=torch.float32))

    def drop_logit_bias(self, request_id: int) -> None:
        self.logit_biases.pop(request_id, None)

    def _apply_logit_bias(self, logits: torch.Tensor, plan, copied: bool) -> tuple[torch.Tensor, bool]:
        """Add each sampled row's bias to its logits (copying them once). Returns (logits, copied)."""
        biases = self.logit_biases
        if not biases:
            return logits, copied
        req_ids = plan.req_ids
        for j, r in enumerate(plan.sample_rows.tolist()):
            entry = biases.get(int(req_ids[r]))
            if entry is None:
                continue
            if not copied:
                logits, copied = logits.clone(), True
            ids, values = entry
            logits[j].index_add_(0, ids, values.to(logits.dtype))
        return logits, copied

    def is_plain_greedy(self, plan) -> bool:
        """Whether every row just takes the argmax: greedy, no logprobs, no penalties, no EOS mask.
        Then the argmax can run where the logits are (on the GPU) and only the ids travel."""
        if len(plan.history_rows) or bool((plan.temperature > 0).any()) or bool((plan.logprobs >= 0).any()):
            return False
        if self.logit_biases:
            return False
        return not (len(self.eos) and bool((plan.num_generated < plan.min_tokens).any()))

    def __call__(self, logits: torch.Tensor, plan, masks=None) -> SampleOutput:
        """logits: float32 [S, V] (S = the plan's sampled rows, in order); modified in place when
        `masks` (the step's grammar masks, `lmrs.engine.grammar_rows.StepMasks`) is given."""
        s = logits.shape[0]
        temperature = torch.from_numpy(plan.temperature)
        want_logprobs = plan.logprobs
        need_logprobs = bool((want_logprobs >= 0).any())
        raw_logprobs = torch.log_softmax(logits, dim=-1) if need_logprobs else None
        if masks is not None:
            apply_token_bitmask_(logits, masks.wait(), masks.rows)

        logits, copied = self._apply_logit_bias(logits, plan, False)
        hist_rows = plan.history_rows
        if len(hist_rows):
            logits = logits if copied else logits.clone()
            copied = True
            self._apply_penalties(logits, plan, hist_rows)
        min_tokens = plan.min_tokens
        if len(self.eos) and bool((min_tokens > 0).any()):
            below = torch.from_numpy(plan.num_generated < min_tokens)
            if bool(below.any()):
                logits = logits if copied else logits.clone()
                rows = below.nonzero().flatten()
                saved = logits[rows].clone() if masks is not None else None
                logits[rows.unsqueeze(1), self.eos.unsqueeze(0)] = float("-inf")
                if saved is not None:  # a grammar that allows only EOS wins over min_tokens
                    dead = torch.isinf(logits[rows]).all(dim=-1)
                    if bool(dead.any()):
                        logits[rows[dead]] = saved[dead]

        greedy = temperature <= 0
        if bool(greedy.all()):
            token_ids = logits.argmax(dim=-1)
        else:
            token_ids = torch.empty(s, dtype=torch.long)
            if bool(greedy.any()):
                token_ids[greedy] = logits[greedy].argmax(dim=-1)
            rnd = (~greedy).nonzero().flatten()
            token_ids[rnd] = self._sample_random(logits[rnd], plan, rnd.numpy())
        out = SampleOutput(token_ids=token_ids.numpy().astype(np.int64, copy=False))
        if need_logprobs:
            out.logprobs = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1).numpy()
            out.top_ids, out.top_logprobs = [], []
            maxn = int(want_logprobs.max())
            if maxn > 0:
                top_v, top_i = raw_logprobs.topk(maxn, dim=-1)
            for r in range(s):
                n = int(want_logprobs[r])
                if n < 0:
                    out.top_ids.append(None)
                    out.top_logprobs.append(None)
                else:
                    out.top_ids.append(top_i[r, :n].tolist() if n else [])
                    out.top_logprobs.append(top_v[r, :n].tolist() if n else [])
        return out

    def _apply_penalties(self, logits: torch.Tensor, plan, hist_rows: np.ndarray) -> None:
        offsets = plan.history_offsets
        ids = torch.from_numpy(plan.history_ids).long()
        ctx_lens = plan.history_context_lens
        rep = plan.repetition_penalty
        pres = plan.presence_penalty
        freq = plan.frequency_penalty
        for j, row in enumerate(hist_rows.tolist()):
            toks = ids[offsets[j] : offsets[j + 1]]
            lg = logits[row]
            if rep[row] != 1.0:
                seen = torch.unique(toks)
                vals = lg[seen]
                lg[seen] = torch.where(vals > 0, vals / float(rep[row]), vals * float(rep[row]))
            if pres[row] != 0.0 or freq[row] != 0.0:
                out_toks = toks[int(ctx_lens[j]) :]
                if len(out_toks):
                    counts = torch.bincount(out_toks, minlength=lg.shape[0]).to(lg.dtype)
                    lg -= float(freq[row]) * counts + float(pres[row]) * (counts > 0).to(lg.dtype)

    def _sample_random(self, logits: torch.Tensor, plan, rows: np.ndarray) -> torch.Tensor:
        probs = self.processed_probs(logits, plan.temperature[rows], plan.top_k[rows], plan.top_p[rows],
                                     plan.min_p[rows])
        noise = torch.empty_like(probs)
        seeds = plan.seeds[rows]
        steps = plan.num_generated[rows]
        unseeded = seeds < 0
        if bool(unseeded.any()):
            idx = torch.from_numpy(np.nonzero(unseeded)[0])
            noise[idx] = torch.empty((len(idx), probs.shape[1])).exponential_(generator=self.generator)
        for j in np.nonzero(~unseeded)[0].tolist():
            g = _row_generator(int(seeds[j]), int(steps[j]))
            noise[j] = torch.empty(probs.shape[1]).exponential_(generator=g)
        return (probs / noise).argmax(dim=-1)

    @staticmethod
    def processed_probs(logits: torch.Tensor, temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray,
                        min_p: np.ndarray) -> torch.Tensor:
        """The distribution a random row draws from: softmax(logits / temperature) restricted by
        top-k, top-p and min-p (not renormalised: a draw divides by exponential noise, and
        speculative verification renormalises itself). One row of parameters per logits row."""
        temps = torch.from_numpy(np.ascontiguousarray(temperature)).unsqueeze(1)
        logits = logits / temps
        vocab = logits.shape[1]
        if bool(((top_k > 0) & (top_k < vocab)).any()):
            k = torch.from_numpy(np.where((top_k > 0) & (top_k < vocab), top_k, vocab)).long()
            kmax = int(k.max())
            top_vals = logits.topk(kmax, dim=-1).values  # sorted descending
            kth = top_vals.gather(1, (k - 1).clamp(max=kmax - 1).unsqueeze(1))
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if bool((top_p < 1.0).any()):
            sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
            cum = sorted_p.cumsum(dim=-1)
            tp = torch.from_numpy(np.ascontiguousarray(top_p)).unsqueeze(1)
            drop_sorted = (cum - sorted_p) >= tp  # keep the smallest prefix whose mass reaches top_p
            drop = torch.zeros_like(drop_sorted).scatter(1, sorted_i, drop_sorted)
            probs = probs.masked_fill(drop, 0.0)
        if bool((min_p > 0).any()):
            mp = torch.from_numpy(np.ascontiguousarray(min_p)).unsqueeze(1)
            probs = probs.masked_fill(probs < mp * probs.max(dim=-1, keepdim=True).values, 0.0)
        return probs
