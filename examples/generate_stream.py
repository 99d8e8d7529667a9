"""Stream from /generate exactly as lmdeploy's docs do (requests + iter_lines).

    python examples/generate_stream.py [http://127.0.0.1:23333]
"""

import json
import sys

import requests


def get_streaming_response(prompt: str, api_url: str, session_id: int = -1, request_output_len: int = 512,
                           stream: bool = True, sequence_start: bool = True, sequence_end: bool = True,
                           ignore_eos: bool = False):
    headers = {"User-Agent": "Test Client"}
    pload = {
        "prompt": prompt,
        "stream": stream,
        "session_id": session_id,
        "request_output_len": request_output_len,
        "sequence_start": sequence_start,
        "sequence_end": sequence_end,
        "ignore_eos": ignore_eos,
    }
    response = requests.post(api_url, headers=headers, json=pload, stream=stream)
    for chunk in response.iter_lines(chunk_size=8192, decode_unicode=False, delimiter=b"\n"):
        if chunk:
            data = json.loads(chunk.decode("utf-8"))
            output = data["text"]
            tokens = data["tokens"]
            finish_reason = data["finish_reason"]
            yield output, tokens, finish_reason


if __name__ == "__main__":
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:23333"
    for output, tokens, finish_reason in get_streaming_response("Tell me a short joke.", base + "/generate"):
        print(output, end="", flush=True)
    print()
