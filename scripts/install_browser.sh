#!/usr/bin/env bash
# What tests/test_webui_browser.py needs: gradio and playwright (pip, into the venv) and Debian's
# Chromium (apt-get; only when missing, running as root, and the network answers).
#
#     scripts/install_browser.sh [VENV]        (default .venv)
#
# Never fails: whatever cannot be installed is reported, and the browser test then skips with the reason.
set -u

VENV="${1:-${VENV:-.venv}}"
PY="$VENV/bin/python"
CHROMIUM="${LMRS_CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$PY" ]; then
    echo "install_browser: no venv at $VENV (run make setup first); the web UI browser test will skip"
    exit 0
fi

if "$PY" -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('gradio') and u.find_spec('playwright')))" \
        2>/dev/null; then
    echo "install_browser: gradio and playwright already installed"
elif "$PY" -m pip install -q --timeout 30 --retries 1 "gradio>=4" playwright; then
    echo "install_browser: installed gradio and playwright into $VENV"
else
    echo "install_browser: could not pip install gradio/playwright (offline?); the web UI browser test will skip"
fi

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: Chromium found at $CHROMIUM"
elif [ "$(id -u)" != "0" ]; then
    echo "install_browser: no Chromium at $CHROMIUM and not root: install it with 'sudo apt-get install chromium'" \
         "(or set LMRS_CHROMIUM); the web UI browser test will skip"
elif ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: no Chromium at $CHROMIUM and no apt-get: install Chromium and set LMRS_CHROMIUM;" \
         "the web UI browser test will skip"
else
    apt_opts=(-qq -o Acquire::Retries=0 -o Acquire::http::Timeout=20 -o Acquire::https::Timeout=20)
    if apt-get "${apt_opts[@]}" update >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y chromium \
            >/dev/null 2>&1 && [ -x "$CHROMIUM" ]; then
        echo "install_browser: installed Debian's chromium"
    else
        echo "install_browser: could not apt-get install chromium (offline, or not Debian?);" \
             "the web UI browser test will skip"
    fi
fi
exit 0
