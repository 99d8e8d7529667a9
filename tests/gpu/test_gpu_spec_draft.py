"""Speculative decoding with a draft model on CUDA (skips without a GPU): a tiny 4-layer model and
its 3-layer draft give the same greedy tokens as plain decoding on the GPU, drafts accepted."""

from __future__ import annotations

from lmrs import Engine, SamplingParams
from lmrs.models.loader import load_model_files
from lmrs.models.testing import make_tiny_model
from lmrs.models.testing_draft import truncated_model


def test_draft_model_greedy_identical_on_cuda(tmp_path):
    loaded = load_model_files(str(make_tiny_model(tmp_path / "m", seed=5, layers=4)), progress=False)
    kw = dict(device="cuda", dtype="float32", progress=False, kv_cache_memory="64MiB")
    prompts = [[5 + (i * 11 + j * 7) % 60 for j in range(30)] for i in range(3)]
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in Engine(loaded=loaded, **kw).generate(prompts, params)]
    spec = Engine(loaded=loaded, draft_loaded=truncated_model(loaded, 3), num_speculative_tokens=3,
                  spec_max_decode_rows=0, **kw)
    assert [o.outputs[0].token_ids for o in spec.generate(prompts, params)] == want
    assert spec.stats()["spec_decode_num_accepted_tokens"] > 0
