"""make setup-rkllm (host/setup_rkllm.py) with a wheel of the double, and `rkdeploy doctor --host`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from host.errors import RkdeployError, ToolkitMissingError
from host.setup_rkllm import parse_wheel_name, plan_requirements, setup
from host.testing.fake_rkllm import build_fake_wheel
from tests.conftest import ROOT  # noqa: E402

V130_PINS = ["torch==2.6.0", "transformers==5.8.0", "numpy<=1.26.4", "auto_gptq==0.7.1", "optimum==1.23.3",
             "accelerate<=1.5.2", "protobuf<=4.25.4"]


def test_pins_torch_is_held_at_2_13_and_the_override_recorded():
    install, overridden = plan_requirements(V130_PINS)
    assert install == V130_PINS[1:]
    assert overridden == ["torch==2.6.0 (using torch==2.13.0)"]
    assert plan_requirements(["torch==2.13.0", "numpy"]) == (["numpy"], [])


def test_wheel_names_are_checked(tmp_path):
    assert parse_wheel_name(Path("rkllm_toolkit-1.3.0-cp311-cp311-linux_x86_64.whl")) == {"version": "1.3.0",
                                                                                          "python": "3.11"}
    assert parse_wheel_name(Path("rkllm_toolkit-1.2.1-cp39-cp39-linux_x86_64.whl"))["python"] == "3.9"
    with pytest.raises(RkdeployError, match="not an rkllm-toolkit wheel"):
        parse_wheel_name(Path("rknn_toolkit2-2.5.0-cp311-cp311-linux_x86_64.whl"))
    with pytest.raises(RkdeployError, match="x86_64 Linux only"):
        parse_wheel_name(Path("rkllm_toolkit-1.3.0-cp311-cp311-linux_aarch64.whl"))
    with pytest.raises(ToolkitMissingError, match="make setup-rkllm WHEEL="):
        setup(tmp_path / "rkllm_toolkit-1.3.0-cp311-cp311-linux_x86_64.whl", venvs=tmp_path)


def test_make_target_without_wheel_prints_usage():
    res = subprocess.run(["make", "-s", "setup-rkllm"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and "usage: make setup-rkllm WHEEL=" in res.stdout + res.stderr


def _have(version: str) -> bool:
    from host.setup_rkllm import find_python

    try:
        find_python(version)
    except RkdeployError:
        return False
    return True


@pytest.mark.parametrize("pytag", [None, pytest.param("cp39", marks=pytest.mark.skipif(
    not _have("3.9"), reason="no CPython 3.9 here (the oldest the toolkit supports)"))])
def test_setup_script_installs_records_and_the_builder_uses_the_venv(pytag, tmp_path, rk, make_recipe, llm_dir,
                                                                      monkeypatch):
    wheel = build_fake_wheel(tmp_path / "dl", "1.3.0", python_tag=pytag)
    venvs = tmp_path / "venvs"
    cmd = [str(ROOT / "scripts" / "setup_rkllm.sh"), str(wheel), "--venvs", str(venvs), "--skip-torch"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "note: pin torch==2.6.0" in res.stdout
    assert "TEST DOUBLE" in res.stdout and "ready in" in res.stdout and "(test double)" in res.stdout
    info = json.loads((venvs / "rkllm" / "rkdeploy-toolkit.json").read_text())
    assert info["version"] == "1.3.0" and info["dist"] == "rkllm-toolkit" and info["wheel"] == str(wheel)
    assert info["test_double"] is True  # the probe read the marker from the package it imported
    assert info["pins_overridden"] == ["torch==2.6.0 (using torch==2.13.0)"]
    # a real, isolated venv: the toolkit imports there (and not from this project's .venv)
    probe = subprocess.run([str(venvs / "rkllm" / "bin" / "python"), "-c", "import rkllm.api, sys; print(rkllm.api.__file__)"],
                           capture_output=True, text=True)
    assert probe.returncode == 0 and str(venvs / "rkllm") in probe.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "up to date" in again.stdout

    # doctor --host shows it, with version and place; the rknn toolkit row is there too
    def doctor_rows():
        out = rk("doctor", "--host", "--json", env={"RKDEPLOY_VENVS": str(venvs)})
        assert out.returncode == 0, out.stderr
        return {r["toolkit"]: r for r in json.loads(out.stdout)["toolkits"]}

    rows = doctor_rows()
    assert rows["rkllm-toolkit"]["status"] == "installed" and rows["rkllm-toolkit"]["version"] == "1.3.0"
    assert rows["rkllm-toolkit"]["where"] == str(venvs / "rkllm")
    assert rows["rkllm-toolkit"]["test_double"] is True and "TEST DOUBLE" in rows["rkllm-toolkit"]["notes"]
    assert rows["rknn-toolkit2"]["status"] == "missing" and "make setup" in rows["rknn-toolkit2"]["notes"]
    table = rk("doctor", "--host", env={"RKDEPLOY_VENVS": str(venvs), "COLUMNS": "250"})
    assert "rkllm-toolkit" in table.stdout and "installed" in table.stdout and "1.3.0 (test double)" in table.stdout
    assert "TEST DOUBLE" in table.stdout
    # an info file without the flag (hand-edited, or written before it existed): the installed package still
    # carries the marker, so the double stays labelled
    info_file = venvs / "rkllm" / "rkdeploy-toolkit.json"
    info_file.write_text(json.dumps({k: v for k, v in info.items() if k != "test_double"}))
    assert doctor_rows()["rkllm-toolkit"]["test_double"] is True

    # the builder runs its worker in that venv
    from host.export import export

    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps([{"input": "<|im_start|>user\nhi<|im_end|>\n", "target": "Hello."}]))

    def edit(d):
        llm = next(m for m in d["models"] if m["kind"] == "llm")
        llm.update(calibration=str(calib), onnx=[], gguf=[])
        d["models"] = [llm]
    monkeypatch.setenv("RKDEPLOY_VENVS", str(venvs))
    monkeypatch.setenv("RKDEPLOY_GPU", "0")
    rep = export(make_recipe(edit), "rk3588", root=tmp_path / "art", progress=False)
    assert [r.status for r in rep.results] == ["built"], [r.reason for r in rep.results]
    manifest = json.loads((rep.results[0].job.out_dir / "manifest.json").read_text())
    assert manifest["toolkit"] == {"name": "rkllm-toolkit", "version": "1.3.0", "test_double": True}


@pytest.mark.slow  # rkdeploy doctor --host probes gcc, GPU, toolkits
def test_doctor_host_without_toolkits_gives_install_hints(rk, tmp_path):
    out = rk("doctor", "--host", "--json", env={"RKDEPLOY_VENVS": str(tmp_path / "none")})
    data = json.loads(out.stdout)
    rows = {r["toolkit"]: r for r in data["toolkits"]}
    assert rows["rkllm-toolkit"]["status"] == "missing"
    assert "make setup-rkllm WHEEL=" in rows["rkllm-toolkit"]["notes"]
    assert {f["check"] for f in data["host"]} >= {"platform", "gpu", "gcc"}
