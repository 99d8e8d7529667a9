"""`lmrs serve gradio URL` in a real browser: Playwright drives Debian's Chromium against the Gradio UI
and a real lmrs server (SmolLM2-135M on CPU).

Checks: the streamed reply grows on screen; a second message continues the same server session and
prefills only its new tokens; a second tab gets its own session, ended when the tab closes; Reset ends
the session; Cancel stops a long reply early. Without a browser: the CLI flags, the exit code without
Gradio, the message when the server is unreachable. Screenshots:
tests/artifacts/webui.png (each run) and docs/webui.png (the README's; written when missing or with
LMRS_UPDATE_SCREENSHOTS=1, so a test run does not rewrite a committed file).

Skips (with the reason) when gradio, playwright or the browser is missing: `scripts/install_browser.sh`
installs them. The browser is $LMRS_CHROMIUM or /usr/bin/chromium.
"""

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import types

import pytest
import requests

from server_utils import ServerProcess, free_port

try:
    import gradio  # noqa: F401
except ImportError:
    pytest.skip("gradio is not installed (pip install 'lmrs[webui]', or scripts/install_browser.sh)",
                allow_module_level=True)

from lmrs.client import webui  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ARTIFACT = os.path.join(HERE, "artifacts", "webui.png")
DOCS_SHOT = os.path.join(ROOT, "docs", "webui.png")
CHROMIUM = os.environ.get("LMRS_CHROMIUM", "/usr/bin/chromium")
BOT = "#lmrs-chat [data-testid=bot]"
ENDED = ("Done", "Cancelled", "Session full", "Server unreachable", "Error")  # how a turn's status starts
USER = "#lmrs-chat [data-testid=user]"


# ---- without a browser ---------------------------------------------------------------------------
def test_cli_flags_and_missing_gradio(capsys, monkeypatch):
    args = webui.parse_args(["h:1", "--server_name", "0.0.0.0", "--server-port", "7000", "--restful_api", "True"])
    assert (args.url, args.server_name, args.server_port, args.restful_api) == ("h:1", "0.0.0.0", 7000, True)
    assert webui.parse_args(["h:1", "--restful-api", "false"]).restful_api is False
    assert webui.main(["http://127.0.0.1:1", "--restful-api", "False"]) == 2
    assert "only the REST mode exists" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert webui.main(["http://127.0.0.1:1"]) == 2
    assert "pip install 'lmrs[webui]'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Cannot reach the lmrs server")  # gr.Warning outside a running app
def test_unreachable_server_is_reported():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    backend = webui.ChatBackend(url)
    tab = types.SimpleNamespace(session_hash="tab-1")  # what gr.Request gives the handlers

    async def turn():
        return [out async for out in backend.respond("hello", 0.0, 0.8, 8, tab)]

    box, chat, status = asyncio.run(turn())[-1]
    assert status.startswith("**Server unreachable**") and url in status, status
    assert backend.session(tab)["started"] is False  # the next message starts the session
    assert "cannot reach" in str(chat[-1]).lower()
    head, status, _ = asyncio.run(backend.header(tab))
    assert status.startswith("**Server unreachable**"), status
    other = types.SimpleNamespace(session_hash="tab-2")
    assert 0 < backend.session(other)["id"] < 2**31 and backend.session(other) is not backend.session(tab)


# ---- in the browser ------------------------------------------------------------------------------
def _wait(cond, timeout: float, what: str, interval: float = 0.1):
    deadline = time.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class UI:
    """The page, with helpers to read what the user sees."""

    def __init__(self, page, server):
        self.page, self.server = page, server

    def status(self) -> str:
        return self.page.inner_text("#lmrs-status").strip()

    def bot_texts(self) -> list[str]:
        return self.page.eval_on_selector_all(BOT, "els => els.map(e => e.innerText)")

    def last_bot(self) -> str:
        texts = self.bot_texts()
        return texts[-1].strip() if texts else ""

    def set_slider(self, elem_id: str, value) -> None:
        box = self.page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
        box.blur()

    def send(self, text: str) -> None:
        self.page.fill("#lmrs-input textarea", text)
        self.page.press("#lmrs-input textarea", "Enter")
        # the instruction box empties and the user message shows once the turn starts
        _wait(lambda: self.page.input_value("#lmrs-input textarea") == "" and
              self.page.eval_on_selector_all(USER, "els => els.length") > 0, 30, "the message to be sent")

    def wait_done(self, timeout: float = 90.0) -> str:
        return _wait(lambda: (s := self.status()).startswith(ENDED) and s, timeout, "the reply to finish")

    def stream(self, timeout: float = 90.0, until=None) -> list[str]:
        """Sample the last reply as it streams, until the turn ends (or until(status) is true)."""
        seen = []
        deadline = time.time() + timeout
        while True:
            status = self.status()
            text = self.last_bot()
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            if status.startswith(ENDED) or (until and until(status)):
                return seen
            assert time.time() < deadline, f"the reply did not finish in {timeout:g} s; status {status!r}"
            time.sleep(0.03)


def _grew(seen: list[str]) -> int:
    """How many times the sampled reply got longer (Markdown may briefly re-render a list marker)."""
    return sum(len(b) > len(a) for a, b in zip(seen, seen[1:]))


@pytest.fixture(scope="module")
def ui():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright, or scripts/install_browser.sh)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or scripts/install_browser.sh; "
                    "or set LMRS_CHROMIUM)")
    server = ServerProcess("--kv-cache-memory", "256MiB", wait=False)
    ui_port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="lmrs-webui-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "lmrs.cli", "serve", "gradio", server.url, "--server_name",
                             "127.0.0.1", "--server-port", str(ui_port), "--restful-api", "True"],
                            stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False"))
    pw = browser = None
    try:
        pw = sync_playwright().start()
        try:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        except Exception as e:  # a browser that cannot start here (missing libraries, ...) is not a UI bug
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(e).splitlines()[0]}")
        server.wait_healthy(180)

        def ui_up():
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"the web UI exited with {proc.returncode}:\n{log.read()}")
            try:
                return requests.get(f"http://127.0.0.1:{ui_port}/", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        _wait(ui_up, 120, "the web UI to answer", 0.3)
        page = browser.new_page(viewport={"width": 1180, "height": 820})
        page.goto(f"http://127.0.0.1:{ui_port}/")
        page.wait_for_selector("#lmrs-input textarea", timeout=60_000)
        yield UI(page, server)
    finally:
        if browser is not None:
            browser.close()
        if pw is not None:
            pw.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        server.stop()


def test_streamed_reply_and_session_continues(ui):
    page, server = ui.page, ui.server
    _wait(lambda: "SmolLM2" in page.inner_text("#lmrs-header"), 30, "the model name from /v1/models")
    assert ui.status().startswith("Ready"), ui.status()
    ui.set_slider("lmrs-temperature", 0)  # greedy: the same conversation each run
    ui.set_slider("lmrs-max-tokens", 64)
    before = server.stats()
    assert before["sessions"] == 0

    ui.send("What is the capital of France?")
    seen1 = ui.stream()
    assert ui.status().startswith("Done"), ui.status()
    assert ui.last_bot(), "no reply text"
    turn1 = server.wait_idle()
    assert turn1["sessions"] == 1
    history_tokens = (turn1["prompt_tokens_computed"] - before["prompt_tokens_computed"]
                      + turn1["generation_tokens"] - before["generation_tokens"])

    ui.send("What is it famous for?")
    seen2 = ui.stream()
    assert ui.status().startswith("Done"), ui.status()
    final = ui.last_bot()
    assert len(ui.bot_texts()) == 2 and final
    # the replies appeared piece by piece, not all at once
    assert _grew(seen1) + _grew(seen2) >= 3 and len(seen2[0]) < len(final), (
        f"the replies did not grow on screen while streaming: {seen1!r} {seen2!r}")
    turn2 = server.wait_idle()
    assert turn2["sessions"] == 1, "the second message did not continue the same session"
    new_prefill = turn2["prompt_tokens_computed"] - turn1["prompt_tokens_computed"]
    assert 0 < new_prefill <= 40 and new_prefill < history_tokens, (
        f"turn 2 prefilled {new_prefill} tokens; the history held {history_tokens}: it should prefill only "
        "the new message")

    if not os.path.exists(DOCS_SHOT) or os.environ.get("LMRS_UPDATE_SCREENSHOTS") == "1":
        page.locator("#lmrs-input textarea").blur()
        page.screenshot(path=DOCS_SHOT)


def _session_id(page) -> str:
    return re.search(r"session (\d+)", page.inner_text("#lmrs-header")).group(1)


def test_tabs_have_own_sessions_and_reset_ends_session(ui):
    page, server = ui.page, ui.server
    if server.stats()["sessions"] == 0:  # the previous test failed early: make a session to end
        ui.send("Hi!")
        ui.wait_done()
    assert server.wait_idle()["sessions"] == 1

    # a second tab: its own session on the server; closing it ends that session
    tab2 = UI(page.context.browser.new_page(viewport={"width": 1180, "height": 820}), server)
    tab2.page.goto(page.url)
    _wait(lambda: "SmolLM2" in tab2.page.inner_text("#lmrs-header"), 30, "the second tab to load")
    assert _session_id(tab2.page) != _session_id(page)
    tab2.set_slider("lmrs-max-tokens", 4)
    tab2.send("Hello!")
    tab2.wait_done()
    assert server.wait_idle()["sessions"] == 2, "the second tab did not get its own session"
    tab2.page.close(run_before_unload=True)
    _wait(lambda: server.stats()["sessions"] == 1, 30, "the closed tab's session to end")

    page.click("#lmrs-reset")
    _wait(lambda: server.stats()["sessions"] == 0, 30, "/stats sessions back to 0 after Reset")
    _wait(lambda: ui.status().startswith("Session ended"), 15, "the Reset status")
    assert page.eval_on_selector_all(f"{BOT}, {USER}", "els => els.length") == 0, "Reset left the chat history"


def test_cancel_stops_long_reply(ui):
    page, server = ui.page, ui.server
    max_tokens = 2000
    ui.set_slider("lmrs-max-tokens", max_tokens)
    before = server.wait_idle()
    ui.send("Write a very long story about a dragon who learns to fly.")
    seen = ui.stream(until=lambda st: (m := re.match(r"Generating… (\d+) tokens", st)) and int(m.group(1)) >= 16)
    assert ui.status().startswith("Generating"), f"the long reply ended by itself: {ui.status()!r}"
    assert _grew(seen) >= 2, f"the reply did not grow on screen while streaming: {seen!r}"
    page.click("#lmrs-cancel")
    status = ui.wait_done(60)
    m = re.match(r"Cancelled after (\d+) tokens", status)
    assert m, f"the reply was not cancelled: {status!r}"
    assert int(m.group(1)) < max_tokens
    after = server.wait_idle()
    assert after["finished_abort"] == before["finished_abort"] + 1, "the server did not cancel the request"
    assert after["generation_tokens"] - before["generation_tokens"] < max_tokens
    assert after["sessions"] == 1, "a cancelled turn keeps its session"
    text = ui.last_bot()
    time.sleep(1.0)
    assert ui.last_bot() == text, "the reply kept growing after Cancel"

    os.makedirs(os.path.dirname(ARTIFACT), exist_ok=True)
    page.screenshot(path=ARTIFACT, full_page=True)
    page.click("#lmrs-reset")
    _wait(lambda: server.stats()["sessions"] == 0, 30, "the session to end after the final Reset")
