#!/usr/bin/env bash
# Create the rknn-toolkit2 venv (.venvs/rknn, or $RKDEPLOY_VENVS/rknn): its pins clash with ours
# (torch <= 2.4, numpy <= 1.26.4, onnx <= 1.18, protobuf <= 4.25.4), so it lives apart and the
# host drives it through host/workers/rknn_worker.py. Recipe: ../shared/ROCKCHIP.md §4.
#
# Idempotent: when the recorded version matches RKNN_VERSION it exits at once. The version is
# recorded (host.toolkits.record_toolkit) only after `RKNN()` constructs, so a half-finished
# install is never taken for a working one. Any adb server started meanwhile is stopped by PID.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RKNN_VERSION="${RKNN_VERSION:-2.5.0}"
TORCH_VERSION="2.13.0"          # works in practice although the wheel asks for torch <= 2.4
VENVS="${RKDEPLOY_VENVS:-$ROOT/.venvs}"
VENV="$VENVS/rknn"
HOST_PY="${RKDEPLOY_HOST_PYTHON:-$ROOT/.venv/bin/python}"
BASE_PY="${PYTHON:-python3}"

[ -x "$HOST_PY" ] || HOST_PY="$(command -v python3)"

recorded_version() {
    [ -x "$VENV/bin/python" ] && [ -f "$VENV/rkdeploy-toolkit.json" ] || return 0
    "$VENV/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("version",""))' \
        "$VENV/rkdeploy-toolkit.json" 2>/dev/null || true
}

if [ "$(recorded_version)" = "$RKNN_VERSION" ]; then
    echo "rknn-toolkit2 $RKNN_VERSION already set up in $VENV"
    exit 0
fi

adb_pids() { for d in /proc/[0-9]*; do [ "$(cat "$d/comm" 2>/dev/null)" = adb ] && echo "${d#/proc/}"; done; true; }
ADB_BEFORE=" $(adb_pids | tr '\n' ' ') "
stop_new_adb() {
    for pid in $(adb_pids); do
        case "$ADB_BEFORE" in *" $pid "*) ;; *) kill "$pid" 2>/dev/null && echo "stopped adb server (pid $pid)" ;; esac
    done
}
trap stop_new_adb EXIT

"$BASE_PY" - <<'PY' || { echo "setup_rknn: rknn-toolkit2 needs CPython 3.8-3.12 (set PYTHON=python3.X)" >&2; exit 1; }
import sys; sys.exit(0 if (3, 8) <= sys.version_info[:2] <= (3, 12) else 1)
PY

echo "creating $VENV (rknn-toolkit2 $RKNN_VERSION; about two minutes, 1.6 GB)"
rm -rf "$VENV"
mkdir -p "$VENVS"
"$BASE_PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" "torch==$TORCH_VERSION"
"${PIP[@]}" --no-deps "rknn-toolkit2==$RKNN_VERSION"
"${PIP[@]}" "protobuf>=4.21.6,<=4.25.4" psutil ruamel.yaml scipy tqdm "opencv-python<4.12" fast-histogram \
    "numpy<=1.26.4" "onnx>=1.16.1,<=1.18.0" onnxruntime "setuptools<81" ml_dtypes
echo "(pip's 'rknn-toolkit2 requires torch<=2.4.0' conflict note is expected: torch $TORCH_VERSION works)"

# Prove it works (without setuptools<81, RKNN() fails on pkg_resources), then record the version.
VERSION="$(cd "$VENV" && "$VENV/bin/python" - <<'PY'
import contextlib, importlib.metadata as md, io
with contextlib.redirect_stdout(io.StringIO()):
    from rknn.api import RKNN
    RKNN(verbose=False).release()
print(md.version("rknn-toolkit2"))
PY
)"
VERSION="$(echo "$VERSION" | tail -n 1)"
cd "$ROOT"
RKDEPLOY_VENVS="$VENVS" "$HOST_PY" -c '
import sys
from pathlib import Path
from host.toolkits import record_toolkit
record_toolkit("rknn", Path(sys.argv[1]), sys.argv[2], python=sys.argv[3], torch=sys.argv[4])
' "$VENV" "$VERSION" "$("$VENV/bin/python" -c 'import platform; print(platform.python_version())')" "$TORCH_VERSION"
echo "rknn-toolkit2 $VERSION ready in $VENV"
