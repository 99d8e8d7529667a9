"""Drive `lmrs._core.Core` with a fake model (the next token is a function of the last one)."""

import numpy as np

VOCAB = 64


def fake_next(last):
    return (np.asarray(last, dtype=np.int64) * 7 + 3) % (VOCAB - 1) + 1


def expected(prompt, n):
    out, last = [], prompt[-1]
    for _ in range(n):
        last = int(fake_next(last))
        out.append(last)
    return out


def step(core, outputs=None):
    """One schedule -> fake forward -> update. Returns (plan, update result)."""
    plan = core.schedule()
    ids = plan.input_ids
    sampled = fake_next(ids[plan.logits_indices]) if plan.num_sampled else np.zeros(0, np.int64)
    res = core.update(sampled)
    core.check_invariants()
    if outputs is not None:
        for rid, tok, reason, *_ in res.tolist():
            toks, _ = outputs.get(rid, ([], 0))
            if tok >= 0:
                toks = toks + [tok]
            outputs[rid] = (toks, reason)
    return plan, res


def run_all(core, outputs=None, max_steps=10_000):
    outputs = {} if outputs is None else outputs
    for _ in range(max_steps):
        if not core.has_unfinished():
            break
        step(core, outputs)
    assert not core.has_unfinished(), "did not finish"
    step(core, outputs)
    return outputs
