"""Boards from the farm: reserve N places by tag, wait (with progress), acquire, resolve each into a
``Board``, and release on every way out.

    with farm_boards({"soc": "rk3588"}, 2, address="lab:20408") as held:   # list[FarmBoard]
        ...                                                                # push, bench, doctor

Ways out and what they leave behind:
- normal end, an error, Ctrl-C, SIGTERM (turned into ``KeyboardInterrupt`` while we hold places):
  every acquired place is released and every reservation cancelled before the exception goes on;
- this process killed (SIGKILL, OOM) before acquiring: the coordinator drops our reservations
  ``RESERVATION_TTL_S`` (60 s) after our last poll;
- killed after acquiring: labgrid keeps an acquired place (and its reservation) until someone
  releases it. We record each held place in ``~/.cache/rkdeploy/farm/held/``; the next farm command
  on this host (or ``rkdeploy farm release --stale``) releases places whose recorded process is
  gone, and ``rkdeploy farm release PLACE --kick`` frees one held by a machine that died.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from host.deploy.inventory import Board, Inventory
from host.farm.client import FarmClient, FarmError, PlaceInfo, _tags, checked_place
from host.farm.export import board_from_place
from host.fsutil import atomic_write_text, pid_alive

POLL_S = 1.0


@dataclass(frozen=True)
class FarmBoard:
    """A board we hold: its record, the labgrid place and the reservation token."""

    board: Board
    place: str
    token: str

    @property
    def label(self) -> dict:
        """What every row from this board carries (``env.farm``)."""
        return {"place": self.place, "reservation": self.token}


def held_dir() -> Path:
    """``$RKDEPLOY_FARM_STATE``, else ``$RKDEPLOY_CACHE/farm/held``, else ``~/.cache/rkdeploy/farm/held``."""
    if os.environ.get("RKDEPLOY_FARM_STATE"):
        return Path(os.environ["RKDEPLOY_FARM_STATE"]).expanduser()
    base = Path(os.environ["RKDEPLOY_CACHE"]).expanduser() if os.environ.get("RKDEPLOY_CACHE") else \
        Path.home() / ".cache" / "rkdeploy"
    return base / "farm" / "held"


def _record_path(address: str, place: str) -> Path:
    return held_dir() / f"{address.replace(':', '_')}--{place}.json"


def release_stale(client: FarmClient, say: Callable[[str], None]) -> list[str]:
    """Release places this host's farm commands acquired and never released (their process is gone)."""
    freed = []
    d = held_dir()
    if not d.is_dir():
        return freed
    for rec in sorted(d.glob(f"{glob.escape(client.address.replace(':', '_'))}--*.json")):
        try:
            info = json.loads(rec.read_text())
            pid, place, user, token = int(info["pid"]), str(info["place"]), str(info["user"]), str(info["token"])
        except (OSError, ValueError, KeyError, TypeError):
            rec.unlink(missing_ok=True)
            continue
        if pid_alive(pid) and info.get("boot") == _boot_id():
            continue
        with contextlib.suppress(FarmError):
            client.release(place, only_from=user)  # only if still ours: labgrid's release-from
        with contextlib.suppress(FarmError):
            client.cancel(token)
        rec.unlink(missing_ok=True)
        freed.append(place)
        say(f"farm: released {place} (held by process {pid} of this host, which is gone; reservation {token})")
    return freed


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While we hold places, SIGTERM unwinds like Ctrl-C (so ``finally`` releases them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _matching(places: list[PlaceInfo], tags: dict[str, str]) -> list[PlaceInfo]:
    return [p for p in places if all(({**p.tags, "name": p.name}).get(k) == v for k, v in tags.items())]


@contextlib.contextmanager
def farm_boards(tags: dict[str, str], count: int = 1, *, address: str | None = None, inventory: Inventory | None = None,
                wait_timeout: float | None = None, say: Callable[[str], None] | None = None,
                show_progress: bool = True, client: FarmClient | None = None) -> Iterator[list[FarmBoard]]:
    """Reserve ``count`` places carrying ``tags``, wait for them, acquire them, yield their boards;
    release everything on the way out (see the module doc for each way out)."""
    from host.ui import err_console

    say = say or (lambda m: err_console.print(m, markup=False, highlight=False, soft_wrap=True))
    if count < 1:
        raise FarmError(f"--count {count}: need at least 1 board")
    own = client is None
    client = client or FarmClient(address)
    tokens: list[str] = []
    held: list[tuple[str, str]] = []  # (place, token)
    try:
        with _sigterm_as_interrupt():
            release_stale(client, say)
            matching = _matching(client.places(), tags)
            if len(matching) < count:
                have = ", ".join(p.name for p in matching) or "none"
                raise FarmError(f"--farm {_tags(tags)} --count {count}: the coordinator {client.address} has "
                                f"{len(matching)} place(s) with these tags ({have}); `rkdeploy farm status` lists them")
            for _ in range(count):
                tokens.append(client.reserve(tags))
            allocated = _wait_allocated(client, tokens, tags, wait_timeout, say, show_progress)
            boards = []
            for token, place in allocated:
                client.acquire(place)
                held.append((place, token))
                atomic_write_text(_record_path(client.address, place), json.dumps(
                    {"pid": os.getpid(), "boot": _boot_id(), "place": place, "token": token, "user": client.user,
                     "since": time.time()}))
                info = next(p for p in client.places() if p.name == place)
                board = board_from_place(place, client.place_resources(place), info.tags, inventory)
                boards.append(FarmBoard(board, place, token))
                say(f"farm: acquired {place} ({board.address}, reservation {token})")
            yield boards
    finally:
        _release_all(client, held, tokens, say)
        if own:
            client.close()


def _wait_allocated(client: FarmClient, tokens: list[str], tags: dict[str, str], timeout: float | None,
                    say: Callable[[str], None], show_progress: bool) -> list[tuple[str, str]]:
    """Poll every reservation (which also keeps it alive) until each holds a place."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from host.ui import err_console

    start = time.monotonic()
    done: dict[str, str] = {}
    told = False
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                  disable=not show_progress, transient=True) as progress:
        task = progress.add_task(f"farm: reserving {len(tokens)} board(s) with {_tags(tags)}", total=len(tokens))
        while True:
            for token in tokens:
                # Every reservation is polled each round, allocated ones too: labgrid's coordinator expires a
                # waiting or allocated reservation 60 s after its last poll, and would hand its place to another.
                res = client.poll(token)
                if res.state in ("expired", "invalid"):
                    raise FarmError(f"farm: reservation {token} became {res.state} while waiting")
                if token not in done and res.places:
                    done[token] = checked_place(res.places[0])
            progress.update(task, completed=len(done))
            if len(done) == len(tokens):
                return [(t, done[t]) for t in tokens]
            waited = time.monotonic() - start
            if not told and waited > 2 * POLL_S:
                ours = set(done.values())
                busy = [f"{p.name} ({'held by ' + p.acquired if p.acquired else 'reserved by another client'})"
                        for p in _matching(client.places(), tags) if (p.acquired or p.reservation) and p.name not in ours]
                say(f"farm: waiting for {len(tokens) - len(done)} of {len(tokens)} board(s) with {_tags(tags)}; "
                    f"busy: {', '.join(busy) or 'none'}")
                told = True
            if timeout is not None and waited > timeout:
                raise FarmError(f"farm: {len(done)} of {len(tokens)} board(s) with {_tags(tags)} free after "
                                f"{timeout:g} s; try later (`rkdeploy farm status` shows who holds them)")
            time.sleep(POLL_S)


def _release_all(client: FarmClient, held: list[tuple[str, str]], tokens: list[str],
                 say: Callable[[str], None]) -> None:
    """Release every place and cancel every reservation; one failure does not stop the others.
    A second Ctrl-C while this runs is ignored until it is done."""
    old = old_term = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        for place, token in held:
            try:
                client.release(place, only_from=client.user)
                say(f"farm: released {place} (reservation {token})")
            except FarmError as e:
                say(f"farm: could not release {place}: {e}; run: rkdeploy farm release {place}")
                continue
            _record_path(client.address, place).unlink(missing_ok=True)
        for token in tokens:
            with contextlib.suppress(FarmError):  # already gone: expired, or cancelled by the coordinator
                client.cancel(token)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
