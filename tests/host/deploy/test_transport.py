"""The transport layer without sshd: the local transport (the board side as local processes) and the
fake one (a scripted board). Push, RemoteCommandFailed, bench's lock codes and provision's messages."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path, PurePosixPath

import pytest

from host.deploy import provision
from host.deploy.fake import FakeTransport
from host.deploy.inventory import Board
from host.deploy.local import LocalTransport
from host.deploy.push import PushDir, artifact_dir, push_board, runner_dir
from host.deploy.remote import LOCK_BUSY_EXIT
from host.deploy.remote_bench import RemoteRunStream
from host.deploy.transport import RemoteCommandFailed, RunResult, quote_command
from host.errors import BenchError, DeployError
from host.testing.deploy import write_artifact

MiB = 1 << 20


def _board(wd: Path, **kw) -> Board:
    return Board(name="here", host="localhost", workdir=PurePosixPath(wd), **{"python": sys.executable, **kw})


@pytest.fixture
def dirs(tmp_path) -> list[PushDir]:
    root = tmp_path / "artifacts"
    folder = write_artifact(root / "tiny" / "rk3588" / "int8", {"model.onnx": os.urandom(2 * MiB), "tok.json": b"{}"})
    return [artifact_dir(folder, root)]


def test_quote_command_quotes_every_argument():
    assert quote_command(["echo", "a b; rm -rf /", "$HOME"], PurePosixPath("/w d")) == \
        "cd '/w d' && echo 'a b; rm -rf /' '$HOME'"


def test_remote_command_failed_names_command_status_and_stderr_tail():
    res = RunResult(("sh", "-c", "exit 3"), 3, "", "one\ntwo\n\x07three\nfour\n")
    with pytest.raises(RemoteCommandFailed) as e:
        res.check("b1")
    assert e.value.command == ("sh", "-c", "exit 3") and e.value.returncode == 3
    assert e.value.stderr_tail == "two | three | four"
    assert str(e.value) == "board b1: `sh -c exit 3` exited 3: two | three | four"
    assert isinstance(e.value, DeployError)
    assert RunResult(("true",), 0, "", "").check("b1").returncode == 0


def test_local_transport_push_then_nothing_to_send(tmp_path, dirs):
    wd = tmp_path / "wd"
    with LocalTransport(_board(wd)) as t:
        first = push_board(t, dirs)
        again = push_board(t, dirs)
    assert first.ok and first.sent == sum(f.size for f in dirs[0].files.values())
    assert again.sent == 0 and set(again.installed.values()) == {"unchanged"}
    folder = wd / dirs[0].remote
    assert (folder / "model.onnx").read_bytes() == dirs[0].files["model.onnx"].path.read_bytes()
    assert not list((wd / "blobs").glob(".partial-*"))


def test_local_transport_resumes_a_partial(tmp_path, dirs):
    wd = tmp_path / "wd"
    model = dirs[0].files["model.onnx"]
    (wd / "blobs").mkdir(parents=True)
    (wd / "blobs" / f".partial-{model.sha256}").write_bytes(model.path.read_bytes()[:MiB])
    res = push_board(LocalTransport(_board(wd)), dirs)
    assert res.skipped == MiB and res.sent == sum(f.size for f in dirs[0].files.values()) - MiB


def test_local_transport_refuses_old_or_missing_python(tmp_path, dirs):
    fake = tmp_path / "python3.6"
    fake.write_text("#!/bin/sh\necho 3.6.9\n")
    fake.chmod(0o755)
    with pytest.raises(DeployError, match=r"Python 3\.6\.9; the board runner needs Python >= 3\.8"):
        push_board(LocalTransport(_board(tmp_path / "wd", python=str(fake))), dirs)
    with pytest.raises(DeployError, match="cannot run Python"):
        push_board(LocalTransport(_board(tmp_path / "wd", python="/nonexistent/python3")), dirs)
    assert not (tmp_path / "wd").exists()


def test_local_transport_run_stream_get(tmp_path):
    t = LocalTransport(_board(tmp_path))
    assert t.run(["sh", "-c", "echo hi; echo err >&2"]).stdout == "hi\n"
    with pytest.raises(RemoteCommandFailed) as e:
        t.run(["sh", "-c", "echo boom >&2; exit 4"])
    assert e.value.returncode == 4 and e.value.stderr_tail == "boom"
    assert t.run(["false"], check=False).returncode == 1
    errs: list[str] = []
    assert list(t.stream(["sh", "-c", "echo a; echo b; echo warn >&2"], on_stderr=errs.append)) == ["a", "b"]
    assert errs == ["warn"]
    with pytest.raises(RemoteCommandFailed, match="exited 2: bad"):
        list(t.stream(["sh", "-c", "echo bad >&2; exit 2"]))
    (tmp_path / "f.txt").write_text("data")
    t.get(PurePosixPath(tmp_path / "f.txt"), tmp_path / "copy" / "f.txt")
    assert (tmp_path / "copy" / "f.txt").read_text() == "data"
    with pytest.raises(DeployError, match="cannot read"):
        t.get(PurePosixPath(tmp_path / "nope"), tmp_path / "x")


def test_runner_push_with_the_fake_transport_checks_every_sha(tmp_path):
    t = FakeTransport(_board(tmp_path / "wd"))
    probe = {"workdir": str(tmp_path / "wd"), "writable": True, "free": 1 << 40, "blobs": {}, "error": None}
    t.on([sys.executable, "-c"], (0, "3.11.4\n" + json.dumps(probe) + "\n", ""))
    runner = runner_dir()
    res = push_board(t, [runner])
    assert res.ok and res.sent == sum(f.size for f in runner.files.values())
    assert t.files[PurePosixPath(tmp_path / "wd" / "runner" / "board" / "remote" / "receiver.py")].startswith(
        b"# rkdeploy receiver")
    t.get(tmp_path / "wd" / "runner" / "board" / "__init__.py", tmp_path / "init.py")
    assert (tmp_path / "init.py").exists()


def _stream(t: FakeTransport, tmp_path: Path) -> RemoteRunStream:
    return RemoteRunStream(t, PurePosixPath("/wd"), local_artifacts=tmp_path, wait=False, say=lambda m: None)


def test_remote_bench_maps_exit_codes(tmp_path):
    t = FakeTransport()
    t.on([t.board.python, "-c"], (LOCK_BUSY_EXIT, "", "rkdeploy-lock: busy: another benchmark holds /wd/.bench.lock\n"))
    with pytest.raises(DeployError, match="is busy: another benchmark holds /wd/.bench.lock"):
        list(_stream(t, tmp_path)(["python3", "-m", "board", "bench"]))
    assert t.calls[-1][3:5] == ("/wd/.bench.lock", "nowait")
    t.on([t.board.python, "-c"], (1, '{"type": "row", "status": "error"}\n', "failed\n"))
    assert list(_stream(t, tmp_path)(["python3", "-m", "board", "bench"])) == ['{"type": "row", "status": "error"}']
    t.on([t.board.python, "-c"], (9, "", "killed\n"))
    with pytest.raises(BenchError, match="exited 9: killed"):
        list(_stream(t, tmp_path)(["python3", "-m", "board", "bench"]))


def test_provision_failures_name_the_step(tmp_path, monkeypatch):
    (tmp_path / "w-1.0-py3-none-any.whl").write_bytes(b"wheel")
    monkeypatch.setattr(provision, "download_wheels", lambda *a, **k: tmp_path)
    t = FakeTransport(_board(tmp_path / "wd", python="/opt/venv/bin/python3"))
    t.on(["python3", "-c"], (0, json.dumps({"python": [3, 11, 2], "machine": "aarch64", "libc": ["glibc", "2.36"]}), ""))
    t.on(["sh", "-c"], (1, "", "The virtual environment was not created successfully\n"))
    with pytest.raises(DeployError, match=r"python3 -m venv /opt/venv failed: The virtual environment was not created "
                                          r"successfully \(install python3-venv on the board\)"):
        provision.provision_board(t, say=lambda m: None)


@pytest.mark.slow  # two benches of real runner processes
def test_remote_bench_over_the_local_transport_matches_the_local_bench(tmp_path):
    """push → doctor → bench through a transport, with the fake backend: the same rows as ``bench_local``."""
    from board.testing.artifacts import write_fake_artifact
    from host.bench import BenchParams, bench_local
    from host.deploy.remote_bench import bench_boards
    from host.testing.deploy import rehash_manifest
    from tests.conftest import DEFAULT_RECIPE

    root, llm = tmp_path / "artifacts", "smollm2-135m-instruct"
    rehash_manifest(write_fake_artifact(str(root / llm / "rk3576" / "int8"), model=llm, target="rk3576", scheme="int8",
                                        prefill_ms=1, token_ms=1))
    params = BenchParams(n_prompt=8, n_gen=2, reps=1, warmup=0)
    out = bench_boards([_board(tmp_path / "wd")], recipe=DEFAULT_RECIPE, target="rk3576", params=params,
                       store=tmp_path / "r.sqlite", artifacts_root=root, transport=LocalTransport, log=lambda m: None)
    rows = out["here"].rows
    assert [(r.scheme, r.status, r.board, r.backend) for r in rows] == [("int8", "ok", "here", "fake")]
    local = bench_local(recipe=DEFAULT_RECIPE, target="rk3576", params=params, store=tmp_path / "l.sqlite",
                        artifacts_root=root, log=lambda m: None).rows
    assert {k for r in rows for k, v in r.to_dict().items() if v is not None} == \
        {k for r in local for k, v in r.to_dict().items() if v is not None}
    assert rows[0].env["doctor"] and (tmp_path / "wd" / ".bench.lock").exists()
