"""Recording double of rkllm-toolkit (the vendor wheel is not on PyPI and cannot run here).

Only for tests: ``host.testing.fake_rkllm.install_fake_toolkit`` puts this folder on a
toolkit venv's path. ``FAKE_RKLLM_VERSION`` sets the version it claims (default 1.3.0).
"""

import os

__version__ = os.environ.get("FAKE_RKLLM_VERSION", "1.3.0")
