"""A multi-turn conversation through /generate sessions (interactive mode): the server keeps the
history and its KV cache, so each turn sends (and prefills) only the new message.

    python examples/session_chat.py [http://127.0.0.1:23333]
"""

import json
import random
import sys

import requests


def turn(base: str, session_id: int, prompt: str, first: bool) -> str:
    body = {"prompt": prompt, "session_id": session_id, "sequence_start": first, "sequence_end": False,
            "stream": True, "request_output_len": 128, "temperature": 0.7}
    text = []
    with requests.post(base + "/generate", json=body, stream=True) as r:
        for line in r.iter_lines(delimiter=b"\n"):
            if line:
                chunk = json.loads(line)
                text.append(chunk["text"])
                if chunk["finish_reason"] == "length" and chunk["tokens"] == 0:
                    return "(the session is full: end it and start a new one)"
    return "".join(text)


def end(base: str, session_id: int) -> None:
    requests.post(base + "/generate", json={"prompt": "", "session_id": session_id, "request_output_len": 0,
                                           "sequence_start": False, "sequence_end": True})


if __name__ == "__main__":
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:23333"
    sid = random.randrange(1, 2**31)
    for i, msg in enumerate(["Hi! My name is Ada.", "What is a good name for a cat?", "What is my name?"]):
        print(f"> {msg}\n{turn(base, sid, msg, first=(i == 0))}\n")
    end(base, sid)
