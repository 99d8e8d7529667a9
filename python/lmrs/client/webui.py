"""`lmrs serve gradio URL`: a browser chat with a running lmrs server, over its REST API.

    lmrs serve gradio http://127.0.0.1:23333 --server-name 0.0.0.0 --server-port 6006 --restful-api True

Chat history, an instruction box, replies streamed as they are generated, Cancel (`stop: true` for
the session) and Reset (ends the session with `sequence_end`), sampling controls, the model name
from /v1/models. Each browser tab has its own /generate session (a random 31-bit id) used in
interactive mode: the first turn sets `sequence_start`, later turns send only the new message and
the server keeps the history and its KV cache. Needs Gradio: `pip install 'lmrs[webui]'`.
"""


import argparse
import contextlib
import html
import inspect
import os
import random
import sys

from lmrs.client import rest

INSTALL_HINT = ("lmrs serve gradio: the web UI needs Gradio, an optional dependency. Install it with\n"
                "    pip install 'lmrs[webui]'      (or: pip install 'gradio>=4')")
DEFAULT_MAX_NEW_TOKENS = 512
CSS = """
#lmrs-header h2 { margin-bottom: 0.1em; }
#lmrs-status { min-height: 2.2em; }
#lmrs-status strong { color: #b45309; }
footer { display: none !important; }
"""


def _bool(s: str) -> bool:
    v = str(s).strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {s!r}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lmrs serve gradio", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="the lmrs server, e.g. http://127.0.0.1:23333")
    p.add_argument("--server-name", "--server_name", dest="server_name", default="127.0.0.1",
                   help="interface the web UI listens on (0.0.0.0: every interface; default 127.0.0.1)")
    p.add_argument("--server-port", "--server_port", dest="server_port", type=int, default=6006,
                   help="port of the web UI (default 6006)")
    p.add_argument("--restful-api", "--restful_api", dest="restful_api", type=_bool, default=True,
                   metavar="True|False", help="talk to the server over its REST API (the only mode lmrs has)")
    p.add_argument("--api-key", "--api_key", dest="api_key", default=os.environ.get("LMRS_API_KEY"),
                   help="sent as 'Authorization: Bearer KEY' when the server uses --api-keys "
                        "(default: $LMRS_API_KEY)")
    p.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int,
                   default=DEFAULT_MAX_NEW_TOKENS, help="initial value of the max new tokens control")
    return p.parse_args(argv)


def new_session() -> dict:
    """One browser tab's chat: its /generate session id, whether the server holds it, the history."""
    return {"id": random.randrange(1, 2**31), "started": False, "history": []}


def _unreachable_md(url: str, err: Exception) -> str:
    return (f"**Server unreachable**: {_esc(err)}. Is it running? Start it with `lmrs serve api_server` "
            "(or `python -m lmrs.serve`), or check the URL.")


FULL_MD = ("**Session full**: this conversation reached the server's session length, so the "
           "message was not answered. Press **Reset** to start a new conversation.")


def _esc(x) -> str:
    return html.escape(str(x), quote=False)


class ChatBackend:
    """The UI's event handlers, independent of Gradio's layout (so they can be tested directly).

    A browser tab is known by its Gradio session hash (`request.session_hash`, one per page load):
    its chat lives here, keyed by that hash, rather than in a gr.State that the page-load event and
    a quick first message could both create.
    """

    def __init__(self, url: str, api_key: str | None = None, messages_format: bool = True):
        self.url = rest.normalize_url(url)
        self.api_key = api_key
        self.messages_format = messages_format
        self._tabs: dict[str | None, dict] = {}  # Gradio session hash -> new_session() dict
        self._cancelled: set[int] = set()  # sessions whose running turn the user cancelled
        self._running: set[int] = set()  # sessions with a turn streaming now
        self._closed: set[int] = set()  # sessions reset while a turn streamed: that turn must not repaint

    def session(self, request) -> dict:
        """This tab's chat (made on first use)."""
        key = getattr(request, "session_hash", None)
        if key not in self._tabs:
            self._tabs[key] = new_session()
        return self._tabs[key]

    # -- rendering --------------------------------------------------------------------------------
    def render(self, history: list) -> list:
        """[user, assistant] pairs -> the Chatbot's value (messages dicts, or pairs on old Gradio)."""
        if not self.messages_format:
            return [[u, a] for u, a in history]
        out = []
        for u, a in history:
            out.append({"role": "user", "content": u})
            if a:
                out.append({"role": "assistant", "content": a})
        return out

    # -- events -----------------------------------------------------------------------------------
    async def header(self, request=None):
        """On page load: the model name (or why the server cannot be reached) and this tab's session.
        Returns (header, status, chat)."""
        session = self.session(request)
        try:
            name = await rest.amodel_name(self.url, self.api_key)
            head = f"## lmrs chat · {_esc(name)}\nServer `{self.url}` · session `{session['id']}`"
            status = "Ready. Type a message and press Enter."
        except rest.ServerError as e:
            head = f"## lmrs chat\nServer `{self.url}` · session `{session['id']}`"
            status = (_unreachable_md(self.url, e) if isinstance(e, rest.ServerUnreachable)
                      else f"**Error**: the server answered {_esc(e)}")
        return head, status, self.render(session["history"])

    async def respond(self, message: str, temperature: float, top_p: float, max_new_tokens: float, request=None):
        """Send one turn and stream the reply. Yields (instruction box, chat, status)."""
        import gradio as gr

        session = self.session(request)
        message = (message or "").strip()
        if not message:
            yield gr.update(), self.render(session["history"]), "Type a message first."
            return
        sid = session["id"]
        self._cancelled.discard(sid)
        self._running.add(sid)
        try:
            async with contextlib.aclosing(self._turn(message, session, temperature, top_p, max_new_tokens)) as turn:
                async for out in turn:
                    if sid in self._closed:  # Reset ended this session: the chat now shows a new one.
                        # Gradio re-sends an event's last output when it completes: make it a no-op
                        yield gr.update(), gr.update(), gr.update()
                        return
                    yield out
        finally:
            self._running.discard(sid)
            self._closed.discard(sid)

    async def _turn(self, message: str, session: dict, temperature: float, top_p: float, max_new_tokens: float):
        import gradio as gr

        sid = session["id"]
        history = session["history"]
        history.append([message, ""])
        yield "", self.render(history), "Sending…"
        max_new = max(1, int(max_new_tokens))
        body = rest.generate_body(message, sid, sequence_start=not session["started"],
                                  request_output_len=max_new, temperature=float(temperature),
                                  top_p=min(1.0, max(0.01, float(top_p))))
        reply, last = "", {}
        try:
            async for chunk in rest.agenerate(self.url, body, self.api_key):
                last = chunk
                session["started"] = True
                if chunk.get("text"):
                    reply += chunk["text"]
                    history[-1][1] = reply
                if chunk.get("finish_reason") is None:
                    yield gr.update(), self.render(history), f"Generating… {chunk.get('tokens', 0)} tokens"
        except rest.ServerUnreachable as e:
            history[-1][1] = reply or f"*Not sent: cannot reach the lmrs server at {self.url}.*"
            gr.Warning(f"Cannot reach the lmrs server at {self.url}")
            yield gr.update(), self.render(history), _unreachable_md(self.url, e)
            return
        except rest.ServerError as e:
            history[-1][1] = reply or f"*Not answered: the server answered {_esc(e)}*"
            yield gr.update(), self.render(history), f"**Error**: the server answered {_esc(e)}"
            return

        finish, tokens = last.get("finish_reason"), last.get("tokens", 0)
        cancelled = sid in self._cancelled
        self._cancelled.discard(sid)
        if rest.is_session_full(last):
            history[-1][1] = "*Not answered: the session is full. Press Reset to start a new conversation.*"
            gr.Warning("The session is full: press Reset to start a new conversation.")
            status = FULL_MD
        elif finish == "error":
            history[-1][1] = reply or "*Generation failed.*"
            status = f"**Error**: generation failed: {_esc(last.get('error', 'unknown error'))}"
        elif cancelled:
            status = f"Cancelled after {tokens} tokens."
        elif finish == "length" and tokens < max_new:
            status = (f"**Session full**: the reply stopped after {tokens} tokens at the server's "
                      "session length. Press **Reset** to start a new conversation.")
            gr.Warning("The session is full: press Reset to start a new conversation.")
        elif finish == "length":
            status = f"Done: {tokens} tokens (stopped at max new tokens; raise it under Sampling for longer replies)."
        elif not last:
            status = "**Error**: the server closed the stream without an answer."
        else:
            status = f"Done: {tokens} tokens."
        yield gr.update(), self.render(history), status

    async def cancel(self, request=None):
        """Cancel the running generation of this tab's session (stop: true). The turn's own stream then
        ends and reports "Cancelled after N tokens"; this only reports a failure to reach the server."""
        import gradio as gr

        sid = self.session(request)["id"]
        self._cancelled.add(sid)
        try:
            await rest.astop(self.url, sid, self.api_key)
        except rest.ServerUnreachable as e:
            return _unreachable_md(self.url, e)
        except rest.ServerError as e:
            return f"**Error**: Cancel failed: {_esc(e)}"
        return gr.update()

    async def _end(self, session: dict) -> str | None:
        """Stop a running turn of the session, end it on the server; an error message or None."""
        sid = session["id"]
        if sid in self._running:
            self._closed.add(sid)
        if not (session["started"] or session["history"]):  # (a first turn in flight has not "started")
            return None
        try:
            await rest.astop(self.url, sid, self.api_key)  # a running turn first (the end waits for it)
            await rest.aend_session(self.url, sid, self.api_key)
        except rest.ServerUnreachable as e:
            return _unreachable_md(self.url, e)
        except rest.ServerError as e:
            return f"**Error**: ending the session failed: {_esc(e)}"
        return None

    async def reset(self, request=None):
        """End this tab's session on the server (sequence_end) and start a new, empty conversation.
        Returns (chat, status, instruction box)."""
        old = self.session(request)
        self._tabs[getattr(request, "session_hash", None)] = new_session()
        err = await self._end(old)
        return self.render([]), err or "Session ended. New conversation.", ""

    async def unload(self, request=None) -> None:
        """A tab was closed: end its session so its KV cache goes back to the pool."""
        session = self._tabs.pop(getattr(request, "session_hash", None), None)
        if session is not None:
            await self._end(session)


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def build_ui(url: str, api_key: str | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    """The Gradio Blocks app and the keyword arguments for its launch()."""
    import gradio as gr

    chatbot_kw: dict = {}
    if _accepts(gr.Chatbot.__init__, "buttons"):  # Gradio 6: no "share to Hugging Face" button
        chatbot_kw["buttons"] = ["copy", "copy_all"]
    if _accepts(gr.Chatbot.__init__, "type"):  # Gradio 4.4x-5: choose the messages format
        chatbot_kw["type"] = "messages"
        messages_format = True
    else:  # Gradio 6+: messages only; early Gradio 4: pairs only
        messages_format = int(gr.__version__.split(".")[0]) >= 6
    backend = ChatBackend(url, api_key, messages_format)

    font = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"]  # no web fonts: works offline
    theme = gr.themes.Soft(primary_hue="indigo", font=font, font_mono=["ui-monospace", "monospace"])
    blocks_kw: dict = {"title": "lmrs chat", "analytics_enabled": False}
    launch_kw: dict = {}
    style_target = launch_kw if _accepts(gr.Blocks.launch, "css") else blocks_kw  # Gradio 6 moved them
    style_target.update(theme=theme, css=CSS)

    with gr.Blocks(**blocks_kw) as demo:
        header = gr.Markdown(f"## lmrs chat\nServer `{backend.url}`", elem_id="lmrs-header")
        with gr.Row():
            with gr.Column(scale=4):
                chat = gr.Chatbot(label="Chat", elem_id="lmrs-chat", height=500, **chatbot_kw)
                box = gr.Textbox(label="Instruction", elem_id="lmrs-input", lines=1, max_lines=8, autofocus=True,
                                 placeholder="Type a message and press Enter (Shift+Enter: new line)")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="lmrs-send")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="lmrs-cancel")
                    reset = gr.Button("Reset", elem_id="lmrs-reset")
                status = gr.Markdown("", elem_id="lmrs-status")
            with gr.Column(scale=1, min_width=220):
                gr.Markdown("### Sampling")
                temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature (0: greedy)",
                                        elem_id="lmrs-temperature")
                top_p = gr.Slider(0.05, 1.0, value=0.8, step=0.05, label="Top p", elem_id="lmrs-top-p")
                max_tokens = gr.Slider(1, 4096, value=max_new_tokens, step=1, label="Max new tokens",
                                       elem_id="lmrs-max-tokens")
                gr.Markdown("Each browser tab is its own session on the server: later turns send only "
                            "the new message. **Cancel** stops the reply; **Reset** ends the session.")

        # gr.Request gives each handler the tab's session hash (Gradio injects it by the annotation)
        async def respond(message, temp, tp, mx, request: gr.Request):
            async for out in backend.respond(message, temp, tp, mx, request):
                yield out

        async def cancel_turn(request: gr.Request):
            return await backend.cancel(request)

        async def reset_chat(request: gr.Request):
            return await backend.reset(request)

        async def header_on_load(request: gr.Request):
            return await backend.header(request)

        async def unload(request: gr.Request):
            await backend.unload(request)

        gr.on(triggers=[box.submit, send.click], fn=respond, inputs=[box, temperature, top_p, max_tokens],
              outputs=[box, chat, status], trigger_mode="once", concurrency_limit=None, show_progress="hidden")
        cancel.click(cancel_turn, outputs=[status], concurrency_limit=None, show_progress="hidden")
        # (no `cancels=[...]`: Reset stops the turn on the server, and the turn then stops repainting;
        # Gradio 4 loses the Reset's own output when it cancels an event)
        reset.click(reset_chat, outputs=[chat, status, box], concurrency_limit=None, show_progress="hidden")
        if hasattr(chat, "clear"):  # the chat's own trash button: end the session too, like Reset
            chat.clear(reset_chat, outputs=[chat, status, box], concurrency_limit=None, show_progress="hidden")
        demo.load(header_on_load, outputs=[header, status, chat], show_progress="hidden")
        if hasattr(demo, "unload"):
            demo.unload(unload)
    demo.queue(default_concurrency_limit=None)
    return demo, launch_kw


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.restful_api:
        print("lmrs serve gradio: only the REST mode exists: the web UI always talks to a running lmrs server "
              "over its REST API (start one with `lmrs serve api_server`). Use --restful-api True.",
              file=sys.stderr)
        return 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    url = rest.normalize_url(args.url)
    try:
        print(f"lmrs server {url}: model {rest.model_name(url, args.api_key)}")
    except rest.ServerError as e:
        print(f"warning: {e}; the UI starts anyway and says so in the page until the server answers",
              file=sys.stderr)
    demo, launch_kw = build_ui(url, args.api_key, args.max_new_tokens)
    shown = "127.0.0.1" if args.server_name in ("0.0.0.0", "::") else args.server_name
    print(f"lmrs web UI: http://{shown}:{args.server_port}", flush=True)
    demo.launch(server_name=args.server_name, server_port=args.server_port, **launch_kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
