"""The Swagger UI page (`GET /`) in a real browser, on a server started with `--api-keys`.

Playwright drives Debian's Chromium: the page loads (from the installed `swagger-ui-py` package's
assets, offline); "Try it out" on `GET /v1/models` answers 401 before the key is given and 200 after
the page's Authorize button took it. Skips (with the reason) when playwright or the browser is
missing: `scripts/install_browser.sh` installs them. The browser is $LMRS_CHROMIUM or /usr/bin/chromium.
"""

import os
import re

import pytest

from server_utils import ServerProcess

CHROMIUM = os.environ.get("LMRS_CHROMIUM", "/usr/bin/chromium")
KEY = "docs-key-1"
MODELS_OP = "#operations-openai-v1_models"


@pytest.fixture(scope="module")
def page():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright, or scripts/install_browser.sh)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or scripts/install_browser.sh; "
                    "or set LMRS_CHROMIUM)")
    server = ServerProcess("--kv-cache-memory", "32MiB", "--api-keys", KEY, wait=False)
    pw = browser = None
    try:
        pw = sync_playwright().start()
        try:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        except Exception as e:  # a browser that cannot start here (missing libraries, ...) is not a page bug
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(e).splitlines()[0]}")
        server.wait_healthy(180)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        # the page must work offline: refuse every request that leaves the server
        context.route(re.compile(r"^(?!http://127\.0\.0\.1:%d/).*" % server.port), lambda route: route.abort())
        p = context.new_page()
        p.goto(server.url + "/")
        p.wait_for_selector(MODELS_OP, timeout=60_000)
        yield p
    finally:
        if browser is not None:
            browser.close()
        if pw is not None:
            pw.stop()
        server.stop()


def _execute_models(page) -> int:
    """Run "Try it out" -> "Execute" on GET /v1/models; returns the status of the request the page
    sent, once the page shows it."""
    op = page.locator(MODELS_OP)
    if not op.locator(".execute").count():
        op.locator(".try-out__btn").click()
    with page.expect_response(lambda r: r.url.endswith("/v1/models")) as sent:
        op.locator(".execute").click()
    status = sent.value.status
    page.wait_for_function(
        """([sel, want]) => { const s = document.querySelector(sel);
                              return s !== null && s.innerText.trim() === want; }""",
        arg=[MODELS_OP + " .live-responses-table .response .response-col_status", str(status)], timeout=30_000)
    return status


def test_page_loads_with_keys_and_authorize_makes_try_it_out_work(page):
    assert page.title() == "lmrs API"
    assert page.locator("button.authorize").count() == 1  # the bearer scheme from /openapi.json
    page.locator(MODELS_OP + " .opblock-summary").first.click()
    assert _execute_models(page) == 401

    page.locator("button.authorize").click()
    page.locator(".auth-container input").first.fill(KEY)
    page.locator(".auth-btn-wrapper button.authorize").first.click()
    page.locator(".auth-btn-wrapper button.btn-done").first.click()

    assert _execute_models(page) == 200
    shown = page.locator(MODELS_OP + " .live-responses-table").first.inner_text()
    assert "SmolLM2-135M-Instruct" in shown, shown
