"""Doctor and fingerprint on fake RK3588 trees: one broken thing per case, via the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from board.sysinfo import doctor, fingerprint
from board.testing.artifacts import write_fake_artifact
from board.testing.sysfs import make_rk3588_tree
from tests.conftest import ROOT


def run_doctor(root, *extra):
    return subprocess.run([sys.executable, "-m", "board", "doctor", "--sysfs-root", str(root), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def statuses(root, artifact_mb=None):
    return {c.name: c for c in doctor(str(root), artifact_mb)}


def test_healthy_rk3588_all_ok(tmp_path):
    make_rk3588_tree(str(tmp_path))
    p = run_doctor(tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["ok"] * 6
    assert {ln.split()[1] for ln in lines} == {"governor", "ddr", "rknpu", "rocket", "ram", "thermal"}


def test_fingerprint_reads_the_fake_board(tmp_path):
    make_rk3588_tree(str(tmp_path))
    fp = fingerprint(str(tmp_path))
    assert fp["kernel"] == "5.10.160-rockchip-rk3588"
    assert fp["cpu"]["cores"] == 8 and fp["cpu"]["model"] == "Rockchip RK3588"
    assert fp["cpu"]["parts"] == ["0xd05", "0xd0b"] and "rockchip,rk3588" in fp["cpu"]["soc"]
    assert fp["cpufreq"]["policy4"] == {"governor": "performance", "cur_khz": 2352000, "max_khz": 2352000,
                                        "hw_max_khz": 2352000, "cpus": "4 5"}
    assert fp["devfreq"]["fdab0000.npu"]["cur_hz"] == 1_000_000_000
    assert fp["devfreq"]["dmc"]["governor"] == "performance"
    assert fp["thermal_c"]["npu-thermal"] == 44.0
    assert fp["rknpu_version"] == "0.9.8" and fp["rocket_bound"] is False
    assert fp["runtime_libs"]["librknnrt.so"]["version"].startswith("2.3.0")
    assert fp["runtime_libs"]["librkllmrt.so"]["version"] == "1.2.1"
    assert fp["mem"]["available_mb"] == 6000
    json.dumps(fp)  # recorded in every row


def test_fingerprint_tolerates_an_empty_root(tmp_path):
    fp = fingerprint(str(tmp_path))
    assert fp["kernel"] is None and fp["cpufreq"] == {} and fp["rknpu_version"] is None
    checks = statuses(tmp_path)
    assert checks["ddr"].status == "skip" and checks["rknpu"].status == "skip"


def test_governor_ondemand_warns_with_fix(tmp_path):
    make_rk3588_tree(str(tmp_path), governor="ondemand")
    c = statuses(tmp_path)["governor"]
    assert c.status == "warn" and "policy0=ondemand" in c.message and "scaling_governor" in c.fix


def test_ddr_devfreq_missing_fails_half_speed(tmp_path):
    make_rk3588_tree(str(tmp_path), dmc=False)
    p = run_doctor(tmp_path)
    assert p.returncode == 1
    line = next(ln for ln in p.stdout.splitlines() if ln.split()[1] == "ddr")
    assert line.startswith("fail") and "half-speed decode" in line and "fix:" in line


def test_ddr_governor_not_pinned_warns(tmp_path):
    make_rk3588_tree(str(tmp_path), dmc_governor="dmc_ondemand")
    assert statuses(tmp_path)["ddr"].status == "warn"


def test_rknpu_missing_fails(tmp_path):
    make_rk3588_tree(str(tmp_path), rknpu_version=None)
    c = statuses(tmp_path)["rknpu"]
    assert c.status == "fail" and "not found" in c.message and "0.9.8" in c.fix


@pytest.mark.parametrize("version,status", [("0.9.6", "fail"), ("0.9.7", "fail"), ("0.9.8", "ok"), ("0.10.1", "ok")])
def test_rknpu_version_gate(tmp_path, version, status):
    make_rk3588_tree(str(tmp_path), rknpu_version=version, rknpu_in_proc=True)
    c = statuses(tmp_path)["rknpu"]
    assert c.status == status, c.line()
    if status == "fail":
        assert version in c.message and "< 0.9.8" in c.message


def test_rocket_driver_bound_fails(tmp_path):
    make_rk3588_tree(str(tmp_path), rocket=True, rknpu_version=None)
    checks = statuses(tmp_path)
    assert checks["rocket"].status == "fail" and "blacklist rocket" in checks["rocket"].fix
    assert checks["rknpu"].status == "fail"


def test_low_ram_vs_artifact(tmp_path):
    make_rk3588_tree(str(tmp_path / "root"), mem_available_mb=500)
    assert statuses(tmp_path / "root", artifact_mb=700)["ram"].status == "fail"
    assert statuses(tmp_path / "root", artifact_mb=300)["ram"].status == "warn"
    assert statuses(tmp_path / "root", artifact_mb=50)["ram"].status == "ok"
    art = write_fake_artifact(str(tmp_path / "art"))
    p = run_doctor(tmp_path / "root", "--artifact", art, "--json")
    ram = next(c for c in json.loads(p.stdout) if c["name"] == "ram")
    assert ram["status"] == "ok" and "artifact needs" in ram["message"]


def test_doctor_missing_artifact_is_one_line(tmp_path):
    make_rk3588_tree(str(tmp_path))
    p = run_doctor(tmp_path, "--artifact", str(tmp_path / "nope"))
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "does not exist" in p.stderr


def test_thermal_throttling_warns(tmp_path):
    make_rk3588_tree(str(tmp_path / "hot"), temps_c={"bigcore0-thermal": 88.0})
    c = statuses(tmp_path / "hot")["thermal"]
    assert c.status == "warn" and "bigcore0-thermal 88" in c.message
    make_rk3588_tree(str(tmp_path / "capped"), capped_policy="policy6")
    c = statuses(tmp_path / "capped")["thermal"]
    assert c.status == "warn" and "policy6" in c.message
