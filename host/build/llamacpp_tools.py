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
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(final):
            return final
        cmake, ninja = _need("cmake"), _need("ninja")
        _need("g++")
        sdist = fetch_sdist()
        jobs = jobs or os.cpu_count() or 2
        label = f"llama.cpp {VERSION} build ({', '.join(TOOLS)}; key {final.name})"
        if not quiet:
            print(f"{label}: not cached, building once (~20 min on 2 busy cores)", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        with atomic_dir(final) as tmp:
            src = _extract(sdist, tmp / "src")
            bld = tmp / "build"
            flags = c_flags()
            cfg = [cmake, "-S", str(src), "-B", str(bld), "-G", "Ninja", *CMAKE_FLAGS,
                   f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]
            with open(tmp / "build.log", "w") as log:
                r = subprocess.run(cfg, stdout=log, stderr=subprocess.STDOUT)
                if r.returncode != 0:
                    raise LlamaCppError(f"{label}: cmake configure failed; see the log (kept only on success)")
                stdbuf = shutil.which("stdbuf")    # ninja block-buffers its status lines into a pipe
                _run_ninja([*([stdbuf, "-oL"] if stdbuf else []), ninja, "-C", str(bld), f"-j{jobs}", *TOOLS], log, label)
            _collect(src, bld, tmp)
            seconds = time.monotonic() - t0
            meta = {"version": VERSION, "sdist_sha256": SDIST_SHA256, "cmake_flags": list(CMAKE_FLAGS),
                    "c_flags": flags, "isa": host_isa(), "tools": list(TOOLS), "build_seconds": round(seconds, 1),
                    "jobs": jobs, "cpu": _cpu_name(), "link_libs": list(LINK_LIBS), "link_extra": ["-lgomp", "-lpthread", "-lm"]}
            shutil.rmtree(src)
            shutil.rmtree(bld)
            (tmp / "build.json").write_text(json.dumps(meta, indent=1) + "\n")
        if not quiet:
            print(f"{label}: built in {seconds / 60:.1f} min -> {final}", file=sys.stderr, flush=True)
    return final


def _collect(src: Path, bld: Path, out: Path) -> None:
    (out / "bin").mkdir()
    for t in TOOLS:
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
    final = root / "driver" / sha256_file(DRIVER_SOURCE)[:16]
    exe = final / "rk-llama-run"
    if exe.is_file():
        return exe
    lib = root / "lib"
    with atomic_dir(final) as tmp:
        obj = tmp / "run.o"
        cmds = [[_need("gcc"), "-O2", "-std=gnu11", "-I", str(root / "include"), "-c", str(DRIVER_SOURCE), "-o", str(obj)],
                [_need("g++"), str(obj), "-Wl,--start-group", *(str(lib / n) for n in LINK_LIBS), "-Wl,--end-group",
                 "-fopenmp", "-lpthread", "-lm", "-o", str(tmp / "rk-llama-run")]]
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise LlamaCppError(f"building rk-llama-run failed: {(r.stderr or r.stdout).strip()[-600:]}")
        obj.unlink()
    return exe


def main() -> int:
    try:
        print(build())
        print(driver())
    except LlamaCppError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
