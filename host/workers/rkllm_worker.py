"""rkllm-toolkit worker: runs INSIDE the toolkit's venv (stdlib + rkllm; numpy and torch only for logits).

Reads one JSON job on stdin, prints progress lines, and prints ``RKDEPLOY_RESULT {json}`` as the
LAST stdout line (see host/toolkits.py). Modes:

- ``build``: ``load_huggingface(**load)`` → ``build(**build)`` → ``export_rkllm(tmp)`` → rename to
  ``output``. Every step's return code AND exceptions are checked; on failure nothing is left at
  ``output`` and the temp file is removed.
- ``logits``: ``load_huggingface`` → ``build`` → ``get_logits`` per token window (the quantized
  model's host-side logits), called as the vendor documents it (``logits_inputs``); writes one
  float32 ``.npy`` of shape (windows, tokens, vocab) to ``output`` (temp name + rename).

Every result says which package ran: ``toolkit_version`` and ``test_double`` (the marker
``RKDEPLOY_TEST_DOUBLE`` that rkdeploy's double carries, read from the module imported here).

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


def test_double():
    """The double's marker text when the imported ``rkllm`` is rkdeploy's test double, else None."""
    import rkllm

    return getattr(rkllm, "RKDEPLOY_TEST_DOUBLE", None)


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
        if ret is None or isinstance(ret, int):  # None is the documented failure value
            raise StepFailed(f"get_logits returned {ret!r} instead of logits; the toolkit's messages are in the log")
    elif ret != 0:
        raise StepFailed(f"{name} returned {ret!r} (expected 0); the toolkit's messages are in the log")
    say(f"{name} done in {time.monotonic() - t0:.1f} s")
    return ret


def remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def logits_inputs(window):
    """``get_logits``'s argument for one token window, exactly as the vendor calls it.

    rkllm-toolkit documents ``get_logits(inputs)`` with ``inputs`` in "the same format as Hugging
    Face model inference", e.g. ``{"input_ids": ..., "top_k": 1, ...}``, returning the logits or
    None on failure (Rockchip_RKLLM_SDK 1.2.0 EN / 1.2.1, 1.2.3, 1.3.0 CN, section 3.1.8, table
    3-6; airockchip/rknn-llm doc/). Its PPL example there, and rkllm-toolkit/examples/test.py
    (v1.1.0 .. v1.1.4) ``eval_wikitext``, pass ``{"input_ids": batch}`` where ``batch`` is a
    slice of ``tokenizer(..., return_tensors="pt").input_ids``: a torch LongTensor [1, n]; and
    read the result as a torch tensor [1, n, vocab] (``lm_logits[:, :-1, :]``,
    ``lm_logits.device``). So: one window per call, batch 1, int64.
    """
    import torch

    return {"input_ids": torch.tensor([list(window)], dtype=torch.long)}


def to_numpy(ret, n_tokens):
    """[1, n, vocab] logits (torch tensor, as documented; array-likes accepted) → float32 [n, vocab]."""
    import numpy as np

    if hasattr(ret, "detach"):  # torch tensor
        ret = ret.detach().cpu().float().numpy()
    arr = np.asarray(ret, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] != 1 or arr.shape[1] != n_tokens:
        raise StepFailed(f"get_logits returned shape {tuple(arr.shape)} for input_ids [1, {n_tokens}] "
                         f"(expected [1, {n_tokens}, vocab])")
    return arr[0]


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
            logits = to_numpy(step("get_logits", llm.get_logits, logits_inputs(window)), len(window))
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
    double = test_double()
    say(f"rkllm-toolkit {version}, mode {mode}, python {sys.version.split()[0]}"
        + (f" — TEST DOUBLE: {double}" if double else ""))
    ids = {"toolkit_version": version, "test_double": bool(double)}
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
        finish(dict(ids, ok=False, step=current, error=str(e)), 1)
    except Exception as e:  # noqa: BLE001 - anything else is still this job's failure, reported as JSON
        traceback.print_exc(file=sys.stdout)
        finish(dict(ids, ok=False, step=current, error=f"{type(e).__name__}: {e}"), 1)
    finish(dict(ids, ok=True, **extra), 0)


if __name__ == "__main__":
    main()
