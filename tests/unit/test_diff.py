import dataclasses

from domunet.core import config
from domunet.core.model import PROTO_TEMP, Route, Rule, State
from domunet.guest.diff import diff, scope_for
from domunet.guest.plan import plan
from tests.unit.factories import lab_guest

LAB_CONFIG = config.parse(b"[interfaces]\n[[eth3]]\ngateway6 = 2001:db8:4309:2388::2\n")


def lab_state():
    return plan(LAB_CONFIG, lab_guest())


def test_second_run_changes_nothing():
    desired = lab_state()
    assert diff(desired, State(desired.routes, desired.rules)) == []


def test_setup_order_link_routes_then_gateway_routes_then_rules():
    changes = diff(lab_state(), State())
    kinds = [("rule" if isinstance(c.obj, Rule) else "link" if c.obj.is_link else "gw") for c in changes]
    assert kinds == sorted(kinds, key=["link", "gw", "rule"].index)
    assert {c.action for c in changes} == {"add"}


def test_teardown_order_rules_then_gateway_routes_then_link_routes():
    desired = lab_state()
    changes = diff(State(), State(desired.routes, desired.rules))
    kinds = [("rule" if isinstance(c.obj, Rule) else "link" if c.obj.is_link else "gw") for c in changes]
    assert kinds == sorted(kinds, key=["rule", "gw", "link"].index)
    assert len(changes) == len(desired.routes) + len(desired.rules)


def test_scope_limits_changes_to_the_named_interface():
    desired = lab_state()
    owned = State(desired.routes, desired.rules)
    changes = diff(State(), owned, scope_for(["eth1"], State(), owned))
    assert changes
    table = next(m.table for m in desired.managed if m.name == "eth1")
    assert all(getattr(c.obj, "dev", None) == "eth1" or c.obj.table == table for c in changes)
    assert not [c for c in changes if getattr(c.obj, "oif", None) in ("eth0", "eth2", "eth3")]


def test_changed_gateway_is_removed_before_it_is_added():
    desired = lab_state()
    old = {dataclasses.replace(r, gateway=r.gateway.__class__("192.168.0.254")) if r.gateway and r.version == 4 else r
           for r in desired.routes}
    changes = diff(desired, State(frozenset(old), desired.rules))
    actions = [c.action for c in changes]
    assert actions == ["remove"] * 3 + ["add"] * 3


def test_leftover_temporary_route_is_removed():
    desired = lab_state()
    route = next(r for r in desired.routes if r.gateway and r.version == 4)
    temporary = Route(254, route.dst.__class__(f"{route.gateway}/32"), route.dev, proto=PROTO_TEMP)
    changes = diff(desired, State(desired.routes | {temporary}, desired.rules))
    assert [(c.action, c.obj) for c in changes] == [("remove", temporary)]
