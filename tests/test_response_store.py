"""The Responses API's store (no model): scoping by API key, which response a session ends with,
the count bound and idle expiry, and which sessions are ended when records go."""

import time

from lmrs.server.response_store import RESPONSE_SESSION_BASE, ResponseStore, StoredResponse


def rec(rid, sid, owner="a"):
    return StoredResponse(rid, owner, None, [{"role": "user", "content": rid}], sid, {"id": rid})


def test_scoping_heads_and_delete():
    store = ResponseStore(max_entries=10)
    sid = store.new_session_id()
    assert sid >= RESPONSE_SESSION_BASE and store.new_session_id() == sid + 1
    store.begin_turn(sid)
    store.end_turn(sid, "r1")
    assert store.put(rec("r1", sid)) == []
    r1 = store.get("r1", "a")
    assert r1 is not None and store.is_head(r1)
    assert store.get("r1", "b") is None and store.get("r1", None) is None  # another key sees nothing
    store.begin_turn(sid)  # a follow-up runs: r1 is no longer what the session ends with
    assert not store.is_head(r1) and store.orphaned(sid)
    store.end_turn(sid, "r2")
    store.put(rec("r2", sid))
    assert store.delete("r1", "b") == (False, None)
    assert store.delete("r1", "a") == (True, None)  # not the head: the session stays for r2
    assert store.delete("r2", "a") == (True, sid)  # the head: its session is to be ended
    assert store.get("r2", "a") is None and len(store) == 0


def test_count_bound_drops_least_recently_used_and_ends_their_sessions():
    store = ResponseStore(max_entries=2)
    for i, rid in enumerate(["x", "y"]):
        store.end_turn(100 + i, rid)
        store.put(rec(rid, 100 + i))
    store.get("x", "a")  # x is now the most recently used
    store.end_turn(102, "z")
    assert store.put(rec("z", 102)) == [101]  # y dropped; it headed session 101
    assert store.get("y", "a") is None and store.get("x", "a") is not None and len(store) == 2


def test_idle_expiry():
    store = ResponseStore(max_entries=10, idle_timeout_s=0.05)
    store.end_turn(7, "old")
    store.put(rec("old", 7))
    time.sleep(0.1)
    assert store.get("old", "a") is None  # expired for readers at once
    store.end_turn(8, "new")
    assert store.put(rec("new", 8)) == [7]  # and dropped (its session ended) on the next write
    assert len(store) == 1
