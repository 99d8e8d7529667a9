"""bfloat16, both CPU weight paths: `quantized` (the engine's default for a GGUF: the Q4_1/Q8_0 blocks kept
as they are, `QuantizedLinear`) and `dense` (`gguf_weights="dequantize"`: bfloat16 weights with the
small-batch int4/int8 twins). The first-step top-5 ids of the golden prompts match the float32 Hugging
Face reference, their log-probabilities are each within 0.2 and on average within 0.05 (dense: bfloat16
weights rounded from the Q4_1 dequantized values, over 30 layers: measured worst 0.12 on chat_hi, mean
0.03; quantized: the exact weights, bfloat16 activations only in >8-row products on AVX512-BF16: measured
worst 0.05 here, without AVX512-BF16); the 5th and 6th may swap where they are within 0.05; greedy outputs
agree with the reference except at near-ties."""

import pytest

from conftest import make_engine
from lmrs import SamplingParams
from lmrs.models.loader import load_model_files


@pytest.fixture(scope="module", params=["quantized", "dense"])
def bf16(request, smollm2, smollm2_path):
    if request.param == "dense":
        return make_engine(smollm2, dtype="bfloat16")
    return make_engine(load_model_files(smollm2_path, progress=False, gguf_weights="quantized"), dtype="bfloat16")


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_first_step_top5_matches_reference(bf16, golden, batched):
    prompts = golden["prompts"]
    sp = SamplingParams(temperature=0, max_tokens=1, logprobs=6)
    if batched:
        outs = bf16.generate([p["prompt_token_ids"] for p in prompts], sp)
    else:
        outs = [bf16.generate([p["prompt_token_ids"]], sp)[0] for p in prompts]
    deviations = []
    for o, p in zip(outs, prompts):
        ref = p["first_step_top5"]
        top = o.outputs[0].logprobs[0]["top"]
        ours = {tid: lp for tid, lp in top}
        ref_ids, ref_lps = ref["ids"], ref["logprobs"]
        for i, (tid, lp) in enumerate(zip(ref_ids, ref_lps)):
            if tid in ours:
                assert abs(ours[tid] - lp) < 0.2, (p["id"], tid, ours[tid], lp)
                deviations.append(abs(ours[tid] - lp))
            else:
                # only the reference's 5th may fall out of our top 6, at a near-tie: our 6th within 0.2 of it
                # (raw_fox: the reference's 5th and 6th are 0.045 apart, and a third token is as close on the
                # AMX bfloat16 path)
                assert i == 4 and abs(top[5][1] - lp) < 0.2, (p["id"], top, ref_ids, ref_lps)
        for tid, lp in top[:5]:
            if tid not in ref_ids:  # a token outside the reference's top 5 cannot be clearly above its 5th
                assert lp < ref_lps[4] + 0.2, (p["id"], top, ref_ids, ref_lps)
    assert sum(deviations) / len(deviations) < 0.05, deviations


def test_greedy_agrees_except_at_near_ties(bf16, golden):
    """Where our bf16 greedy token differs from the reference, the reference's top1-top2 gap was
    small and our token is the reference's second choice; after a divergence we stop comparing."""
    prompts = golden["prompts"]
    outs = bf16.generate([p["prompt_token_ids"] for p in prompts],
                         SamplingParams(temperature=0, max_tokens=48, ignore_eos=True))
    for o, p in zip(outs, prompts):
        for step, (ours, stats) in enumerate(zip(o.token_ids, p["step_stats_ignore_eos"])):
            if ours != stats["top1_id"]:
                assert ours == stats["top2_id"] and stats["gap_top1_top2"] < 0.5, (p["id"], step, stats)
                break
