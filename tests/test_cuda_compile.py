"""Every `cuda/*.cu` compiles with NVRTC for sm_80 and sm_90 without register spills, and every
kernel the wrappers can launch exists in the compiled modules. Needs no GPU (NVRTC only)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("cupy_backends.cuda.libs.nvrtc")

from lmrs.kernels import compile_check as C  # noqa: E402
from lmrs.kernels import cuda as K  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Run the CLI once (both archs, all modules) and return its JSON table."""
    try:
        C.find_include_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    path = tmp_path_factory.mktemp("cc") / "kernels.json"
    rc = C.main(["--quiet", "--json", str(path)])
    rows = [C.KernelInfo(**r) for r in json.loads(path.read_text())]
    return rc, rows


def test_compile_check_passes(report):
    rc, rows = report
    assert rc == 0, "compile errors or spills (see the output above)"
    assert rows


def test_no_spills_and_sane_resources(report):
    _, rows = report
    for k in rows:
        assert k.spill_stores == 0 and k.spill_loads == 0, k
        assert 0 < k.registers <= 255, k
        assert k.smem <= 48 * 1024, k  # static shared memory


def test_every_wrapper_kernel_exists(report):
    _, rows = report
    built = {(k.module, k.kernel, k.arch) for k in rows}
    for module, names in K.kernel_names().items():
        for name in names:
            for arch in C.DEFAULT_ARCHS:
                assert (module, name, arch) in built, f"{module}.cu has no kernel {name} for sm_{arch}"


def test_modules_are_the_cuda_folder():
    assert set(C.module_names()) == {p.stem for p in (REPO / "cuda").glob("*.cu")}
    assert set(K.kernel_names()) == set(C.module_names())


def test_packaged_sources_mirror_cuda_folder():
    """python/lmrs/kernels/cuda_src holds one symlink per file of cuda/ (maturin copies the files
    a symlink points to into the wheel; it skips symlinked folders)."""
    pkg = REPO / "python" / "lmrs" / "kernels" / "cuda_src"
    src = REPO / "cuda"
    assert {p.name for p in src.iterdir()} == {p.name for p in pkg.iterdir()}
    for p in pkg.iterdir():
        assert p.resolve() == (src / p.name).resolve(), f"{p} does not point at cuda/{p.name}"


def test_parse_ptxas_log():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'a_f16' for 'sm_90'
ptxas info    : Function properties for a_f16
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 4224 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'b' for 'sm_90'
ptxas info    : Function properties for b
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 0 barriers
"""
    a, b = C.parse_ptxas_log("m", log)
    assert (a.kernel, a.arch, a.registers, a.smem, a.stack, a.spill_stores, a.spill_loads) == ("a_f16", 90, 40, 4224, 8, 4, 12)
    assert (b.kernel, b.registers, b.smem, b.spill_stores) == ("b", 14, 0, 0)


def test_errors_and_spills_are_reported(tmp_path, monkeypatch):
    (tmp_path / "common.cuh").write_text((REPO / "cuda" / "common.cuh").read_text())
    (tmp_path / "decode_attention.cu").write_text('extern "C" __global__ void k() {}\n')
    (tmp_path / "bad.cu").write_text('#include "common.cuh"\nextern "C" __global__ void bad( { }\n')
    (tmp_path / "spill.cu").write_text(
        """#include "common.cuh"
extern "C" __global__ void __launch_bounds__(1024, 2) spilly(float* out, const float* in) {
  float v[96];
#pragma unroll
  for (int i = 0; i < 96; ++i) v[i] = in[threadIdx.x * 96 + i];
#pragma unroll
  for (int r = 0; r < 8; ++r)
#pragma unroll
    for (int i = 0; i < 96; ++i) v[i] = v[i] * v[(i + r + 1) % 96] + 1.f;
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < 96; ++i) acc += v[i];
  out[threadIdx.x] = acc;
}
"""
    )
    monkeypatch.setenv("LMRS_CUDA_SRC", str(tmp_path))
    infos, errors, _ = C.check_all((80,), ["bad", "spill"], workers=1)
    assert len(errors) == 1 and "bad.cu (sm_80) failed to compile" in errors[0]
    (spilly,) = infos
    assert spilly.spill_stores > 0


def test_binary_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMRS_KERNEL_CACHE", str(tmp_path))
    p = C.binary_for_device("cache", (9, 0))
    assert p.parent == tmp_path and p.suffix == ".cubin" and p.stat().st_size > 0
    mtime = p.stat().st_mtime_ns
    assert C.binary_for_device("cache", (9, 0)) == p and p.stat().st_mtime_ns == mtime  # reused
    # an arch NVRTC cannot target directly gets PTX for the newest older arch it knows
    archs = C.supported_archs()
    newer = max(archs) + 1
    q = C.binary_for_device("cache", (newer // 10, newer % 10))
    assert q.suffix == ".ptx" and f"compute_{max(archs)}" in q.name
    assert os.path.getsize(q) > 0
