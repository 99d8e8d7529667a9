"""The draft model of speculative decoding (`--speculative-model`): proposes the drafts of a plan.

The draft model keeps its own KV cache tensors (its own layers and heads) but shares the
target's block ids, block tables and slot mapping: the Rust core's allocator, prefix cache,
sessions and preemption hold one bookkeeping for both models. Every step, before the target's
forward pass, `propose`:

1. runs the draft model on the plan's real tokens (the plan without its draft positions: prefill
   chunks, plain decodes and each drafting row's last token), so the draft's K/V follows the
   target's position for position (a prefix-cache hit or a session's pinned blocks hold the
   draft's K/V too, written when those blocks were computed);
2. for the rows that reserved K draft positions, samples draft 1 from that pass, then runs K
   batched one-token passes: pass i writes draft i's K/V at the slot the core reserved for it
   and (for i < K) gives draft i + 1. Each drafting row's K/V then covers the same positions the
   target's verification writes; rejected positions are rewritten by later steps in both caches.

Greedy rows draft the argmax; random rows draw from the draft's processed distribution q (the
row's temperature, top-k, top-p, min-p), kept for rejection sampling (`spec_verify.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmrs.models.attention_metadata import AttentionMetadata
from lmrs.runner.sampler import Sampler


@dataclass
class DraftProposal:
    """What the draft model proposed for one plan."""

    tokens: np.ndarray  # int64 [num_draft_tokens]: each drafting row's drafts, in plan order (for Core.update)
    probs: list  # per sampled row: the draft's distributions [K, V] (None: greedy or no drafts)


class DraftProposer:
    """Runs one draft model (and its KV cache) beside the target's model runner."""

    def __init__(self, model, kv_cache, generator: torch.Generator):
        self.model = model
        self.kv_cache = kv_cache
        self.generator = generator  # the sampler's: one random stream for drafts and verification
        self.device = model.device

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=True)

    def _forward(self, ids, positions, slots, block_table, seq_lens, qsl, num_decode_rows, logit_rows):
        """One forward pass of the draft model (K/V written at `slots`); float32 CPU logits of the
        tokens `logit_rows` (None when empty)."""
        attn = AttentionMetadata(
            slot_mapping=self._tensor(slots.astype(np.int32)),
            block_table=self._tensor(block_table.astype(np.int32)),
            seq_lens=self._tensor(seq_lens.astype(np.int32)),
            query_start_loc=self._tensor(qsl.astype(np.int32)),
            num_decode_rows=int(num_decode_rows),
            max_query_len=int(np.diff(qsl).max()),
            max_seq_len=int(seq_lens.max()),
        )
        hidden = self.model.forward(self._tensor(ids.astype(np.int32)), self._tensor(positions.astype(np.int32)),
                                    attn, self.kv_cache.layers)
        if len(logit_rows) == 0:
            return None
        idx = self._tensor(np.asarray(logit_rows, dtype=np.int64))
        return self.model.compute_logits(hidden.index_select(0, idx)).float().cpu()

    def _draw(self, logits: torch.Tensor, plan, rows: list[int]) -> tuple[list[int], list]:
        """One draft token per logits row (sampled row `rows[i]`'s parameters), with its
        distribution (None for a greedy row)."""
        tokens, probs = [], []
        for i, j in enumerate(rows):
            t = float(plan.temperature[j])
            if t <= 0:
                tokens.append(int(logits[i].argmax()))
                probs.append(None)
                continue
            p = Sampler.processed_probs(logits[i:i + 1], plan.temperature[j:j + 1], plan.top_k[j:j + 1],
                                        plan.top_p[j:j + 1], plan.min_p[j:j + 1])[0]
            p = p / p.sum()
            tokens.append(int(torch.multinomial(p, 1, generator=self.generator)))
            probs.append(p)
        return tokens, probs

    @torch.inference_mode()
    def propose(self, plan) -> DraftProposal | None:
        """Keep the draft's KV cache in step with `plan` and, for its drafting rows, propose the
        drafts: written into the plan's input_ids (the target verifies them). None when the plan
        has no draft positions (the draft model still ran on its tokens)."""
        qsl = plan.query_start_loc.astype(np.int64)
        num_rows = len(qsl) - 1
        num_drafts = plan.num_drafts.astype(np.int64)
        sample_rows = plan.sample_rows.astype(np.int64)
        drafting = [j for j in range(len(num_drafts)) if num_drafts[j] > 0]
        # 1. the plan's real tokens (each drafting row without its draft positions)
        drop = np.zeros(num_rows, dtype=np.int64)
        keep = np.ones(int(qsl[-1]), dtype=bool)
        for j in drafting:
            r, k = int(sample_rows[j]), int(num_drafts[j])
            drop[r] = k
            keep[int(qsl[r + 1]) - k:int(qsl[r + 1])] = False
        qsl_sync = np.concatenate(([0], np.cumsum(np.diff(qsl) - drop)))
        block_table = plan.block_table
        logits = self._forward(plan.input_ids[keep], plan.positions[keep], plan.slot_mapping[keep], block_table,
                               plan.seq_lens.astype(np.int64) - drop, qsl_sync, plan.num_decode_rows,
                               [int(qsl_sync[int(sample_rows[j]) + 1]) - 1 for j in drafting])
        if not drafting:
            return None
        # 2. K one-token passes over the drafting rows
        cur, q = self._draw(logits, plan, drafting)
        drafts = {j: [t] for j, t in zip(drafting, cur)}
        probs: dict[int, list] = {j: [p] for j, p in zip(drafting, q)}
        for i in range(1, int(num_drafts.max()) + 1):
            active = [j for j in drafting if num_drafts[j] >= i]
            rows = [int(sample_rows[j]) for j in active]
            at = np.array([int(qsl[r + 1]) - int(num_drafts[j]) + i - 1 for j, r in zip(active, rows)])
            positions = plan.positions[at].astype(np.int64)
            want = [n for n, j in enumerate(active) if num_drafts[j] > i]
            ids = np.array([drafts[j][i - 1] for j in active], dtype=np.int64)
            logits = self._forward(ids, positions, plan.slot_mapping[at], block_table[rows], positions + 1,
                                   np.arange(len(active) + 1), len(active), want)
            if want:
                more, q = self._draw(logits, plan, [active[n] for n in want])
                for n, t, p in zip(want, more, q):
                    drafts[active[n]].append(t)
                    probs[active[n]].append(p)
        return self._finish(plan, drafting, drafts, probs, qsl, sample_rows, len(num_drafts))

    @staticmethod
    def _finish(plan, drafting, drafts, probs, qsl, sample_rows, num_sampled) -> DraftProposal:
        """Write the drafts into the plan's input ids; the proposal for the verifier and the core."""
        input_ids = plan.input_ids.copy()
        flat, per_row = [], [None] * num_sampled
        for j in drafting:
            r, d = int(sample_rows[j]), drafts[j]
            end = int(qsl[r + 1])
            input_ids[end - len(d):end] = d
            flat.extend(d)
            if probs[j][0] is not None:
                per_row[j] = torch.stack(probs[j])
        plan.replace("input_ids", input_ids)
        return DraftProposal(np.asarray(flat, dtype=np.int64), per_row)
