"""The model runner: turns a StepPlan into one forward pass over all rows, then samples.

It builds the input tensors from the plan's flat arrays, runs the model (prefill chunks and
decodes together), computes logits only for the rows that sample, and samples each row with
its own parameters. For the rows of embedding requests (`plan.pool_rows`) it returns the sum
of their final hidden states; the engine pools the sums of a request's chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmrs.models.attention_metadata import AttentionMetadata
from lmrs.runner.kv_cache import KVCache
from lmrs.runner.plan_view import PlanView
from lmrs.runner.sampler import Sampler, SampleOutput
from lmrs.runner.spec_verify import verify_drafts
from lmrs.structured.masks import apply_token_bitmask_


@dataclass
class StepOutput:
    """What one executed plan produced."""

    sampled: np.ndarray  # int64 [S]: one token per sampled row, in plan order
    sample: SampleOutput | None  # logprobs, when asked
    hidden: torch.Tensor | None = None  # final hidden states [T, H] (only when asked)
    pooled: np.ndarray | None = None  # float32 [P, H]: per pool row, the sum of its tokens' final hidden states
    # with drafts in the plan: tokens per sampled row (`sampled` then holds them all, in order)
    counts: np.ndarray | None = None
    # with a draft model: the drafts it proposed, each drafting row's in plan order (Core.update's `drafts`)
    drafts: np.ndarray | None = None


class ModelRunner:
    """Runs plans on one model and KV cache."""

    def __init__(self, model, kv_cache: KVCache, sampler: Sampler, decode_graphs=None):
        self.model = model
        self.kv_cache = kv_cache
        self.sampler = sampler
        self.device = model.device
        # CUDA only: replays captured graphs for pure-decode steps (runner/cuda_graphs.py)
        self.decode_graphs = decode_graphs
        self.graph_steps = 0  # steps served by graph replay (for stats and tests)
        # tensor parallel, rank 0: the `lmrs.parallel.ranks.RankGroup` each plan is broadcast to
        self.ranks = None
        # speculative decoding with a draft model: its `lmrs.runner.draft_model.DraftProposer`
        self.drafter = None

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(arr)
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=True)

    def build_inputs(self, plan: PlanView):
        """(input_ids, positions, AttentionMetadata) tensors for a plan."""
        attn = AttentionMetadata(
            slot_mapping=self._tensor(plan.slot_mapping),
            block_table=self._tensor(plan.block_table),
            seq_lens=self._tensor(plan.seq_lens),
            query_start_loc=self._tensor(plan.query_start_loc),
            num_decode_rows=plan.num_decode_rows,
            max_query_len=plan.max_query_len,
            max_seq_len=plan.max_seq_len,
        )
        return self._tensor(plan.input_ids), self._tensor(plan.positions), attn

    @torch.inference_mode()
    def execute(self, raw_plan, *, return_hidden: bool = False, masks=None) -> StepOutput:
        """`masks`: the step's grammar masks (`lmrs.engine.grammar_rows.StepMasks`, filled while the
        forward pass runs), applied to the logits before sampling; None for a step without
        constrained rows. With tensor parallelism (`ranks`, rank 0 only) the plan is first broadcast
        to the other ranks, which run the same forward pass on their shards."""
        plan = raw_plan if isinstance(raw_plan, PlanView) else PlanView(raw_plan)
        if plan.num_rows == 0:
            return StepOutput(np.zeros(0, dtype=np.int64), None)
        proposal = self.drafter.propose(plan) if self.drafter is not None else None
        if self.ranks is None:
            hidden, logits = self.forward_step(plan, return_hidden)
        else:
            hidden, logits = self._forward_on_ranks(plan, return_hidden)
        pooled = self._pool(hidden, plan) if plan.num_pool_rows else None
        kept = hidden if return_hidden else None
        if logits is None:
            return StepOutput(np.zeros(0, dtype=np.int64), None, kept, pooled)
        if plan.num_draft_tokens:
            sample, tokens, counts = verify_drafts(logits, plan, lambda first: self._sample(first, plan, masks),
                                                   self.sampler.generator, proposal.probs if proposal else None)
            return StepOutput(tokens, sample, kept, pooled, counts=counts,
                              drafts=proposal.tokens if proposal else None)
        sample = self._sample(logits, plan, masks)
        return StepOutput(sample.token_ids, sample, kept, pooled)

    def _forward_on_ranks(self, plan, return_hidden: bool):
        """Broadcast the plan, then the forward pass; any failure here may leave the ranks out of step
        (a worker mid-collective), so it is a RankFailure: unrecoverable."""
        from lmrs.parallel.ranks import RankFailure

        try:
            self.ranks.send_step(plan, return_hidden)
            return self.forward_step(plan, return_hidden)
        except RankFailure:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised as the group's failure
            self.ranks.check()  # a rank that died says so
            raise RankFailure(f"a tensor-parallel step failed: {type(e).__name__}: {e}") from e

    def forward_step(self, plan, return_hidden: bool = False):
        """(final hidden states or None, logits of the sampled rows or None): the part of a step every
        tensor-parallel rank runs identically (same collectives in the same order); the workers get
        None logits (rank 0 gathers them)."""
        graphs = self.decode_graphs
        if graphs is not None and not return_hidden and plan.num_pool_rows == 0 and graphs.can_run(plan):
            try:
                logits = graphs.run(plan)
            except Exception:  # noqa: BLE001 - capture failed: DecodeGraphs disabled itself, run eagerly
                logits = None
            if logits is not None:
                self.graph_steps += 1
                return None, logits
        input_ids, positions, attn = self.build_inputs(plan)
        hidden = self.model.forward(input_ids, positions, attn, self.kv_cache.layers)
        if plan.num_sampled == 0:
            return hidden, None
        idx = self._tensor(plan.logits_indices).long()
        return hidden, self.model.compute_logits(hidden.index_select(0, idx))

    @staticmethod
    def _pool(hidden: torch.Tensor, plan: PlanView) -> np.ndarray:
        """Per pool row: the float32 sum of its tokens' final hidden states."""
        qsl = plan.query_start_loc
        sums = [hidden[int(qsl[r]):int(qsl[r + 1])].float().sum(dim=0) for r in plan.pool_rows.tolist()]
        return torch.stack(sums).cpu().numpy()

    def _sample(self, logits: torch.Tensor, plan: PlanView, masks=None) -> SampleOutput:
        """Sample from float32 logits on the model's device. Plain greedy rows on a GPU take the
        argmax there (only the ids cross to the host: 4 bytes a row instead of 4 x vocab); grammar
        masks are then applied on the GPU too, otherwise by the sampler after the raw logprobs."""
        if self.device.type != "cpu" and self.sampler.is_plain_greedy(plan):
            if masks is not None:
                apply_token_bitmask_(logits, masks.wait(), masks.rows)
            ids = logits.argmax(dim=-1).cpu().numpy().astype(np.int64, copy=False)
            return SampleOutput(token_ids=ids)
        return self.sampler(logits.cpu(), plan, masks)

    @torch.inference_mode()
    def logits_for(self, raw_plan) -> torch.Tensor:
        """float32 logits of the plan's sampled rows (for tests and tools)."""
        plan = PlanView(raw_plan)
        if self.ranks is not None:
            self.ranks.send_step(plan, True)  # return_hidden: the eager path, like here
        _hidden, logits = self.forward_step(plan, return_hidden=True)
        return logits.cpu()
