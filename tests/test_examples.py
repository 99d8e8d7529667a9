"""The scripts in examples/ work against a real server as written."""

import subprocess
import sys

import pytest

from server_utils import ServerProcess

ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__file__))


@pytest.fixture(scope="module")
def server():
    s = ServerProcess("--kv-cache-memory", "128MiB")
    yield s
    s.stop()


@pytest.mark.parametrize("script", ["generate_stream.py", "session_chat.py", "openai_client.py"])
def test_python_example(server, script):
    r = subprocess.run([sys.executable, f"{ROOT}/examples/{script}", server.url], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_curl_example(server):
    r = subprocess.run(["bash", f"{ROOT}/examples/curl.sh", server.url], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert '"finish_reason"' in out and '"object": "list"' in out and "vllm:" in out and '"openapi"' in out
