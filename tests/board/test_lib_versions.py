"""The runtime version in a vendor .so is read by ONE pattern: the doctor's fingerprint and the rkllm
backend's ABI choice agree on every spelling (they used to disagree on ``RKLLM version: 1.2.1``)."""

from __future__ import annotations

import pytest

from board.backends.rkllm import library_version
from board.sysinfo import lib_semver, lib_version


@pytest.mark.parametrize(("embedded", "text", "semver"), [
    (b"librkllmrt version: 1.2.1 (rkdeploy shim)", "1.2.1 (rkdeploy shim)", "1.2.1"),
    (b"RKLLM version: 1.2.1\x00", "1.2.1", "1.2.1"),
    (b"rkllm-runtime version: v1.3.0, rknpu driver", "1.3.0", "1.3.0"),
    (b"librkllmrt version: v1.2.2\x00", "1.2.2", "1.2.2"),
    (b"librknnrt version: 2.3.0 (c949ad889d@2024-11-07T11:35:33)\x00", "2.3.0 (c949ad889d@2024-11-07T11:35:33)",
     "2.3.0"),
    (b"rkllm version 1.3", "1.3", None),
    (b"no version string here", None, None),
])
def test_doctor_and_backend_read_the_same_version(tmp_path, embedded, text, semver):
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF\x00\x01junk" + embedded + b"\x00more")
    assert lib_version(str(lib)) == text
    assert lib_semver(str(lib)) == semver
    assert library_version(str(lib)) == semver


def test_a_missing_library_has_no_version(tmp_path):
    assert lib_version(str(tmp_path / "none.so")) is None and library_version(str(tmp_path / "none.so")) is None
