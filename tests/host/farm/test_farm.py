"""The board farm against a REAL labgrid coordinator and exporter on loopback (started here, stopped
by PID), exporting two boards that are real OpenSSH sshd's on loopback (host.testing.sshd; the
virtual aarch64 board is one shared instance, not ours to start). The benchmark rows come from the
runner's ``fake`` backend (a double of a model runtime, as in test_remote_bench.py); coordinator,
exporter, reservations, SSH, push and the runner are real.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest

from board.testing.artifacts import write_fake_artifact
from host.bench import BenchParams
from host.deploy.inventory import load_inventory
from host.deploy.ssh import SshTransport
from host.farm import FarmClient, FarmError, bench_farm, doctor_farm, farm_boards, parse_filter
from host.farm.export import exporter_config
from host.testing.deploy import rehash_manifest
from host.testing.labgrid import TestFarm, labgrid_available
from host.testing.sshd import TestSshd, sshd_available
from tests.conftest import DEFAULT_RECIPE

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(not (sshd_available() and labgrid_available()),
                                 reason="needs OpenSSH sshd and labgrid (pip install 'rkdeploy[farm]')")]
LLM = "smollm2-135m-instruct"
QUICK = BenchParams(n_prompt=16, n_gen=4, reps=2, warmup=0)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Two sshd boards (va, vb; soc rk3588), their inventory and known_hosts, a coordinator + exporter."""
    d = tmp_path_factory.mktemp("farm")
    a, b = TestSshd.start(d / "a"), TestSshd.start(d / "b")
    boards = {"va": a, "vb": b}
    try:
        import yaml

        hosts = {"va": a.board_vars(workdir=str(d / "wa")), "vb": b.board_vars(workdir=str(d / "wb"))}
        (d / "boards.yaml").write_text(yaml.safe_dump({"all": {"children": {"lab": {"hosts": hosts}}}}))
        (d / "known_hosts").write_text(a.host_key_line() + b.host_key_line())
        inv = load_inventory(d / "boards.yaml")
        with TestFarm.start(d / "coordinator", inv) as farm:
            yield {"dir": d, "farm": farm, "inv": inv, "sshd": boards, "known": d / "known_hosts"}
        assert len(farm.stopped) == 2 and not any(_alive(p) for p in farm.stopped)  # nothing left running
    finally:
        for s in boards.values():
            s.stop()


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
    return lambda b: SshTransport(b, known_hosts=[lab["known"]])


def _who(lab) -> str:
    res = lab["farm"].client_cli("who")
    assert res.returncode == 0, res.stderr
    return res.stdout


def _idle(lab) -> None:
    """Nothing acquired (labgrid-client who) and no reservation left."""
    assert "va" not in _who(lab) and "vb" not in _who(lab)
    with FarmClient(lab["farm"].address) as c:
        assert c.reservations() == []
        assert all(p.acquired is None and p.reservation is None for p in c.places())


def test_places_resolve_to_the_inventory_board_record(lab):
    inv = lab["inv"]
    assert exporter_config(inv)["va"] == {"NetworkService": {"address": "127.0.0.1", "port": lab["sshd"]["va"].port,
                                                             "username": lab["sshd"]["va"].user}}
    with farm_boards(parse_filter("board=vb"), 1, address=lab["farm"].address, inventory=inv,
                     show_progress=False, say=lambda m: None) as held:
        (fb,) = held
        assert fb.place == "vb" and fb.token
        static = inv.boards["vb"]
        assert dataclasses.replace(fb.board, groups=static.groups) == static  # same record, one source each
        assert fb.board.known_hosts_name == f"[127.0.0.1]:{lab['sshd']['vb'].port}"
        assert "vb" in _who(lab)
    _idle(lab)


def test_reservation_by_tag_refuses_an_unknown_tag_at_once(lab):
    t0 = time.monotonic()
    with pytest.raises(FarmError, match=r"soc=rk3576 --count 1: the coordinator .* has 0 place\(s\)"):
        with farm_boards({"soc": "rk3576"}, 1, address=lab["farm"].address, show_progress=False, say=lambda m: None):
            pass
    with pytest.raises(FarmError, match=r"--count 3: .* has 2 place\(s\) with these tags \(va, vb\)"):
        with farm_boards({"soc": "rk3588"}, 3, address=lab["farm"].address, show_progress=False, say=lambda m: None):
            pass
    assert time.monotonic() - t0 < 20
    with pytest.raises(FarmError, match="expected TAG=VALUE"):
        parse_filter("soc")
    _idle(lab)


def test_parallel_bench_on_two_boards(lab, root, tmp_path):
    seen: list[tuple[float, str]] = []
    out = bench_farm({"soc": "rk3588"}, 2, recipe=DEFAULT_RECIPE, target="rk3588", params=QUICK,
                     address=lab["farm"].address, store=tmp_path / "r.sqlite", artifacts_root=root, inventory=lab["inv"],
                     transport=_transport(lab), log=lambda m: seen.append((time.monotonic(), m)), show_progress=False)
    assert sorted(o.place for o in out) == ["va", "vb"] and all(o.ok for o in out), out
    for o in out:
        assert sorted(r.scheme for r in o.rows) == ["fp32", "int8"]
        assert all(r.status == "ok" and r.board == o.place for r in o.rows)
        assert all(r.env["farm"] == {"place": o.place, "reservation": o.reservation,
                                     "coordinator": lab["farm"].address} for r in o.rows)
    # in parallel: each board's span (pushed .. its last row) overlaps the other's
    span = {}
    for place in ("va", "vb"):
        mine = [(t, m) for t, m in seen if m.startswith(f"[{place} ")]
        span[place] = (next(t for t, m in mine if "pushed" in m), max(t for t, m in mine if "TTFT" in m))
    assert max(s for s, _ in span.values()) < min(e for _, e in span.values()), (span, seen)
    _idle(lab)


def test_one_board_failing_mid_run_the_other_completes(lab, root, tmp_path):
    vb = lab["sshd"]["vb"]
    killed: list[float] = []

    def log(msg: str) -> None:  # vb loses its SSH server after its first row
        if msg.startswith("[vb ") and "TTFT" in msg and not killed:
            killed.append(time.monotonic())
            vb.stop()

    try:
        out = bench_farm({"soc": "rk3588"}, 2, recipe=DEFAULT_RECIPE, target="rk3588", params=QUICK,
                         address=lab["farm"].address, store=tmp_path / "r.sqlite", artifacts_root=root,
                         inventory=lab["inv"], transport=_transport(lab), log=log, show_progress=False)
    finally:
        lab["sshd"]["vb"] = TestSshd.start(vb.dir, port=vb.port)  # same key and port: back for later tests
    by = {o.place: o for o in out}
    assert killed and by["va"].ok and len(by["va"].rows) == 2, out
    assert not by["vb"].ok and "vb" in by["vb"].error, by["vb"]
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
    assert float(got.split()[1]) >= released and sorted(got.split()[2:]) == ["va", "vb"], rest
    assert other.returncode == 0
    _idle(lab)


def test_wait_timeout_gives_up_and_cancels(lab):
    assert lab["farm"].client_cli("-p", "va", "acquire", env={"LG_USERNAME": "alice"}).returncode == 0
    try:
        said: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(FarmError, match=r"0 of 1 board\(s\) with board=va free after 3 s"):
            with farm_boards({"board": "va"}, 1, address=lab["farm"].address, wait_timeout=3, show_progress=False,
                             say=said.append):
                pass
        assert time.monotonic() - t0 < 30
        assert any("busy: va (held by" in s and "/alice" in s for s in said), said
        with FarmClient(lab["farm"].address) as c:
            assert c.reservations() == []  # ours was cancelled
    finally:
        assert lab["farm"].client_cli("-p", "va", "release", env={"LG_USERNAME": "alice"}).returncode == 0
    _idle(lab)


HOLD = ("import sys, time; from host.farm import farm_boards\n"
        "with farm_boards({'board': 'va'}, 1, address=sys.argv[1], show_progress=False,\n"
        "                 say=lambda m: print(m, flush=True)) as held:\n"
        "    print('HOLDING', flush=True); time.sleep(600)\n")


def _holder(lab, tmp_path):
    env = {**os.environ, "RKDEPLOY_FARM_STATE": str(tmp_path / "held")}
    p = subprocess.Popen([sys.executable, "-c", HOLD, lab["farm"].address], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if line.startswith("HOLDING"):
            break
    assert "va" in _who(lab)
    return p


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_holder_releases(lab, tmp_path, sig):
    p = _holder(lab, tmp_path)
    p.send_signal(sig)
    out, _ = p.communicate(timeout=30)
    assert "released va" in out, out
    _idle(lab)


def test_killed_holder_is_released_by_the_next_farm_command(lab, tmp_path):
    p = _holder(lab, tmp_path)
    p.kill()
    p.wait()
    assert "va" in _who(lab)  # labgrid keeps an acquired place after its client died
    said: list[str] = []
    with farm_boards({"board": "vb"}, 1, address=lab["farm"].address, show_progress=False, say=said.append):
        pass
    assert any("released va" in s and "gone" in s for s in said), said
    _idle(lab)


def test_doctor_on_farm_boards(lab):
    out = doctor_farm({"soc": "rk3588"}, 2, address=lab["farm"].address, inventory=lab["inv"],
                      transport=_transport(lab), show_progress=False, log=lambda m: None)
    assert sorted(o.place for o in out) == ["va", "vb"] and all(o.ok and o.result.checks for o in out), out
    _idle(lab)


def test_cli_status_export_doctor_release(lab, tmp_path):
    from tests.conftest import run_cli

    env = {"RKDEPLOY_INVENTORY": str(lab["dir"] / "boards.yaml"), "RKDEPLOY_KNOWN_HOSTS": str(lab["known"]),
           "LG_COORDINATOR": lab["farm"].address}
    res = run_cli("farm", "export", "--out", tmp_path / "exporter.yaml", "--exporter", "lab1", env=env)
    assert res.returncode == 0, res.stderr
    import yaml

    text = (tmp_path / "exporter.yaml").read_text()
    assert yaml.safe_load(text)["vb"]["NetworkService"]["port"] == lab["sshd"]["vb"].port
    assert "labgrid-exporter -c COORDINATOR:20408 -n lab1" in res.stdout
    kh = tmp_path / "kh"  # an engineer new to the lab: no host key known yet
    res = run_cli("doctor", "--farm", "board=va", "--json", env={**env, "RKDEPLOY_KNOWN_HOSTS": str(kh)})
    assert res.returncode == 1 and "is not known" in res.stdout and "could not run on: va" in res.stderr, res.stderr
    res = run_cli("farm", "trust", "va", env={**env, "RKDEPLOY_KNOWN_HOSTS": str(kh)})
    assert res.returncode == 0 and kh.read_text() == lab["sshd"]["va"].host_key_line(), res.stderr
    res = run_cli("doctor", "--farm", "soc=rk3588", "--count", "2", "--json", env=env)
    assert res.returncode == 0, res.stderr
    import json

    assert sorted(d["place"] for d in json.loads(res.stdout)) == ["va", "vb"]
    assert "released va" in res.stderr and "released vb" in res.stderr
    res = run_cli("farm", "status", "--json", env=env)
    status = json.loads(res.stdout)
    assert {p["name"]: p["tags"]["soc"] for p in status["places"]} == {"va": "rk3588", "vb": "rk3588"}
    assert all(p["acquired"] is None for p in status["places"]) and status["reservations"] == []
    # someone else holds vb: status names them; release refuses without --kick
    other = lab["farm"].client_cli("-p", "vb", "acquire", env={"LG_USERNAME": "alice"})
    assert other.returncode == 0, other.stderr
    status = json.loads(run_cli("farm", "status", "--json", env=env).stdout)
    assert next(p for p in status["places"] if p["name"] == "vb")["acquired"].endswith("/alice")
    res = run_cli("farm", "release", "vb", env=env)
    assert res.returncode == 1 and "held by" in res.stderr and "--kick" in res.stderr
    assert run_cli("farm", "release", "vb", "--kick", env=env).returncode == 0
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

    env = {"RKDEPLOY_INVENTORY": str(lab["dir"] / "boards.yaml"), "RKDEPLOY_KNOWN_HOSTS": str(lab["known"]),
           "LG_COORDINATOR": lab["farm"].address, "RKDEPLOY_ARTIFACTS": str(root)}
    res = run_cli("push", "--farm", "soc=rk3588", "-n", "2", "-t", "rk3588", "--dry-run", env=env)
    assert res.returncode == 0 and "nothing reserved or sent" in res.stdout, res.stderr
    assert "va" not in _who(lab)
    res = run_cli("push", "--farm", "soc=rk3588", "-n", "2", "-t", "rk3588", env=env)
    assert res.returncode == 0, res.stderr
    assert "released va" in res.stderr and "released vb" in res.stderr
    for w in ("wa", "wb"):
        assert (lab["dir"] / w / "artifacts" / LLM / "rk3588" / "int8" / "manifest.json").is_file()
    store = tmp_path / "r.sqlite"
    res = run_cli("bench", "--farm", "soc=rk3588", "--count", "2", "-t", "rk3588", "--store", store, "--reps", "1",
                  "--warmup", "0", "--n-prompt", "8", "--n-gen", "2", env=env)
    assert res.returncode == 0, res.stderr
    assert "4 ok, 0 error rows stored" in res.stderr
    from host.results import ResultStore

    with ResultStore(store) as s:
        rows = s.rows()
    assert sorted((r.board, r.env["farm"]["place"]) for r in rows) == [("va", "va")] * 2 + [("vb", "vb")] * 2
    assert all(r.env["farm"]["reservation"] in res.stderr for r in rows)  # the log names each reservation
    _idle(lab)
