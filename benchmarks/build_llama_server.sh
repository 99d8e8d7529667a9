#!/usr/bin/env bash
# Build llama.cpp's HTTP server (`llama-server`) from PyPI's llama-cpp-python sdist alone, and cache the
# binary outside the repository. Prints the binary's path on its last line.
#
#   bash benchmarks/build_llama_server.sh            # build once; later runs just print the cached path
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 JOBS=2 bash benchmarks/build_llama_server.sh
#
# Cache: ${LMRS_CACHE:-~/.cache/lmrs}/llama-server/<version>-<isa>/bin/llama-server (about 7 minutes on 2
# idle cores; the sources and objects stay in .../work so a rebuild with other flags is incremental).
# cmake comes from the system, or else from PyPI's `cmake` wheel installed into the cache folder.
# The x86 ISA extensions are the issue's list (AVX, AVX2, FMA, F16C, BMI2, AVX-VNNI, AVX-512 F/VBMI/VNNI/BF16)
# less those this CPU lacks (/proc/cpuinfo): e.g. AMD Zen 4 has AVX-512 but not the VEX AVX-VNNI, and a
# binary built with it dies of SIGILL on the first matmul. GGML_NATIVE stays off (the flags are explicit)
# and AMX stays off everywhere: llama.cpp's AMX path crashes on these VMs.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
CACHE_ROOT="${LMRS_CACHE:-$HOME/.cache/lmrs}/llama-server"

# ISA flags: on when /proc/cpuinfo lists the extension (all on if there is no cpuinfo to read).
CPU_FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
isa() {  # isa GGML_NAME cpuinfo_flag
    if [[ "$CPU_FLAGS" == "  " || "$CPU_FLAGS" == *" $2 "* ]]; then echo "-D$1=ON"; else echo "-D$1=OFF"; fi
}
ISA_FLAGS=(
    "$(isa GGML_AVX avx)" "$(isa GGML_AVX2 avx2)" "$(isa GGML_FMA fma)" "$(isa GGML_F16C f16c)"
    "$(isa GGML_BMI2 bmi2)" "$(isa GGML_AVX_VNNI avx_vnni)" "$(isa GGML_AVX512 avx512f)"
    "$(isa GGML_AVX512_VBMI avx512vbmi)" "$(isa GGML_AVX512_VNNI avx512_vnni)" "$(isa GGML_AVX512_BF16 avx512_bf16)"
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
)
ISA_TAG="$(printf '%s\n' "${ISA_FLAGS[@]}" | grep -c '=ON')on-$(printf '%s' "${ISA_FLAGS[*]}" | cksum | cut -d' ' -f1)"
DEST="$CACHE_ROOT/$VERSION-$ISA_TAG"
BIN="$DEST/bin/llama-server"
PYTHON="${PYTHON:-python3}"

if [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$DEST"
WORK="$CACHE_ROOT/$VERSION-work"  # shared by the ISA variants: a rebuild with other flags is incremental
mkdir -p "$WORK"

# cmake: the system's if any, else the PyPI wheel in a private venv under the cache.
CMAKE="$(command -v cmake || true)"
if [[ -z "$CMAKE" ]]; then
    if [[ ! -x "$CACHE_ROOT/tools/bin/cmake" ]]; then
        echo "[build_llama_server] no cmake on PATH; installing PyPI's cmake wheel into $CACHE_ROOT/tools" >&2
        "$PYTHON" -m venv "$CACHE_ROOT/tools"
        "$CACHE_ROOT/tools/bin/python" -m pip install -q "cmake>=3.21"
    fi
    CMAKE="$CACHE_ROOT/tools/bin/cmake"
fi

# The sdist (no binary, no deps) and its vendored llama.cpp.
SDIST_DIR="$WORK/llama_cpp_python-$VERSION"
if [[ ! -d "$SDIST_DIR/vendor/llama.cpp" ]]; then
    echo "[build_llama_server] downloading llama-cpp-python==$VERSION sdist" >&2
    PIP_PY="$PYTHON"
    [[ -x "$CACHE_ROOT/tools/bin/python" ]] && PIP_PY="$CACHE_ROOT/tools/bin/python"
    # Only llama-cpp-python itself as an sdist: with `--no-binary :all:` pip would also build its build
    # requirements (cmake, ninja) from source just to read the metadata.
    "$PIP_PY" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$WORK"
    tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
fi

echo "[build_llama_server] ISA flags: ${ISA_FLAGS[*]}" >&2
echo "[build_llama_server] configuring (cmake $("$CMAKE" --version | head -1))" >&2
"$CMAKE" -S "$SDIST_DIR/vendor/llama.cpp" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF "${ISA_FLAGS[@]}" >&2

echo "[build_llama_server] building llama-server with -j$JOBS (several minutes)" >&2
"$CMAKE" --build "$WORK/build" -j"$JOBS" --target llama-server >&2

mkdir -p "$DEST/bin"
cp "$WORK/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "${ISA_FLAGS[*]}" > "$DEST/isa-flags.txt"
"$BIN" --version >&2 || true
echo "$BIN"
