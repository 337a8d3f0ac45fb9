"""The float-reference cache has a bound (host/quality/reference.py ``prune_float_references``): the least recently
used references go first, the one just written never does, other cache entries are left alone. Fast tier."""

from __future__ import annotations

import os

from host.quality.reference import prune_float_references


def _ref(root, name: str, mb: int, mtime: float):
    d = root / name
    d.mkdir(parents=True)
    (d / "logprobs.npy").write_bytes(b"\0" * (mb * 1_000_000))
    os.utime(d, (mtime, mtime))
    return d


def test_least_recently_used_references_go_until_the_rest_fit(tmp_path, monkeypatch):
    monkeypatch.setenv("RKDEPLOY_QUALITY_CACHE", str(tmp_path))
    old, mid, new = _ref(tmp_path, "float-a", 3, 100), _ref(tmp_path, "float-b", 3, 200), _ref(tmp_path, "float-c", 3, 300)
    rows = tmp_path / "rows"
    rows.mkdir()
    said = []
    removed = prune_float_references(keep=new, limit_gb=0.007, log=said.append)   # 9 MB held, 7 MB allowed
    assert removed == [old] and mid.is_dir() and new.is_dir() and rows.is_dir()
    assert "removed the float reference float-a (0.00 GB)" in said[0]
    assert prune_float_references(keep=new, limit_gb=0.0) == [mid] and new.is_dir()   # never the one in use


def test_under_the_bound_nothing_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("RKDEPLOY_QUALITY_CACHE", str(tmp_path))
    monkeypatch.setenv("RKDEPLOY_QUALITY_CACHE_GB", "1")
    a = _ref(tmp_path, "float-a", 1, 100)
    assert prune_float_references() == [] and a.is_dir()
