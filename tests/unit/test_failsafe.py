"""Fail safe (issue 21): the pure parts."""

import ipaddress
import logging
import os
import struct

import pytest

from domunet.core.errors import ApplyError
from domunet.core.events import nft_tables_deleted_from
from domunet.core.model import ADD, Route
from domunet.core.state import set_aside
from domunet.guest.apply import apply
from domunet.guest.diff import Change
from domunet.guest.ifupdown import load_hints


def test_a_set_aside_message_names_the_file_once(tmp_path, caplog):
    path = tmp_path / "connmark.json"
    path.write_text("{")
    with caplog.at_level(logging.WARNING):
        set_aside(path, f"{path}: not valid JSON")
    assert caplog.text.count(str(path)) == 1
    assert (tmp_path / "connmark.json.corrupt").exists()


def test_a_symlinked_hints_directory_is_not_followed(tmp_path, caplog):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "eth1.inet.json").write_text('{"iface": "eth1", "addrfam": "inet", "mode": "start"}')
    (tmp_path / "state").mkdir()
    os.symlink(elsewhere, tmp_path / "state" / "ifupdown")
    with caplog.at_level(logging.WARNING):
        assert load_hints(str(tmp_path / "state")) == []
    assert "is a symlink" in caplog.text


def _message(kind: int, table: str) -> bytes:
    name = table.encode() + b"\0"
    attribute = struct.pack("=HH", 4 + len(name), 1) + name
    attribute += b"\0" * ((4 - len(attribute) % 4) % 4)
    body = struct.pack("=BBH", 1, 0, 0) + attribute
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | kind, 0, 0, 0) + body


def test_nftables_deletes_are_told_apart_by_table():
    data = _message(2, "domunet-guest") + _message(0, "other") + _message(8, "filter")
    assert nft_tables_deleted_from(data) == {"domunet-guest", "filter"}  # 0 is NEWTABLE: not a removal
    assert nft_tables_deleted_from(b"\x01\x02") == set()


class _Failing:
    """A netlink stand-in whose second add raises what no one expected."""

    def __init__(self, error):
        self.error, self.calls = error, []

    def add_route(self, route):
        if len([c for c in self.calls if c[0] == "add"]) == 1:
            raise self.error
        self.calls.append(("add", route))

    def remove_route(self, route):
        self.calls.append(("remove", route))

    add_rule = add_route
    remove_rule = remove_route


def _changes():
    net = ipaddress.ip_network
    return [Change(ADD, Route(1000, net(f"10.0.{i}.0/24"), "eth1")) for i in range(3)]


def test_an_unexpected_error_rolls_back_and_is_raised_as_it_was():
    kernel = _Failing(RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        apply(_changes(), kernel)
    assert [c[0] for c in kernel.calls] == ["add", "remove"]


def test_an_os_error_rolls_back_and_says_what_failed():
    kernel = _Failing(OSError(28, "No space left on device"))
    with pytest.raises(ApplyError, match=r"cannot add route 10\.0\.1\.0/24.*No space left.*rolled back 1 of 1"):
        apply(_changes(), kernel)
    assert [c[0] for c in kernel.calls] == ["add", "remove"]


def test_an_earlier_block_is_within_reach_and_remembered_while_it_holds_something():
    """Issue 21 (N11): priority_base and table_base changed; the old block's objects are still domunet's."""
    from dataclasses import replace

    from domunet.core.config import Config
    from domunet.core.model import Rule, State
    from domunet.guest.owned import blocks_in_use, within_reach

    old, new = Config(), replace(Config(), table_base=5000, priority_base=20000)
    rule = Rule(4, 10000 + 10, 1000, src=ipaddress.ip_network("192.168.0.201/32"))
    route = Route(1000, ipaddress.ip_network("192.168.0.0/24"), "eth1")
    owned = State(routes=frozenset({route}), rules=frozenset({rule}))
    assert within_reach(owned, new) == State()
    assert within_reach(owned, new, [(1000, 10000)]) == owned
    assert blocks_in_use({rule}, new, [(1000, 10000)]) == [(5000, 20000), (1000, 10000)]
    assert blocks_in_use(set(), new, [(1000, 10000)]) == [(5000, 20000)]
    assert blocks_in_use({rule}, old, [(1000, 10000)]) == [(1000, 10000)]
