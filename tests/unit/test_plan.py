import dataclasses
import ipaddress
from pathlib import Path

import pytest

from domunet.core import config
from domunet.core.model import PROTO, Route
from domunet.guest.diff import Change
from domunet.guest.plan import allocate_tables, plan, preferred_slot
from domunet.guest.render import ip_command
from tests.unit.factories import lab_guest, nic

DATA = Path(__file__).parent.parent / "data"
LAB_CONFIG = config.parse(b"[interfaces]\n[[eth3]]\ngateway6 = 2001:db8:4309:2388::2\n")


def ip(text):
    return ipaddress.ip_address(text)


def commands(state):
    objects = sorted(state.routes, key=lambda o: (o.version, repr(o))) + sorted(
        state.rules, key=lambda o: (o.version, repr(o)))
    return "".join(ip_command(Change("add", o)) + "\n" for o in objects)


def test_lab_guest_plan_matches_golden_file():
    """The lab's guest: eth0..eth2 share a /24, eth3 has dom0's address as IPv6 gateway."""
    assert commands(plan(LAB_CONFIG, lab_guest())) == (DATA / "lab_guest_plan.txt").read_text()


def test_lab_guest_managed_interfaces_and_gateways():
    managed = {m.name: m for m in plan(LAB_CONFIG, lab_guest()).managed}
    assert sorted(managed) == ["eth0", "eth1", "eth2", "eth3"]
    assert all(managed[n].gateway == ip("192.168.0.1") for n in ("eth0", "eth1", "eth2"))
    assert managed["eth3"].gateway6 == ip("2001:db8:4309:2388::2")
    assert managed["eth3"].families == (6,)
    assert len({m.table for m in managed.values()}) == 4


def test_single_nic_alone_in_its_subnet_is_left_alone():
    facts = lab_guest(interfaces=(nic("eth0", 2, "192.168.0.200/24"), nic("eth1", 3, "10.0.0.5/24")))
    assert plan(config.parse(b""), facts).managed == ()
    assert plan(config.parse(b""), facts).rules == frozenset()


def test_table_is_stable_across_ifindex_and_rename():
    first = lab_guest()
    renamed = lab_guest(interfaces=tuple(
        dataclasses.replace(i, index=i.index + 40, name=i.name.replace("eth", "ens")) for i in first.interfaces
    ))
    tables = {m.name[-1]: m.table for m in plan(config.parse(b""), first).managed}
    tables_renamed = {m.name[-1]: m.table for m in plan(config.parse(b""), renamed).managed}
    assert tables == tables_renamed


def test_xen_vif_device_id_gives_the_table():
    facts = lab_guest(interfaces=(
        nic("eth0", 2, "192.168.0.200/24", xen_devid=0), nic("eth1", 3, "192.168.0.201/24", xen_devid=1),
    ))
    tables = {m.name: (m.table, m.priority) for m in plan(config.parse(b""), facts).managed}
    assert tables == {"eth0": (1000, 10010), "eth1": (1001, 10012)}


def test_explicit_table_wins_and_collisions_are_probed():
    a = nic("eth0", 2, "192.168.0.200/24", mac="02:aa:00:00:00:01")
    b = nic("eth1", 3, "192.168.0.201/24", mac="02:aa:00:00:00:02")
    slot = preferred_slot(a)
    settings = config.parse(f"[interfaces]\n[[eth1]]\ntable = {1000 + slot}\n".encode())
    tables = allocate_tables(settings, [a, b])
    assert tables["eth1"] == 1000 + slot
    assert tables["eth0"] != tables["eth1"]


def test_off_link_gateway_gets_a_host_route_first():
    """The /32 case: 10.9.9.9/32 with gateway 10.9.9.1 (also the dom0 /128 case for IPv6)."""
    facts = lab_guest(interfaces=(nic("eth4", 7, "10.9.9.9/32"),), main_defaults=())
    settings = config.parse(b"[interfaces]\n[[eth4]]\ngateway = 10.9.9.1\n")
    routes = plan(settings, facts).routes
    table = next(iter(routes)).table
    assert routes == {
        Route(table, ipaddress.ip_network("10.9.9.1/32"), "eth4", src=ip("10.9.9.9")),
        Route(table, ipaddress.ip_network("0.0.0.0/0"), "eth4", gateway=ip("10.9.9.1"), src=ip("10.9.9.9")),
    }


def test_ipv6_slash128_guest_gets_dom0_host_route_in_main_and_table():
    facts = lab_guest(interfaces=(nic("eth3", 5, "2001:db8:1::50/128"),), main_defaults=())
    settings = config.parse(b"[interfaces]\n[[eth3]]\ngateway6 = 2001:db8:4309:2388::2\n")
    main = sorted(r.describe() for r in plan(settings, facts).routes if r.table == 254)
    assert main == ["2001:db8:4309:2388::2/128 dev eth3 table main",
                    "default via 2001:db8:4309:2388::2 dev eth3 table main"]


def test_existing_ipv6_default_in_main_is_respected():
    foreign = Route(254, ipaddress.ip_network("::/0"), "eth3", gateway=ip("fe80::1"), metric=1024, proto=9)
    facts = lab_guest(main_defaults=lab_guest().main_defaults + (foreign,))
    assert not [r for r in plan(LAB_CONFIG, facts).routes if r.table == 254]


def test_main_prefixes_become_lookup_main_rules_before_the_interfaces():
    settings = config.parse(b"main_prefixes = 172.16.0.0/12, fd00::/8\n")
    rules = plan(settings, lab_guest()).rules
    main_rules = sorted((r.priority, str(r.dst)) for r in rules if r.table == 254)
    assert main_rules == [(10000, "172.16.0.0/12")]  # no IPv6 interface is managed without gateway6
    assert all(r.priority > 10000 for r in rules if r.table != 254)


def test_ignored_down_and_unmanaged_interfaces_are_skipped():
    facts = lab_guest(interfaces=(
        nic("eth0", 2, "192.168.0.200/24"), nic("eth1", 3, "192.168.0.201/24", up=False),
        nic("eth2", 4, "192.168.0.202/24"), nic("docker0", 5, "192.168.0.203/24"),
    ))
    settings = config.parse(b"ignore = docker*\n[interfaces]\n[[eth2]]\nmanage = no\n")
    assert plan(settings, facts).managed == ()


def test_every_object_carries_the_owner_marker():
    state = plan(LAB_CONFIG, lab_guest())
    assert {o.proto for o in state.routes | state.rules} == {PROTO}


def test_a_gateway_equal_to_its_own_address_holds_that_nic_only():
    settings = config.parse(b"[interfaces]\n[[eth1]]\ngateway = 192.168.0.201\n")
    state = plan(settings, lab_guest())
    assert "[[eth1]] key 'gateway'" in state.held["eth1"] and "eth1 itself" in state.held["eth1"]
    assert {m.name for m in state.managed} == {"eth0", "eth2"}


@pytest.mark.parametrize("published, why", [("192.168.0.203", "eth4 itself"), ("192.168.0.255", "broadcast")])
def test_a_bad_gateway_from_xenstore_names_its_xenstore_path(published, why):
    """Issue 21 (N4): dom0 published a bad gateway for one vif; only that NIC is held."""
    from dataclasses import replace

    from domunet.core.model import Interface, PublishedVif

    facts = lab_guest()
    extra = Interface("eth4", 9, "00:16:3e:00:00:09", True, (ipaddress.ip_interface("192.168.0.203/24"),))
    facts = replace(facts, interfaces=(*facts.interfaces, extra), published={"eth4": PublishedVif(
        backend="/local/domain/0/backend/vif/1/4", gateway=ip(published), routed=True)})
    settings = config.parse(b"[interfaces]\n[[eth4]]\nmanage = yes\n")
    facts = replace(facts, main_defaults=())
    state = plan(settings, facts)
    assert "xenstore /local/domain/0/backend/vif/1/4/domunet-gateway" in state.held["eth4"]
    assert why in state.held["eth4"]
    assert "eth4" not in {m.name for m in state.managed} and "eth1" in {m.name for m in state.managed}


def test_only_objects_of_domunets_own_shapes_are_within_reach():
    from domunet.core.model import PROTO_TEMP, TABLE_MAIN, Rule, State
    from domunet.guest.owned import within_reach

    net = ipaddress.ip_network
    desired = plan(LAB_CONFIG, lab_guest())
    foreign = {
        Route(TABLE_MAIN, net("0.0.0.0/0"), "eth0", gateway=ip("192.168.0.1")),  # by hand, proto 213
        Route(TABLE_MAIN, net("10.0.0.0/8"), "eth0", proto=PROTO_TEMP),
        Route(5000, net("0.0.0.0/0"), "eth0", gateway=ip("192.168.0.1")),
    }
    odd_rules = {
        Rule(4, 10000, TABLE_MAIN, src=net("10.0.0.0/8")),
        Rule(4, 10500, 5000, src=net("10.0.0.0/8")),
        Rule(4, 10500, 1001, src=net("10.0.0.0/8"), dst=net("10.1.0.0/16")),
        Rule(4, 10001, 1001, src=net("10.0.0.0/8"), fwmark=1, fwmask=1),
        Rule(4, 9000, 1001, oif="eth0"),
    }
    owned = State(routes=desired.routes | foreign, rules=desired.rules | odd_rules)
    reach = within_reach(owned, LAB_CONFIG)
    assert reach.routes == desired.routes and reach.rules == desired.rules


def test_a_table_with_foreign_routes_is_not_adopted_unless_the_config_names_it():
    from domunet.guest.plan import allocate_tables

    nics = [nic("eth1", 3, "192.168.0.201/24", xen_devid=1)]
    assert allocate_tables(config.parse(b""), nics) == {"eth1": 1001}
    assert allocate_tables(config.parse(b""), nics, frozenset({1001})) == {"eth1": 1002}
    named = config.parse(b"[interfaces]\n[[eth1]]\ntable = 1001\n")
    assert allocate_tables(named, nics, frozenset({1001})) == {"eth1": 1001}


# --- the rule shapes, computed in one pass over the addresses (issue 17) -------------------

ADDRESS_POOL = ["10.0.0.5/24", "10.0.0.6/24", "10.0.1.5/24", "10.0.2.9/32", "169.254.1.1/16",
                "2001:db8:1::5/64", "2001:db8:1::6/64", "2001:db8:2::5/64", "2001:db8:3::9/128", "fe80::5/64"]


def rules_by_definition(interface, shared):
    """The planner's documented rule, address by address: a prefix this NIC holds alone is one
    rule, an address in a shared subnet or on a host prefix its own; link-local none."""
    sources = set()
    for address in interface.addresses:
        if address.ip.is_link_local:
            continue
        alone = address.network.prefixlen < address.max_prefixlen and address.network not in shared
        sources.add(address.network if alone else ipaddress.ip_network(address.ip))
    return sources


@pytest.mark.parametrize("picks", [
    (0,), (0, 1), (0, 1, 2, 3), (4, 9), (5, 6, 7, 8), (0, 2, 3, 5, 7, 8, 9), tuple(range(10)),
])
@pytest.mark.parametrize("shared_with_other", [False, True])
def test_from_rules_follow_the_per_address_definition(picks, shared_with_other):
    from domunet.guest.plan import _family_rules, _shared

    eth1 = nic("eth1", 3, *(ADDRESS_POOL[i] for i in picks))
    other = nic("eth2", 4, "10.0.0.7/24", "2001:db8:1::7/64") if shared_with_other else nic("eth2", 4, "10.9.9.9/24")
    shared = _shared([eth1, other])
    made = {rule.src for version in (4, 6) for rule in _family_rules(eth1, version, 100, 1000, shared)
            if rule.src is not None}
    assert made == rules_by_definition(eth1, shared)
    assert eth1.holds(ip("169.254.1.1")) == (4 in picks) and not eth1.holds(ip("10.0.0.99"))
