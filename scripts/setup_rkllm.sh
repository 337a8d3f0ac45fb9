#!/usr/bin/env bash
# make setup-rkllm WHEEL=path/to/rkllm_toolkit-<ver>-cp3X-cp3X-linux_x86_64.whl
# rkllm-toolkit (vendor wheel, not on PyPI) in its own venv .venvs/rkllm; see host/setup_rkllm.py.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 path/to/rkllm_toolkit-<ver>-cp3X-...whl [--force]" >&2; exit 2; }
wheel=$(realpath -m -- "$1"); shift
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "setup-rkllm: .venv missing; run 'make setup' first" >&2; exit 2; }
exec .venv/bin/python -m host.setup_rkllm "$wheel" "$@"
