"""The small error hierarchy. Every message names the value, what is allowed, and the next step.

The CLI maps ``RkdeployError`` to ``rkdeploy: error: ...`` and exit 1; anything else is a bug
(exit 2, traceback only with ``--debug``).
"""

from __future__ import annotations


class RkdeployError(Exception):
    """A known, user-facing failure. ``str(err)`` is printed as one line."""


class ConfigError(RkdeployError):
    """A recipe, target table or inventory is invalid."""


class CheckError(RkdeployError):
    """Pre-flight checks failed; carries every problem found, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class CalibrationError(CheckError):
    """A calibration JSON file is malformed (one problem per line, naming item and field)."""


class ModelError(RkdeployError):
    """A model folder is missing, incomplete or corrupt."""


class BuildError(RkdeployError):
    """An artifact build failed."""


class ToolkitMissingError(RkdeployError):
    """A vendor toolkit venv is not installed; the message says how to install it."""


class DeployError(RkdeployError):
    """Pushing to or running on a board failed."""


class HostKeyError(DeployError):
    """A board's SSH host key is unknown or changed."""


class BenchError(RkdeployError):
    """A benchmark could not run or its output could not be read."""


class ReportError(RkdeployError):
    """A report or comparison cannot be made: a bad selector, nothing selected, a bad export option."""
