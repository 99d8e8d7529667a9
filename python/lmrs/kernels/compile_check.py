"""Compile every `cuda/*.cu` with NVRTC and report registers, shared memory and spills.

`python -m lmrs.kernels.compile_check [--arch 80,90] [--json PATH] [--quiet]`

Needs no GPU: NVRTC (the `nvidia-cuda-nvrtc` wheel, through CuPy's binding
`cupy_backends.cuda.libs.nvrtc`) compiles to CUBIN with `--ptxas-options=-v`, and the ptxas
info log gives each kernel's resources. Exits 1 on any compile error or any register spill.

This module also holds the compile path the CUDA backend uses at run time (`compile_module`), so
what is checked here is exactly what runs on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

DEFAULT_ARCHS = (80, 90)
NVRTC_OPTIONS = ("-std=c++17",)


def kernel_source_dir() -> Path:
    """The folder with the .cu sources: `$LMRS_CUDA_SRC`, else the checkout's `cuda/` (the single
    source), else the copy packaged next to this module (`cuda_src/`: per-file symlinks into
    `cuda/` in the repository, which maturin resolves into real files in the wheel)."""
    here = Path(__file__).resolve().parent
    candidates = []
    if os.environ.get("LMRS_CUDA_SRC"):
        candidates.append(Path(os.environ["LMRS_CUDA_SRC"]))
    candidates += [here.parents[2] / "cuda", here / "cuda_src"]
    for c in candidates:
        if (c / "common.cuh").is_file() and (c / "decode_attention.cu").is_file():
            return c
    raise FileNotFoundError(
        "lmrs CUDA kernel sources not found (looked in: " + ", ".join(str(c) for c in candidates) + ")"
    )


def module_names() -> list[str]:
    """Every kernel module (one per `cuda/*.cu`), sorted."""
    return sorted(p.stem for p in kernel_source_dir().glob("*.cu"))


def _include_candidates() -> list[Path]:
    cands: list[Path] = []
    if os.environ.get("LMRS_CUDA_INCLUDE"):
        cands.append(Path(os.environ["LMRS_CUDA_INCLUDE"]))
    for p in sys.path:
        if not p or not os.path.isdir(p):
            continue
        nv = Path(p) / "nvidia"
        if nv.is_dir():
            # cu13 wheels share one tree (nvidia/cu13/include); cu12 wheels have one per component.
            cands += sorted(nv.glob("cu*/include"), reverse=True)
            cands += [nv / "cuda_runtime" / "include", nv / "cuda_nvrtc" / "include"]
    for env in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(env):
            cands.append(Path(os.environ[env]) / "include")
    cands.append(Path("/usr/local/cuda/include"))
    for p in sys.path:  # Triton ships the fp16/bf16 headers too; last resort
        if p and os.path.isdir(p):
            cands.append(Path(p) / "triton" / "backends" / "nvidia" / "include")
    return cands


def find_include_dir() -> Path:
    """A folder with cuda_fp16.h and cuda_bf16.h (NVRTC has no built-in copy of them)."""
    for c in _include_candidates():
        if (c / "cuda_fp16.h").is_file() and (c / "cuda_bf16.h").is_file():
            return c
    raise FileNotFoundError(
        "cuda_fp16.h / cuda_bf16.h not found: install the nvidia-cuda-runtime wheel "
        "(pip install nvidia-cuda-runtime) or set LMRS_CUDA_INCLUDE"
    )


def nvrtc_version() -> tuple[int, int]:
    from cupy_backends.cuda.libs import nvrtc

    return tuple(nvrtc.getVersion())


def supported_archs() -> tuple[int, ...]:
    from cupy_backends.cuda.libs import nvrtc

    return tuple(int(a) for a in nvrtc.getSupportedArchs())


class CompileError(RuntimeError):
    pass


@dataclasses.dataclass
class CompiledModule:
    name: str
    arch: int
    binary: bytes  # CUBIN (or PTX when `kind == "ptx"`)
    kind: str
    log: str
    key: str  # hash of source + options + NVRTC version (for on-disk caches)


def _source_text(name: str) -> str:
    return (kernel_source_dir() / f"{name}.cu").read_text()


def _source_hash(name: str, options: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    src_dir = kernel_source_dir()
    for p in sorted(src_dir.glob("*.cuh")) + [src_dir / f"{name}.cu"]:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(repr((options, nvrtc_version())).encode())
    return h.hexdigest()[:24]


def compile_module(name: str, arch: int, *, verbose: bool = False, ptx: bool = False) -> CompiledModule:
    """Compile `cuda/<name>.cu` for sm_<arch> to CUBIN (or compute_<arch> PTX with `ptx=True`).

    `verbose` adds `--ptxas-options=-v` so the log lists every kernel's resources.
    Raises CompileError with NVRTC's log on failure.
    """
    from cupy_backends.cuda.libs import nvrtc

    src_dir = kernel_source_dir()
    arch_opt = f"-arch=compute_{arch}" if ptx else f"-arch=sm_{arch}"
    options = NVRTC_OPTIONS + (arch_opt, f"-I{src_dir}", f"-I{find_include_dir()}")
    if verbose and not ptx:
        options += ("--ptxas-options=-v",)
    key = _source_hash(name, NVRTC_OPTIONS + (arch_opt,))
    prog = nvrtc.createProgram(_source_text(name), f"{name}.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError as e:
            raise CompileError(f"{name}.cu (sm_{arch}) failed to compile: {e}\n{nvrtc.getProgramLog(prog)}") from None
        log = nvrtc.getProgramLog(prog)
        binary = nvrtc.getPTX(prog) if ptx else nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    if isinstance(binary, str):
        binary = binary.encode()
    return CompiledModule(name, arch, bytes(binary), "ptx" if ptx else "cubin", log, key)


def kernel_cache_dir() -> Path:
    """Where compiled modules are kept between runs: `$LMRS_KERNEL_CACHE`, else
    `$XDG_CACHE_HOME/lmrs/kernels` (default ~/.cache/lmrs/kernels), else a temp folder."""
    if os.environ.get("LMRS_KERNEL_CACHE"):
        return Path(os.environ["LMRS_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmrs" / "kernels"


def binary_for_device(name: str, compute_capability: tuple[int, int]) -> Path:
    """A loadable file (CUBIN, or PTX for an arch this NVRTC cannot target directly) of module
    `name` for a GPU of `compute_capability`, compiled on first use and cached on disk, keyed by
    the sources, options and NVRTC version."""
    arch = compute_capability[0] * 10 + compute_capability[1]
    archs = supported_archs()
    ptx = arch not in archs
    if ptx:
        lower = [a for a in archs if a <= arch]
        if not lower:
            raise RuntimeError(f"GPU sm_{arch} is older than anything NVRTC {nvrtc_version()} supports ({archs})")
        arch = max(lower)  # the driver JIT-compiles compute_<arch> PTX for the newer GPU
    arch_opt = f"-arch=compute_{arch}" if ptx else f"-arch=sm_{arch}"
    key = _source_hash(name, NVRTC_OPTIONS + (arch_opt,))
    fname = f"{name}-{'compute' if ptx else 'sm'}_{arch}-{key}.{'ptx' if ptx else 'cubin'}"
    for d in (kernel_cache_dir(), Path(tempfile.gettempdir()) / f"lmrs-kernels-{os.getuid()}"):
        path = d / fname
        if path.is_file():
            return path
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        res = compile_module(name, arch, ptx=ptx)
        tmp = d / f".{fname}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            tmp.write_bytes(res.binary)
            os.replace(tmp, path)  # atomic: concurrent processes never see a partial file
        except OSError:
            continue
        return path
    raise RuntimeError(f"cannot write compiled kernels to {kernel_cache_dir()} (set LMRS_KERNEL_CACHE)")


@dataclasses.dataclass
class KernelInfo:
    module: str
    kernel: str
    arch: int
    registers: int = 0
    smem: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


_RE_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_RE_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_RE_USED = re.compile(r"Used (\d+) registers")
_RE_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(module: str, log: str) -> list[KernelInfo]:
    """Per-kernel resources from a `ptxas -v` info log."""
    out: list[KernelInfo] = []
    cur: KernelInfo | None = None
    for line in log.splitlines():
        m = _RE_ENTRY.search(line)
        if m:
            cur = KernelInfo(module, m.group(1), int(m.group(2)))
            out.append(cur)
            continue
        if cur is None:
            continue
        m = _RE_FRAME.search(line)
        if m:
            cur.stack, cur.spill_stores, cur.spill_loads = (int(x) for x in m.groups())
        m = _RE_USED.search(line)
        if m:
            cur.registers = int(m.group(1))
            s = _RE_SMEM.search(line)
            cur.smem = int(s.group(1)) if s else 0
    return out


def _compile_and_parse(job: tuple[str, int]) -> tuple[list[KernelInfo], str | None]:
    m, a = job
    try:
        res = compile_module(m, a, verbose=True)
    except CompileError as e:
        return [], str(e)
    return parse_ptxas_log(m, res.log), None


def check_all(archs=DEFAULT_ARCHS, modules=None, workers: int | None = None):
    """Compile every module for every arch (in parallel processes: NVRTC holds the GIL).
    Returns (kernel infos, errors, seconds)."""
    modules = list(modules or module_names())
    # Largest sources first so the pool's tail is short.
    src = kernel_source_dir()
    modules.sort(key=lambda m: -(src / f"{m}.cu").stat().st_size)
    jobs = [(m, a) for m in modules for a in archs]
    t0 = time.perf_counter()
    infos: list[KernelInfo] = []
    errors: list[str] = []
    n = max(1, min(len(jobs), workers or os.cpu_count() or 2))
    if n == 1:
        results = map(_compile_and_parse, jobs)
    else:
        ex = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))
        results = ex.map(_compile_and_parse, jobs)
    try:
        for ki, err in results:
            infos += ki
            if err:
                errors.append(err)
    finally:
        if n > 1:
            ex.shutdown()
    return infos, errors, time.perf_counter() - t0


def format_table(infos: list[KernelInfo]) -> str:
    rows = [("module", "kernel", "arch", "regs", "smem", "stack", "spill st", "spill ld")]
    for k in sorted(infos, key=lambda k: (k.module, k.kernel, k.arch)):
        rows.append(
            (k.module, k.kernel, f"sm_{k.arch}", str(k.registers), str(k.smem), str(k.stack),
             str(k.spill_stores), str(k.spill_loads))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=",".join(str(a) for a in DEFAULT_ARCHS), help="comma-separated SM versions")
    ap.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    args = ap.parse_args(argv)
    archs = tuple(int(a) for a in args.arch.split(","))
    try:
        inc = find_include_dir()
        src = kernel_source_dir()
        ver = nvrtc_version()
    except Exception as e:  # noqa: BLE001 - report any setup problem as a failed check
        print(f"compile_check: {e}", file=sys.stderr)
        return 1
    infos, errors, secs = check_all(archs)
    if not args.quiet:
        print(format_table(infos))
    spills = [k for k in infos if k.spill_stores or k.spill_loads]
    print(
        f"\nNVRTC {ver[0]}.{ver[1]}, sources {src}, headers {inc}: {len(module_names())} modules, "
        f"{len(infos)} kernel builds for sm_{', sm_'.join(map(str, archs))} in {secs:.1f}s; "
        f"{len(errors)} compile errors, {len(spills)} with spills"
    )
    for e in errors:
        print(e, file=sys.stderr)
    for k in spills:
        print(f"SPILL: {k.module}/{k.kernel} sm_{k.arch}: {k.spill_stores} B stores, {k.spill_loads} B loads", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(k) for k in infos], indent=1))
    return 1 if errors or spills else 0


if __name__ == "__main__":
    sys.exit(main())
