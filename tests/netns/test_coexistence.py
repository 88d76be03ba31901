"""Coexistence: a guest that also runs containers behind a bridge, a tunnel and static routes.

The lab's guest gains a Docker-style bridge docker0 with a container namespace behind it (NAT to
the outside), a point-to-point link wg0 to a peer namespace (a WireGuard stand-in, unmanaged) and
an admin's static route 10.98.0.0/16 via the peer. Each check is real traffic through strict
rp_filter, before and after `domunet setup`.
"""

import json
import shutil

import pytest

from tests.labs import NICS, OUTSIDE4, OUTSIDE6, assert_ok
from tests.neighbours import BEHIND_PEER, CONTAINER4, GUEST4, GUEST6, Neighbours
from tests.vpns import OPENVPN_DEF1_IPV6, WIREGUARD_HALVES6, WIREGUARD_PUBLIC4


@pytest.fixture
def neighbours(routed_lab):
    built = Neighbours(routed_lab)
    try:
        yield built.create()
    finally:
        built.destroy()


def test_containers_tunnel_and_static_route_keep_working_after_setup(routed_lab, domunet, neighbours):
    before = neighbours.paths()
    assert all(before.values()), before
    assert_ok(domunet("setup"))
    after = neighbours.paths()
    assert all(after.values()), after
    assert routed_lab.answers() == dict.fromkeys(GUEST4 + GUEST6, True)


def test_tcp_both_ways_between_container_and_every_guest_address(routed_lab, domunet, neighbours):
    assert_ok(domunet("setup"))
    for address in GUEST4 + GUEST6:
        assert neighbours.tcp("guest", address, "ctr", address), address
    for address in GUEST4:
        assert neighbours.tcp("ctr", CONTAINER4, "guest", CONTAINER4, source=address), address
        assert neighbours.tcp("peer", BEHIND_PEER, "guest", BEHIND_PEER, source=address), address


def test_kernel_answers_main_for_unmanaged_destinations_and_the_nic_for_the_rest(routed_lab, domunet, neighbours):
    routed_lab.run("guest", "ip", "route", "add", "10.50.0.0/16", "via", "192.168.0.1", "dev", "eth0")
    assert_ok(domunet("setup"))
    for address in GUEST4:
        via = routed_lab.run("guest", "ip", "route", "get", CONTAINER4, "from", address).stdout
        assert "dev docker0" in via, via
        via = routed_lab.run("guest", "ip", "route", "get", BEHIND_PEER, "from", address).stdout
        assert "dev wg0" in via, via
        nic = next(n.guest for n in NICS if n.address == address)
        via = routed_lab.run("guest", "ip", "route", "get", OUTSIDE4, "from", address).stdout
        assert f"dev {nic}" in via, via
        via = routed_lab.run("guest", "ip", "route", "get", "10.50.0.1", "from", address).stdout
        assert f"via 192.168.0.1 dev {nic}" in via, via  # main's static route, through the NIC itself


def test_plan_and_status_show_each_rule_and_the_route_it_stands_for(routed_lab, domunet, neighbours):
    planned = domunet("plan")
    assert_ok(planned)
    assert ("ip -4 rule add priority 10000 from all to 172.17.0.0/16 lookup main proto 213  "
            "# for 172.17.0.0/16 dev docker0 table main src 172.17.0.1") in planned.stdout.splitlines()
    assert "to 10.98.0.0/16 lookup main proto 213  # for 10.98.0.0/16 via 10.99.0.2 dev wg0" in planned.stdout
    assert_ok(domunet("setup"))
    status = domunet("status")
    assert_ok(status)
    assert ("keeps main: ip -4 rule: priority 10000 from all to 10.99.0.0/16 lookup main "
            "(for 10.99.0.0/16 dev wg0 table main src 10.99.0.1)") in status.stdout
    assert "NOT SET UP" not in status.stdout


def test_the_bridge_going_away_takes_its_rule_with_it_on_the_next_run(routed_lab, domunet, neighbours):
    assert_ok(domunet("setup"))
    assert "to 172.17.0.0/16" in routed_lab.run("guest", "ip", "rule").stdout
    routed_lab.run("guest", "ip", "link", "del", "docker0")
    assert_ok(domunet("setup"))
    assert "to 172.17.0.0/16" not in routed_lab.run("guest", "ip", "rule").stdout
    assert_ok(domunet("teardown"))
    assert "proto 213" not in routed_lab.run("guest", "ip", "rule").stdout


def test_without_coexistence_the_container_loses_the_guest_as_the_issue_found(routed_lab, domunet, neighbours):
    """The failure this guards against, kept reproducible: `coexistence = no` brings it back."""
    config = routed_lab.workdir / "off.conf"
    config.write_text("coexistence = no\n" + (routed_lab.workdir / "domunet.conf").read_text())
    assert_ok(domunet("setup", config=str(config)))
    paths = neighbours.paths(tries=1)
    assert not paths["container -> 192.168.0.201"]
    assert not paths["peer -> 192.168.0.202"]
    assert not paths["192.168.0.201 -> behind the peer (static route)"]
    assert_ok(domunet("setup"))
    assert all(neighbours.paths().values())


DNAT = ("add chain ip lab-nat pre { type nat hook prerouting priority -100; }; "
        f"add rule ip lab-nat pre tcp dport 8080 dnat to {CONTAINER4}:80")


def guest_state(lab):
    """Rules, routes, nftables and the sysctls connection marks touch. Without the kernel's
    `linkdown` flag: a link just made (the tunnel's stand-in) gets its carrier when it will, and
    CI has seen that happen between two dumps."""
    sysctls = lab.run("guest", "sh", "-c", "grep . /proc/sys/net/ipv4/conf/eth*/src_valid_mark").stdout
    return (lab.dump() + lab.run("guest", "nft", "list", "ruleset").stdout + sysctls).replace(" linkdown", "")


def test_a_port_published_with_dnat_answers_on_every_guest_address(routed_lab, domunet, neighbours):
    routed_lab.run("guest", "nft", DNAT)
    assert_ok(domunet("setup"))
    for address in GUEST4:
        assert neighbours.tcp("ctr", "0.0.0.0", "out", address, port=80, connect_port=8080), address
    assert_ok(domunet("setup"))
    assert domunet("plan").stdout == ""
    config = routed_lab.workdir / "nomarks.conf"
    config.write_text("connmark = no\n" + (routed_lab.workdir / "domunet.conf").read_text())
    assert_ok(domunet("setup", config=str(config)))
    assert not neighbours.tcp("ctr", "0.0.0.0", "out", "192.168.0.201", port=80, connect_port=8080)


def test_connection_marks_go_with_teardown_and_the_sysctls_are_put_back(routed_lab, domunet, neighbours):
    routed_lab.sysctl("guest", ["net/ipv4/conf/eth2/src_valid_mark=1"])  # the admin's own: stays
    before = guest_state(routed_lab)
    assert_ok(domunet("setup"))
    during = guest_state(routed_lab)
    assert "table inet domunet-guest" in during and "eth1/src_valid_mark:1" in during
    status = domunet("status")
    assert "connmark:" in status.stdout
    assert_ok(domunet("teardown"))
    assert guest_state(routed_lab) == before


def test_without_forwarding_no_marks_and_no_nft_table(routed_lab, domunet):
    assert_ok(domunet("setup"))
    assert "domunet-guest" not in routed_lab.run("guest", "nft", "list", "ruleset").stdout
    assert "fwmark" not in routed_lab.run("guest", "ip", "rule").stdout


def test_connection_marks_in_process_and_with_the_nft_program_are_the_same(routed_lab, neighbours):
    """The connection-mark table goes through libnftables in-process where python3-nftables is
    installed, else through `nft -f -` (issue 17): the same guest state both ways, teardown
    undoes either, and the in-process way needs no `nft` program at all."""
    pytest.importorskip("nftables", reason="no python3-nftables for this interpreter: only `nft -f -` to test "
                                           "(every other connection-mark test runs it)")
    lab = routed_lab
    no_nft = f"{lab.bin}:/usr/bin:/bin"
    assert shutil.which("nft", path=no_nft) is None
    before = guest_state(lab)
    states = {}
    for way in ("in-process", "command"):
        env = {**lab.hook_env(path=no_nft if way == "in-process" else None), "DOMUNET_NFT": way}
        for verb in ("setup", "teardown"):
            result = lab.run("guest", str(lab.bin / "domunet"), verb, check=False, env=env)
            assert result.returncode == 0, result.stderr
            states.setdefault(way, guest_state(lab))
        assert guest_state(lab) == before
    assert states["in-process"] == states["command"]
    assert "table inet domunet-guest" in states["command"]


# --- issue 34 (A): VPN clients that send "everything" into a tunnel -------------------------------

#: shared/FACTS.md's shapes, as ip commands in the guest, through the tunnel's stand-in wg0
VPN_SHAPES = {
    "wireguard exclude private IPs": [f"route add {p} dev wg0" for p in WIREGUARD_PUBLIC4 + WIREGUARD_HALVES6],
    "openvpn redirect-gateway def1 ipv6": [f"route add {p} dev wg0" for p in OPENVPN_DEF1_IPV6],
    "::/2 dev wg0": ["-6 route add ::/2 dev wg0"],
    "wg-quick full tunnel": ["route add default dev wg0 table 51820", "-6 route add default dev wg0 table 51820",
                             "rule add not fwmark 51820 table 51820", "rule add table main suppress_prefixlength 0",
                             "-6 rule add not fwmark 51820 table 51820",
                             "-6 rule add table main suppress_prefixlength 0"],
}

#: the families whose traffic the guest starts each shape sends into the tunnel through main (wg-quick's
#: goes there by its own table, which `ip route get` without a mark does not show the same way)
INTO_THE_TUNNEL = {"wireguard exclude private IPs": (4, 6), "openvpn redirect-gateway def1 ipv6": (4, 6),
                   "::/2 dev wg0": (6,), "wg-quick full tunnel": ()}


def _bring_up(lab, commands):
    for command in commands:
        lab.run("guest", "ip", *command.split())


def _sent_into_the_tunnel(lab, neighbours, family):
    """Packets the guest itself starts (no source chosen) towards the outside host: how many
    reach the tunnel's far end. A real tunnel has no neighbours to resolve; the stand-in's far end
    is given as the outside host's neighbour on wg0, so that every packet sent there arrives."""
    mac = json.loads(neighbours.run("peer", "ip", "-j", "link", "show", "eth0").stdout)[0]["address"]
    target = OUTSIDE4 if family == 4 else OUTSIDE6
    lab.run("guest", "ip", "neigh", "replace", target, "lladdr", mac, "dev", "wg0", "nud", "permanent")

    def received():
        shown = json.loads(neighbours.run("peer", "ip", "-s", "-j", "link", "show", "eth0").stdout)
        return shown[0]["stats64"]["rx"]["packets"]
    before = received()
    lab.run("guest", "ping", f"-{family}", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", target, check=False)
    return received() - before


@pytest.mark.parametrize("shape", sorted(VPN_SHAPES))
def test_a_full_tunnel_vpn_keeps_every_address_answering_and_still_carries_what_the_guest_starts(
        routed_lab, domunet, neighbours, shape):
    """Measured on 62adf90: WireGuard's exclude-private list left 1 of 4 addresses answering, OpenVPN's
    def1 ipv6 and ::/2 killed the IPv6 address. A reply from a managed address leaves by its NIC; the
    guest's own traffic (no source bound) still goes into the tunnel; the bridge, the tunnel's peer
    network and the static route behind it keep working, by ping and TCP."""
    lab = routed_lab
    _bring_up(lab, VPN_SHAPES[shape])
    assert_ok(domunet("setup"))
    assert lab.answers() == dict.fromkeys(GUEST4 + GUEST6, True)
    paths = neighbours.paths()
    # the container's own traffic to the Internet is the guest's: an IPv4 tunnel carries it (as it
    # should; the lab's tunnel peer does not NAT it onward)
    assert paths.pop("container -> outside (NAT)") is (shape == "::/2 dev wg0")
    assert all(paths.values()), paths
    assert neighbours.tcp("peer", BEHIND_PEER, "guest", BEHIND_PEER, source=GUEST4[1])
    assert neighbours.tcp("guest", GUEST4[2], "ctr", GUEST4[2])
    for family in INTO_THE_TUNNEL[shape]:
        assert _sent_into_the_tunnel(lab, neighbours, family) >= 3, family
        via = lab.run("guest", "ip", f"-{family}", "route", "get", OUTSIDE4 if family == 4 else OUTSIDE6).stdout
        assert "dev wg0" in via, via
    planned = domunet("plan")
    assert_ok(planned)
    assert planned.stdout == ""
    status = domunet("status")
    assert "takes over the default" in status.stdout or "quick" in shape, status.stdout


def test_a_full_tunnel_brought_up_after_setup_is_followed_by_the_next_run(routed_lab, domunet, neighbours):
    """The VPN comes up on a guest domunet already set up (the usual order): the next run (watch's,
    or the hook's) removes nothing it should keep and adds no rule for the tunnel's takeover."""
    lab = routed_lab
    assert_ok(domunet("setup"))
    _bring_up(lab, VPN_SHAPES["openvpn redirect-gateway def1 ipv6"])
    assert_ok(domunet("setup"))
    rules = lab.run("guest", "ip", "-6", "rule").stdout + lab.run("guest", "ip", "-4", "rule").stdout
    assert "to 2000::/4" not in rules and "to 0.0.0.0/1" not in rules and "to 10.99.0.0/16" in rules
    assert lab.answers() == dict.fromkeys(GUEST4 + GUEST6, True)
