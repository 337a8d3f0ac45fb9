"""The board farm against a REAL labgrid coordinator and exporter on loopback (started here, stopped
by PID), exporting two VIRTUAL aarch64 boards, vfarm-a and vfarm-b (the ``vfarm`` fixture: two instances of
host/vboard, arm64 Debian under qemu-user, each with its own sshd on its own 127.0.0.N, host key and state;
vrk3588 is never touched). The benchmark rows come from the runner's ``fake`` backend (a double of a model
runtime) run by the board's own emulated system python3, so no provisioning is needed; coordinator,
exporter, reservations, SSH, push, the runner and the aarch64 board OS are real. A board failing mid-run is
a virtual board stopped (every process in it killed by PID, its mounts gone) after its first row.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from board.testing.artifacts import write_fake_artifact
from host import vboard
from host.bench import BenchParams
from host.deploy.inventory import load_inventory
from host.deploy.ssh import SshTransport
from host.farm import FarmClient, FarmError, bench_farm, doctor_farm, farm_boards, parse_filter
from host.farm.export import exporter_config
from host.testing.deploy import rehash_manifest
from host.testing.labgrid import TestFarm, labgrid_available
from host.testing.sshd import sshd_available
from tests.conftest import DEFAULT_RECIPE, VBOARD_STALL_S, VFARM_WORKDIR

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(not (sshd_available() and labgrid_available()),
                                 reason="needs OpenSSH and labgrid (pip install 'rkdeploy[farm]')")]
LLM = "smollm2-135m-instruct"
QUICK = BenchParams(n_prompt=16, n_gen=4, reps=2, warmup=0)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
A, B = "vfarm-a", "vfarm-b"


@pytest.fixture(scope="module")
def lab(vfarm, tmp_path_factory):
    """The two virtual boards (soc rk3588), their inventory and known_hosts, a coordinator + exporter. Where the
    virtual boards cannot run (root, qemu-user + binfmt), ``vfarm`` skips (fails under make test)."""
    d = tmp_path_factory.mktemp("farm")
    inv = load_inventory(vfarm.inventory)
    with TestFarm.start(d / "coordinator", inv) as farm:
        yield {"dir": d, "farm": farm, "inv": inv, "inventory": vfarm.inventory, "known": vfarm.known, "vfarm": vfarm}
    assert len(farm.stopped) == 2 and not any(_alive(p) for p in farm.stopped)  # nothing left running


def _key_line(name: str) -> str:
    inst, key = vboard.instance(name), vboard.Paths(name).host_key
    kind, blob = key.with_name(key.name + ".pub").read_text().split()[:2]
    return f"[{inst.address}]:{inst.port} {kind} {blob}\n"


def _on_host(name: str, *parts: str):
    """A path under the board's workdir as seen from the host (the board's root is an overlay mount here)."""
    return vboard.Paths(name).root.joinpath(VFARM_WORKDIR.lstrip("/"), *parts)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(autouse=True)
def _state(tmp_path, monkeypatch):
    monkeypatch.setenv("RKDEPLOY_FARM_STATE", str(tmp_path / "held"))


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "artifacts"
    for scheme in ("int8", "fp32"):
        rehash_manifest(write_fake_artifact(str(root / LLM / "rk3588" / scheme), model=LLM, target="rk3588",
                                            scheme=scheme, prefill_ms=20, token_ms=40))
    return root


def _transport(lab):
    return lambda b: SshTransport(b, known_hosts=[lab["known"]], stall_timeout=VBOARD_STALL_S)


def _who(lab) -> str:
    res = lab["farm"].client_cli("who")
    assert res.returncode == 0, res.stderr
    return res.stdout


def _idle(lab) -> None:
    """Nothing acquired (labgrid-client who) and no reservation left."""
    who = _who(lab)
    assert A not in who and B not in who, who
    with FarmClient(lab["farm"].address) as c:
        assert c.reservations() == []
        assert all(p.acquired is None and p.reservation is None for p in c.places())


def test_places_resolve_to_the_inventory_board_record(lab):
    inv = lab["inv"]
    a, b = vboard.instance(A), vboard.instance(B)
    assert a.address != b.address and vboard.ADDRESS not in (a.address, b.address)  # not vrk3588's
    assert exporter_config(inv)[A] == {"NetworkService": {"address": a.address, "port": a.port, "username": "rock"}}
    with farm_boards(parse_filter(f"board={B}"), 1, address=lab["farm"].address, inventory=inv,
                     show_progress=False, say=lambda m: None) as held:
        (fb,) = held
        assert fb.place == B and fb.token
        static = inv.boards[B]
        assert dataclasses.replace(fb.board, groups=static.groups) == static  # same record, one source each
        assert fb.board.known_hosts_name == f"[{b.address}]:{b.port}"
        assert B in _who(lab)
        with SshTransport(fb.board, known_hosts=[lab["known"]]) as t:  # the place is that virtual board
            assert t.run(["uname", "-m"]).stdout.strip() == "aarch64"
            assert f'"board": "{B}"' in t.run(["cat", "/etc/rkdeploy/virtual-board.json"]).stdout
    _idle(lab)


def test_reservation_by_tag_refuses_an_unknown_tag_at_once(lab):
    t0 = time.monotonic()
    with pytest.raises(FarmError, match=r"soc=rk3576 --count 1: the coordinator .* has 0 place\(s\)"):
        with farm_boards({"soc": "rk3576"}, 1, address=lab["farm"].address, show_progress=False, say=lambda m: None):
            pass
    with pytest.raises(FarmError, match=rf"--count 3: .* has 2 place\(s\) with these tags \({A}, {B}\)"):
        with farm_boards({"soc": "rk3588"}, 3, address=lab["farm"].address, show_progress=False, say=lambda m: None):
            pass
    assert time.monotonic() - t0 < 20
    with pytest.raises(FarmError, match="expected TAG=VALUE"):
        parse_filter("soc")
    _idle(lab)


def test_parallel_bench_on_two_virtual_boards(lab, root, tmp_path):
    seen: list[tuple[float, str]] = []
    out = bench_farm({"soc": "rk3588"}, 2, recipe=DEFAULT_RECIPE, target="rk3588", params=QUICK,
                     address=lab["farm"].address, store=tmp_path / "r.sqlite", artifacts_root=root, inventory=lab["inv"],
                     transport=_transport(lab), log=lambda m: seen.append((time.monotonic(), m)), show_progress=False)
    assert sorted(o.place for o in out) == [A, B] and all(o.ok for o in out), out
    for o in out:
        assert sorted(r.scheme for r in o.rows) == ["fp32", "int8"]
        assert all(r.status == "ok" and r.board == o.place for r in o.rows)
        assert all(r.env["arch"] == "aarch64" and r.env["emulated"] is True for r in o.rows), o.rows[0].env
        assert all(r.backend == "fake" for r in o.rows)  # the runtime is a double; board OS and runner are real
        assert all(r.env["farm"] == {"place": o.place, "reservation": o.reservation,
                                     "coordinator": lab["farm"].address} for r in o.rows)
    # in parallel: each board's span (pushed .. its last row) overlaps the other's
    span = {}
    for place in (A, B):
        mine = [(t, m) for t, m in seen if m.startswith(f"[{place} ")]
        span[place] = (next(t for t, m in mine if "pushed" in m), max(t for t, m in mine if "TTFT" in m))
    assert max(s for s, _ in span.values()) < min(e for _, e in span.values()), (span, seen)
    _idle(lab)


def test_one_board_failing_mid_run_the_other_completes(lab, root, tmp_path):
    killed: list[str] = []
    a_pid = vboard.status(A)["pid"]

    def log(msg: str) -> None:  # vfarm-b goes down (sshd, runner, every process in it; mounts) after its first row
        if msg.startswith(f"[{B} ") and "TTFT" in msg and not killed:
            vboard.down(B, say=killed.append)
            killed.append("down")

    try:
        out = bench_farm({"soc": "rk3588"}, 2, recipe=DEFAULT_RECIPE, target="rk3588", params=QUICK,
                         address=lab["farm"].address, store=tmp_path / "r.sqlite", artifacts_root=root,
                         inventory=lab["inv"], transport=_transport(lab), log=log, show_progress=False)
        assert not vboard.status(B)["running"] and not vboard.status(B)["mounts"]
        assert vboard.status(A)["running"] and vboard.status(A)["pid"] == a_pid  # one instance's down spares the other
    finally:
        lab["vfarm"].restart(B)  # same address, host key and state: back for later tests
    by = {o.place: o for o in out}
    assert killed and any("stopping" in k and "board process" in k for k in killed), killed
    assert by[A].ok and len(by[A].rows) == 2 and by[A].rows[0].env["arch"] == "aarch64", out
    assert not by[B].ok and B in by[B].error, by[B]
    _idle(lab)


def test_second_client_waits_until_release(lab, tmp_path):
    code = ("import sys, time; from host.farm import farm_boards\n"
            "with farm_boards({'soc': 'rk3588'}, 2, address=sys.argv[1], show_progress=False,\n"
            "                 say=lambda m: print(m, flush=True)) as held:\n"
            "    print('ACQUIRED', time.time(), ' '.join(h.place for h in held), flush=True)\n")
    env = {**os.environ, "LG_USERNAME": "second", "RKDEPLOY_FARM_STATE": str(tmp_path / "held2")}
    with farm_boards({"soc": "rk3588"}, 1, address=lab["farm"].address, show_progress=False,
                     say=lambda m: None) as held:
        other = subprocess.Popen([sys.executable, "-c", code, lab["farm"].address], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in other.stdout:  # it says it waits, and names the board we hold
            lines.append(line)
            if "waiting" in line:
                break
        assert any("held by" in ln and held[0].place in ln for ln in lines), lines
        time.sleep(2)
        assert other.poll() is None  # still blocked
        released = time.time()
    rest, _ = other.communicate(timeout=60)
    got = next(ln for ln in rest.splitlines() if ln.startswith("ACQUIRED"))
    assert float(got.split()[1]) >= released and sorted(got.split()[2:]) == [A, B], rest
    assert other.returncode == 0
    _idle(lab)


def test_wait_timeout_gives_up_and_cancels(lab):
    assert lab["farm"].client_cli("-p", A, "acquire", env={"LG_USERNAME": "alice"}).returncode == 0
    try:
        said: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(FarmError, match=rf"0 of 1 board\(s\) with board={A} free after 3 s"):
            with farm_boards({"board": A}, 1, address=lab["farm"].address, wait_timeout=3, show_progress=False,
                             say=said.append):
                pass
        assert time.monotonic() - t0 < 30
        assert any(f"busy: {A} (held by" in s and "/alice" in s for s in said), said
        with FarmClient(lab["farm"].address) as c:
            assert c.reservations() == []  # ours was cancelled
    finally:
        assert lab["farm"].client_cli("-p", A, "release", env={"LG_USERNAME": "alice"}).returncode == 0
    _idle(lab)


# A background job of a non-interactive shell (how CI may start `make test`) inherits SIGINT ignored, and Python
# then installs no KeyboardInterrupt handler: the holder restores it, as an interactive terminal would have it.
HOLD = ("import signal, sys, time; from host.farm import farm_boards\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"with farm_boards({{'board': '{A}'}}, 1, address=sys.argv[1], show_progress=False,\n"
        "                 say=lambda m: print(m, flush=True)) as held:\n"
        "    print('HOLDING', flush=True); time.sleep(600)\n")


def _holder(lab, tmp_path):
    env = {**os.environ, "RKDEPLOY_FARM_STATE": str(tmp_path / "held")}
    p = subprocess.Popen([sys.executable, "-c", HOLD, lab["farm"].address], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if line.startswith("HOLDING"):
            break
    assert A in _who(lab)
    return p


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_holder_releases(lab, tmp_path, sig):
    p = _holder(lab, tmp_path)
    p.send_signal(sig)
    out, _ = p.communicate(timeout=30)
    assert f"released {A}" in out, out
    _idle(lab)


def test_killed_holder_is_released_by_the_next_farm_command(lab, tmp_path):
    p = _holder(lab, tmp_path)
    p.kill()
    p.wait()
    assert A in _who(lab)  # labgrid keeps an acquired place after its client died
    said: list[str] = []
    with farm_boards({"board": B}, 1, address=lab["farm"].address, show_progress=False, say=said.append):
        pass
    assert any(f"released {A}" in s and "gone" in s for s in said), said
    _idle(lab)


def test_doctor_on_farm_boards(lab):
    out = doctor_farm({"soc": "rk3588"}, 2, address=lab["farm"].address, inventory=lab["inv"],
                      transport=_transport(lab), show_progress=False, log=lambda m: None)
    assert sorted(o.place for o in out) == [A, B] and all(o.ok and o.result.checks for o in out), out
    _idle(lab)


def test_cli_status_export_doctor_release(lab, tmp_path):
    from tests.conftest import run_cli

    env = {"RKDEPLOY_INVENTORY": str(lab["inventory"]), "RKDEPLOY_KNOWN_HOSTS": str(lab["known"]),
           "RKDEPLOY_STALL_TIMEOUT": str(VBOARD_STALL_S),
           "LG_COORDINATOR": lab["farm"].address}
    res = run_cli("farm", "export", "--out", tmp_path / "exporter.yaml", "--exporter", "lab1", env=env)
    assert res.returncode == 0, res.stderr
    import yaml

    text = (tmp_path / "exporter.yaml").read_text()
    assert yaml.safe_load(text)[B]["NetworkService"]["address"] == vboard.instance(B).address
    assert "labgrid-exporter -c COORDINATOR:20408 -n lab1" in res.stdout
    kh = tmp_path / "kh"  # an engineer new to the lab: no host key known yet
    res = run_cli("doctor", "--farm", f"board={A}", "--json", env={**env, "RKDEPLOY_KNOWN_HOSTS": str(kh)})
    assert res.returncode == 1 and "is not known" in res.stdout and f"could not run on: {A}" in res.stderr, res.stderr
    res = run_cli("farm", "trust", A, env={**env, "RKDEPLOY_KNOWN_HOSTS": str(kh)})
    assert res.returncode == 0 and kh.read_text() == _key_line(A), res.stderr  # the board's own host key
    res = run_cli("doctor", "--farm", "soc=rk3588", "--count", "2", "--json", env=env)
    assert res.returncode == 0, res.stderr
    import json

    assert sorted(d["place"] for d in json.loads(res.stdout)) == [A, B]
    assert f"released {A}" in res.stderr and f"released {B}" in res.stderr
    res = run_cli("farm", "status", "--json", env=env)
    status = json.loads(res.stdout)
    assert {p["name"]: p["tags"]["soc"] for p in status["places"]} == {A: "rk3588", B: "rk3588"}
    assert all(p["acquired"] is None for p in status["places"]) and status["reservations"] == []
    # someone else holds vfarm-b: status names them; release refuses without --kick
    other = lab["farm"].client_cli("-p", B, "acquire", env={"LG_USERNAME": "alice"})
    assert other.returncode == 0, other.stderr
    status = json.loads(run_cli("farm", "status", "--json", env=env).stdout)
    assert next(p for p in status["places"] if p["name"] == B)["acquired"].endswith("/alice")
    res = run_cli("farm", "release", B, env=env)
    assert res.returncode == 1 and "held by" in res.stderr and "--kick" in res.stderr
    assert run_cli("farm", "release", B, "--kick", env=env).returncode == 0
    _idle(lab)


@pytest.mark.parametrize(("args", "expect"), [
    (["bench", "-t", "rk3588", "--farm", "soc"], "--farm 'soc': expected TAG=VALUE"),
    (["push", "-t", "rk3588", "--farm", "soc=rk3588", "--boards", "x"], "not both"),
    (["doctor", "--farm", "soc=rk3588", "--coordinator", "127.0.0.1:99999"], "port 1..65535"),
    (["farm", "status", "--coordinator", "127.0.0.1:1"], "no labgrid coordinator answers at 127.0.0.1:1"),
])
def test_cli_bad_input_is_one_line(args, expect, tmp_path):
    from tests.conftest import run_cli

    res = run_cli(*args, env={"RKDEPLOY_FARM_STATE": str(tmp_path / "held")}, timeout=120)
    assert res.returncode in (1, 2) and expect in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_cli_push_and_bench_with_farm(lab, root, tmp_path):
    from tests.conftest import run_cli

    env = {"RKDEPLOY_INVENTORY": str(lab["inventory"]), "RKDEPLOY_KNOWN_HOSTS": str(lab["known"]),
           "RKDEPLOY_STALL_TIMEOUT": str(VBOARD_STALL_S),
           "LG_COORDINATOR": lab["farm"].address, "RKDEPLOY_ARTIFACTS": str(root)}
    res = run_cli("push", "--farm", "soc=rk3588", "-n", "2", "-t", "rk3588", "--dry-run", env=env)
    assert res.returncode == 0 and "nothing reserved or sent" in res.stdout, res.stderr
    assert A not in _who(lab)
    for name in (A, B):  # earlier tests pushed there: start from an empty workdir
        shutil.rmtree(_on_host(name), ignore_errors=True)
    res = run_cli("push", "--farm", "soc=rk3588", "-n", "2", "-t", "rk3588", env=env)
    assert res.returncode == 0, res.stderr
    assert f"released {A}" in res.stderr and f"released {B}" in res.stderr
    for name in (A, B):  # on each virtual board's own root
        assert _on_host(name, "artifacts", LLM, "rk3588", "int8", "manifest.json").is_file()
    store = tmp_path / "r.sqlite"
    res = run_cli("bench", "--farm", "soc=rk3588", "--count", "2", "-t", "rk3588", "--store", store, "--reps", "1",
                  "--warmup", "0", "--n-prompt", "8", "--n-gen", "2", env=env)
    assert res.returncode == 0, res.stderr
    assert "4 ok, 0 error rows stored" in res.stderr
    from host.results import ResultStore

    with ResultStore(store) as s:
        rows = s.rows()
    assert sorted((r.board, r.env["farm"]["place"]) for r in rows) == [(A, A)] * 2 + [(B, B)] * 2
    assert all(r.env["arch"] == "aarch64" and r.env["emulated"] is True for r in rows)
    assert all(r.env["farm"]["reservation"] in res.stderr for r in rows)  # the log names each reservation
    _idle(lab)
