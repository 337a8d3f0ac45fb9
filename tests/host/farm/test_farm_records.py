"""Farm records without a coordinator (fast tier): tag filters, addresses, place → Board, exporter config."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import yaml

from host.deploy.inventory import parse_inventory
from host.farm.client import FarmError, coordinator_address, parse_filter
from host.farm.export import board_from_place, exporter_config, write_exporter_config

INV = {"all": {"children": {"lab": {"vars": {"soc": "rk3588", "ansible_user": "rock"},
                                    "hosts": {"rock5b": {"ansible_host": "10.0.0.5", "workdir": "/data/rk",
                                                         "ansible_ssh_private_key_file": "/keys/lab"},
                                              "opi5": {"ansible_host": "10.0.0.6", "ansible_port": 2200}}}}}}


def test_filters_and_addresses():
    assert parse_filter("soc=rk3588, board=rock5b") == {"soc": "rk3588", "board": "rock5b"}
    for bad in ("soc", "=x", "S=x", "s=x", "soc=a b", ""):
        with pytest.raises(FarmError, match="--farm"):
            parse_filter(bad)
    assert coordinator_address("lab") == "lab:20408"
    assert coordinator_address("lab:1234") == "lab:1234"
    for bad in ("lab:0", "lab:x", ":20408", "a b:1"):
        with pytest.raises(FarmError, match="HOST:PORT"):
            coordinator_address(bad)


def test_coordinator_from_env(monkeypatch):
    monkeypatch.setenv("LG_COORDINATOR", "farm.lab:4000")
    assert coordinator_address(None) == "farm.lab:4000"
    monkeypatch.delenv("LG_COORDINATOR")
    assert coordinator_address(None) == "127.0.0.1:20408"


def test_exporter_config_round_trips_into_the_same_board_records(tmp_path):
    inv = parse_inventory(INV, source=Path("boards.yaml"))
    write_exporter_config(inv, tmp_path / "exporter.yaml")
    text = (tmp_path / "exporter.yaml").read_text()
    assert text.startswith("## ")  # labgrid reads the file as a Jinja2 template with '#' line statements
    data = yaml.safe_load(text)
    assert data == exporter_config(inv)
    assert data["opi5"] == {"NetworkService": {"address": "10.0.0.6", "port": 2200, "username": "rock"}}
    for name, b in inv.boards.items():
        ns = {"NetworkService": {**data[name]["NetworkService"], "extra": {"proxy": "x"}}}
        got = board_from_place(name, ns, {"soc": "rk3588", "board": name}, inv)
        assert got == b.__class__(**{**b.__dict__, "groups": ("farm",)})
    # a place no inventory names: defaults, the NetworkService's address
    other = board_from_place("spare", {"NetworkService": {"address": "10.0.0.9", "username": "u", "port": 22}},
                             {"soc": "rk3576"}, inv)
    assert (other.host, other.port, other.user, other.soc, other.workdir, other.key_file) == \
        ("10.0.0.9", 22, "u", "rk3576", PurePosixPath("rkdeploy"), None)


@pytest.mark.parametrize(("resources", "expect"), [
    ({}, "no NetworkService resource matched"),
    ({"NetworkService": {"address": "a b", "username": "u"}}, "address 'a b'"),
    ({"NetworkService": {"address": "h", "username": "u", "port": 0}}, "port 0 is outside"),
    ({"NetworkService": {"address": "h", "username": "u\n"}}, "username"),
])
def test_bad_network_service_is_one_line(resources, expect):
    with pytest.raises(FarmError, match=expect):
        board_from_place("p", resources, {}, None)


def test_export_refuses_a_board_without_a_user(tmp_path):
    inv = parse_inventory({"all": {"hosts": {"x": {"ansible_host": "h"}}}}, source=Path("b.yaml"))
    with pytest.raises(FarmError, match="b.yaml: host 'x' has no ansible_user"):
        write_exporter_config(inv, tmp_path / "e.yaml")
    assert not (tmp_path / "e.yaml").exists()


@pytest.mark.parametrize("name", ["../../../tmp/x", "a/b", "..", ".", "", "va\x1b[2J", "a b", None])
def test_place_names_from_the_coordinator_are_untrusted(name):
    """Anyone on a shared coordinator may add places; their names become file names and log lines here."""
    ns = {"NetworkService": {"address": "10.0.0.5", "port": 22, "username": "rock"}}
    with pytest.raises(FarmError, match="place name must be"):
        board_from_place(name, ns, {"soc": "rk3588"}, None)


def test_allocated_reservations_keep_being_polled(monkeypatch):
    """labgrid's coordinator expires an allocated reservation 60 s after its last poll: while one board is
    still busy, the reservations that already got theirs must be polled every round too."""
    from host.farm import session
    from host.farm.client import ReservationInfo

    monkeypatch.setattr(session, "POLL_S", 0.0)
    rounds = {"a": 0, "b": 0}

    class Client:
        def poll(self, token):
            rounds[token] += 1
            ready = token == "a" or rounds["b"] >= 4
            return ReservationInfo(token, "me", "allocated" if ready else "waiting", {}, (f"p{token}",) if ready else ())

        def places(self):
            return []

    got = session._wait_allocated(Client(), ["a", "b"], {"soc": "rk3588"}, None, lambda s: None, False)
    assert got == [("a", "pa"), ("b", "pb")] and rounds == {"a": 4, "b": 4}
