"""Load the draft model of speculative decoding (`--speculative-model`) beside the target.

The draft gets the target's number of KV blocks and block size (its cache is indexed by the same
block ids), its own dtype rule (the engine's), no CUDA graphs, and must share the target's
tokenizer: same vocabulary size, end-of-sequence ids, and the same ids for a few probe texts and
special tokens. Anything else is refused with an error naming `speculative_model`.
"""

from __future__ import annotations

import dataclasses
import logging

from lmrs.engine.config import EngineConfig
from lmrs.models.loader import LoadedModel, load_model_files
from lmrs.runner.draft_model import DraftProposer

log = logging.getLogger("lmrs.engine")

PROBE_TEXTS = ("Hello, world! The quick brown fox jumps over the lazy dog.",
               "def add(a, b):\n    return a + b\n", "1234567890 ÄÖÜ 你好 🙂")


def check_same_tokenizer(target: LoadedModel, draft: LoadedModel) -> None:
    """Raise ValueError naming speculative_model when the draft's tokens would not mean the target's."""
    def refuse(what: str):
        raise ValueError(f"speculative_model {draft.source!r} does not share the model's tokenizer: {what}")

    tc, dc = target.config, draft.config
    if tc.vocab_size != dc.vocab_size:
        refuse(f"vocab size {dc.vocab_size} != {tc.vocab_size}")
    if list(tc.eos_token_ids) != list(dc.eos_token_ids):
        refuse(f"end-of-sequence ids {list(dc.eos_token_ids)} != {list(tc.eos_token_ids)}")
    tt, dt = target.tokenizer, draft.tokenizer
    for text in PROBE_TEXTS:
        if tt.encode(text) != dt.encode(text):
            refuse(f"{text!r} tokenizes differently")
    probe_ids = sorted({0, 1, 2, tc.vocab_size // 2, tt.vocab_size - 1} & set(range(min(tt.vocab_size, dt.vocab_size))))
    for i in probe_ids:
        if tt.decode([i], skip_special_tokens=False) != dt.decode([i], skip_special_tokens=False):
            refuse(f"token id {i} decodes differently")


def build_drafter(cfg: EngineConfig, target: LoadedModel, num_blocks: int, max_model_len: int, device: str,
                  generator, draft: LoadedModel | None = None) -> DraftProposer:
    """The draft model and its KV cache (`num_blocks` blocks, like the target's)."""
    from lmrs.engine.loading import build_model_and_cache, gguf_weights_mode

    owned = draft is None
    if owned:
        draft = load_model_files(cfg.speculative_model, progress=cfg.progress,
                                 gguf_weights=gguf_weights_mode(cfg, device))
    check_same_tokenizer(target, draft)
    if draft.config.max_position_embeddings < max_model_len:
        raise ValueError(f"speculative_model {draft.source!r} holds {draft.config.max_position_embeddings} "
                         f"positions, fewer than the model's max_model_len {max_model_len}")
    dcfg = dataclasses.replace(cfg, num_blocks=num_blocks, max_model_len=max_model_len, cuda_graphs=False,
                               speculative_method=None, speculative_model=None)
    stack = build_model_and_cache(dcfg, draft, device)
    if owned:
        draft.weights = {}  # the model holds what it needs
    log.info("draft model %s: %d layers, KV cache %.1f MiB", draft.source, draft.config.num_hidden_layers,
             stack.kv_cache.nbytes / 2**20)
    return DraftProposer(stack.model, stack.kv_cache, generator)
