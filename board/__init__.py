"""rkdeploy board side: the benchmark runner, environment fingerprint and doctor.

Copied to the board by the deployer and run as ``python3 -m board ...``. Stdlib only at its
core, Python >= 3.8; vendor runtimes are imported lazily inside ``board/backends/*``.
"""

RUNNER_VERSION = "0.1.0"
# Version of the JSONL row format the runner emits (first line: {"type": "hello", ...}).
SCHEMA_VERSION = 2   # = board.rows.ROW_SCHEMA_VERSION
