"""Incremental detokenizer: pieces never split a UTF-8 character or leak a possible stop-string
start, and joined they equal the final text (hypothesis fuzz over real SmolLM2 token streams)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmrs.engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tok(smollm2):
    return smollm2.tokenizer


def stream(tok, ids, stop=None, include=False, prompt=()):
    d = IncrementalDetokenizer(tok, list(prompt), stop=stop, include_stop_str_in_output=include)
    pieces = []
    for t in ids:
        pieces.append(d.add(t))
        if d.stopped_by:
            break
    pieces.append(d.flush())
    return pieces, d


def test_multibyte_characters_are_never_split(tok):
    text = "Café ☕ — 中文字符 and emoji 🙂🚀 done"
    ids = tok.encode(text)
    pieces, _ = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p) > 3


def test_stop_string_cuts_and_is_held_back(tok):
    ids = tok.encode("The answer is 42. END of story")
    pieces, d = stream(tok, ids, stop=["END"])
    assert "".join(pieces) == "The answer is 42. "
    assert d.stopped_by == "END"
    pieces, _ = stream(tok, ids, stop=["END"], include=True)
    assert "".join(pieces) == "The answer is 42. END"
    # a prefix of a stop string is held back until it can no longer complete
    ids = tok.encode("one EN two")
    pieces, d = stream(tok, ids, stop=["END"])
    assert d.stopped_by is None and "".join(pieces) == "one EN two"
    assert not any(p.endswith("EN") for p in pieces[:-1])


def test_stop_string_spanning_tokens(tok):
    ids = tok.encode("alpha beta<|stop|>gamma")
    pieces, d = stream(tok, ids, stop=["<|stop|>"])
    assert "".join(pieces) == "alpha beta" and d.stopped_by == "<|stop|>"


def test_special_tokens_skipped_and_kept(tok):
    ids = tok.encode("Hi<|im_end|>")
    d = IncrementalDetokenizer(tok, [], skip_special_tokens=True)
    assert "".join([d.add(t) for t in ids] + [d.flush()]) == "Hi"
    d = IncrementalDetokenizer(tok, [], skip_special_tokens=False)
    assert "".join([d.add(t) for t in ids] + [d.flush()]) == "Hi<|im_end|>"


TEXT = st.text(alphabet=st.sampled_from(list("ab c\n.é中🙂STOPxyz")), min_size=0, max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, stops=st.lists(st.sampled_from(["STOP", "z\n", "é中", "🙂🙂", "xy"]), max_size=3))
def test_fuzz_pieces_join_to_final_text(tok, text, stops):
    ids = tok.encode(text)
    pieces, d = stream(tok, ids, stop=stops)
    joined = "".join(pieces)
    full = tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)
    if d.stopped_by is None:
        assert joined == full
        assert not any(s in joined for s in stops)
    else:
        cut = min(full.find(s) for s in stops if s in full)
        assert joined == full[:cut]
    # no piece but the last ends with a proper prefix of a stop string that later completed
    for s in stops:
        assert s not in joined


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(min_value=0, max_value=49151), max_size=40))
def test_fuzz_random_token_ids(tok, ids):
    """Arbitrary ids (even invalid UTF-8 byte runs) still join to exactly the full decode."""
    pieces, _ = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
