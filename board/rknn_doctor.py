"""Doctor checks for ``.rknn`` artifacts: librknnrt.so and the rknn-toolkit-lite2 wheel on the board.

A ``.rknn`` built by rknn-toolkit2 X.Y needs librknnrt X.Y or newer (an older runtime refuses the
model, or mis-runs new operators). The rknpu driver check is the general one in ``board/sysinfo.py``.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from .manifest import as_manifest
from .sysinfo import Check

LIB_HINT = ("copy rknpu2/runtime/Linux/librknn_api/aarch64/librknnrt.so from the vendor's rknn-toolkit2 release "
            "v%s to /usr/lib/")
WHEEL_HINT = "pip install the rknn_toolkit_lite2-%s-cp3X-...-aarch64.whl from the vendor's rknn-toolkit2 release"


def _mm(text: Any) -> Optional[Tuple[int, int]]:
    m = re.search(r"(\d+)\.(\d+)(?:\.\d+)?", str(text or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def rknn_checks(root: str, manifest: Any, fp: Dict[str, Any]) -> List[Check]:
    """[] for non-rknn artifacts; else a ``librknnrt`` check and an ``rknnlite`` (wheel) check."""
    m = as_manifest(manifest)
    if m.format != "rknn" and m.artifact_kind != "rknn":
        return []
    want = m.toolkit_version
    checks = []
    lib = (fp.get("runtime_libs") or {}).get("librknnrt.so")
    if not lib:
        checks.append(Check("librknnrt", "fail", "librknnrt.so not found (/usr/lib, /usr/local/lib, /lib); the artifact "
                            "was built with rknn-toolkit2 %s" % (want or "?"), LIB_HINT % (want or "<toolkit version>")))
    else:
        have = _mm(lib.get("version"))
        need = _mm(want)
        if have is None:
            checks.append(Check("librknnrt", "warn", "%s: cannot read its version; the artifact was built with "
                                "rknn-toolkit2 %s" % (lib["path"], want or "?"), "make sure it is librknnrt >= %s" % want))
        elif need is None:
            checks.append(Check("librknnrt", "warn", "librknnrt %s at %s; the artifact's manifest names no toolkit "
                                "version" % (lib["version"], lib["path"]), "rebuild the artifact with `rkdeploy export`"))
        elif have < need:
            checks.append(Check("librknnrt", "fail", "librknnrt %s at %s is older than the artifact's rknn-toolkit2 %s"
                                % (lib["version"], lib["path"], want), LIB_HINT % want))
        else:
            checks.append(Check("librknnrt", "ok", "librknnrt %s at %s runs models of rknn-toolkit2 %s"
                                % (lib["version"], lib["path"], want)))
    wheel = (fp.get("packages") or {}).get("rknn-toolkit-lite2")
    if wheel:
        checks.append(Check("rknnlite", "ok", "rknn-toolkit-lite2 %s" % wheel))
    else:
        checks.append(Check("rknnlite", "fail", "rknn-toolkit-lite2 is not installed (the rknnlite backend imports "
                            "rknnlite.api)", WHEEL_HINT % (want or "<toolkit version>")))
    return checks
