"""llama.cpp (CPU) backend: GGUF artifacts through ``rk-llama-run``, a small C driver over libllama.

Why a driver and not ``llama-bench`` or the ``llama-cpp-python`` bindings: llama-bench feeds random
token ids and does its own timing, while every other backend here decodes OUR prompt ids and the
runner owns the clock (TTFT = first ``on_token``); the bindings would need a Python build (cmake,
a compiler, ~20 min) on every board and Python >= 3.9 wheels. ``rk-llama-run``
(``board/backends/llamacpp_run.c``, ~150 lines of C against ``llama.h``) is linked statically
against the same llama.cpp the host builds (host/build/llamacpp_tools.py), so this module stays
stdlib-only (Python 3.8) and the driver is one file to copy or build.

The driver runs as one child process per loaded artifact and speaks a line protocol (see the C
file): ``gen N ids`` prints one ``t ID`` line per token as soon as it exists (greedy, EOS ignored,
exactly ``n_gen``), so ``on_token`` is called when the token is there — the pipe adds microseconds
per token. ``logprobs ids`` returns float32 log-softmax rows (numpy when it imports, for quality).

Where the driver is: ``params["driver"]``, else ``$RKDEPLOY_LLAMACPP_RUN``, else the one pushed with
the runner (``<runner>/bin/<machine>/rk-llama-run``: ``rkdeploy push``/``bench`` carry the host's
aarch64 cross build when they push a GGUF artifact), else ``rk-llama-run`` on PATH. The pushed one
comes with ``rk-llama-run.json`` naming the CPU features it was compiled for (``needs_cpu_features``,
checked against the kernel's AT_HWCAP and /proc/cpuinfo): a CPU without them (RK3576's Cortex-A72/A53 have no dot product) gets one clear line, not a SIGILL.
Push installs files 0644 (content-addressed blobs), so the pushed driver gets its x bit here.
``params``: ``threads`` (always explicit), ``n_ctx`` (default 2048, raised to fit a request).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import stat
import subprocess
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .base import Backend, BackendError, BackendUnavailable

DRIVER = "rk-llama-run"
ENV = "RKDEPLOY_LLAMACPP_RUN"
DEFAULT_CTX = 2048


#: <runner>/bin/<machine>/rk-llama-run: where a push puts the host-built driver for this board's CPU
BUNDLED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bin")


def bundled_driver() -> Tuple[Optional[str], str]:
    """(path, "") for the driver pushed with the runner, when it exists and this CPU can run it;
    (None, why) otherwise (why is "" when none was pushed)."""
    path = os.path.join(BUNDLED_DIR, platform.machine(), DRIVER)
    if not os.path.isfile(path):
        return None, ""
    try:
        with open(path + ".json") as f:
            meta = json.load(f)
        needs = [str(x) for x in meta.get("needs_cpu_features") or []]
    except (OSError, ValueError, AttributeError):
        return None, "%s.json: missing or not JSON (push again)" % path
    have = cpu_features()
    missing = [x for x in needs if x not in have]
    if missing:
        return None, ("%s was built for %s and this CPU lacks %s (AT_HWCAP, /proc/cpuinfo); build rk-llama-run "
                      "for this CPU and set %s" % (path, meta.get("arch", "?"), " ".join(missing), ENV))
    mode = os.stat(path).st_mode
    if not mode & stat.S_IXUSR:
        try:
            os.chmod(path, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as e:
            return None, "%s: not executable and chmod failed (%s)" % (path, e)
    return path, ""


def _driver_version(driver: str) -> Optional[str]:
    """The llama.cpp a pushed driver was built from (its ``.json`` sidecar's ``llamacpp``), else None."""
    try:
        with open(driver + ".json") as f:
            v = json.load(f).get("llamacpp")
    except (OSError, ValueError, AttributeError):
        return None
    return v if isinstance(v, str) and v.isprintable() and len(v) < 80 else None


#: aarch64 AT_HWCAP bits (linux/arch/arm64/include/uapi/asm/hwcap.h) under their /proc/cpuinfo names
HWCAP_BITS = {"fp": 0, "asimd": 1, "aes": 3, "pmull": 4, "crc32": 7, "atomics": 8, "fphp": 9, "asimdhp": 10,
              "asimdrdm": 12, "lrcpc": 15, "asimddp": 20, "sve": 22}
AT_HWCAP = 16


def cpu_features() -> set:
    """This CPU's feature names: the kernel's AT_HWCAP (aarch64; what qemu-user gives its emulated CPU
    too, where /proc/cpuinfo is the x86 host's) plus /proc/cpuinfo's ``Features``/``flags``."""
    out: set = set()
    if platform.machine() == "aarch64":
        try:
            import ctypes

            getauxval = ctypes.CDLL(None).getauxval
            getauxval.restype = ctypes.c_ulong
            getauxval.argtypes = [ctypes.c_ulong]
            hwcap = int(getauxval(AT_HWCAP))
            out.update(name for name, bit in HWCAP_BITS.items() if hwcap >> bit & 1)
        except (OSError, AttributeError):
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in ("Features", "flags"):
                    out.update(value.split())
    except OSError:
        pass
    return out


def find_driver(params: Optional[Dict[str, Any]] = None) -> Optional[str]:
    path = (params or {}).get("driver") or os.environ.get(ENV) or bundled_driver()[0] or shutil.which(DRIVER)
    return str(path) if path and os.path.isfile(str(path)) and os.access(str(path), os.X_OK) else None


def available() -> Tuple[bool, str]:
    path = find_driver()
    if not path:
        why = bundled_driver()[1]
        return False, why or ("%s not found (set %s to its path, or put it on PATH; the host builds it: "
                              "make llamacpp; a push of a GGUF artifact carries it to an aarch64 board)" % (DRIVER, ENV))
    return True, "llama.cpp via %s" % path


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self._info: Dict[str, Any] = {"name": self.name}
        self.n_ctx = DEFAULT_CTX
        self.n_vocab = 0
        self.vocab_size = 0

    def load(self, artifact_dir: str, params: Dict[str, Any]) -> None:
        manifest = params.get("manifest") or {}
        entry = manifest.get("entry") or "model.gguf"
        path = os.path.join(artifact_dir, entry)
        if not os.path.isfile(path):
            raise BackendError("%s: GGUF file missing (manifest entry %r)" % (artifact_dir, entry))
        driver = find_driver(params)
        if not driver:
            raise BackendUnavailable(available()[1])
        threads = int(params.get("threads") or 1)
        need = int(params.get("n_prompt") or 0) + int(params.get("n_gen") or 0)
        self.n_ctx = max(int(params.get("n_ctx") or DEFAULT_CTX), need + 8)
        self.proc = subprocess.Popen([driver, path, str(threads), str(self.n_ctx)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        info = self._request("info")
        fields = dict(kv.split("=", 1) for kv in info.split(" desc=", 1)[0].split()[1:] if "=" in kv)
        self.n_vocab = int(fields.get("n_vocab", 0))
        self.vocab_size = self.n_vocab       # the runner's prompt ids: same vocabulary -> same ids as other backends
        version = _driver_version(driver) or (manifest.get("toolkit") or {}).get("version")
        self._info = {"name": self.name, "runtime": "llama.cpp (%s)" % version if version else "llama.cpp",
                      "driver": os.path.basename(driver),
                      "threads": threads, "n_ctx": self.n_ctx, "n_vocab": self.n_vocab,
                      "model_desc": info.split(" desc=", 1)[1] if " desc=" in info else "",
                      "version": version,
                      "memory": "the model lives in the driver process: runtime_perf.driver_vmhwm_mb"}

    def _send(self, line: str) -> None:
        if self.proc is None or self.proc.stdin is None:
            raise BackendError("llamacpp backend: not loaded")
        try:
            self.proc.stdin.write((line + "\n").encode("ascii"))
            self.proc.stdin.flush()
        except OSError as e:
            raise BackendError("%s: the driver exited (%s)%s" % (DRIVER, e, self._stderr())) from None

    def _line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        raw = self.proc.stdout.readline()
        if not raw:
            raise BackendError("%s: the driver exited (code %s)%s" % (DRIVER, self.proc.poll(), self._stderr()))
        text = raw.decode("utf-8", "replace").rstrip("\n")
        if text.startswith("err "):
            raise BackendError("%s: %s" % (DRIVER, text[4:]))
        return text

    def _request(self, line: str) -> str:
        self._send(line)
        return self._line()

    def _stderr(self) -> str:
        if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
            return ""
        tail = self.proc.stderr.read().decode("utf-8", "replace").strip().splitlines()[-1:]
        return (": " + tail[0][:300]) if tail else ""

    def _ids(self, ids: Sequence[int], extra: int) -> str:
        ids = [int(i) for i in ids]
        if not ids or len(ids) + extra > self.n_ctx:
            raise BackendError("llamacpp: %d prompt + %d new tokens do not fit n_ctx %d" % (len(ids), extra, self.n_ctx))
        return " ".join(map(str, ids))

    def generate(self, prompt_ids: Sequence[int], n_gen: int, on_token: Callable[[int], None]) -> None:
        self._send("gen %d %s" % (int(n_gen), self._ids(prompt_ids, int(n_gen))))
        while True:
            line = self._line()
            if line == "done":
                return
            if not line.startswith("t "):
                raise BackendError("%s: unexpected answer %r" % (DRIVER, line[:80]))
            on_token(int(line[2:]))

    def logprobs(self, ids: Sequence[int]) -> Any:
        self._send("logprobs %s" % self._ids(ids, 0))
        head = self._line().split()
        if len(head) != 3 or head[0] != "lp":
            raise BackendError("%s: unexpected answer %r" % (DRIVER, " ".join(head)[:80]))
        n, vocab = int(head[1]), int(head[2])
        assert self.proc is not None and self.proc.stdout is not None
        want = 4 * n * vocab
        data = self.proc.stdout.read(want)
        if len(data) != want:
            raise BackendError("%s: short log-prob answer (%d of %d bytes)%s" % (DRIVER, len(data), want, self._stderr()))
        try:
            import numpy as np
        except ImportError:
            import array
            rows = array.array("f")
            rows.frombytes(data)
            if sys.byteorder != "little":
                rows.byteswap()
            return [rows[i * vocab:(i + 1) * vocab].tolist() for i in range(n)]
        return np.frombuffer(data, dtype="<f4").reshape(n, vocab).astype(np.float32)

    def last_perf(self) -> Dict[str, Any]:
        """The driver's peak resident memory (VmHWM): the runner's own peak does not include the model."""
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:   # type: ignore[union-attr]
                for line in f:
                    if line.startswith("VmHWM:"):
                        return {"driver_vmhwm_mb": round(int(line.split()[1]) / 1024.0, 1)}
        except (OSError, AttributeError, ValueError):
            pass
        return {}

    def close(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            if proc.stdin:
                proc.stdin.write(b"quit\n")
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()

    def info(self) -> Dict[str, Any]:
        return dict(self._info)


BACKEND = LlamaCppBackend
