"""/v1/embeddings through the scheduler, over real HTTP with the real model (float32): each input
is a prefill-only request chunked under the step's token budget, so a concurrent stream keeps
getting tokens during a large call; the vectors equal one plain forward pass over each input;
inputs count in the queue limit; a client that leaves cancels the rest of its call."""

import json
import socket
import threading
import time

import numpy as np
import pytest
import requests
import torch

from conftest import make_engine
from server_utils import ServerProcess

BUDGET = 256
EMBED_SHARE = 192  # embedding tokens in a step that also decodes


@pytest.fixture(scope="module")
def server():
    s = ServerProcess("--dtype", "float32", "--kv-cache-memory", "128MiB", "--max-num-batched-tokens", str(BUDGET),
                      "--max-embed-tokens-with-decodes", str(EMBED_SHARE), "--max-queued-requests", "48")
    yield s
    s.stop()


def texts(n, words=150):
    base = "The lighthouse keeper counted the waves and wrote each number in a book. "
    return [f"Entry {i}: " + " ".join(base.split() * (words // 14 + 1))[: words * 6] for i in range(n)]


def reference_embedding(runner, token_ids):
    """Today's algorithm before the scheduler: one forward pass over the whole input in a private
    scratch KV cache, final hidden states mean-pooled and L2-normalized."""
    from lmrs.models.attention_metadata import AttentionMetadata
    from lmrs.runner.kv_cache import KVCache

    model = runner.model
    n, bs = len(token_ids), runner.kv_cache.block_size
    nb = (n + bs - 1) // bs
    cfg = model.config
    scratch = KVCache(cfg.num_hidden_layers, nb + 1, bs, model.num_kv_heads, cfg.head_dim, model.dtype, model.device)
    attn = AttentionMetadata(slot_mapping=torch.arange(bs, bs + n, dtype=torch.int32),
                             block_table=torch.arange(1, nb + 1, dtype=torch.int32).unsqueeze(0),
                             seq_lens=torch.tensor([n], dtype=torch.int32),
                             query_start_loc=torch.tensor([0, n], dtype=torch.int32),
                             num_decode_rows=1 if n == 1 else 0, max_query_len=n, max_seq_len=n)
    with torch.inference_mode():
        hidden = model.forward(torch.tensor(token_ids, dtype=torch.int32), torch.arange(n, dtype=torch.int32),
                               attn, scratch.layers).float()
    v = hidden.mean(dim=0)
    return (v / v.norm().clamp(min=1e-12)).numpy()


def test_vectors_equal_one_forward_pass(server, smollm2):
    inputs = texts(6, 150) + ["Short one.", "x"]
    r = requests.post(server.url + "/v1/embeddings", json={"input": inputs}, timeout=300)
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    eng = make_engine(smollm2, dtype="float32")
    tok = eng.tokenizer
    ids = [tok.encode(t, add_special_tokens=tok.add_bos_token) for t in inputs]
    assert max(map(len, ids)) > BUDGET // 2, "some inputs take more than one chunk beside others"
    want = np.stack([reference_embedding(eng.engine.runner, x) for x in ids])
    assert np.abs(got - want).max() < 1e-5
    # the offline API goes through the scheduler too
    assert np.abs(eng.embed(inputs) - want).max() < 1e-5


def test_a_stream_keeps_going_during_a_large_call(server):
    """32 inputs of ~200 tokens take 30+ steps (192 embedding tokens each beside the decode); the
    stream gets a token in each."""
    stamps, started, done = [], threading.Event(), threading.Event()

    def stream():
        body = {"prompt": "Write a long story about a lighthouse.", "stream": True, "request_output_len": 2000,
                "ignore_eos": True, "temperature": 0}
        with requests.post(server.url + "/generate", json=body, stream=True, timeout=300) as r:
            for line in r.iter_lines(delimiter=b"\n"):
                if line:
                    stamps.append(time.monotonic())
                    started.set()
                if done.is_set():
                    return  # leaving closes the connection: the server aborts the request

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(120)
    t0 = time.monotonic()
    r = requests.post(server.url + "/v1/embeddings", json={"input": texts(32, 160)}, timeout=300)
    t1 = time.monotonic()
    done.set()
    t.join(120)
    assert r.status_code == 200 and len(r.json()["data"]) == 32
    assert r.json()["usage"]["prompt_tokens"] > 32 * 150
    during = [s for s in stamps if t0 < s < t1]
    assert len(during) >= 20, f"{len(during)} chunks during the embeddings call"
    server.wait_idle(timeout=120)


def test_inputs_count_in_the_queue_limit(server):
    r = requests.post(server.url + "/v1/embeddings", json={"input": texts(64, 20)}, timeout=60)
    assert r.status_code == 503 and "overloaded" in r.json()["message"] and r.headers.get("Retry-After")
    assert requests.post(server.url + "/v1/embeddings", json={"input": texts(40, 20)}, timeout=300).status_code == 200


def test_a_client_that_leaves_cancels_the_rest(server):
    before = server.wait_idle()
    body = json.dumps({"input": texts(40, 160)})
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    time.sleep(1.0)
    sock.close()
    after = server.wait_idle(timeout=120)
    aborted = after["finished_abort"] - before["finished_abort"]
    assert aborted >= 20, f"only {aborted} of 40 inputs were cancelled"
    assert after["blocks_used"] == before["blocks_used"]
