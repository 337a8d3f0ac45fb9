"""Doctor checks for ``.rkllm`` artifacts: librkllmrt on the board vs the artifact's toolkit version.

Model and runtime versions must match (the vendor's "invalid rkllm model" is this); a runtime of
another ABI would also read our structs wrongly. The rknpu >= 0.9.8 driver check is the general
``rknpu`` check in ``board/sysinfo.py`` (it applies to every vendor runtime).
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

from .manifest import as_manifest
from .sysinfo import Check

RELEASE_HINT = ("copy rkllm-runtime/Linux/librkllm_api/aarch64/librkllmrt.so from the vendor's rknn-llm release "
                "v%s to /usr/lib/ (or pass --rkllm-lib)")


def _runtime(root: str, fp: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    env = os.environ.get("RKLLM_LIB")
    if env:
        from .backends.rkllm import library_version

        return {"path": env, "version": library_version(env)} if os.path.isfile(env) else {"path": env, "missing": True}
    return (fp.get("runtime_libs") or {}).get("librkllmrt.so")


def rkllm_checks(root: str, manifest: Any, fp: Dict[str, Any]) -> List[Check]:
    """[] for non-rkllm artifacts; else one ``librkllmrt`` check (ok | warn | fail)."""
    m = as_manifest(manifest)
    if m.format != "rkllm" and m.artifact_kind != "rkllm":
        return []
    from .backends.rkllm import abi_for_version_safe

    want = m.toolkit_version
    lib = _runtime(root, fp)
    if not lib or lib.get("missing"):
        where = lib["path"] if lib else "/usr/lib, /usr/local/lib, /lib"
        return [Check("librkllmrt", "fail", "librkllmrt.so not found (%s); the artifact needs runtime %s"
                      % (where, want or "?"), RELEASE_HINT % (want or "<toolkit version>"))]
    m = re.search(r"\d+\.\d+\.\d+", str(lib.get("version") or ""))
    have = m.group(0) if m else None
    if not have:
        return [Check("librkllmrt", "warn", "%s: cannot read its version; the artifact was built with rkllm-toolkit %s"
                      % (lib["path"], want or "?"), "make sure it is librkllmrt %s" % want)]
    if not want:
        return [Check("librkllmrt", "warn", "librkllmrt %s at %s; the artifact's manifest names no toolkit version"
                      % (have, lib["path"]), "rebuild the artifact with `rkdeploy export`")]
    if have == want:
        return [Check("librkllmrt", "ok", "librkllmrt %s at %s matches the artifact's rkllm-toolkit %s"
                      % (have, lib["path"], want))]
    a_have, a_want = abi_for_version_safe(have), abi_for_version_safe(want)
    if a_have is not None and a_have == a_want:
        return [Check("librkllmrt", "warn", "librkllmrt %s vs rkllm-toolkit %s: same ABI %s but not the same release"
                      % (have, want, a_want), RELEASE_HINT % want)]
    return [Check("librkllmrt", "fail", "librkllmrt %s at %s does not match the artifact's rkllm-toolkit %s (model and "
                  "runtime versions must match)" % (have, lib["path"], want),
                  (RELEASE_HINT % want) + ", or rebuild the artifact with rkllm-toolkit %s" % have)]
