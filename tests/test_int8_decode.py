"""8-bit activations in CPU decode steps (`cpu_decode_activations="int8"`, the default; `gguf_gemm_i8.rs`).

Decode steps of more than 8 sequences round the activations of the 4-bit and Q8_0 products (the real
SmolLM2-135M Q4_1 GGUF: every projection and the Q8_0 head) to 8 bits per 32-value group and run them with
AVX512-VNNI, as llama.cpp's CPU products do; prompts keep the bfloat16 products:

- the golden prompts twice over (decode steps of 12 rows): greedy tokens agree with the float32 Hugging Face
  reference except where the reference's top-2 gap is small (the criterion of `test_engine_bf16`), and the
  products did take 8-bit activations;
- a prompt-only run (prefill steps) takes none and gives bit for bit the logprobs of `bfloat16` mode;
- `bfloat16` mode takes none at any batch size; a bad value is a ValueError / a CLI choice error.
"""

import pytest

from conftest import make_engine
from lmrs import SamplingParams, _core
from lmrs.engine.config import EngineConfig
from lmrs.models.quantized import vnni_available
from lmrs.models.loader import load_model_files

pytestmark = pytest.mark.skipif(not vnni_available(), reason="no AVX512-VNNI on this CPU")


@pytest.fixture(scope="module")
def kept(smollm2_path):
    return load_model_files(smollm2_path, progress=False, gguf_weights="quantized")


def _engine(kept, mode):
    return make_engine(kept, dtype="bfloat16", cpu_decode_activations=mode)


def test_decode_batch_of_12_agrees_with_the_reference(kept, golden):
    eng = _engine(kept, "int8")
    prompts = golden["prompts"] * 2
    before = _core.cpu_gguf_int8_products()
    outs = eng.generate([p["prompt_token_ids"] for p in prompts],
                        SamplingParams(temperature=0, max_tokens=48, ignore_eos=True))
    assert _core.cpu_gguf_int8_products() - before >= 100  # 4 projections x 30 layers + the head, per step
    agree = 0
    for o, p in zip(outs, prompts):
        for step, (ours, stats) in enumerate(zip(o.token_ids, p["step_stats_ignore_eos"])):
            if ours != stats["top1_id"]:
                assert ours == stats["top2_id"] and stats["gap_top1_top2"] < 0.5, (p["id"], step, stats)
                break
        else:
            agree += 1
    assert agree >= len(prompts) // 2  # measured: 8 of 12 agree on all 48 tokens (near-ties 0.01-0.13 elsewhere)


def test_prompts_keep_bfloat16_products(kept, golden):
    sp = SamplingParams(temperature=0, max_tokens=1, logprobs=6)
    ids = [p["prompt_token_ids"] for p in golden["prompts"]]
    before = _core.cpu_gguf_int8_products()
    ours = [o.outputs[0].logprobs for o in _engine(kept, "int8").generate(ids, sp)]
    assert _core.cpu_gguf_int8_products() == before
    exact = [o.outputs[0].logprobs for o in _engine(kept, "bfloat16").generate(ids, sp)]
    assert ours == exact


def test_bfloat16_mode_takes_none(kept, golden):
    eng = _engine(kept, "bfloat16")
    before = _core.cpu_gguf_int8_products()
    eng.generate([p["prompt_token_ids"] for p in golden["prompts"]] * 2,
                 SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert _core.cpu_gguf_int8_products() == before


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="cpu_decode_activations"):
        EngineConfig(cpu_decode_activations="int4").validate()
    from lmrs.serve import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--cpu-decode-activations", "fp8"])
    assert build_parser().parse_args([]).cpu_decode_activations == "int8"
