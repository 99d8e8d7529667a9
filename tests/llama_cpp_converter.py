"""Run llama.cpp's own `convert_hf_to_gguf.py` (from the llama-cpp-python sdist that
benchmarks/build_llama_server.sh downloads) on a tiny Hugging Face folder.

    python tests/llama_cpp_converter.py LLAMA_CPP_DIR HF_FOLDER --outfile OUT.gguf --outtype f32

`llama_cpp_dir()` finds the converter: $LMRS_LLAMA_CPP, the sdist build_llama_server.sh unpacked,
or else downloads that sdist from PyPI once (pip, about 77 MB) and unpacks only the converter
(`convert_hf_to_gguf.py`, `conversion/`, `gguf-py/`) into the lmrs cache.

The tiny test models have a word-level tokenizer, which is no llama.cpp vocabulary, so the
converter's `set_vocab` is replaced by one writing the tiny byte-level BPE of `lmrs.models.testing`
(the tests compare tensors and hyper-parameters, not tokenizers). Everything else is the converter.
"""

import glob
import json
import os
import runpy
import subprocess
import sys
import tarfile
import tempfile
import types

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the version benchmarks/build_llama_server.sh builds
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def llama_cpp_dir() -> str:
    """A llama.cpp source folder holding the converter (see the module docstring)."""
    if os.environ.get("LMRS_LLAMA_CPP"):
        return os.environ["LMRS_LLAMA_CPP"]
    cache = os.environ.get("LMRS_CACHE", os.path.expanduser("~/.cache/lmrs"))
    found = sorted(glob.glob(f"{cache}/llama-server/*-work/llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if found:
        return os.path.dirname(found[-1])
    target = os.path.join(cache, f"llama-cpp-converter-{LLAMA_CPP_PYTHON_VERSION}")
    if os.path.exists(os.path.join(target, "convert_hf_to_gguf.py")):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-python",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", tmp], check=True)
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
        partial = target + ".partial"
        with tarfile.open(os.path.join(tmp, f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz")) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and m.name[len(prefix):].startswith(_CONVERTER_PARTS) and m.isfile():
                    m.name = m.name[len(prefix):]
                    members.append(m)
            tar.extractall(partial, members=members, filter="data")
        os.replace(partial, target)
    return target


def stand_in_vocab(self):
    from lmrs.models.testing import TINY_SPECIAL_TOKENS, tiny_tokenizer_json

    vocab = self.hparams["vocab_size"]
    tok = json.loads(tiny_tokenizer_json(min(vocab, 384)))
    tokens = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab)]
    w = self.gguf_writer
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in TINY_SPECIAL_TOKENS else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])


def main(llama_cpp: str, args: list[str]) -> None:
    sys.path.insert(0, llama_cpp)
    sys.path.insert(1, llama_cpp + "/gguf-py")
    from conversion import base

    original = base.TextModel.prepare_metadata

    def prepare_metadata(self, *a, **k):
        self.set_vocab = types.MethodType(stand_in_vocab, self)
        return original(self, *a, **k)

    base.TextModel.prepare_metadata = prepare_metadata
    sys.argv = ["convert_hf_to_gguf.py", *args]
    runpy.run_path(llama_cpp + "/convert_hf_to_gguf.py", run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
