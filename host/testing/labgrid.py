"""A real labgrid coordinator + exporter on loopback, for tests and demos; stopped by PID.

    with TestFarm.start(tmp_path, inventory) as farm:   # one place per inventory board
        farm.address                                    # "127.0.0.1:PORT" (--coordinator)
        farm.client_cli("who")                          # labgrid-client, pointed at it

The coordinator keeps its state (places.yaml) in the farm's folder; the exporter publishes one
``NetworkService`` per board (``host.farm.export.exporter_config``). Both are started from this
venv's ``labgrid-coordinator`` / ``labgrid-exporter``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from host.deploy.inventory import Inventory
from host.testing.sshd import free_port

BIN = Path(sys.executable).parent
EXPORTER = "rkdeploy-test"


def labgrid_available() -> bool:
    return (BIN / "labgrid-coordinator").exists() and (BIN / "labgrid-exporter").exists()


@dataclass
class TestFarm:
    __test__ = False

    dir: Path
    port: int
    procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    exporter: str = EXPORTER
    stopped: list[int] = field(default_factory=list)  # PIDs this farm started and stopped

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, dir: Path | str, inventory: Inventory, *, register: bool = True, timeout: float = 60) -> TestFarm:
        from host.farm.client import FarmClient
        from host.farm.export import register_places, write_exporter_config

        d = Path(dir)
        d.mkdir(parents=True, exist_ok=True)
        farm = cls(dir=d, port=free_port())
        try:
            farm._spawn("coordinator", [str(BIN / "labgrid-coordinator"), "-l", farm.address])
            farm._wait_port(timeout)
            write_exporter_config(inventory, d / "exporter.yaml")
            farm._spawn("exporter", [str(BIN / "labgrid-exporter"), "-c", farm.address, "-n", farm.exporter,
                                     "--hostname", "127.0.0.1", str(d / "exporter.yaml")])
            with FarmClient(farm.address) as c:
                deadline = time.monotonic() + timeout
                while len(c.session.resources.get(farm.exporter, {})) < len(inventory.boards):
                    if time.monotonic() > deadline or any(p.poll() is not None for p in farm.procs):
                        raise RuntimeError(f"labgrid exporter did not publish its resources: {farm.log_tail()}")
                    time.sleep(0.2)
                    c.sync()
                if register:
                    register_places(c, inventory, farm.exporter)
        except BaseException:
            farm.stop()
            raise
        return farm

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.procs.append(subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env))
        log.close()

    def _wait_port(self, timeout: float) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[0].poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        raise RuntimeError(f"labgrid-coordinator did not listen on {self.address}: {self.log_tail()}")

    def log_tail(self) -> str:
        out = []
        for name in ("coordinator", "exporter"):
            p = self.dir / f"{name}.log"
            if p.exists():
                out.append(f"{name}: " + p.read_text(errors="replace")[-800:])
        return " | ".join(out)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def client_cli(self, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """``labgrid-client -x ADDRESS ARGS`` (labgrid's own client, to check what ours did)."""
        return subprocess.run([str(BIN / "labgrid-client"), "-x", self.address, *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})

    def stop(self) -> None:
        """Exporter first, then the coordinator: SIGTERM by PID, SIGKILL after 10 s."""
        for p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.stopped.append(p.pid)
        self.procs.clear()

    def __enter__(self) -> TestFarm:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
