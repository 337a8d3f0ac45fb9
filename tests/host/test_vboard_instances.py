"""Named virtual-board instances (``python -m host.vboard ... --name NAME``) without starting one: names,
loopback addresses (vrk3588 keeps 127.0.0.9:2222; others get the lowest free 127.0.0.N from .10, recorded in
their own state folder), the sshd config each gets, and ``purge --images`` refused while another instance
runs on the shared rootfs. Every test uses its own cache folder (RKDEPLOY_VBOARD_CACHE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from host import vboard
from host.vboard import run as vrun
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RKDEPLOY_VBOARD_CACHE", str(tmp_path / "vboard"))


def test_vrk3588_keeps_its_address_and_others_get_their_own():
    assert vboard.instance("vrk3588") == vboard.Instance("vrk3588", "127.0.0.9", 2222)
    assert vboard.instance("vfarm-a") is None  # never started: nothing allocated by a look-up
    assert not (vboard.cache_root() / "boards" / "vfarm-a").exists()
    a = vboard.instance("vfarm-a", allocate=True)
    b = vboard.instance("vfarm-b", allocate=True)
    assert (a.address, a.port, b.address) == ("127.0.0.10", 2222, "127.0.0.11")
    assert vboard.instance("vfarm-a") == a and vboard.instance("vfarm-a", allocate=True) == a  # recorded, stable
    assert json.loads(vboard.Paths("vfarm-b").instance.read_text()) == {"address": "127.0.0.11", "port": 2222}
    assert vboard.status("vfarm-a")["address"] == "rock@127.0.0.10:2222"
    assert vboard.Paths("vfarm-a").lower == vboard.Paths().lower  # one shared rootfs (the overlay's lower layer)
    assert vboard.Paths("vfarm-a").state != vboard.Paths().state


def test_a_purged_instance_frees_its_address_and_allocation_is_race_free():
    names = [f"v{i}" for i in range(8)]
    threads = [threading.Thread(target=vboard.instance, args=(n,), kwargs={"allocate": True}) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = {n: vboard.instance(n).address for n in names}
    assert sorted(got.values(), key=lambda a: int(a.rsplit(".", 1)[1])) == [f"127.0.0.{n}" for n in range(10, 18)]
    vboard.safe_rmtree(vboard.Paths(names[0]).state)  # what purge removes
    assert vboard.instance("vnew", allocate=True).address == got[names[0]]


def test_each_instance_sshd_listens_on_its_own_address():
    vboard.instance("vfarm-a", allocate=True)
    inst = vboard.instance("vfarm-b", allocate=True)
    conf = vboard.sshd_config(inst)
    assert "Port 2222\n" in conf and "ListenAddress 127.0.0.11\n" in conf
    assert "ListenAddress 127.0.0.9\n" in vboard.sshd_config()
    assert vboard.marker("k", "vfarm-b")["board"] == "vfarm-b" and vboard.marker("k")["board"] == "vrk3588"


@pytest.mark.parametrize("name", ["", "../vrk3588", "VFARM", "a b", "vfarm/a", "-x", "x" * 33])
def test_a_bad_name_is_refused_in_one_line(name):
    with pytest.raises(vboard.VBoardError, match=r"virtual board name .*: use 1-32 of a-z, 0-9 and '-'"):
        vboard.Paths(name)
    with pytest.raises(vboard.VBoardError, match="virtual board name"):
        vboard.instance(name, allocate=True)
    assert not (vboard.cache_root() / "boards").exists()  # nothing created


def test_cli_name_errors_are_one_line_before_any_work(tmp_path):
    env_cache = {"RKDEPLOY_VBOARD_CACHE": str(tmp_path / "vboard")}
    for argv, want in ((["down", "--name", "../vrk3588"], "virtual board name '../vrk3588'"),
                       (["up", "--name"], "--name needs a value")):
        res = subprocess.run([sys.executable, "-m", "host.vboard", *argv], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, **env_cache}, timeout=120)
        assert res.returncode == 1 and res.stderr.count("\n") == 1 and want in res.stderr, res.stderr
    assert not (tmp_path / "vboard").exists()


def test_purge_images_is_refused_while_another_instance_runs(monkeypatch):
    monkeypatch.setattr(vrun, "running", lambda: ["vfarm-a", "vrk3588"])
    with pytest.raises(vboard.VBoardError, match=r"not purging the images: virtual board\(s\) vrk3588 run on them"):
        vboard.purge("vfarm-a", images=True, say=lambda m: None)
