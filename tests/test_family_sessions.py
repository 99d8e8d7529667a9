"""Sessions continue correctly on every family's chat template, over real HTTP: a 3-turn `/generate`
session (each turn sends only its new message) gives the same replies, token for token, as
stateless `/v1/chat/completions` calls that resend the whole history through the template.

One server per family, on the family's tiny model (`lmrs.models.testing_hf`: its word-level
tokenizer makes every reply re-encode to the tokens generated, as a trained model's replies do).
The continuation must drop the reply's end-of-turn token when the model generated it, whichever of
the model's EOS tokens the template uses (Gemma's <end_of_turn>, Llama 3's <|eot_id|>, Phi's <|end|>):
so that turns do end with it, the model's end-of-turn output row is made a slightly longer copy of
the row of a token its first reply would have, which then ends that reply early (and maybe others).
"""

import json

import pytest
import requests
import torch
from safetensors.torch import load_file, save_file

from lmrs import Engine, SamplingParams
from lmrs.models.loader import load_model_files
from lmrs.models.testing_hf import SPECS, make_tiny_family_model
from lmrs.models.testing_templates import FORMATS

from server_utils import ServerProcess

TURNS = ["What is the capital of France?", "And of Germany?", "Thank you!"]
MAX_TOKENS = 12


def first_reply(folder):
    loaded = load_model_files(folder, progress=False)
    eng = Engine(loaded=loaded, dtype="float32", progress=False, num_threads=1, kv_cache_memory="16MiB")
    out = eng.chat([{"role": "user", "content": TURNS[0]}], SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
    return loaded, out


def end_turns_early(family: str, folder) -> None:
    """Make the end-of-turn token win where a token of the first reply would (see above): a tied
    head is untied first, so the token's input embedding stays. Tries the first reply's tokens 3,
    4, ... until the edited model's first reply ends with it after a few tokens (or, for a reply
    repeating one token, right away)."""
    path = folder / "model.safetensors"
    original = load_file(str(path))
    loaded, reply = first_reply(folder)
    eot = loaded.tokenizer.convert_tokens_to_ids(FORMATS[family].end_of_turn)
    head = next((n for n in ("lm_head.weight", "output.weight") if n in original), None)
    if head is None:
        head = "lm_head.weight"
        original[head] = original["model.embed_tokens.weight"].clone()
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    fallback = None
    for like in dict.fromkeys(reply.token_ids[3:]):
        w = {k: v.clone() for k, v in original.items()}
        w[head][eot] = 1.02 * w[head][like]
        save_file({k: v.contiguous() for k, v in w.items()}, str(path), metadata={"format": "pt"})
        _, edited = first_reply(folder)
        if edited.finish_reason == "stop" and len(edited.token_ids) >= 3:
            return
        if edited.finish_reason == "stop" and fallback is None:
            fallback = w
    if fallback is None:
        raise AssertionError(f"{family}: no edit ends the first reply with the end-of-turn token")
    save_file({k: v.contiguous() for k, v in fallback.items()}, str(path), metadata={"format": "pt"})


@pytest.fixture(scope="module", params=list(SPECS))
def server(request, tmp_path_factory):
    folder, _, _ = make_tiny_family_model(request.param, tmp_path_factory.mktemp(request.param))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    end_turns_early(request.param, folder)
    torch.set_num_threads(before)
    s = ServerProcess(str(folder), "--dtype", "float32", "--kv-cache-memory", "16MiB", "--num-threads", "1")
    yield request.param, s
    s.stop()


def post(url, path, body):
    r = requests.post(url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_three_turn_session_equals_stateless_history(server):
    family, s = server
    sid = 77
    replies, counts, finishes = [], [], []
    for i, msg in enumerate(TURNS):
        r = post(s.url, "/generate", {"prompt": msg, "session_id": sid, "sequence_start": i == 0, "sequence_end": False,
                                      "temperature": 0, "request_output_len": MAX_TOKENS})
        replies.append(r["text"])
        counts.append(r["tokens"])
        finishes.append(r["finish_reason"])
    history = []
    for i, msg in enumerate(TURNS):
        history.append({"role": "user", "content": msg})
        r = post(s.url, "/v1/chat/completions", {"messages": history, "temperature": 0, "max_tokens": MAX_TOKENS})
        choice = r["choices"][0]
        assert choice["message"]["content"] == replies[i], f"{family}: turn {i + 1} differs"
        assert r["usage"]["completion_tokens"] == counts[i], f"{family}: turn {i + 1} token count"
        assert choice["finish_reason"] == finishes[i]
        history.append({"role": "assistant", "content": replies[i]})
    assert all(counts), replies
    assert finishes[0] == "stop", (family, finishes, counts)  # ended by its end-of-turn token
    post(s.url, "/generate", {"prompt": "", "session_id": sid, "sequence_end": True, "sequence_start": False,
                              "request_output_len": 0})
