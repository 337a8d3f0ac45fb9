"""``FarmClient``: the few labgrid coordinator calls rkdeploy needs, as plain blocking methods.

labgrid's own ``ClientSession`` (gRPC, asyncio) does the talking; it runs on an event loop in a
daemon thread of its own, so its stream to the coordinator (place and resource updates, gRPC
keepalive) stays alive while the caller's threads push and benchmark. Every call is bounded by
a deadline and turns gRPC failures into one ``FarmError`` line naming the coordinator.

labgrid's rules this module relies on (26.0.1, ``labgrid/remote/coordinator.py``):
- a reservation holds ONE place matching its tag filter; N boards = N reservations;
- a waiting or allocated reservation expires ``RESERVATION_TTL_S`` after its last poll; an
  acquired one never expires; an acquired place stays acquired until someone releases it (also
  when the acquiring client died) -- see ``host.farm.session`` for how we clean up after a kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from host.errors import RkdeployError

DEFAULT_PORT = 20408
#: labgrid's coordinator expires a reservation this long after its last poll (``Reservation.refresh``).
RESERVATION_TTL_S = 60
CALL_TIMEOUT_S = 15.0
TAG_KEY = re.compile(r"[a-z][a-z0-9_]+\Z")  # labgrid's TAG_KEY, anchored
TAG_VALUE = re.compile(r"[A-Za-z0-9_.-]+\Z")


def checked_place(name: object) -> str:
    """A place name from the coordinator (anyone on it may add places): it names local files and log lines,
    so only ``[A-Za-z0-9_.-]`` and not ``.``/``..`` are accepted."""
    if not isinstance(name, str) or not TAG_VALUE.match(name) or name in (".", ".."):
        raise FarmError(f"coordinator place {name!r}: a place name must be letters, digits, '_', '.' or '-' "
                        "(rename it with labgrid-client; rkdeploy uses it in file names)")
    return name


def _quiet_labgrid(record) -> bool:
    """labgrid logs its connection trouble on the root logger; we say it once, as a ``FarmError``."""
    return "/labgrid/" not in record.pathname.replace("\\", "/")


logging.getLogger().addFilter(_quiet_labgrid)  # labgrid calls logging.error(): records of the root logger


class FarmError(RkdeployError):
    """The coordinator refused, did not answer, or a place is not usable as a board."""


def coordinator_address(value: str | None) -> str:
    """``--coordinator`` / ``$LG_COORDINATOR`` / labgrid's default, as HOST:PORT (checked)."""
    text = value or os.environ.get("LG_COORDINATOR") or f"127.0.0.1:{DEFAULT_PORT}"
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    if not host or any(c.isspace() for c in host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise FarmError(f"coordinator {text!r}: expected HOST:PORT with a port 1..65535 (--coordinator or LG_COORDINATOR)")
    return f"{host}:{int(port)}"


def parse_filter(text: str) -> dict[str, str]:
    """``soc=rk3588,board=rock5b`` -> tags every reserved place must carry (labgrid's key rules)."""
    out: dict[str, str] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not TAG_KEY.match(key) or not TAG_VALUE.match(value):
            raise FarmError(f"--farm {item!r}: expected TAG=VALUE (tag: a-z then a-z0-9_, at least 2 characters; "
                            "value: letters, digits, _ . -), e.g. --farm soc=rk3588")
        out[key] = value
    if not out:
        raise FarmError(f"--farm {text!r} names no tag; e.g. --farm soc=rk3588")
    return out


@dataclass(frozen=True)
class PlaceInfo:
    """A place as ``farm status`` shows it."""

    name: str
    tags: dict[str, str]
    matches: tuple[str, ...]
    acquired: str | None  # "host/user" of the holder
    reservation: str | None
    comment: str = ""


@dataclass(frozen=True)
class ReservationInfo:
    token: str
    owner: str
    state: str  # waiting, allocated, acquired, expired, invalid
    filters: dict[str, str]
    places: tuple[str, ...] = field(default_factory=tuple)


class FarmClient:
    """One session with a labgrid coordinator. ``with FarmClient(addr) as c: c.places()``."""

    def __init__(self, address: str | None = None, *, timeout: float = CALL_TIMEOUT_S):
        self.address = coordinator_address(address)
        try:
            from labgrid.remote.client import ClientSession
            from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2
        except ImportError as e:
            raise FarmError(f"the board farm needs labgrid ({e.name or e}): pip install 'rkdeploy[farm]' "
                            "(make setup installs it)") from None

        self.timeout = timeout
        self.pb2 = pb2
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="labgrid-session", daemon=True)
        self._thread.start()
        self.session = None
        try:
            self.session = self._call(self._start(ClientSession), "connect")
            #: How the coordinator names this client: ``host/user`` (``LG_HOSTNAME``/``LG_USERNAME`` override).
            self.user = f"{self.session.gethostname()}/{self.session.getuser()}"
        except BaseException:
            self._stop_loop()
            raise

    async def _start(self, cls) -> Any:
        session = cls(self.address, self.loop)
        await session.start()
        return session


    # -- plumbing ------------------------------------------------------------------------------
    def _call(self, coro: Coroutine, doing: str, timeout: float | None = None) -> Any:
        import grpc
        from labgrid.remote.client import Error as LabgridError

        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout or self.timeout)
        except TimeoutError:
            fut.cancel()
            raise FarmError(f"labgrid coordinator {self.address}: no answer within {timeout or self.timeout:g} s "
                            f"({doing}); is labgrid-coordinator running there?") from None
        except grpc.aio.AioRpcError as e:
            raise FarmError(f"labgrid coordinator {self.address}: {doing}: {e.details() or e.code().name}") from None
        except LabgridError as e:
            if doing == "connect":
                raise FarmError(f"no labgrid coordinator answers at {self.address} ({e}); start labgrid-coordinator "
                                "there, or point --coordinator / LG_COORDINATOR at the lab's") from None
            raise FarmError(f"labgrid coordinator {self.address}: {doing}: {e}") from None

    async def _rpc(self, method: str, request, sync: bool) -> Any:
        resp = await getattr(self.session.stub, method)(request)
        if sync:  # wait until the coordinator's place updates for this call reached our session
            await self.session.sync_with_coordinator()
        return resp

    def rpc(self, method: str, doing: str, *, sync: bool = True, **fields) -> Any:
        request = getattr(self.pb2, f"{method}Request")(**fields)
        return self._call(self._rpc(method, request, sync), doing)

    def close(self) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):  # closing a broken session is best effort  # noqa: BLE001
                self._call(self._close(), "disconnect", timeout=5)
            self.session = None
        self._stop_loop()

    async def _close(self) -> None:
        await self.session.stop()
        await self.session.close()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> FarmClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- places --------------------------------------------------------------------------------
    def sync(self) -> None:
        self._call(self.session.sync_with_coordinator(), "sync")

    def places(self) -> list[PlaceInfo]:
        self.sync()
        out = []
        for name, p in sorted(self.session.places.items()):
            out.append(PlaceInfo(name=name, tags=dict(p.tags), matches=tuple(str(m) for m in p.matches),
                                 acquired=p.acquired or None, reservation=p.reservation or None, comment=p.comment))
        return out

    def place_resources(self, name: str) -> dict[str, dict]:
        """The resources a place matched when it was acquired: ``{cls: params}`` (one per class)."""
        self.sync()
        place = self.session.places.get(name)
        if place is None:
            raise FarmError(f"labgrid coordinator {self.address}: no place {name!r}")
        out: dict[str, dict] = {}
        for exporter, group, cls, rname in place.acquired_resources:
            entry = self.session.resources.get(exporter, {}).get(group, {}).get(rname)
            if entry is None:
                raise FarmError(f"place {name}: resource {exporter}/{group}/{cls}/{rname} is gone "
                                "(its exporter disconnected?)")
            out.setdefault(cls, {"exporter": exporter, "group": group, **dict(entry.params)})
        return out

    def matched_resources(self, name: str) -> dict[str, dict]:
        """The resources a place's match patterns select now (no need to acquire it): ``{cls: params}``."""
        self.sync()
        place = self.session.places.get(name)
        if place is None:
            known = ", ".join(sorted(self.session.places)) or "(none)"
            raise FarmError(f"labgrid coordinator {self.address}: no place {name!r}; known: {known}")
        out: dict[str, dict] = {}
        for exporter, groups in sorted(self.session.resources.items()):
            for group, resources in sorted(groups.items()):
                for rname, entry in sorted(resources.items()):
                    if entry.cls and place.hasmatch((exporter, group, entry.cls, rname)):
                        out.setdefault(entry.cls, {"exporter": exporter, "group": group, **dict(entry.params)})
        return out

    def add_place(self, name: str, *, matches: list[str], tags: dict[str, str]) -> bool:
        """Create ``name`` (when missing), add its match patterns, set its tags. True when created."""
        self.sync()
        created = name not in self.session.places
        if created:
            self.rpc("AddPlace", f"create place {name}", name=name)
        have = {str(m) for m in self.session.places[name].matches}
        for pattern in matches:
            if pattern not in have:
                self.rpc("AddPlaceMatch", f"add match {pattern} to place {name}", placename=name, pattern=pattern)
        self.rpc("SetPlaceTags", f"set tags of place {name}", placename=name, tags=tags)
        return created

    def acquire(self, name: str) -> None:
        self.rpc("AcquirePlace", f"acquire place {name}", placename=name)

    def release(self, name: str, *, only_from: str | None = None) -> None:
        """Release ``name``; ``only_from`` (host/user): only when that client holds it (labgrid release-from)."""
        fields = {"placename": name}
        if only_from:
            fields["fromuser"] = only_from
        self.rpc("ReleasePlace", f"release place {name}", **fields)

    # -- reservations --------------------------------------------------------------------------
    def reserve(self, tags: dict[str, str], *, prio: float = 0.0) -> str:
        filt = {"main": self.pb2.Reservation.Filter(filter=tags)}
        resp = self.rpc("CreateReservation", f"reserve {_tags(tags)}", filters=filt, prio=prio)
        return resp.reservation.token

    def poll(self, token: str) -> ReservationInfo:
        """The reservation's state (polling also keeps a waiting one alive for ``RESERVATION_TTL_S``)."""
        from labgrid.remote.common import Reservation

        resp = self.rpc("PollReservation", f"poll reservation {token}", sync=False, token=token)
        return _reservation(Reservation.from_pb2(resp.reservation))

    def cancel(self, token: str) -> None:
        self.rpc("CancelReservation", f"cancel reservation {token}", token=token)

    def reservations(self) -> list[ReservationInfo]:
        from labgrid.remote.common import Reservation

        resp = self.rpc("GetReservations", "list reservations", sync=False)
        return [_reservation(Reservation.from_pb2(r)) for r in resp.reservations]


def _reservation(res) -> ReservationInfo:
    places = tuple(p for group in res.allocations.values() for p in group)
    return ReservationInfo(token=res.token, owner=res.owner, state=res.state.name,
                           filters=dict(res.filters.get("main", {})), places=places)


def _tags(tags: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))
