"""A guest whose NICs systemd-networkd configures: real networkd in the guest namespace, its own
.network files, the drop-in domunet ships, and networkd's own reload and reconfigure."""

import configparser
import os
import shutil
import subprocess

import pytest

from tests.labs import DOM0_UPLINK6, NICS, Lab, Watcher, foreign, owned, rules, wait_until
from tests.shipped import shipped
from tests.stacks import (
    LEASED,
    NETWORKD,
    ROUTED64,
    Networkd,
    dhcp4,
    follow_slaac_and_dhcpv6,
    ra_and_dhcp6,
    route_leases,
    route_the_advertised_prefix,
)

if not (shutil.which("dbus-daemon") and shutil.which("networkctl") and os.path.exists(NETWORKD)):
    pytest.skip("systemd-networkd and dbus-daemon are needed", allow_module_level=True)

ALL = [nic.address for nic in NICS]
DROPIN = shipped("data/networkd/domunet.conf")



def network(name: str, *lines: str, ra: bool = False) -> str:
    """A .network file. No router advertisements come on a statically routed vif: networkd 252
    would otherwise wait 12 s for one before it calls the link configured."""
    return "\n".join(["[Match]", f"Name={name}", "[Network]", *lines, f"IPv6AcceptRA={'yes' if ra else 'no'}"]) + "\n"


#: The guest's .network files: what the ifupdown lab's /etc/network/interfaces says, as networkd says it.
NETWORKS = {
    "10-eth0.network": network("eth0", "Address=192.168.0.200/24", "Gateway=192.168.0.1"),
    "10-eth1.network": network("eth1", "Address=192.168.0.201/24"),
    "10-eth2.network": network("eth2", "Address=192.168.0.202/24"),
    "10-eth3.network": network("eth3", "Address=2001:db8:4309:2388::50/64", f"Gateway={DOM0_UPLINK6}"),
}


def dropin(without: str | None = None) -> dict[str, str]:
    """The shipped drop-in, or the shipped drop-in less one of its settings."""
    lines = DROPIN.read_text().splitlines()
    return {"domunet.conf": "\n".join(line for line in lines if not (without and line.startswith(without))) + "\n"}


@pytest.fixture
def stack():
    """A lab whose guest has no addresses until networkd gives them; networkd started by the test."""
    started = []
    with Lab(guest_addresses=False) as lab:
        lab.route_dom0_statically()

        def start(networks=None, dropins=None):
            started.append(Networkd(lab, networks or NETWORKS, dropins))
            started[-1].wait_configured(*(nic.guest for nic in NICS))
            return started[-1]

        lab.start_networkd = start
        try:
            yield lab
        finally:
            for networkd in started:
                networkd.stop()


def test_the_shipped_dropin_is_what_networkd_reads():
    parsed = configparser.ConfigParser()
    parsed.read_string(DROPIN.read_text())
    assert dict(parsed["Network"]) == {"manageforeignroutingpolicyrules": "no", "manageforeignroutes": "no"}


def test_at_boot_every_address_answers_and_teardown_leaves_networkds_state(stack):
    stack.start_networkd(dropins=dropin())
    made_by_networkd = foreign(stack)
    result = stack.domunet("setup")
    assert result.returncode == 0, result.stderr
    assert stack.answers() == dict.fromkeys(ALL, True)
    assert foreign(stack) == made_by_networkd  # domunet added its own, removed nothing of networkd's
    result = stack.domunet("teardown")
    assert result.returncode == 0, result.stderr
    assert owned(stack) == []
    assert foreign(stack) == made_by_networkd


@pytest.mark.parametrize("command", [("reload",), ("reconfigure", "eth3"), ("reconfigure", "eth1")],
                         ids=lambda c: "-".join(c))
def test_networkd_reload_and_reconfigure_keep_domunets_rules_and_routes(stack, command):
    """Without watch: reload changes nothing; reconfigure drops and re-adds the link's addresses
    (the kernel then drops IPv4 routes that used them as source), never domunet's rules or its
    IPv6 routes. What the kernel dropped, the next setup puts back (watch does it at once)."""
    networkd = stack.start_networkd(dropins=dropin())
    assert stack.domunet("setup").returncode == 0
    before, made_by_networkd = owned(stack), foreign(stack)
    networkd.networkctl(*command)
    networkd.wait_configured(*(nic.guest for nic in NICS))
    rules = [line for line in owned(stack) if " lookup " in line]
    assert rules == [line for line in before if " lookup " in line]
    assert [line for line in owned(stack) if "eth3" in line] == [line for line in before if "eth3" in line]
    assert stack.domunet("setup").returncode == 0
    assert owned(stack) == before
    assert foreign(stack) == made_by_networkd
    assert stack.answers() == dict.fromkeys(ALL, True)


@pytest.mark.parametrize(("without", "lost"), [
    ("ManageForeignRoutingPolicyRules", "rules"),
    ("ManageForeignRoutes", "routes"),
    ("Manage", "rules"),  # no drop-in at all: both are lost
])
def test_without_the_dropin_networkd_deletes_what_domunet_made(stack, without, lost):
    """Why the drop-in ships: each of its two settings alone keeps one kind of object alive."""
    networkd = stack.start_networkd(dropins=dropin(without=without))
    assert stack.domunet("setup").returncode == 0
    rules = [line for line in owned(stack) if " lookup " in line]
    routes6 = [line for line in owned(stack) if "dev eth3" in line and " lookup " not in line]
    assert rules and routes6
    networkd.networkctl("reconfigure", "eth3")
    networkd.wait_configured(*(nic.guest for nic in NICS))
    gone = {
        "rules": lambda: not any(line in owned(stack) for line in rules),
        "routes": lambda: not any(line in owned(stack) for line in routes6),
    }
    wait_until(gone[lost], f"networkd deleted domunet's {lost}", timeout=15)
    if without == "ManageForeignRoutes":
        assert all(line in owned(stack) for line in rules)  # the rules setting alone kept the rules


def test_with_watch_reconfigure_and_reload_are_followed(stack):
    """domunet-watch (enabled by the guest package) puts back what the kernel dropped with the
    re-added addresses; networkd's own objects stay as networkd made them."""
    networkd = stack.start_networkd(dropins=dropin())
    watcher = Watcher(stack)
    try:
        assert stack.answers() == dict.fromkeys(ALL, True)
        converged, made_by_networkd = owned(stack), foreign(stack)
        for command in (("reconfigure", "eth0"), ("reconfigure", "eth1"), ("reconfigure", "eth3"), ("reload",)):
            networkd.networkctl(*command)
            networkd.wait_configured(*(nic.guest for nic in NICS))
            watcher.until(lambda: owned(stack) == converged, f"domunet's state back after networkctl {command}")
        assert foreign(stack) == made_by_networkd
        assert stack.answers() == dict.fromkeys(ALL, True)
    finally:
        watcher.stop()


# --- addresses that come and go: DHCPv4 from dnsmasq in dom0 -----------------------------------

def test_a_dhcp_lease_granted_renewed_and_changed_is_followed_by_watch(stack):
    """eth1 takes its address from DHCP. Each lease is routed by dom0 (as vif-domunet would from
    the vif's `ip`); watch gives the leased address its rule, keeps it through renewals with the
    same address and moves it when the lease changes: nothing stays for the address that is gone.

    The change comes as it does in the field: the server now has another address for this MAC, it
    refuses the renewal (DHCPNAK), the client starts over and is granted the new address. networkd
    misses the NAK to its unicast renewal (broadcast, its renewing socket is bound to the leased
    address) and takes it at rebinding (T2)."""
    route_leases(stack)
    mac = stack.run("guest", "cat", "/sys/class/net/eth1/address").stdout.strip()
    server = dhcp4(stack, LEASED[0], mac)
    networks = {**NETWORKS, "10-eth1.network": network("eth1", "DHCP=ipv4")}
    try:
        networkd = stack.start_networkd(networks, dropins=dropin())
        watcher = Watcher(stack)
        try:
            watcher.until(lambda: f"from {LEASED[0]} " in rules(stack), "a rule for the first lease")
            assert all(stack.ping(address) for address in ("192.168.0.200", "192.168.0.202", ALL[3], LEASED[0]))
            converged = owned(stack)

            networkd.networkctl("renew", "eth1")  # by hand, then at T1 by itself
            wait_until(lambda: server.log().count("DHCPACK(vif1.1)") >= 3, "two renewals acknowledged",
                       explain=lambda: f"dnsmasq:\n{server.log()[-3000:]}\nnetworkd:\n{networkd.log()[-2000:]}")
            watcher.settle()
            assert owned(stack) == converged

            server.stop()
            server = dhcp4(stack, LEASED[1], mac)
            watcher.until(lambda: f"from {LEASED[1]} " in rules(stack) and LEASED[0] not in "".join(owned(stack)),
                          "the new lease's rule, nothing left of the old one", timeout=60)
            assert stack.ping(LEASED[1])
            assert stack.answers(tries=1)["192.168.0.200"]
        finally:
            watcher.stop()
    finally:
        server.stop()


# --- SLAAC and DHCPv6: dom0 routes a /64 to the vif and advertises it ---------------------------

@pytest.mark.parametrize("written_by", ["networkd", "netplan"])
def test_slaac_and_dhcpv6_addresses_are_followed_by_watch(stack, written_by):
    """eth3 keeps its static address and takes two more from dom0: one by SLAAC, one by DHCPv6.
    networkd merges the static gateway and the advertised router into one multipath default.
    Each address answers from outside; a new DHCPv6 lease moves its rule, none stays behind.
    The .network files are the admin's, or netplan's rendering of `accept-ra: true, dhcp6: true`."""
    if written_by == "netplan" and not shutil.which("netplan"):
        pytest.skip("netplan.io is not installed")
    route_the_advertised_prefix(stack)
    server = ra_and_dhcp6(stack, f"{ROUTED64}100")
    networks = {**NETWORKS, "10-eth3.network": network(
        "eth3", "Address=2001:db8:4309:2388::50/64", f"Gateway={DOM0_UPLINK6}", ra=True)}
    if written_by == "netplan":
        networks = netplan_generate(stack, eth1="addresses: [192.168.0.201/24]", ra="true")
    try:
        networkd = stack.start_networkd(networks, dropins=dropin())
        watcher = Watcher(stack)
        try:
            server = follow_slaac_and_dhcpv6(stack, watcher.until, server,
                                             lambda: networkd.networkctl("reconfigure", "eth3"))
        finally:
            watcher.stop()
    finally:
        server.stop()


# --- the stacks' own hook points, for guests without watch ----------------------------------------

HOOKS = {
    "networkd-dispatcher": (shipped("hooks/networkd-dispatcher/domunet"), (), {"IFACE": "eth1", "STATE": "routable"}),
    "NetworkManager": (shipped("hooks/NetworkManager/90-domunet"), ("eth1", "up"), {}),
}


@pytest.mark.parametrize("stack_hook", sorted(HOOKS))
def test_the_dispatcher_hooks_set_up_the_guest_and_do_nothing_while_watch_runs(stack, stack_hook):
    """As the dispatcher runs it (its arguments and environment); domunet found through
    /etc/default/domunet's DOMUNET, as on a guest with domunet installed elsewhere."""
    hook, args, env = HOOKS[stack_hook]
    stack.start_networkd(dropins=dropin())
    verbose = stack.workdir / "domunet-v"
    verbose.write_text(f'#!/bin/sh\nexec "{stack.bin}/domunet" -v "$@"\n')
    verbose.chmod(0o755)
    defaults = stack.workdir / "default-domunet"
    defaults.write_text(f"DOMUNET={verbose}\n")
    env = {**stack.hook_env(path="/usr/sbin:/usr/bin:/sbin:/bin"), "DOMUNET_DEFAULTS": str(defaults), **env}

    result = stack.run("guest", "sh", str(hook), *args, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "setup:" in result.stderr and owned(stack), result.stderr
    assert stack.answers() == dict.fromkeys(ALL, True)

    converged = owned(stack)
    watcher = Watcher(stack)
    try:
        watcher.settle()
        result = stack.run("guest", "sh", str(hook), *args, env=env, check=False)
        assert result.returncode == 0
        assert "domunet watch runs and follows it: nothing to do" in result.stderr, result.stderr
        assert owned(stack) == converged
    finally:
        watcher.stop()


@pytest.mark.skipif(not shutil.which("networkd-dispatcher"), reason="networkd-dispatcher is not installed here "
                    "(the Debian 13 suite has it)")
def test_the_real_networkd_dispatcher_runs_the_hook_at_start_and_after_reconfigure(stack):
    """networkd-dispatcher itself, on networkd's bus: at its start (startup triggers, as at boot)
    and after `networkctl reconfigure eth1` it runs the shipped hook from its state folders, and
    the guest is set up and converged again without watch."""
    networkd = stack.start_networkd(dropins=dropin())
    scripts = stack.workdir / "networkd-dispatcher"
    exports = " ".join(f"{key}='{value}'" for key, value in
                       {**stack.hook_env(), "DOMUNET_DEFAULTS": "/nonexistent"}.items())
    for state in ("routable", "degraded", "configured", "no-carrier", "off"):
        (scripts / f"{state}.d").mkdir(parents=True)
        wrapper = scripts / f"{state}.d" / "domunet"
        wrapper.write_text(f"#!/bin/sh\nexport {exports}\nexec sh '{shipped('hooks/networkd-dispatcher/domunet')}'\n")
        wrapper.chmod(0o755)
    dispatcher = networkd.spawn("networkd-dispatcher", "-v", "--run-startup-triggers", "--script-dir", str(scripts))
    log = stack.workdir / "networkd-dispatcher.log"
    wait_until(lambda: len([line for line in owned(stack) if " lookup " in line]) >= 8,
               f"set up by the hook at networkd-dispatcher's start\n{log.read_text()[-2000:]}")
    wait_until(lambda: stack.domunet("plan").stdout == "", "the hook's runs done: nothing left to plan")
    converged = owned(stack)
    assert stack.answers() == dict.fromkeys(ALL, True)

    seen = log.read_text().count("eth1")
    networkd.networkctl("reconfigure", "eth1")
    wait_until(lambda: log.read_text().count("eth1") > seen, "networkd-dispatcher saw eth1 change")
    networkd.wait_configured(*(nic.guest for nic in NICS))
    wait_until(lambda: owned(stack) == converged, f"converged again after reconfigure\n{log.read_text()[-2000:]}")
    assert dispatcher.poll() is None, log.read_text()
    assert stack.answers() == dict.fromkeys(ALL, True)


@pytest.mark.parametrize(("action", "called"), [
    ("hostname", False), ("pre-up", False), ("connectivity-change", False), ("vpn-up", False),
    ("up", True), ("down", True), ("dhcp4-change", True), ("dhcp6-change", True), ("reapply", True),
])
def test_the_networkmanager_hook_runs_domunet_only_for_actions_that_change_addresses(lab, action, called):
    marker = lab.workdir / "called"
    recorder = lab.workdir / "record"
    recorder.write_text(f'#!/bin/sh\necho "$@" > "{marker}"\n')
    recorder.chmod(0o755)
    result = lab.run("guest", "sh", str(shipped("hooks/NetworkManager/90-domunet")), "eth1", action,
                     env={"PATH": "/usr/bin:/bin", "DOMUNET": str(recorder), "DOMUNET_DEFAULTS": "/nonexistent"},
                     check=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert (marker.read_text() if marker.exists() else None) == (f"changed -- eth1 {action}\n" if called else None)


# --- netplan rendering to networkd ------------------------------------------------------------

NETPLAN = """\
network:
  version: 2
  renderer: networkd
  ethernets:
    eth0:
      addresses: [192.168.0.200/24]
      routes: [{to: default, via: 192.168.0.1}]
      accept-ra: false
    eth1:
      %(eth1)s
      accept-ra: false
    eth2:
      addresses: [%(eth2)s]
      accept-ra: false
    eth3:
      addresses: ["2001:db8:4309:2388::50/64"]
      routes: [{to: default, via: "%(gateway6)s"}]
      accept-ra: %(ra)s
      dhcp6: %(ra)s
"""


def netplan_generate(stack, **values):
    """`netplan generate` of the guest's YAML into a root of its own: the .network files it renders."""
    root = stack.workdir / "netplan"
    (root / "etc" / "netplan").mkdir(parents=True, exist_ok=True)
    yaml = root / "etc" / "netplan" / "50-guest.yaml"
    defaults = {"eth1": "dhcp4: true", "eth2": "192.168.0.202/24", "gateway6": DOM0_UPLINK6, "ra": "false"}
    yaml.write_text(NETPLAN % {**defaults, **values})
    yaml.chmod(0o600)
    shutil.rmtree(root / "run", ignore_errors=True)
    result = subprocess.run(["netplan", "generate", "--root-dir", str(root)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return {path.name: path.read_text() for path in (root / "run" / "systemd" / "network").glob("*.network")}


@pytest.mark.skipif(not shutil.which("netplan"), reason="netplan.io is not installed")
def test_netplan_rendering_to_networkd_with_a_dhcp_nic_and_netplan_apply(stack):
    """What netplan apply does for networkd: render, restart networkd, reload, reconfigure the
    links whose files changed. domunet-watch follows; networkd's objects stay networkd's."""
    stack.run("dom0", "ip", "route", "add", f"{LEASED[0]}/32", "dev", "vif1.1", "src", "192.168.0.100")
    stack.run("dom0", "ip", "route", "add", "192.168.0.203/32", "dev", "vif1.2", "src", "192.168.0.100")
    mac = stack.run("guest", "cat", "/sys/class/net/eth1/address").stdout.strip()
    server = dhcp4(stack, LEASED[0], mac)
    networkd = watcher = None
    try:
        networkd = stack.start_networkd(netplan_generate(stack), dropins=dropin())
        watcher = Watcher(stack)
        addresses = ["192.168.0.200", LEASED[0], "192.168.0.202", ALL[3]]
        watcher.until(lambda: f"from {LEASED[0]} " in rules(stack), "a rule for the leased address")
        assert all(stack.ping(address) for address in addresses)

        rendered = netplan_generate(stack, eth2="192.168.0.202/24, 192.168.0.203/24")
        networkd.stop()
        networkd = stack.start_networkd(rendered, dropins=dropin())
        networkd.networkctl("reload")
        networkd.networkctl("reconfigure", "eth2")
        networkd.wait_configured(*(nic.guest for nic in NICS))
        watcher.until(lambda: "from 192.168.0.203 " in rules(stack) and f"from {LEASED[0]} " in rules(stack),
                      "rules for the added address and the lease")
        assert all(stack.ping(address) for address in [*addresses, "192.168.0.203"])
    finally:
        if watcher:
            watcher.stop()
        server.stop()
