"""rkllm-toolkit worker: runs INSIDE the toolkit's venv (stdlib + rkllm; numpy only for logits).

Reads one JSON job on stdin, prints progress lines, and prints ``RKDEPLOY_RESULT {json}`` as the
LAST stdout line (see host/toolkits.py). Modes:

- ``build``: ``load_huggingface(**load)`` → ``build(**build)`` → ``export_rkllm(tmp)`` → rename to
  ``output``. Every step's return code AND exceptions are checked; on failure nothing is left at
  ``output`` and the temp file is removed.
- ``logits``: ``load_huggingface`` → ``build`` → ``get_logits(window)`` per token window (the
  quantized model's host-side logits); writes one float32 ``.npy`` of shape
  (windows, tokens, vocab) to ``output`` (temp name + rename).

Python >= 3.9 syntax (the toolkit supports CPython 3.9-3.12); never imports rkdeploy.
"""

import json
import os
import sys
import time
import traceback

RESULT_PREFIX = "RKDEPLOY_RESULT "


class StepFailed(Exception):
    pass


def say(msg):
    print("rkdeploy-worker: " + msg, flush=True)


def finish(result, code):
    sys.stdout.flush()
    sys.stderr.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    sys.exit(code)


def toolkit_version():
    try:
        from importlib import metadata

        return metadata.version("rkllm-toolkit")
    except Exception:  # noqa: BLE001 - not installed as a distribution (e.g. the test double)
        import rkllm

        return getattr(rkllm, "__version__", "unknown")


def step(name, fn, *args, **kwargs):
    """Run one toolkit call; a non-zero return code or an exception both fail the job."""
    say(f"{name} ...")
    t0 = time.monotonic()
    try:
        ret = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - vendor code raises anything; report it as this step's failure
        traceback.print_exc(file=sys.stdout)
        raise StepFailed("{} raised {}: {}".format(name, type(e).__name__, str(e).splitlines()[0] if str(e) else "")) from None
    if name == "get_logits":
        if isinstance(ret, int) and ret != 0 or ret is None:
            raise StepFailed(f"get_logits returned {ret!r} instead of logits")
    elif ret != 0:
        raise StepFailed(f"{name} returned {ret!r} (expected 0); the toolkit's messages are in the log")
    say(f"{name} done in {time.monotonic() - t0:.1f} s")
    return ret


def remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def to_numpy(x):
    import numpy as np

    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().float().numpy()
    arr = np.asarray(x, dtype=np.float32)
    return arr.reshape(arr.shape[-2], arr.shape[-1]) if arr.ndim == 3 and arr.shape[0] == 1 else arr


def run_build(llm, job):
    out = job["output"]
    tmp = os.path.join(os.path.dirname(out), ".tmp-" + os.path.basename(out))
    try:
        step("export_rkllm", llm.export_rkllm, tmp)
        if not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
            raise StepFailed(f"export_rkllm returned 0 but wrote no file at {tmp}")
        os.replace(tmp, out)
    finally:
        remove(tmp)
    return {"output": out, "size": os.path.getsize(out)}


def run_logits(llm, job):
    import numpy as np

    windows = job["windows"]
    out = job["output"]
    tmp = os.path.join(os.path.dirname(out), ".tmp-" + os.path.basename(out))
    arr = None
    try:
        for i, window in enumerate(windows):
            logits = to_numpy(step("get_logits", llm.get_logits, window))
            if logits.shape[0] != len(window):
                raise StepFailed(f"get_logits returned {logits.shape[0]} rows for a window of {len(window)} tokens")
            if arr is None:
                shape = (len(windows), len(window), logits.shape[-1])
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            arr[i] = logits
            say(f"logits window {i + 1}/{len(windows)}")
        if arr is None:
            raise StepFailed("no token windows given")
        arr.flush()
        del arr
        os.replace(tmp, out)
    finally:
        remove(tmp)
    return {"output": out, "windows": len(windows)}


def main():
    job = json.loads(sys.stdin.read())
    mode = job.get("mode", "build")
    try:
        from rkllm.api import RKLLM
    except Exception as e:  # noqa: BLE001 - a broken toolkit venv
        finish({"ok": False, "step": "import", "error": f"cannot import rkllm.api ({type(e).__name__}: {e})"}, 1)
    version = toolkit_version()
    say(f"rkllm-toolkit {version}, mode {mode}, python {sys.version.split()[0]}")
    current = "RKLLM()"
    try:
        llm = RKLLM()
        current = "load_huggingface"
        step("load_huggingface", llm.load_huggingface, **job["load"])
        current = "build"
        step("build", llm.build, **job["build"])
        current = mode
        extra = run_build(llm, job) if mode == "build" else run_logits(llm, job)
    except StepFailed as e:
        finish({"ok": False, "step": current, "error": str(e), "toolkit_version": version}, 1)
    except Exception as e:  # noqa: BLE001 - anything else is still this job's failure, reported as JSON
        traceback.print_exc(file=sys.stdout)
        finish({"ok": False, "step": current, "error": f"{type(e).__name__}: {e}", "toolkit_version": version}, 1)
    finish(dict({"ok": True, "toolkit_version": version}, **extra), 0)


if __name__ == "__main__":
    main()
