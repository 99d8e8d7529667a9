"""The real model in float32 reproduces the Hugging Face reference tokens exactly, whatever the
batching: alone, all together, mixed with other traffic, chunked prefill, preemption, prefix cache
on and off; and the HF-folder conversion gives the same tokens."""

import numpy as np
import pytest

from conftest import make_engine
from lmrs import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=48)
GREEDY_IGNORE_EOS = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(smollm2):
    return make_engine(smollm2, dtype="float32")


def check(outs, prompts, key="output_token_ids"):
    for o, p in zip(outs, prompts):
        assert o.token_ids == p[key], f"{p['id']}: tokens differ"
        if key == "output_token_ids":
            assert o.finish_reason == p["finish_reason"], p["id"]
            assert o.text == p["output_text"], p["id"]


def test_prompt_tokens_from_tokenizer_and_template(engine, golden):
    tok = engine.tokenizer
    for p in golden["prompts"]:
        ids = tok.encode_chat(p["messages"]) if p["kind"] == "chat" else tok.encode(p["prompt_text"])
        assert ids == p["prompt_token_ids"], p["id"]


def test_one_at_a_time(engine, golden):
    for p in golden["prompts"]:
        check(engine.generate([p["prompt_token_ids"]], GREEDY), [p])


def test_all_in_one_generate_call_and_ignore_eos(engine, golden):
    prompts = golden["prompts"]
    check(engine.generate([p["prompt_token_ids"] for p in prompts], GREEDY), prompts)
    check(engine.generate([p["prompt_token_ids"] for p in prompts], GREEDY_IGNORE_EOS), prompts,
          "output_token_ids_ignore_eos")


def test_text_prompts_go_through_the_tokenizer(engine, golden):
    raw = [p for p in golden["prompts"] if p["kind"] == "raw"]
    check(engine.generate([p["prompt_text"] for p in raw], GREEDY), raw)
    chat = [p for p in golden["prompts"] if p["kind"] == "chat"]
    outs = engine.chat([p["messages"] for p in chat], GREEDY)
    check(outs, chat)


def test_mixed_with_random_traffic(engine, golden):
    rng = np.random.default_rng(1)
    prompts = golden["prompts"]
    items = [(p["prompt_token_ids"], GREEDY, p) for p in prompts]
    for i in range(20):
        ids = rng.integers(3, 49000, int(rng.integers(1, 300))).tolist()
        sp = SamplingParams(temperature=float(rng.choice([0.0, 0.7, 1.3])), top_p=float(rng.choice([1.0, 0.9])),
                            top_k=int(rng.choice([0, 20])), max_tokens=int(rng.integers(1, 60)), seed=i)
        items.append((ids, sp, None))
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    outs = engine.generate([it[0] for it in items], [it[1] for it in items])
    seen = 0
    for o, (_, _, p) in zip(outs, items):
        if p is not None:
            check([o], [p])
            seen += 1
        else:
            assert o.finish_reason in ("stop", "length") and o.token_ids
    assert seen == len(prompts)


def test_chunked_prefill_budget_64(smollm2, golden):
    eng = make_engine(smollm2, dtype="float32", max_num_batched_tokens=64)
    prompts = golden["prompts"]
    check(eng.generate([p["prompt_token_ids"] for p in prompts], GREEDY), prompts)
    assert eng.stats()["steps"] >= 792 // 64


def test_tiny_pool_forces_preemption(smollm2, golden):
    eng = make_engine(smollm2, dtype="float32", num_blocks=60, block_size=16)
    prompts = golden["prompts"][::-1]  # the 792-token prompt first, so the rest squeeze in beside it
    check(eng.generate([p["prompt_token_ids"] for p in prompts], GREEDY_IGNORE_EOS), prompts,
          "output_token_ids_ignore_eos")
    assert eng.stats()["preemptions"] > 0


@pytest.mark.parametrize("caching", [True, False])
def test_prefix_cache_on_and_off(smollm2, golden, caching):
    eng = make_engine(smollm2, dtype="float32", enable_prefix_caching=caching)
    prompts = golden["prompts"]
    for _ in range(2):
        check(eng.generate([p["prompt_token_ids"] for p in prompts], GREEDY), prompts)
    hits = eng.stats()["prefix_hit_tokens"]
    assert (hits > 0) == caching


def test_converted_hf_folder_gives_the_same_tokens(smollm2_path, golden, tmp_path):
    from lmrs.models.convert import convert_gguf_to_hf
    from lmrs.models.loader import load_model_files

    out = convert_gguf_to_hf(smollm2_path, tmp_path / "hf", progress=False)
    loaded = load_model_files(out, progress=False)
    eng = make_engine(loaded, dtype="float32")
    prompts = golden["prompts"]
    for p in prompts:
        ids = eng.tokenizer.encode_chat(p["messages"]) if p["kind"] == "chat" else eng.tokenizer.encode(p["prompt_text"])
        assert ids == p["prompt_token_ids"]
    check(eng.generate([p["prompt_token_ids"] for p in prompts], GREEDY), prompts)
