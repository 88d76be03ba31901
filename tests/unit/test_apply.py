"""The applier against a recording netlink: ordering, the temporary route, rollback.

The same paths run for real in tests/netns; this proves the failure branches that a
current kernel never takes by itself.
"""

import ipaddress

import pytest

from domunet.core.errors import ApplyError, GatewayRefused, KernelError, ObjectExists, ObjectMissing
from domunet.core.model import PROTO_TEMP, Route, Rule
from domunet.guest.apply import add_gateway_route, apply, temporary_route
from domunet.guest.diff import Change

GATEWAY_ROUTE = Route(1001, ipaddress.ip_network("0.0.0.0/0"), "eth4",
                      gateway=ipaddress.ip_address("10.9.9.1"), src=ipaddress.ip_address("10.9.9.9"))
LINK_ROUTE = Route(1001, ipaddress.ip_network("10.9.9.1/32"), "eth4", src=ipaddress.ip_address("10.9.9.9"))
RULE = Rule(4, 10012, 1001, src=ipaddress.ip_network("10.9.9.9/32"))


class RecordingNetlink:
    """Keeps a set of objects like the kernel would and fails on request."""

    def __init__(self, refuse_gateway=0, fail_on=None, missing=()):
        self.objects = set()
        self.calls = []
        self.refuse_gateway = refuse_gateway  # how many gateway adds to refuse
        self.fail_on = fail_on
        self.missing = set(missing)

    def _add(self, obj):
        self.calls.append(("add", obj))
        if obj == self.fail_on:
            raise KernelError(f"cannot add {obj.describe()}: Invalid argument", 22)
        if getattr(obj, "gateway", None) is not None and self.refuse_gateway:
            self.refuse_gateway -= 1
            raise GatewayRefused("cannot add route: Network is unreachable", 101)
        if obj in self.objects:
            raise ObjectExists("exists", 17)
        self.objects.add(obj)

    def _remove(self, obj):
        self.calls.append(("remove", obj))
        if obj in self.missing or obj not in self.objects:
            raise ObjectMissing("gone", 2)
        self.objects.discard(obj)

    add_route = add_rule = _add
    remove_route = remove_rule = _remove


def test_refused_gateway_is_retried_with_a_temporary_route_that_is_then_removed():
    netlink = RecordingNetlink(refuse_gateway=1)
    add_gateway_route(netlink, GATEWAY_ROUTE)
    temporary = temporary_route(GATEWAY_ROUTE)
    assert temporary.table == 254 and temporary.proto == PROTO_TEMP and temporary.dev == "eth4"
    assert netlink.calls == [("add", GATEWAY_ROUTE), ("add", temporary), ("add", GATEWAY_ROUTE),
                             ("remove", temporary)]
    assert netlink.objects == {GATEWAY_ROUTE}


def test_temporary_route_is_removed_even_when_the_retry_fails():
    netlink = RecordingNetlink(refuse_gateway=2)
    with pytest.raises(GatewayRefused):
        add_gateway_route(netlink, GATEWAY_ROUTE)
    assert netlink.calls[-1] == ("remove", temporary_route(GATEWAY_ROUTE))
    assert netlink.objects == set()


def test_forced_strategy_takes_the_temporary_path_without_a_refusal():
    netlink = RecordingNetlink()
    add_gateway_route(netlink, GATEWAY_ROUTE, "temporary-main-route")
    assert [c[0] for c in netlink.calls] == ["add", "add", "remove"]
    assert netlink.objects == {GATEWAY_ROUTE}


def test_existing_main_route_is_used_and_not_removed():
    netlink = RecordingNetlink()
    netlink.objects.add(temporary_route(GATEWAY_ROUTE))
    add_gateway_route(netlink, GATEWAY_ROUTE, "temporary-main-route")
    assert ("remove", temporary_route(GATEWAY_ROUTE)) not in netlink.calls
    assert temporary_route(GATEWAY_ROUTE) in netlink.objects


def test_failure_part_way_rolls_back_this_runs_changes():
    netlink = RecordingNetlink(fail_on=RULE)
    changes = [Change("add", LINK_ROUTE), Change("add", GATEWAY_ROUTE), Change("add", RULE)]
    with pytest.raises(ApplyError, match="rolled back 2 of 2"):
        apply(changes, netlink)
    assert netlink.objects == set()
    assert netlink.calls[-2:] == [("remove", GATEWAY_ROUTE), ("remove", LINK_ROUTE)]


def test_removing_what_is_already_gone_is_fine_and_not_undone():
    netlink = RecordingNetlink()
    done = apply([Change("remove", RULE)], netlink)
    assert done == []


def test_rollback_re_adds_what_this_run_removed():
    netlink = RecordingNetlink(fail_on=LINK_ROUTE)
    netlink.objects.add(RULE)
    with pytest.raises(ApplyError):
        apply([Change("remove", RULE), Change("add", LINK_ROUTE)], netlink)
    assert netlink.objects == {RULE}
