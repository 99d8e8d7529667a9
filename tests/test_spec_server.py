"""Speculative decoding behind the HTTP server: the real `openai` client on loopback against a tiny
model served with `--speculative-method ngram` or `--speculative-model` (its layer-truncated copy);
the same tokens as offline plain decoding; the `spec_decode_*` counters in /stats and /metrics; a bad
flag or a draft model with another tokenizer is refused at start with its name."""

import re
import subprocess
import sys

import pytest
import requests

from lmrs import Engine, SamplingParams
from server_utils import ServerProcess


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lmrs.models.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("spec-server") / "m", seed=3)


@pytest.fixture(scope="module")
def tiny_draft(tiny, tmp_path_factory):
    import torch

    from lmrs.models.loader import load_model_files
    from lmrs.models.testing_draft import write_truncated

    return write_truncated(load_model_files(str(tiny), progress=False), 1,
                           tmp_path_factory.mktemp("spec-draft") / "d", dtype=torch.float32)


def test_completions_with_ngram_drafts_match_plain_decoding(tiny):
    _completions_match_plain(tiny, "--speculative-method", "ngram")


def test_completions_with_a_draft_model_match_plain_decoding(tiny, tiny_draft):
    _completions_match_plain(tiny, "--speculative-model", str(tiny_draft))


def _completions_match_plain(tiny, *flags):
    prompt = [5 + (j * 7) % 40 for j in range(20)] * 2
    plain = Engine(str(tiny), dtype="float32", progress=False, kv_cache_memory="8MiB")
    want = plain.generate([prompt], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))[0]
    s = ServerProcess(str(tiny), "--dtype", "float32", "--kv-cache-memory", "8MiB", "--num-threads", "1",
                      *flags, "--num-speculative-tokens", "3")
    try:
        from openai import OpenAI

        client = OpenAI(base_url=s.url + "/v1", api_key="unused")
        model = client.models.list().data[0].id
        r = client.completions.create(model=model, prompt=prompt, max_tokens=40, temperature=0,
                                      extra_body={"ignore_eos": True, "return_token_ids": True})
        assert r.choices[0].text == want.outputs[0].text
        stats = s.wait_idle()
        assert stats["spec_decode_num_draft_tokens"] > 0
        metrics = requests.get(s.url + "/metrics", timeout=10).text
        drafts = re.search(r"^vllm:spec_decode_num_draft_tokens_total\{[^}]*\} (\S+)$", metrics, re.M)
        assert drafts and float(drafts.group(1)) == stats["spec_decode_num_draft_tokens"]
        assert re.search(r"^lmrs:spec_decode_acceptance_rate\{", metrics, re.M)
    finally:
        s.stop()


def _refused(tiny, *flags) -> str:
    p = subprocess.run([sys.executable, "-m", "lmrs.serve", str(tiny), *flags, "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    return p.stdout + p.stderr


def test_bad_speculation_flag_is_refused_with_its_name(tiny):
    assert "num_speculative_tokens" in _refused(tiny, "--speculative-method", "ngram", "--num-speculative-tokens", "0")


def test_draft_model_with_another_tokenizer_is_refused(tiny, tmp_path):
    from lmrs.models.testing import make_tiny_model

    other = make_tiny_model(tmp_path / "other", vocab_size=400)
    out = _refused(tiny, "--speculative-model", str(other))
    assert "speculative_model" in out and "tokenizer" in out
