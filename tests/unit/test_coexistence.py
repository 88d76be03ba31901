"""Coexistence: main's routes through unmanaged devices keep working from every managed address."""

import ipaddress

import pytest

from domunet.core import config
from domunet.core.model import PROTO_KERNEL, TABLE_MAIN, Route, Rule
from domunet.guest.plan import full_tunnels, plan
from tests.unit.factories import lab_guest
from tests.vpns import OPENVPN_DEF1_IPV6, WIREGUARD_HALVES6, WIREGUARD_PUBLIC4

LAB_CONFIG = b"[interfaces]\n[[eth3]]\ngateway6 = 2001:db8:4309:2388::2\n"


def route(dst, dev, via=None, proto=PROTO_KERNEL, metric=0):
    return Route(TABLE_MAIN, ipaddress.ip_network(dst), dev,
                 gateway=ipaddress.ip_address(via) if via else None, metric=metric, proto=proto)


def main_rules(state):
    return {str(r.dst): r for r in state.rules if r.table == TABLE_MAIN}


def planned(*routes, text=LAB_CONFIG):
    return plan(config.parse(text), lab_guest(main_routes=routes))


DOCKER = route("172.17.0.0/16", "docker0")
TUNNEL = route("10.99.0.0/16", "wg0")
STATIC = route("10.98.0.0/16", "wg0", via="10.99.0.2", proto=4)


def test_bridge_tunnel_and_static_route_through_it_get_lookup_main_rules_above_the_from_rules():
    state = planned(DOCKER, TUNNEL, STATIC)
    rules = main_rules(state)
    assert sorted(rules) == ["10.98.0.0/16", "10.99.0.0/16", "172.17.0.0/16"]
    lowest_from = min(r.priority for r in state.rules if r.src is not None)
    assert all(r.priority < lowest_from and r.src is None for r in rules.values())
    assert state.stands_for[rules["10.98.0.0/16"]] == STATIC
    assert state.stands_for[rules["172.17.0.0/16"]] == DOCKER


def test_a_prefix_inside_an_exempted_one_needs_no_rule_of_its_own():
    pods = [route(f"10.244.0.{n}/32", f"cali{n}") for n in range(1, 51)]
    state = planned(route("10.244.0.0/16", "cni0"), *pods)
    assert sorted(main_rules(state)) == ["10.244.0.0/16"]
    assert len(main_rules(planned(*pods))) == 50


def test_a_static_route_via_the_managed_gateway_is_mirrored_into_each_nic_that_reaches_it():
    static = route("10.50.0.0/16", "eth0", via="192.168.0.1", proto=4)
    state = planned(static)
    mirrored = {r for r in state.routes if r.dst == static.dst}
    assert {r.dev for r in mirrored} == {"eth0", "eth1", "eth2"}
    tables = {m.name: m.table for m in state.managed}
    assert all(r.table == tables[r.dev] and r.gateway == static.gateway for r in mirrored)
    assert not main_rules(state)
    assert all(state.stands_for[r] == static for r in mirrored)


def test_an_on_link_route_through_a_managed_nic_is_mirrored_into_its_table_only():
    state = planned(route("10.60.0.0/24", "eth1", proto=4))
    assert {r.dev for r in state.routes if str(r.dst) == "10.60.0.0/24"} == {"eth1"}


def test_the_managed_nics_own_subnets_are_not_copied():
    state = planned(route("192.168.0.0/24", "eth0"), route("2001:db8:4309:2388::/64", "eth3"))
    assert not state.stands_for and not main_rules(state)


def test_a_route_that_covers_a_managed_subnet_keeps_main_for_the_rest_of_it():
    """Issue 21 (N6): the covering prefix is split around the managed subnet, not passed over."""
    wide = route("192.168.0.0/16", "br1", proto=4)
    state = planned(wide, route("10.0.0.0/8", "tun0", proto=4))
    rules = main_rules(state)
    pieces = [ipaddress.ip_network(r) for r in rules if r != "10.0.0.0/8"]
    assert len(pieces) == 8 and "10.0.0.0/8" in rules
    managed = ipaddress.ip_network("192.168.0.0/24")
    assert not any(p.overlaps(managed) for p in pieces)
    assert sum(p.num_addresses for p in pieces) == 65536 - 256
    assert all(state.stands_for[r] == wide for r in state.rules if str(r.dst) in map(str, pieces))
    assert wide not in dict(state.passed_over)


#: The route shapes real VPN clients make in main (shared/FACTS.md): WireGuard clients' "exclude
#: private IPs" AllowedIPs, OpenVPN's `redirect-gateway def1 ipv6`, one /2.
VPN_SHAPES = {
    "wireguard-exclude-private": [route(p, "wg0", proto=3) for p in WIREGUARD_PUBLIC4 + WIREGUARD_HALVES6],
    "openvpn-def1-ipv6": [route(p, "tun0", proto=3) for p in OPENVPN_DEF1_IPV6],
    "slash-2": [route("::/2", "wg0", proto=3)],
}


@pytest.mark.parametrize("shape", sorted(VPN_SHAPES))
def test_a_full_tunnel_gets_no_lookup_main_rule_that_would_send_replies_into_it(shape):
    """Issue 34 (A): a reply from a managed address to a client on the Internet must leave by its
    NIC; `lookup main` for a full tunnel's routes sent it into the tunnel (1 of 4 answered)."""
    routes = VPN_SHAPES[shape]
    state = planned(*routes, TUNNEL, DOCKER)
    rules = main_rules(state)
    kept = {r for r in routes if str(r.dst) == "fc00::/7"}  # OpenVPN's ULA route: a private network, kept
    # the tunnel's peers, the bridge (and a private network behind the tunnel) keep main
    assert sorted(rules) == sorted(["10.99.0.0/16", "172.17.0.0/16", *(str(r.dst) for r in kept)])
    passed = dict(state.passed_over)
    assert all("takes over the default" in passed[r] for r in routes if r not in kept)
    assert all(str(r.dst) in rules for r in kept)


def test_the_share_a_devices_routes_cover_tells_a_full_tunnel_from_a_site_route():
    assert full_tunnels(VPN_SHAPES["wireguard-exclude-private"], set())[("wg0", 4)] > 0.85
    assert full_tunnels(VPN_SHAPES["openvpn-def1-ipv6"], set()) == {("tun0", 4): 1.0, ("tun0", 6): 1.0}
    assert full_tunnels(VPN_SHAPES["slash-2"], set()) == {("wg0", 6): 1.0}
    sites = [route("10.0.0.0/8", "wg0", proto=3), route("192.168.0.0/16", "br1"), route("2001:db8::/32", "wg0"),
             route("198.51.100.0/24", "wg0", proto=3), DOCKER, TUNNEL, STATIC]
    assert full_tunnels(sites, set()) == {}
    assert full_tunnels(VPN_SHAPES["slash-2"], {"wg0"}) == {}  # a managed NIC is never a tunnel


def test_a_full_tunnels_own_link_and_private_sites_keep_main():
    """What lives behind the tunnel (its own subnet, a private site routed through it) still gets
    `lookup main`: replies to a VPN peer go back into the tunnel."""
    own = route("10.8.0.0/24", "tun0")
    site = route("10.20.0.0/16", "tun0", via="10.8.0.1", proto=4)
    public_site = route("198.51.100.0/24", "tun0", via="10.8.0.1", proto=4)
    state = planned(*VPN_SHAPES["openvpn-def1-ipv6"], own, site, public_site)
    assert {"10.8.0.0/24", "10.20.0.0/16"} <= set(main_rules(state))
    assert "takes over the default" in dict(state.passed_over)[public_site]


def test_main_exclude_and_coexistence_off():
    state = planned(DOCKER, TUNNEL, text=b"main_exclude = 172.16.0.0/12\n" + LAB_CONFIG)
    assert sorted(main_rules(state)) == ["10.99.0.0/16"]
    assert dict(state.passed_over)[DOCKER] == "in main_exclude"
    assert not main_rules(planned(DOCKER, text=b"coexistence = no\n" + LAB_CONFIG))


def test_ipv6_unmanaged_routes_get_rules_link_local_does_not():
    state = planned(route("fd00:172:17::/64", "docker0"), route("fe80::/64", "docker0"))
    assert sorted(main_rules(state)) == ["fd00:172:17::/64"]


def test_families_domunet_does_not_manage_get_no_rules():
    facts = lab_guest(main_routes=(DOCKER,))
    facts = type(facts)(interfaces=facts.interfaces[:1] + facts.interfaces[4:], main_routes=(DOCKER,))
    state = plan(config.parse(LAB_CONFIG), facts)
    assert {m.name for m in state.managed} == {"eth3"}
    assert not main_rules(state)


def test_explicit_main_prefixes_and_derived_rules_do_not_duplicate():
    state = planned(DOCKER, text=LAB_CONFIG.replace(b"[interfaces]", b"main_prefixes = 172.17.0.0/16\n[interfaces]"))
    assert [r for r in state.rules if r.dst is not None] == [Rule(4, 10000, TABLE_MAIN, dst=DOCKER.dst)]


def test_a_forwarding_host_gets_a_connection_mark_and_a_fwmark_rule_per_managed_nic():
    facts = lab_guest(forwarding=frozenset({4}), nft=True)
    state = plan(config.parse(LAB_CONFIG), facts)
    tables = {m.name: m.table for m in state.managed}
    assert set(state.marks) == {"eth0", "eth1", "eth2"}  # eth3 is IPv6 only, and only IPv4 is forwarded
    assert all(state.marks[n] == (tables[n] - 1000 + 1) << 16 for n in state.marks)
    marked = {r.table: r for r in state.rules if r.fwmark is not None}
    assert {tables[n] for n in ("eth0", "eth1", "eth2")} == set(marked)
    assert all(r.priority == 10001 and r.fwmask == 0x03FF0000 and r.version == 4 for r in marked.values())


def test_no_marks_without_forwarding_without_nft_or_when_switched_off():
    assert not plan(config.parse(LAB_CONFIG), lab_guest()).marks
    assert not plan(config.parse(LAB_CONFIG), lab_guest(forwarding=frozenset({4}), nft=False)).marks
    off = config.parse(b"connmark = no\n" + LAB_CONFIG)
    assert not plan(off, lab_guest(forwarding=frozenset({4}), nft=True)).marks


def test_the_mark_table_text_is_stable_and_names_each_nic():
    from domunet.guest.connmark import digest_of, ruleset

    text = ruleset({"eth1": 0x20000, "eth0": 0x10000}, 0x03FF0000)
    assert text == ruleset({"eth0": 0x10000, "eth1": 0x20000}, 0x03FF0000)
    assert 'iifname "eth1" ct state new ct mark set ct mark and 0xfc00ffff or 0x00020000' in text
    assert digest_of(text) != digest_of(ruleset({"eth0": 0x10000}, 0x03FF0000))


def test_fwmark_rules_render_as_ip_commands():
    from domunet.guest.diff import Change
    from domunet.guest.render import ip_command

    rule = Rule(4, 10001, 1001, fwmark=0x20000, fwmask=0x03FF0000)
    assert ip_command(Change("add", rule)) == (
        "ip -4 rule add priority 10001 from all fwmark 0x20000/0x3ff0000 lookup 1001 proto 213")
