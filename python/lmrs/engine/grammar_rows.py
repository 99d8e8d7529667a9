"""The grammar side of a step: one matcher per constrained request, the step's token masks, and the
commit of each sampled token.

Matchers live here, in a table keyed by request id on the engine thread, not in the core's
`Sequence`: the core never needs them (it schedules, it does not sample), a compiled grammar and its
matchers are already Rust objects (`lmrs._core.Grammar` / `GrammarMatcher`), and the mask fill of a
step is one Rust call over all constrained rows with the GIL released. Keeping them in the core would
add a Python->Rust grammar hand-off at `add` and a mask buffer in the plan for no speed gain. The cost
of a step without constrained rows is one empty-dict check: no mask is allocated, filled or applied.

A request is one sequence (the n choices of an API call are n requests), so `n > 1` gets one matcher
per choice. Preemption (recompute) keeps the generated tokens, so the matcher's state stays valid: it
is neither reset nor replayed.

The fill runs on a worker thread (`lmrs-grammar-mask`) started right after `schedule()`, while the
model runs its forward pass; the sampler joins it before it touches the logits.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from dataclasses import dataclass

import numpy as np
import torch

from lmrs import _core

log = logging.getLogger("lmrs.engine")

__all__ = ["GrammarRows", "StepMasks"]


@dataclass
class StepMasks:
    """The token masks of one step's constrained rows (the sampler applies them)."""

    rows: torch.Tensor  # int64 [R]: indices of the constrained rows among the step's sampled rows
    bitmask: torch.Tensor  # int32 [R, ceil(vocab / 32)] on the CPU: bit t set = token t allowed
    request_ids: list[int]  # the request of each mask row
    _future: cf.Future | None = None  # the fill running on the worker thread

    def wait(self) -> torch.Tensor:
        """The filled bitmask (joins the fill; a row whose matcher failed allows only EOS)."""
        if self._future is not None:
            errors = self._future.result()
            self._future = None
            for rid, e in zip(self.request_ids, errors):
                if e is not None:
                    log.warning("request %d: grammar matcher failed (%s); it can only end now", rid, e)
        return self.bitmask


class GrammarRows:
    """The matchers of the engine's constrained requests, by request id (engine thread only)."""

    def __init__(self, overlap: bool = True):
        self.matchers: dict[int, "_core.GrammarMatcher"] = {}
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="lmrs-grammar-mask") if overlap else None
        self.steps_with_masks = 0  # steps that filled masks (for stats and tests)

    def __bool__(self) -> bool:
        return bool(self.matchers)

    def add(self, request_id: int, grammar: "_core.Grammar") -> None:
        self.matchers[request_id] = grammar.matcher()

    def drop(self, request_id: int) -> None:
        self.matchers.pop(request_id, None)

    def prepare(self, plan) -> StepMasks | None:
        """Start filling the masks of `plan`'s constrained sampled rows; None when it has none."""
        if not self.matchers or not plan.num_sampled:
            return None
        req_ids = plan.req_ids
        rows, rids, matchers = [], [], []
        for j, r in enumerate(plan.sample_rows.tolist()):
            rid = int(req_ids[r])
            m = self.matchers.get(rid)
            if m is not None:
                rows.append(j)
                rids.append(rid)
                matchers.append(m)
        if not rows:
            return None
        self.steps_with_masks += 1
        words = (matchers[0].vocab_size + 31) // 32
        bitmask = np.zeros((len(rows), words), dtype=np.int32)
        positions = list(range(len(rows)))
        if self._pool is not None:
            fut = self._pool.submit(_core.fill_next_token_bitmasks, matchers, bitmask, positions)
        else:
            fut = cf.Future()
            fut.set_result(_core.fill_next_token_bitmasks(matchers, bitmask, positions))
        return StepMasks(torch.tensor(rows, dtype=torch.long), torch.from_numpy(bitmask), rids, fut)

    def commit(self, request_id: int, token: int) -> bool:
        """Advance `request_id`'s matcher by its sampled token. Returns True when the grammar is now
        complete (nothing but EOS may follow), so the request can end at once."""
        m = self.matchers.get(request_id)
        if m is None:
            return False
        try:
            m.commit(token)
        except _core.GrammarError as e:
            log.warning("request %d: token %d rejected by its grammar (%s); ending it", request_id, token, e)
            return True
        return m.is_stopped()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
