"""Token bitmasks applied to logits: exact against a per-token loop, rows subsets, CPU and CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmrs.structured.masks import allocate_token_bitmask, apply_token_bitmask_, bitmask_to_bool

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _random_mask(rows: int, vocab: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    allowed = rng.random((rows, vocab)) < 0.3
    allowed[:, vocab - 1] = True  # the last id, in the last partly used word
    padded = np.zeros((rows, (vocab + 31) // 32 * 32), dtype=bool)
    padded[:, :vocab] = allowed
    words = np.packbits(padded, axis=1, bitorder="little").view(np.int32)
    return torch.from_numpy(words.copy()), allowed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("vocab", [49152, 1000, 33])
def test_apply_matches_a_reference_loop(device, dtype, vocab):
    """float32 CPU logits take the Rust pass, the rest the torch ops: both exact."""
    mask, allowed = _random_mask(4, vocab, vocab)
    logits = torch.randn(4, vocab, device=device).to(dtype)
    expected = logits.cpu().clone()
    for r in range(4):
        for t in np.flatnonzero(~allowed[r]):
            expected[r, t] = float("-inf")
    out = apply_token_bitmask_(logits, mask)
    assert out is logits
    assert torch.equal(logits.cpu(), expected)
    assert torch.equal(bitmask_to_bool(mask, vocab), torch.from_numpy(allowed))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_only_the_named_rows_change(device, dtype):
    vocab = 49152
    mask, allowed = _random_mask(2, vocab, 1)
    logits = torch.randn(5, vocab, device=device).to(dtype)
    before = logits.clone()
    apply_token_bitmask_(logits, mask, rows=torch.tensor([3, 1]))
    for r in (0, 2, 4):
        assert torch.equal(logits[r], before[r])
    got = torch.isfinite(logits[[3, 1]]).cpu().numpy()
    assert np.array_equal(got, allowed)


def test_nothing_to_apply_and_argument_checks():
    logits = torch.randn(3, 64)
    before = logits.clone()
    apply_token_bitmask_(logits, allocate_token_bitmask(0, 64))
    assert torch.equal(logits, before)
    assert allocate_token_bitmask(2, 49152).shape == (2, 1536)
    with pytest.raises(ValueError, match="rows="):
        apply_token_bitmask_(logits, allocate_token_bitmask(2, 64))
    with pytest.raises(ValueError, match="words"):
        apply_token_bitmask_(logits, allocate_token_bitmask(3, 32))
    with pytest.raises(ValueError, match="out of range"):
        apply_token_bitmask_(logits, allocate_token_bitmask(1, 64), rows=torch.tensor([3]))
    strided = torch.randn(64, 3).t()  # rows not contiguous: the torch path
    apply_token_bitmask_(strided, allocate_token_bitmask(3, 64))
    assert torch.isinf(strided).all()
    with pytest.raises(ValueError, match="int32"):
        bitmask_to_bool(torch.zeros(3, 2, dtype=torch.int64), 64)


def test_masks_from_the_engine_apply_to_logits():
    """A real matcher's mask: after masking, the argmax is always an allowed token."""
    from grammar_walk import smollm2_tokenizer
    from lmrs.structured import GrammarCompiler
    from lmrs.structured.spec import regex_spec

    tk = smollm2_tokenizer()
    compiler = GrammarCompiler.for_tokenizer(tk)
    try:
        grammar = compiler.compile(regex_spec("[0-9]{2}", "r"))
        m = grammar.matcher()
        mask = allocate_token_bitmask(1, compiler.vocab.vocab_size)
        toks = []
        while not m.is_stopped():
            m.fill_next_token_bitmask(mask.numpy(), 0)
            logits = torch.randn(1, compiler.vocab.vocab_size)
            toks.append(int(apply_token_bitmask_(logits, mask).argmax()))
            m.commit(toks[-1])
        text = tk.decode([t for t in toks if t not in tk.eos_token_ids])
        assert len(text) == 2 and text.isdigit()
    finally:
        compiler.close()
