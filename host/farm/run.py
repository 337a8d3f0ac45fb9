"""push / doctor / bench on boards held from the farm, all boards in parallel.

Each board (bench) or the whole pool (push, doctor) runs in daemon threads while the main thread
only waits: a Ctrl-C or SIGTERM unwinds at once and ``farm_boards`` releases the places; the
threads die with the process. One failing board ends as an error outcome; the others complete. Every row carries ``env.farm`` = place, reservation,
coordinator; every log line starts with ``[place reservation]``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from host.deploy.inventory import Inventory
from host.deploy.ssh import SshTransport
from host.errors import ConfigError, RkdeployError
from host.farm.session import FarmBoard, farm_boards
from host.ui import err_console, sanitize


@dataclass
class FarmOutcome:
    """What one held board did: its rows (bench), a push result, doctor checks, or the error."""

    place: str
    reservation: str
    rows: list = field(default_factory=list)
    result: object | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _say(log: Callable[[str], None] | None) -> Callable[[str], None]:
    return log or (lambda m: err_console.print(m, markup=False, highlight=False, soft_wrap=True))


def check_soc(held: Sequence[FarmBoard], target: str) -> None:
    wrong = [f"{fb.place} is {fb.board.soc}" for fb in held if fb.board.soc and fb.board.soc != target]
    if wrong:
        raise ConfigError(f"--target {target} does not match the reserved places' soc ({', '.join(wrong)}); "
                          f"reserve with --farm soc={target}")


def in_parallel(held: Sequence[FarmBoard], work: Callable[[FarmBoard, Callable[[str], None]], FarmOutcome],
                say: Callable[[str], None]) -> list[FarmOutcome]:
    """Run ``work`` for every board at once; the main thread only waits (so Ctrl-C stays responsive)."""
    outcomes: dict[str, FarmOutcome] = {}

    def one(fb: FarmBoard) -> None:
        tagged = lambda m, p=f"[{fb.place} {fb.token}] ": say(p + m)  # noqa: E731
        try:
            outcomes[fb.place] = work(fb, tagged)
        except RkdeployError as e:
            tagged(f"failed: {sanitize(str(e))}")
            outcomes[fb.place] = FarmOutcome(fb.place, fb.token, error=sanitize(str(e)))
        except Exception as e:  # noqa: BLE001 - a bug on one board must not leave the others' places held
            outcomes[fb.place] = FarmOutcome(fb.place, fb.token, error=f"internal error: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(fb,), name=f"farm-{fb.place}", daemon=True) for fb in held]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.2)
    return [outcomes[fb.place] for fb in held]


def in_background(fn: Callable[[], object]) -> object:
    """``fn()`` in a daemon thread; the main thread only waits, so Ctrl-C/SIGTERM unwind (and release) at once
    instead of waiting for a thread pool to finish its pushes."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread as is
            box["error"] = e

    t = threading.Thread(target=run, name="farm-work", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.2)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def bench_farm(tags: dict[str, str], count: int, *, recipe, target: str, params, address: str | None = None,
               store=None, artifacts_root=None, wait: bool = True, inventory: Inventory | None = None,
               transport: Callable = SshTransport, log: Callable[[str], None] | None = None,
               wait_timeout: float | None = None, show_progress: bool = True) -> list[FarmOutcome]:
    """Reserve ``count`` boards with ``tags``, push + doctor + bench on all of them in parallel, release."""
    from host.deploy.remote_bench import bench_boards

    say = _say(log)
    with farm_boards(tags, count, address=address, inventory=inventory, say=say, wait_timeout=wait_timeout,
                     show_progress=show_progress) as held:
        check_soc(held, target)
        coordinator = _coordinator(address)

        def work(fb: FarmBoard, tagged: Callable[[str], None]) -> FarmOutcome:
            env = {"farm": {**fb.label, "coordinator": coordinator}}
            out = bench_boards([fb.board], recipe=recipe, target=target, params=params, store=store,
                               artifacts_root=artifacts_root, wait=wait, transport=transport, log=tagged, row_env=env)
            rows = out[fb.board.name].rows
            return FarmOutcome(fb.place, fb.token, rows=rows)

        return in_parallel(held, work, say)


def push_farm(tags: dict[str, str], count: int, dirs, *, address: str | None = None, target: str | None = None,
              inventory: Inventory | None = None, transport: Callable = SshTransport,
              log: Callable[[str], None] | None = None, wait_timeout: float | None = None,
              show_progress: bool = True) -> list[FarmOutcome]:
    from host.deploy.push import push_boards

    say = _say(log)
    with farm_boards(tags, count, address=address, inventory=inventory, say=say, wait_timeout=wait_timeout,
                     show_progress=show_progress) as held:
        if target:
            check_soc(held, target)
        results = in_background(lambda: push_boards([fb.board for fb in held], dirs, jobs=len(held),
                                                    transport=transport, show_progress=show_progress))
        return [FarmOutcome(fb.place, fb.token, result=r, error=None if r.ok else r.status)
                for fb, r in zip(held, results, strict=True)]


def doctor_farm(tags: dict[str, str], count: int, *, address: str | None = None, inventory: Inventory | None = None,
                transport: Callable = SshTransport, log: Callable[[str], None] | None = None,
                wait_timeout: float | None = None, show_progress: bool = True) -> list[FarmOutcome]:
    from host.deploy.remote_bench import doctor_boards

    say = _say(log)
    with farm_boards(tags, count, address=address, inventory=inventory, say=say, wait_timeout=wait_timeout,
                     show_progress=show_progress) as held:
        reports = in_background(lambda: doctor_boards([fb.board for fb in held], jobs=len(held), transport=transport))
        return [FarmOutcome(fb.place, fb.token, result=r, error=r.error) for fb, r in zip(held, reports, strict=True)]


def _coordinator(address: str | None) -> str:
    from host.farm.client import coordinator_address

    return coordinator_address(address)


def load_optional_inventory(path: Path | None) -> Inventory | None:
    """The inventory whose boards lend key file / workdir / python to places of the same name (when it exists)."""
    from host.deploy.inventory import default_inventory_path, load_inventory

    p = Path(path) if path else default_inventory_path()
    if path is None and not p.exists():
        return None
    return load_inventory(p)
