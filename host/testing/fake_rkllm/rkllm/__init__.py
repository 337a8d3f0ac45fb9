"""Recording double of rkllm-toolkit (the vendor wheel is not on PyPI and cannot run here).

Only for tests: ``host.testing.fake_rkllm.install_fake_toolkit`` puts this folder on a
toolkit venv's path, and ``build_fake_wheel`` packs it as an installable wheel.
``FAKE_RKLLM_VERSION`` sets the version it claims (default 1.3.0).

``RKDEPLOY_TEST_DOUBLE`` marks this package as the double wherever it is installed: the worker
reads it from the module it imported, ``make setup-rkllm`` from its probe, and
``host.toolkits.toolkit_info`` finds the line in the installed ``rkllm/__init__.py``. Keep the
assignment on one line: that scan looks for ``RKDEPLOY_TEST_DOUBLE =`` at the start of a line.
"""

import os

RKDEPLOY_TEST_DOUBLE = "host/testing/fake_rkllm (rkdeploy's recording double, not the vendor's rkllm-toolkit)"
__version__ = os.environ.get("FAKE_RKLLM_VERSION", "1.3.0")
