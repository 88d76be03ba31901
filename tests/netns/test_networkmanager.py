"""A guest whose NICs NetworkManager configures: real NetworkManager in the guest namespace, its
own keyfiles, its dispatcher started by the bus, and `nmcli connection down|up` and `device reapply`.

Runs where NetworkManager is installed: the Debian 13 suite (scripts/release-suite) has it in its
root. It is never installed on the host that runs the suites: NetworkManager started there by the
package would take over the machine's own NICs."""

import os
import shutil

import pytest

from tests.labs import DOM0_UPLINK6, NICS, Lab, Watcher, foreign, owned, rules, wait_until
from tests.shipped import shipped
from tests.stacks import (
    LEASED,
    NETWORKMANAGER,
    ROUTED64,
    NetworkManager,
    dhcp4,
    follow_slaac_and_dhcpv6,
    ra_and_dhcp6,
    route_leases,
    route_the_advertised_prefix,
)

if not (shutil.which("nmcli") and os.path.exists(NETWORKMANAGER) and shutil.which("dbus-daemon")):
    pytest.skip("NetworkManager is not installed here (the Debian 13 suite has it)", allow_module_level=True)

ALL = [nic.address for nic in NICS]
DEVICES = [nic.guest for nic in NICS]


def keyfile(name: str, ipv4: str = "method=disabled", ipv6: str = "method=disabled") -> str:
    return (f"[connection]\nid={name}\ntype=ethernet\ninterface-name={name}\n\n"
            f"[ipv4]\n{ipv4}\n\n[ipv6]\n{ipv6}\n")


#: The guest's keyfiles: what the ifupdown lab's /etc/network/interfaces says, as NetworkManager says it.
CONNECTIONS = {
    "eth0": keyfile("eth0", "method=manual\naddress1=192.168.0.200/24,192.168.0.1"),
    "eth1": keyfile("eth1", "method=manual\naddress1=192.168.0.201/24"),
    "eth2": keyfile("eth2", "method=manual\naddress1=192.168.0.202/24"),
    "eth3": keyfile("eth3", ipv6=f"method=manual\naddress1=2001:db8:4309:2388::50/64,{DOM0_UPLINK6}"),
}


@pytest.fixture
def stack():
    started = []
    with Lab(guest_addresses=False) as lab:
        lab.route_dom0_statically()

        def start(connections=None, hook=False):
            dispatchers = {"90-domunet": dispatcher_wrapper(lab)} if hook else None
            started.append(NetworkManager(lab, connections or CONNECTIONS, dispatchers))
            started[-1].wait_activated(*DEVICES)
            return started[-1]

        lab.start_networkmanager = start
        try:
            yield lab
        finally:
            for networkmanager in started:
                networkmanager.stop()


def dispatcher_wrapper(lab):
    """The shipped dispatcher script, run unchanged; the wrapper points it at the lab's domunet,
    config and state (the dispatcher gives scripts an environment of its own)."""
    exports = " ".join(f"{key}='{value}'" for key, value in
                       {**lab.hook_env(), "DOMUNET_DEFAULTS": "/nonexistent"}.items())
    return f"#!/bin/sh\nexport {exports}\nexec sh '{shipped('hooks/NetworkManager/90-domunet')}' \"$@\"\n"


def test_at_boot_every_address_answers_and_teardown_leaves_networkmanagers_state(stack):
    stack.start_networkmanager()
    made_by_networkmanager = foreign(stack)
    result = stack.domunet("setup")
    assert result.returncode == 0, result.stderr
    assert stack.answers() == dict.fromkeys(ALL, True)
    assert foreign(stack) == made_by_networkmanager
    result = stack.domunet("teardown")
    assert result.returncode == 0, result.stderr
    assert owned(stack) == []
    assert foreign(stack) == made_by_networkmanager


def test_the_dispatcher_hook_follows_connection_down_up_and_reapply_without_watch(stack):
    """No watch: NetworkManager's dispatcher runs the shipped script after each activation, and
    `domunet changed` sets up. A connection taken down loses its rules; brought up, it has them back."""
    networkmanager = stack.start_networkmanager(hook=True)
    wait_until(lambda: len([line for line in owned(stack) if " lookup " in line]) >= 8,
               "domunet set up by the dispatcher hook at activation")
    wait_until(lambda: stack.domunet("plan").stdout == "", "the hooks' runs done: nothing left to plan")
    converged = owned(stack)
    assert stack.answers() == dict.fromkeys(ALL, True)

    networkmanager.nmcli("connection", "down", "eth1")
    wait_until(lambda: not any("192.168.0.201" in line or "eth1" in line for line in owned(stack)),
               "eth1's rules gone after its connection went down")
    networkmanager.nmcli("connection", "up", "eth1")
    wait_until(lambda: owned(stack) == converged, "eth1's rules back after its connection came up")
    networkmanager.nmcli("device", "reapply", "eth2")
    wait_until(lambda: owned(stack) == converged, "the state after reapply")
    assert stack.answers() == dict.fromkeys(ALL, True)


def test_with_watch_connection_down_and_up_are_followed(stack):
    """NetworkManager renumbers its own route metrics as connections come and go: what it made is
    compared after the last change, with domunet's teardown, which must leave all of it."""
    networkmanager = stack.start_networkmanager()
    watcher = Watcher(stack)
    try:
        assert stack.answers() == dict.fromkeys(ALL, True)
        converged = owned(stack)
        for name in ("eth1", "eth3", "eth0"):
            networkmanager.nmcli("connection", "down", name)
            networkmanager.nmcli("connection", "up", name)
            networkmanager.wait_activated(*DEVICES)
            watcher.until(lambda: owned(stack) == converged, f"domunet's state back after {name} went down and up")
        assert stack.answers() == dict.fromkeys(ALL, True)
    finally:
        watcher.stop()
    made_by_networkmanager = foreign(stack)
    assert stack.domunet("teardown").returncode == 0
    assert owned(stack) == []
    assert foreign(stack) == made_by_networkmanager


def test_a_dhcp_lease_granted_and_changed_is_followed_by_watch(stack):
    """NetworkManager's own DHCP client on eth1; the server later has another address for it."""
    route_leases(stack)
    mac = stack.run("guest", "cat", "/sys/class/net/eth1/address").stdout.strip()
    server = dhcp4(stack, LEASED[0], mac)
    try:
        stack.start_networkmanager({**CONNECTIONS, "eth1": keyfile("eth1", "method=auto")})
        watcher = Watcher(stack)
        try:
            watcher.until(lambda: f"from {LEASED[0]} " in rules(stack), "a rule for the first lease")
            assert stack.ping(LEASED[0])
            server.stop()
            server = dhcp4(stack, LEASED[1], mac)
            watcher.until(lambda: f"from {LEASED[1]} " in rules(stack) and LEASED[0] not in "".join(owned(stack)),
                          "the new lease's rule, nothing left of the old one", timeout=90)
            assert stack.ping(LEASED[1])
        finally:
            watcher.stop()
    finally:
        server.stop()


def test_slaac_and_dhcpv6_addresses_are_followed_by_watch(stack):
    """eth3 (`method=auto` beside its static address) takes a SLAAC address and a DHCPv6 one from
    dom0. Each answers from outside; after the server changed and the connection went down and up,
    the new lease has its rule and nothing is left for the old one."""
    route_the_advertised_prefix(stack)
    server = ra_and_dhcp6(stack, f"{ROUTED64}100")
    eth3 = keyfile("eth3", ipv6=f"method=auto\naddress1=2001:db8:4309:2388::50/64,{DOM0_UPLINK6}")
    try:
        networkmanager = stack.start_networkmanager({**CONNECTIONS, "eth3": eth3})
        watcher = Watcher(stack)
        try:
            server = follow_slaac_and_dhcpv6(stack, watcher.until, server, lambda: (
                networkmanager.nmcli("connection", "down", "eth3"), networkmanager.nmcli("connection", "up", "eth3")))
        finally:
            watcher.stop()
    finally:
        server.stop()
