"""A cached static build of llama.cpp's tools from the PyPI sdist of llama-cpp-python.

The sdist (pinned by version and sha256) vendors llama.cpp with ``convert_hf_to_gguf.py`` and
gguf-py. We build only the CPU backend and only the tools the GGUF kind and the llama.cpp backend
use (no tests, examples, server, curl or OpenSSL), static, Release, with cmake + ninja::

    ~/.cache/rkdeploy/llamacpp/sdist/llama_cpp_python-<ver>.tar.gz
    ~/.cache/rkdeploy/llamacpp/<key>/bin/llama-{bench,quantize,perplexity,imatrix}
                                    /lib/*.a, include/*.h     (static libs: rk-llama-run links them)
                                    /py/convert_hf_to_gguf.py, conversion/, gguf-py/
                                    /build.json               (what it was built from, how long it took)

The build is ``-march=native`` (GGML_NATIVE), so the key holds the host's instruction set: these
machines switch between AVX-512/AMX Intel and AVX2-only AMD, and an AVX-512 binary would SIGILL on
the AMD. AMX is switched off (GCC 12's -march=native build crashes with SIGILL in the AMX Q8_0 path).
Built into a temp folder and renamed into place; one build at a time (a lock file).

Boards (RK3588/RK3576, Cortex-A76/A55) get ``rk-llama-run`` from a cross build (``build_aarch64``):
only the ``llama`` target (libllama + ggml, ggml-base, ggml-cpu), the Debian cross compiler
(``aarch64-linux-gnu-gcc/g++``), GGML_NATIVE=OFF with ``-march=armv8.2-a+dotprod+fp16`` (the A76's
and A55's ISA: dot product and fp16 arithmetic; no i8mm, SVE or SME, which RK3588 lacks), and the
driver linked fully static (glibc, libstdc++, libgomp), so it runs on any aarch64 Linux board
without a matching libstdc++ or libgomp::

    ~/.cache/rkdeploy/llamacpp/<ver>-aarch64-cross-<key>/lib/*.a, include/*.h, build.json
                                                         /driver/<source sha>/rk-llama-run
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from host.fsutil import atomic_dir, sha256_file

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
TOOLS = ("llama-bench", "llama-quantize", "llama-perplexity", "llama-imatrix")
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON",
               "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
               "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON", "-DGGML_BACKEND_DL=OFF")
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
LINK_LIBS = ("libllama.a", "libggml.a", "libggml-cpu.a", "libggml-base.a")
BUILD_VERSION = 1          # bump when the layout of the cached folder changes
#: The cross build for boards: RK3588's Cortex-A76/A55 (dot product, fp16 arithmetic; no i8mm, SVE).
#: RK3576's Cortex-A72/A53 are ARMv8.0 (no dotprod): the board backend refuses this driver there in one
#: line (AARCH64_NEEDS, /proc/cpuinfo) instead of dying with SIGILL.
AARCH64_ARCH = "armv8.2-a+dotprod+fp16"
AARCH64_NEEDS = ("asimddp", "asimdhp")     # /proc/cpuinfo Features for +dotprod, +fp16
CROSS_CC, CROSS_CXX = "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++"
CROSS_TARGETS = ("llama",)     # libllama + its ggml libraries; no tools, common, tests
CROSS_CMAKE_FLAGS = tuple(f for f in CMAKE_FLAGS if not f.startswith(("-DGGML_NATIVE", "-DLLAMA_BUILD_TOOLS",
                                                                       "-DLLAMA_BUILD_COMMON"))) + (
    "-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={AARCH64_ARCH}", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_COMMON=OFF")
TOOLCHAIN = f"""set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER {CROSS_CC})
set(CMAKE_CXX_COMPILER {CROSS_CXX})
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
"""
_ISA = re.compile(r"^(avx\w*|amx\w*|fma|f16c|bmi\d|sse\w*|ssse3|vpclmulqdq|gfni|vaes|asimd\w*|sve\w*|"
                  r"i8mm|dotprod|fphp|sme\w*)$")


class LlamaCppError(RuntimeError):
    """llama.cpp cannot be built or found; the message says what to do."""


def cache_root() -> Path:
    env = os.environ.get("RKDEPLOY_CACHE")
    return Path(env).expanduser() / "llamacpp" if env else Path.home() / ".cache" / "rkdeploy" / "llamacpp"


def host_isa() -> str:
    """``<machine>-<sorted ISA extensions>`` of this CPU, from /proc/cpuinfo (x86 flags / arm Features)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("flags", "Features"):
                flags.update(f for f in value.split() if _ISA.match(f))
    except OSError:
        pass
    return f"{platform.machine()}-{'-'.join(sorted(flags))}"


def c_flags() -> str:
    return NO_AMX if "amx" in host_isa() else ""


def build_key() -> str:
    spec = {"sdist": SDIST_SHA256, "cmake": list(CMAKE_FLAGS), "cflags": c_flags(), "tools": list(TOOLS),
            "isa": host_isa(), "layout": BUILD_VERSION}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return f"{VERSION}-{platform.machine()}-{digest}"


def build_dir() -> Path:
    return cache_root() / build_key()


def is_built(root: Path | None = None) -> bool:
    root = root or build_dir()
    return (root / "build.json").is_file() and all((root / "bin" / t).is_file() for t in TOOLS)


def _need(cmd: str) -> str:
    path = shutil.which(cmd)
    if not path:
        raise LlamaCppError(f"llama.cpp build needs {cmd!r} on PATH: run `make setup-system` (installs cmake, ninja-build)")
    return path


def fetch_sdist() -> Path:
    """The pinned sdist from PyPI (pip download), cached and checked against its sha256."""
    dest = cache_root() / "sdist" / SDIST
    if dest.is_file() and sha256_file(dest) == SDIST_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "-d", str(tmp), f"llama-cpp-python=={VERSION}"], capture_output=True, text=True)
        got = tmp / SDIST
        if r.returncode != 0 or not got.is_file():
            raise LlamaCppError(f"pip download llama-cpp-python=={VERSION} failed: {(r.stderr or r.stdout).strip()[-400:]}")
        if sha256_file(got) != SDIST_SHA256:
            raise LlamaCppError(f"{SDIST}: sha256 is not the pinned {SDIST_SHA256[:12]}… (PyPI file changed?)")
        os.replace(got, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract(sdist: Path, into: Path) -> Path:
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
        for m in members:
            m.name = m.name[len(prefix):]
            if not m.name or m.name.startswith("/") or ".." in Path(m.name).parts:
                continue
            tf.extract(m, into, set_attrs=False)
    return into


def _run_ninja(cmd: list[str], log, label: str) -> None:
    """Run ninja, printing one progress line per 10% (``[n/N]`` from its output) to stderr."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shown = -1
    t0 = time.monotonic()
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        m = re.match(r"\[(\d+)/(\d+)\]", line)
        if m:
            done, total = int(m.group(1)), int(m.group(2))
            pct = 100 * done // max(total, 1)
            if pct // 10 != shown:
                shown = pct // 10
                print(f"{label}: {done}/{total} steps ({pct}%), {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    if proc.wait() != 0:
        raise LlamaCppError(f"{label}: ninja failed (exit {proc.returncode}); log: {log.name}")


def build(jobs: int | None = None, quiet: bool = False) -> Path:
    """The cached build for this host (built now if missing, ~20 min on 2 busy cores); returns its folder."""
    final = build_dir()
    if is_built(final):
        return final
    flags = c_flags()
    meta = {"cmake_flags": list(CMAKE_FLAGS), "c_flags": flags, "isa": host_isa(), "tools": list(TOOLS),
            "link_extra": ["-lgomp", "-lpthread", "-lm"]}
    return _build(final, lock_name=".lock", cmake_args=[*CMAKE_FLAGS, f"-DCMAKE_C_FLAGS={flags}",
                                                        f"-DCMAKE_CXX_FLAGS={flags}"],
                  targets=TOOLS, tools=TOOLS, meta=meta, done=is_built,
                  label=f"llama.cpp {VERSION} build ({', '.join(TOOLS)}; key {final.name})", estimate="~20 min",
                  jobs=jobs, quiet=quiet, need=("g++",))


# -- the aarch64 cross build (boards) ------------------------------------------------------------

def cross_version() -> str:
    """The cross compiler's version (part of the aarch64 key); '' when it is not installed."""
    path = shutil.which(CROSS_CXX)
    if not path:
        return ""
    r = subprocess.run([path, "-dumpfullversion"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def aarch64_key() -> str:
    spec = {"sdist": SDIST_SHA256, "cmake": list(CROSS_CMAKE_FLAGS), "toolchain": TOOLCHAIN, "targets": list(CROSS_TARGETS),
            "compiler": cross_version(), "layout": BUILD_VERSION}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return f"{VERSION}-aarch64-cross-{digest}"


def aarch64_dir() -> Path:
    return cache_root() / aarch64_key()


def aarch64_built(root: Path | None = None) -> bool:
    root = root or aarch64_dir()
    return (root / "build.json").is_file() and all((root / "lib" / n).is_file() for n in LINK_LIBS)


def build_aarch64(jobs: int | None = None, quiet: bool = False) -> Path:
    """llama.cpp's static libraries for aarch64 boards (cross-compiled, only the ``llama`` target),
    cached under ~/.cache/rkdeploy/llamacpp/<ver>-aarch64-cross-<key>; returns the folder."""
    for tool_name in (CROSS_CC, CROSS_CXX):
        if not shutil.which(tool_name):
            raise LlamaCppError(f"the aarch64 llama.cpp build needs {tool_name!r} on PATH: run `make setup-system` "
                                "(installs gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu)")
    final = aarch64_dir()
    if aarch64_built(final):
        return final
    meta = {"target": "aarch64", "arch": AARCH64_ARCH, "needs_cpu_features": list(AARCH64_NEEDS),
            "cmake_flags": list(CROSS_CMAKE_FLAGS), "compiler": f"{CROSS_CXX} {cross_version()}",
            "targets": list(CROSS_TARGETS), "link_extra": ["-static", "-fopenmp", "-lpthread", "-lm"]}
    return _build(final, lock_name=".lock-aarch64", cmake_args=[*CROSS_CMAKE_FLAGS], toolchain=TOOLCHAIN,
                  targets=CROSS_TARGETS, tools=(), meta=meta, done=aarch64_built,
                  label=f"llama.cpp {VERSION} aarch64 cross build (libllama, -march={AARCH64_ARCH}; key {final.name})",
                  estimate="~15 min", jobs=jobs, quiet=quiet)


def _build(final: Path, *, lock_name: str, cmake_args: list[str], targets, tools, meta: dict, done, label: str,
           estimate: str, jobs: int | None, quiet: bool, toolchain: str | None = None, need=()) -> Path:
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done(final):
            return final
        cmake, ninja = _need("cmake"), _need("ninja")
        for cmd in need:
            _need(cmd)
        sdist = fetch_sdist()
        jobs = jobs or os.cpu_count() or 2
        if not quiet:
            print(f"{label}: not cached, building once ({estimate} on 2 busy cores)", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        with atomic_dir(final) as tmp:
            src = _extract(sdist, tmp / "src")
            bld = tmp / "build"
            cfg = [cmake, "-S", str(src), "-B", str(bld), "-G", "Ninja", *cmake_args]
            if toolchain:
                (tmp / "toolchain.cmake").write_text(toolchain)
                cfg.append(f"-DCMAKE_TOOLCHAIN_FILE={tmp / 'toolchain.cmake'}")
            with open(tmp / "build.log", "w") as log:
                r = subprocess.run(cfg, stdout=log, stderr=subprocess.STDOUT)
                if r.returncode != 0:
                    raise LlamaCppError(f"{label}: cmake configure failed; see the log (kept only on success)")
                stdbuf = shutil.which("stdbuf")    # ninja block-buffers its status lines into a pipe
                _run_ninja([*([stdbuf, "-oL"] if stdbuf else []), ninja, "-C", str(bld), f"-j{jobs}", *targets], log, label)
            _collect(src, bld, tmp, tools)
            seconds = time.monotonic() - t0
            meta = {"version": VERSION, "sdist_sha256": SDIST_SHA256, **meta, "build_seconds": round(seconds, 1),
                    "jobs": jobs, "cpu": _cpu_name(), "link_libs": list(LINK_LIBS)}
            shutil.rmtree(src)
            shutil.rmtree(bld)
            (tmp / "build.json").write_text(json.dumps(meta, indent=1) + "\n")
        if not quiet:
            print(f"{label}: built in {seconds / 60:.1f} min -> {final}", file=sys.stderr, flush=True)
    return final


def _collect(src: Path, bld: Path, out: Path, tools=TOOLS) -> None:
    (out / "bin").mkdir()
    for t in tools:
        shutil.copy2(bld / "bin" / t, out / "bin" / t)
    (out / "lib").mkdir()
    for name in LINK_LIBS:
        found = sorted(bld.rglob(name))
        if not found:
            raise LlamaCppError(f"static library {name} not found in the build (llama.cpp layout changed?)")
        shutil.copy2(found[0], out / "lib" / name)
    (out / "include").mkdir()
    for h in [src / "include" / "llama.h", *sorted((src / "ggml" / "include").glob("*.h"))]:
        shutil.copy2(h, out / "include" / h.name)
    if not tools:
        shutil.copy2(src / "LICENSE", out / "LICENSE")
        return                       # the cross build: libraries only (the converter runs on the host)
    py = out / "py"
    py.mkdir()
    shutil.copy2(src / "convert_hf_to_gguf.py", py / "convert_hf_to_gguf.py")
    shutil.copytree(src / "conversion", py / "conversion")
    shutil.copytree(src / "gguf-py" / "gguf", py / "gguf-py" / "gguf")
    for lic in ("LICENSE",):
        shutil.copy2(src / lic, out / lic)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tool(name: str) -> Path:
    """Path of a built tool; a clear error if the cache has no build for this host."""
    path = build_dir() / "bin" / name
    if not path.is_file():
        raise LlamaCppError(f"llama.cpp is not built for this host ({build_key()}): run `make llamacpp` (~20 min once)")
    return path


DRIVER_SOURCE = Path(__file__).resolve().parents[2] / "board" / "backends" / "llamacpp_run.c"


def driver(root: Path | None = None) -> Path:
    """``rk-llama-run`` (board/backends/llamacpp_run.c) linked against the cached static libs; cached
    by the source's sha256 beside the build (seconds to build; the build itself must exist)."""
    root = root or build_dir()
    if not is_built(root):
        raise LlamaCppError(f"llama.cpp is not built for this host ({root.name}): run `make llamacpp` (~20 min once)")
    return _link_driver(root, "gcc", "g++", ["-fopenmp", "-lpthread", "-lm"])


def driver_aarch64(root: Path | None = None) -> Path:
    """``rk-llama-run`` for aarch64 boards: cross-compiled, fully static, against the cross build's libs."""
    root = root or aarch64_dir()
    if not aarch64_built(root):
        raise LlamaCppError(f"llama.cpp is not built for aarch64 boards ({root.name}): run `make llamacpp-aarch64` "
                            "(the cross build, ~15 min once)")
    return _link_driver(root, CROSS_CC, CROSS_CXX, ["-static", "-fopenmp", "-lpthread", "-lm"],
                        cflags=[f"-march={AARCH64_ARCH}"])


def _link_driver(root: Path, cc: str, cxx: str, link: list[str], cflags: list[str] = ()) -> Path:
    final = root / "driver" / sha256_file(DRIVER_SOURCE)[:16]
    exe = final / "rk-llama-run"
    if exe.is_file():
        return exe
    lib = root / "lib"
    with atomic_dir(final) as tmp:
        obj = tmp / "run.o"
        cmds = [[_need(cc), "-O2", "-std=gnu11", *cflags, "-I", str(root / "include"), "-c", str(DRIVER_SOURCE), "-o", str(obj)],
                [_need(cxx), str(obj), "-Wl,--start-group", *(str(lib / n) for n in LINK_LIBS), "-Wl,--end-group",
                 *link, "-o", str(tmp / "rk-llama-run")]]
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise LlamaCppError(f"building rk-llama-run ({Path(cc).name}) failed: {(r.stderr or r.stdout).strip()[-600:]}")
        obj.unlink()
    return exe


def main(argv: list[str] | None = None) -> int:
    """``python -m host.build.llamacpp_tools [--host] [--aarch64]`` (default: both): build, print the drivers."""
    args = set(sys.argv[1:] if argv is None else argv)
    bad = args - {"--host", "--aarch64"}
    if bad:
        print(f"error: unknown argument(s) {' '.join(sorted(bad))}; allowed: --host, --aarch64", file=sys.stderr)
        return 2
    try:
        if "--host" in args or not args:
            print(driver(build()))
        if "--aarch64" in args or not args:
            print(driver_aarch64(build_aarch64()))
    except LlamaCppError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
