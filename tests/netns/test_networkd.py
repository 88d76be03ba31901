"""A guest whose NICs systemd-networkd configures: real networkd in the guest namespace, its own
.network files, the drop-in domunet ships, and networkd's own reload and reconfigure."""

import configparser
import shutil

import pytest

from tests.labs import DOM0_UPLINK6, NICS, Lab, wait_until
from tests.netns.test_watch import Watcher
from tests.shipped import shipped
from tests.stacks import NETWORKD, Networkd

if shutil.which("dbus-daemon") is None or not shutil.which("networkctl") or not shutil.os.path.exists(NETWORKD):
    pytest.skip("systemd-networkd and dbus-daemon are needed", allow_module_level=True)

ALL = [nic.address for nic in NICS]
DROPIN = shipped("data/networkd/domunet.conf")



def network(name: str, *lines: str) -> str:
    """A .network file. No router advertisements come on a statically routed vif: networkd 252
    would otherwise wait 12 s for one before it calls the link configured."""
    return "\n".join(["[Match]", f"Name={name}", "[Network]", *lines, "IPv6AcceptRA=no"]) + "\n"


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


def owned(lab):
    """domunet's rules and routes, both families (its protocol names them)."""
    return sorted(line for line in lab.dump().splitlines() if " proto 213" in line or " proto domunet" in line)


def foreign(lab):
    """Everything else: what networkd and the kernel made."""
    return sorted(line for line in lab.dump().splitlines() if " proto 213" not in line)


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
