"""Shared fixtures: the real built-in models (materialised once), the default recipe, the CLI."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from host.testing.sshd import TestSshd

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = ROOT / "configs" / "models" / "smollm2-135m.yaml"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def builtin_models() -> dict[str, Path]:
    """The default models, materialised into the user cache (reused across runs)."""
    from host.models import fetch_all

    return fetch_all()


@pytest.fixture(scope="session")
def llm_dir(builtin_models) -> Path:
    return builtin_models["smollm2-135m-instruct"]


@pytest.fixture(scope="session")
def encoder_dir(builtin_models) -> Path:
    return builtin_models["all-minilm-l6-v2"]


@pytest.fixture(scope="session")
def default_recipe_data() -> dict:
    """The default recipe as a dict with every relative path made absolute."""
    data = yaml.safe_load(DEFAULT_RECIPE.read_text())
    base = DEFAULT_RECIPE.parent
    for m in data["models"]:
        if m.get("calibration"):
            m["calibration"] = str((base / m["calibration"]).resolve())
    data["text"] = {k: str((base / v).resolve()) for k, v in data["text"].items()}
    return data


@pytest.fixture
def make_recipe(tmp_path, default_recipe_data):
    """``make_recipe(edit)`` writes a copy of the default recipe changed by ``edit(dict)``; returns its path."""
    counter = {"n": 0}

    def make(edit=None, name: str | None = None) -> Path:
        data = copy.deepcopy(default_recipe_data)
        if edit:
            edit(data)
        counter["n"] += 1
        path = tmp_path / (name or f"recipe{counter['n']}.yaml")
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return make


def run_cli(*args: str, timeout: float = 600, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``rkdeploy ARGS`` in a subprocess (as a user would) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})}, cwd=cwd or ROOT,
    )


@pytest.fixture
def rk():
    return run_cli


# >>> export / quality (issue 3)
#: Quality evaluation cut for tests (the default recipe's 4,096 tokens are for `make export`).
QUALITY_TEST = {"eval_tokens": 1024, "window": 513, "sentences": 64}


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory, default_recipe_data, builtin_models):
    """Every ONNX artifact of the default recipe for rk3576, built ONCE per session into a temp root.

    Quality caches (float reference, rows) and the results store live in the same temp folder.
    """
    from types import SimpleNamespace

    from host.export import export

    base = tmp_path_factory.mktemp("onnx-export")
    data = copy.deepcopy(default_recipe_data)
    data["quality"] = dict(QUALITY_TEST)
    recipe = base / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    schemes = tuple(dict.fromkeys(s for m in data["models"] for s in m["onnx"]))
    mp = pytest.MonkeyPatch()
    mp.setenv("RKDEPLOY_QUALITY_CACHE", str(base / "quality-cache"))
    rep = export(recipe, "rk3576", only=schemes, root=base / "artifacts", progress=False)
    yield SimpleNamespace(base=base, recipe=recipe, data=data, root=base / "artifacts", report=rep, schemes=schemes,
                          store=base / "results.sqlite", qcache=base / "quality-cache")
    mp.undo()
# <<< export / quality (issue 3)
# >>> deploy: one real OpenSSH sshd per test module, its known_hosts, no agent (issue 5)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with TestSshd.start(tmp_path_factory.mktemp("sshd")) as s:
        yield s


@pytest.fixture(scope="module")
def known(sshd, tmp_path_factory):
    return sshd.write_known_hosts(tmp_path_factory.mktemp("kh") / "known_hosts")


@pytest.fixture(autouse=True)
def _no_ssh_agent(monkeypatch):
    """Keys only: an agent on the developer's machine must not make a wrong-key test pass."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
# <<< deploy
# >>> real parts: `make test` and CI fail where a bare pytest would skip (issue 10)
#: Set by `make test` and .ci/run. A test that would skip because a real part is missing here (sshd,
#: the rknn venv, a tmpfs, gcc, an old Python, an importable module) FAILS instead, naming the part.
REQUIRE_REAL_ENV = "RKDEPLOY_REQUIRE_REAL"
#: Tests with these markers may still skip under it: no CI machine has a board.
SKIP_ALLOWED_MARKERS = ("board",)
_SKIPPED = pytest.StashKey[list]()


def require_real() -> bool:
    return os.environ.get(REQUIRE_REAL_ENV, "") not in ("", "0")


def _skip_reason(longrepr) -> str:
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip becomes a failure under RKDEPLOY_REQUIRE_REAL; otherwise it is remembered for the summary."""
    outcome = yield
    rep = outcome.get_result()
    if not rep.skipped or hasattr(rep, "wasxfail") or any(item.get_closest_marker(m) for m in SKIP_ALLOWED_MARKERS):
        return
    reason = _skip_reason(rep.longrepr)
    if require_real():
        rep.outcome = "failed"
        rep.longrepr = (f"{REQUIRE_REAL_ENV}=1 (make test, CI): this test would be skipped, and here a skip fails the "
                        f"run: {reason}. Install the missing part (make setup, make setup-system), or run a bare "
                        "`pytest` to let it skip.")
    else:
        item.config.stash.setdefault(_SKIPPED, []).append((item.nodeid, reason))


_collect_skips: list[tuple[str, str]] = []  # this session's modules skipped at collection (the hook has no config)


def pytest_sessionstart(session):
    _collect_skips.clear()


def pytest_collectreport(report):
    """A whole module skipped at collection (module-level skip / importorskip) is remembered too."""
    if report.skipped:
        _collect_skips.append((report.nodeid, _skip_reason(report.longrepr)))


def pytest_sessionfinish(session, exitstatus):
    """Module-level skips cannot be turned into failing reports without aborting collection: the run fails here.
    Background builds still running (the run ended before a test needed them) are stopped by PID."""
    stop_prebuilds()
    if require_real() and _collect_skips and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = config.stash.get(_SKIPPED, []) + _collect_skips
    if not skipped:
        return
    tr = terminalreporter
    by_reason: dict[str, int] = {}
    for _nodeid, reason in skipped:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    if require_real():
        tr.section(f"{REQUIRE_REAL_ENV}=1: modules skipped at collection FAIL this run", sep="=", red=True, bold=True)
        for nodeid, reason in _collect_skips:
            tr.line(f"FAILED (skipped module) {nodeid}: {reason}", red=True)
        return
    tr.section(f"{len(skipped)} test(s) SKIPPED: a real part is missing here", sep="=", yellow=True, bold=True)
    for reason, n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        tr.line(f"  {n:3d} x {reason}")
    tr.line(f"`make test` and CI ({REQUIRE_REAL_ENV}=1) fail on these instead of skipping; "
            "`make setup setup-system` installs most parts.", yellow=True)
# <<< real parts
# >>> test tiers: `make test-fast` runs the tests that need no real part (issue 12)
#: A test that uses one of these fixtures needs a real part (a materialised model, a full export, an
#: OpenSSH sshd): it is marked ``real`` at collection. Modules that start such a part themselves say
#: ``pytestmark = pytest.mark.real``.
REAL_FIXTURES = frozenset({"builtin_models", "onnx_export", "sshd", "known", "vb", "vfarm", "llamacpp",
                           "llamacpp_aarch64"})
#: Heavy parts built once per machine and cached (fresh CI machine: the board's rootfs ~10 min, llama.cpp
#: ~20 min, its aarch64 cross build for boards (libllama only) ~12-25 min on 2 cores): built in the background
#: at nice 10 from the start of a session whose tests need
#: them, and their tests run last. The fixtures call the same builders, which wait on the builder's lock.
PREBUILDS = {"vb": [sys.executable, "-m", "host.vboard", "build"],
             "vfarm": [sys.executable, "-m", "host.vboard", "build"],  # the same rootfs: started once
             "llamacpp": [sys.executable, "-m", "host.build.llamacpp_tools", "--host"],
             "llamacpp_aarch64": [sys.executable, "-m", "host.build.llamacpp_tools", "--aarch64"]}
_prebuilds: list = []
#: These markers need a real part too (a board, the virtual board).
REAL_MARKERS = ("board", "vboard")
#: Fakes only, but seconds per test (shims compiled with gcc, injected delays, timing fidelity): ``slow``.
SLOW_FIXTURES = frozenset({"shims"})
#: Set by `make test-fast`: the model cache is an empty folder and no test sshd starts, so a test
#: in the fast tier that reaches for a real part fails (mark it ``real``) instead of quietly running it.
FAST_ENV = "RKDEPLOY_FAST"


def fast_tier() -> bool:
    return os.environ.get(FAST_ENV, "") not in ("", "0")


def pytest_configure(config):
    if fast_tier():
        import tempfile

        os.environ["RKDEPLOY_CACHE"] = tempfile.mkdtemp(prefix="rkdeploy-fast-empty-cache-")


def pytest_unconfigure(config):
    if fast_tier() and "rkdeploy-fast-empty-cache-" in os.environ.get("RKDEPLOY_CACHE", ""):
        import shutil

        shutil.rmtree(os.environ["RKDEPLOY_CACHE"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """``real``: the test uses a real part (fixture or marker above); ``slow``: fakes only, seconds each."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & REAL_FIXTURES or any(item.get_closest_marker(m) for m in REAL_MARKERS):
            item.add_marker(pytest.mark.real)
        if names & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
    # tests of a heavy part run last, so its background build (pytest_collection_finish) overlaps the rest
    heavy = [i for i in items if set(getattr(i, "fixturenames", ())) & PREBUILDS.keys()]
    if heavy:
        ids = {id(i) for i in heavy}
        items[:] = [i for i in items if id(i) not in ids] + heavy


def pytest_collection_finish(session):
    """Start the background build of each heavy part the selected tests need (cached: it returns at once)."""
    if fast_tier() or session.config.option.collectonly:
        return
    needed = {f for i in session.items for f in PREBUILDS if f in getattr(i, "fixturenames", ())}
    if vboard_why_not() is not None:
        needed -= {"vb", "vfarm"}
    started: set[tuple[str, ...]] = set()
    for name in sorted(needed):
        if tuple(PREBUILDS[name]) in started:
            continue
        started.add(tuple(PREBUILDS[name]))
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"rkdeploy-prebuild-{name}-{os.getpid()}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["nice", "-n", "10", *PREBUILDS[name]], cwd=ROOT, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        _prebuilds.append((name, proc, log))
        print(f"\nbackground build for the '{name}' tests (they run last): pid {proc.pid}, log {log}", flush=True)


def stop_prebuilds() -> None:
    import signal

    for _name, proc, log in _prebuilds:
        if proc.poll() == 0:
            log.unlink(missing_ok=True)     # a failed build's log stays (its path was printed at the start)
        elif proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    _prebuilds.clear()


@pytest.fixture(autouse=True)
def _fast_tier_guard(request, monkeypatch):
    """Under `make test-fast`: starting a test sshd or a (non-dry-run) export fails, naming the fix."""
    if not fast_tier() or request.node.get_closest_marker("real") or request.node.get_closest_marker("slow"):
        return

    def refuse(part: str):
        def refused(*_a, **_kw):
            pytest.fail(f"{FAST_ENV}=1 (make test-fast): this test {part}; mark it `real` (or use a fake)")
        return refused

    monkeypatch.setattr(TestSshd, "start", refuse("starts an OpenSSH sshd"))
    import host.export

    real_export = host.export.export

    def export(*a, **kw):
        if not kw.get("dry_run"):
            refuse("runs a real export")()
        return real_export(*a, **kw)

    monkeypatch.setattr(host.export, "export", export)
# <<< test tiers


# >>> the virtual board (issue 13): one per test session, shared by every module that needs it
#: Emulated Python imports onnxruntime for tens of seconds before its first line.
VBOARD_STALL_S = 600


def vboard_why_not() -> str | None:
    """Why the virtual board cannot run here (None: it can)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "the virtual board needs Linux and root (mounts, chroot)"
    from host import vboard

    missing = vboard.missing_host_tools()
    if missing:
        return f"missing Debian packages {' '.join(missing)} (make setup-system installs them)"
    return None


@pytest.fixture(scope="session")
def vb(tmp_path_factory):
    """The board up (built on first use), trusted and provisioned through the CLI as a user does it.

    Stopped at the end of the session unless it was already running before (then its owner stops it)."""
    import time
    from types import SimpleNamespace

    from host import vboard
    from host.deploy.inventory import load_inventory

    tmp = tmp_path_factory.mktemp("vboard")
    was_running = vboard.status()["running"]
    t0 = time.monotonic()
    vboard.up(say=lambda m: print(m, flush=True))
    up_s = time.monotonic() - t0
    env = {"RKDEPLOY_KNOWN_HOSTS": str(tmp / "known_hosts"), "RKDEPLOY_STALL_TIMEOUT": str(VBOARD_STALL_S)}
    try:
        r = run_cli("boards", "trust", vboard.NAME, env=env, timeout=120)
        assert r.returncode == 0 and "recorded host key SHA256:" in r.stdout, r.stdout + r.stderr
        t1 = time.monotonic()
        r = run_cli("boards", "provision", vboard.NAME, env=env, timeout=2400)
        assert r.returncode == 0, r.stdout + r.stderr
        board = load_inventory().boards[vboard.NAME]
        yield SimpleNamespace(board=board, known=tmp / "known_hosts", env=env, tmp=tmp, up_s=up_s,
                              provision_s=time.monotonic() - t1, provision_out=r.stdout)
    finally:
        if not was_running:
            vboard.down(say=lambda m: print(m, flush=True))
            st = vboard.status()
            assert not st["running"] and not st["mounts"], st
# <<< the virtual board
# >>> the virtual farm (issue 18): two more instances of the virtual board for tests/host/farm
VFARM = ("vfarm-a", "vfarm-b")
#: Their workdir: under the board's /tmp, a fresh tmpfs per up (the board's system python3 runs the runner).
VFARM_WORKDIR = "/tmp/rkdeploy-farm"


@pytest.fixture(scope="module")
def vfarm(tmp_path_factory):
    """vfarm-a and vfarm-b up in parallel (each its own 127.0.0.N, state, host and client keys over the cached
    rootfs; vrk3588 is never touched), an inventory naming them (soc rk3588, python3, VFARM_WORKDIR) and a
    known_hosts with their host keys. ``restart(name)`` brings one back after a test stopped it. Both are
    stopped by PID at the end of the module unless they were running before; asserted gone (no process, no
    mount)."""
    import threading
    from types import SimpleNamespace

    from host import vboard

    why = vboard_why_not()
    if why is not None:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("vfarm")
    was_running = {n for n in VFARM if vboard.status(n)["running"]}
    errors: list[BaseException] = []

    def up(name: str) -> None:
        try:
            vboard.up(name, say=lambda m: print(m, flush=True))
        except BaseException as e:  # noqa: BLE001 - raised below in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=up, args=(n,)) for n in VFARM]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        hosts, known = {}, ""
        for n in VFARM:
            inst, paths = vboard.instance(n), vboard.Paths(n)
            hosts[n] = {"ansible_host": inst.address, "ansible_port": inst.port, "ansible_user": vboard.USER,
                        "ansible_ssh_private_key_file": str(paths.client_key), "soc": "rk3588",
                        "workdir": VFARM_WORKDIR, "python": "python3"}
            kind, blob = paths.host_key.with_name(paths.host_key.name + ".pub").read_text().split()[:2]
            known += f"[{inst.address}]:{inst.port} {kind} {blob}\n"
        (tmp / "boards.yaml").write_text(yaml.safe_dump({"all": {"children": {"vfarm": {"hosts": hosts}}}}))
        (tmp / "known_hosts").write_text(known)
        yield SimpleNamespace(names=VFARM, dir=tmp, inventory=tmp / "boards.yaml", known=tmp / "known_hosts",
                              restart=lambda n: vboard.up(n, say=lambda m: None))
    finally:
        for t in threads:
            t.join()
        for n in VFARM:
            if n not in was_running:
                vboard.down(n, say=lambda m: print(m, flush=True))
                st = vboard.status(n)
                assert not st["running"] and not st["mounts"], st
                assert vboard.board_pids(vboard.Paths(n).root) == [], n
# <<< the virtual farm


@pytest.fixture(scope="session")
def llamacpp():
    """The cached llama.cpp build for this host (built now when missing, or waited for when the session's
    background build holds the builder's lock) and rk-llama-run."""
    from types import SimpleNamespace

    from host.build import llamacpp_tools

    root = llamacpp_tools.build()
    return SimpleNamespace(root=root, driver=llamacpp_tools.driver(root), tools=llamacpp_tools)


@pytest.fixture(scope="session")
def llamacpp_aarch64():
    """llama.cpp cross-built for aarch64 boards (built now when missing, or waited for when the session's
    background build holds its lock) and the static rk-llama-run that a push of a GGUF carries."""
    from types import SimpleNamespace

    from host.build import llamacpp_tools

    root = llamacpp_tools.build_aarch64()
    return SimpleNamespace(root=root, driver=llamacpp_tools.driver_aarch64(root), tools=llamacpp_tools)
