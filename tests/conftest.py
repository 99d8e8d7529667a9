"""Shared fixtures: the golden reference data and the real SmolLM2-135M-Instruct model (loaded once)."""

import json
import os
import sys

import pytest

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
GOLDEN_PATH = os.path.join(HERE, "data", "smollm2_golden.json")


@pytest.fixture(scope="session")
def golden():
    with open(GOLDEN_PATH) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def smollm2_path():
    from lmrs.models.loader import default_model_path
    from lmrs.models.errors import ModelNotFoundError

    try:
        return default_model_path()
    except ModelNotFoundError as e:
        pytest.fail(f"the default model is required for this test: {e}")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """LoadedModel of the real GGUF (float32 dequantized weights, tokenizer, config)."""
    from lmrs.models.loader import load_model_files

    return load_model_files(smollm2_path, progress=False)


def make_engine(loaded, **kw):
    from lmrs import Engine

    kw.setdefault("kv_cache_memory", "96MiB")
    kw.setdefault("progress", False)
    return Engine(loaded=loaded, **kw)


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the long schemathesis fuzz (make fuzz) instead of the short one")
