"""The CPU forward pass as one Rust call (`lmrs.models.cpu_program`): bit for bit the layer loop.

- the real SmolLM2-135M Q4_1 GGUF (the default model), bfloat16 kept quantized: a batch of 12 mixed-length
  prompts (one-row float32 steps, 2-8-row bfloat16 streaming steps, larger decode batches, prefill chunks;
  prefills past the dense-GEMM crossover run the layer loop), greedy with logprobs: the same tokens and the
  same float logprobs, bit for bit, with the program as with `LMRS_CPU_PROGRAM=0`; the program is in use;
- tiny Q4_K_M models: Llama (projections of mixed K-quant segments: several kernel calls into one output)
  and Qwen2 (q/k/v biases), on the native and the portable kernels; speculative decoding (verify steps of
  K + 1 rows) with n-gram drafts;
- where it does not apply (q/k norms, float32 dequantized weights) the layer loop runs and says so;
- bad arguments to `CpuDecoderProgram` are ValueErrors naming the operand.
"""

import pytest
import torch

from lmrs import Engine, SamplingParams, _core
from lmrs.kernels import cpu as cpu_kernels
from lmrs.models.cpu_program import CpuProgram
from lmrs.models.loader import default_model_path, load_model_files
from lmrs.models.testing_gguf import write_gguf
from lmrs.models.testing_hf import make_tiny_family_model

from test_families import random_prompt

SIZE = dict(hidden_size=256, intermediate_size=512)


def _run(loaded, prompts, monkeypatch, program: bool, *, max_tokens=10, logprobs=2, **engine_kw):
    """(token ids and logprobs per prompt, the model's program) of a greedy run."""
    monkeypatch.setenv("LMRS_CPU_PROGRAM", "1" if program else "0")
    engine_kw.setdefault("kv_cache_memory", "64MiB")
    eng = Engine(loaded=loaded, dtype="bfloat16", progress=False, **engine_kw)
    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=logprobs)
    outs = eng.generate(prompts, sp)
    got = [(o.token_ids, [(lp["logprob"], tuple(lp["top"])) for lp in o.outputs[0].logprobs or []]) for o in outs]
    return got, eng.engine.runner.model._program, eng


def _tiny(family, tmp_path):
    hf, _, _ = make_tiny_family_model(family, tmp_path / "hf", **SIZE)
    path = write_gguf(hf, tmp_path / f"{family}.Q4_K_M.gguf", "Q4_K_M")
    return load_model_files(path, progress=False, gguf_weights="quantized")


@pytest.fixture(scope="module")
def smollm2_kept():
    return load_model_files(default_model_path(), progress=False, gguf_weights="quantized")


def test_smollm2_program_is_bit_identical_to_the_layer_loop(smollm2_kept, monkeypatch):
    loaded = smollm2_kept
    g = torch.Generator().manual_seed(3)
    lengths = (3, 9, 17, 5, 33, 12, 2, 24, 150, 7, 60, 11)
    prompts = [torch.randint(100, 40000, (n,), generator=g).tolist() for n in lengths]
    ours, program, eng = _run(loaded, prompts, monkeypatch, True)
    assert isinstance(program, CpuProgram) and program.program.num_layers == loaded.config.num_hidden_layers
    loop, no_program, _ = _run(loaded, prompts, monkeypatch, False)
    assert no_program is False
    assert ours == loop
    # steps of every size ran: one row (float32), small bfloat16 batches, the whole batch
    assert eng.stats()["steps"] >= 10


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("kernels", ["native", "portable"])
def test_tiny_kquant_models_bit_identical(tmp_path, monkeypatch, family, kernels):
    loaded = _tiny(family, tmp_path)
    model_lin = None
    prompts = [random_prompt(n, seed=n) for n in (3, 9, 17, 5, 33, 12, 2, 24)]
    cpu_kernels.force_portable(kernels == "portable")
    try:
        ours, program, eng = _run(loaded, prompts, monkeypatch, True, num_threads=2)
        loop, _, _ = _run(loaded, prompts, monkeypatch, False, num_threads=2)
    finally:
        cpu_kernels.force_portable(False)
    assert isinstance(program, CpuProgram)
    model_lin = eng.engine.runner.model.layers[0].attn.qkv_proj
    if family == "llama":
        assert len(model_lin.segments) >= 2  # Q4_K q/k and Q6_K v: one output, several kernel calls
    else:
        assert model_lin.bias is not None
    assert ours == loop


def test_speculative_verify_steps_bit_identical(smollm2_kept, monkeypatch):
    """n-gram drafts on a prompt the model copies: verify steps of K + 1 rows per sequence run in the program
    too."""
    loaded = smollm2_kept
    code = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    messages = [{"role": "user", "content": "Rewrite this code exactly, adding nothing:\n\n" + code}]
    prompts = [loaded.tokenizer.encode_chat(messages), loaded.tokenizer.encode(code * 2)]
    kw = dict(speculative_method="ngram", num_speculative_tokens=3, spec_max_decode_rows=0, max_tokens=32,
              logprobs=None)  # (a request asking for logprobs does not speculate)
    ours, program, eng = _run(loaded, prompts, monkeypatch, True, **kw)
    loop, _, _ = _run(loaded, prompts, monkeypatch, False, **kw)
    assert isinstance(program, CpuProgram)
    assert eng.stats()["spec_decode_num_accepted_tokens"] > 5
    assert ours == loop


def test_layer_loop_where_the_program_does_not_apply(tmp_path, monkeypatch):
    qwen3 = _tiny("qwen3", tmp_path)  # per-head q/k norms
    ours, program, _ = _run(qwen3, [random_prompt(7, seed=3)], monkeypatch, True, max_tokens=4)
    assert program is False and len(ours[0][0]) == 4
    monkeypatch.setenv("LMRS_CPU_PROGRAM", "1")
    dense = load_model_files(tmp_path / "qwen3.Q4_K_M.gguf", progress=False)  # float32: dequantized weights
    eng = Engine(loaded=dense, dtype="float32", progress=False, kv_cache_memory="16MiB")
    out = eng.generate([random_prompt(7, seed=3)], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(out[0].token_ids) == 4 and eng.engine.runner.model._program is False


def test_bad_program_arguments_name_the_operand():
    norm = torch.ones(256)
    with pytest.raises(ValueError, match="bad decoder shape"):
        _core.CpuDecoderProgram(256, 4, 3, 64, 512, 0.125, 1, 8, 16, norm.data_ptr(), 1e-5)
    prog = _core.CpuDecoderProgram(256, 4, 2, 64, 512, 0.125, 1, 8, 16, norm.data_ptr(), 1e-5)
    q4_k = 12
    w = torch.zeros(4096, dtype=torch.uint8)
    seg = [(q4_k, 512, w.data_ptr(), w.numel(), 0)]
    with pytest.raises(ValueError, match="qkv"):
        prog.add_layer(norm.data_ptr(), 1e-5, norm.data_ptr(), 1e-5, seg, seg, seg, seg, norm.data_ptr(), 4, True,
                       norm.data_ptr(), norm.data_ptr())
    with pytest.raises(ValueError, match="compute_dtype"):
        prog.run(1, 2, norm.data_ptr(), norm.data_ptr(), 1, 1, 1, 1, 1, 1, 1, 1, 1)
    assert prog.num_layers == 0


def test_a_swapped_projection_rebuilds_the_program(smollm2_kept, monkeypatch):
    """The program holds the addresses of the layers' tensors: replacing a projection after the first step
    makes the next step build a new program (here with the wrapped projection: the layer loop)."""
    ours, program, eng = _run(smollm2_kept, [[100, 200, 300]], monkeypatch, True, max_tokens=2)
    model = eng.engine.runner.model
    assert isinstance(program, CpuProgram) and program.current(model, eng.engine.runner.kv_cache.layers)
    calls = []
    inner = model.layers[3].mlp.down_proj

    def wrapped(x):
        calls.append(x.shape[0])
        return inner(x)

    model.layers[3].mlp.down_proj = wrapped
    assert not program.current(model, eng.engine.runner.kv_cache.layers)
    out = eng.generate([[100, 200, 300]], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, logprobs=2))
    assert calls and model._program is False
    assert out[0].token_ids == ours[0][0]
