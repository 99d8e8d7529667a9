"""`lmrs serve api_client URL [--session-id N]`: a terminal chat with a running lmrs server.

A prompt loop: type a message and finish it with a blank line; `exit` quits; `end` ends the
session and starts a new one. Each turn streams from /generate in interactive mode:
sequence_start only on the first turn, then only the new message is sent (the server keeps the
history). When the session is full (finish_reason "length" with no tokens) it says so and how to
start a new one.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import requests


def stream_turn(url: str, prompt: str, session_id: int, start: bool, *, max_tokens: int, temperature: float,
                api_key: str | None, out=sys.stdout) -> dict:
    """Send one turn; print the reply as it streams; return the last chunk."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"prompt": prompt, "session_id": session_id, "sequence_start": start, "sequence_end": False,
            "stream": True, "request_output_len": max_tokens, "temperature": temperature}
    last = {}
    with requests.post(url + "/generate", json=body, headers=headers, stream=True, timeout=600) as r:
        if r.status_code != 200:
            try:
                msg = r.json().get("message", r.text)
            except ValueError:
                msg = r.text
            raise RuntimeError(f"server answered {r.status_code}: {msg}")
        for line in r.iter_lines(delimiter=b"\n"):
            if not line:
                continue
            last = json.loads(line)
            if last.get("text"):
                out.write(last["text"])
                out.flush()
    out.write("\n")
    return last


def end_session(url: str, session_id: int, api_key: str | None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    requests.post(url + "/generate", json={"prompt": "", "session_id": session_id, "request_output_len": 0,
                                          "sequence_start": False, "sequence_end": True}, headers=headers, timeout=60)


def read_message(inp=sys.stdin, out=sys.stdout) -> str | None:
    """Lines until a blank line (None at end of input)."""
    out.write("\ndouble enter to end input >>> ")
    out.flush()
    lines = []
    while True:
        line = inp.readline()
        if not line:
            return None if not lines else "\n".join(lines)
        line = line.rstrip("\n")
        if not line:
            if lines:
                return "\n".join(lines)
            continue
        lines.append(line)
        if line.strip() in ("exit", "end") and len(lines) == 1:
            return line.strip()


def main(argv=None, inp=sys.stdin, out=sys.stdout) -> int:
    p = argparse.ArgumentParser(prog="lmrs serve api_client", description=__doc__.splitlines()[0])
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:23333")
    p.add_argument("--session-id", "--session_id", dest="session_id", type=int, default=None,
                   help="session id (default: a random one)")
    p.add_argument("--api-key", "--api_key", dest="api_key", default=None)
    p.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    args = p.parse_args(argv)
    url = args.url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    sid = args.session_id if args.session_id is not None else random.randrange(1, 2**31)
    try:
        requests.get(url + "/health", timeout=5)
    except requests.RequestException as e:
        print(f"cannot reach {url}: {e}", file=sys.stderr)
        return 1
    start = True
    while True:
        msg = read_message(inp, out)
        if msg is None or msg == "exit":
            return 0
        if msg == "end":
            end_session(url, sid, args.api_key)
            sid = random.randrange(1, 2**31)
            start = True
            out.write(f"(session ended; new session {sid})\n")
            continue
        try:
            last = stream_turn(url, msg, sid, start, max_tokens=args.max_tokens, temperature=args.temperature,
                               api_key=args.api_key, out=out)
        except (RuntimeError, requests.RequestException) as e:
            out.write(f"error: {e}\n")
            continue
        start = False
        if last.get("finish_reason") == "length" and not last.get("tokens"):
            out.write("the session is full (it reached the server's --session-len): type 'end' to start a new one\n")


if __name__ == "__main__":
    sys.exit(main())
