"""A guest whose NICs ifupdown configures with leases: ifupdown's dhclient takes eth1's address
from dom0's DHCP server, and eth3 takes a SLAAC and a DHCPv6 address beside its static one.
domunet follows each lease through domunet watch, or without watch through the dhclient exit
hook the guest package ships."""

import shutil

import pytest

from tests.labs import Lab, Watcher, wait_until
from tests.shipped import shipped
from tests.stacks import (
    INTERFACES,
    LEASED,
    ROUTED64,
    dhcp4,
    dynamic6,
    ra_and_dhcp6,
    route_leases,
    route_the_advertised_prefix,
)

if not shutil.which("dhclient"):
    pytest.skip("isc-dhcp-client (ifupdown's DHCP client) is needed", allow_module_level=True)

HOOK = shipped("hooks/ifupdown/domunet")
DHCLIENT_HOOK = shipped("hooks/dhclient/domunet")
STATIC = ("192.168.0.200", "192.168.0.202")

#: A guest's dhclient.conf, less what would write the machine's own files (name servers, host name).
DHCLIENT_CONF = "request subnet-mask, broadcast-address, routers, interface-mtu, dhcp6.sntp-servers;\n"

#: The ifupdown lab's interfaces, eth1 from DHCP, eth3 from SLAAC and DHCPv6 only: dhclient -6
#: flushes a NIC's permanent global addresses when it starts (dhclient-script, PREINIT6), so a
#: static address beside `inet6 dhcp` does not stay. Its gateway is dom0's /128, from the guest's
#: domunet.conf (on Xen, from what dom0 publishes).
DYNAMIC = INTERFACES[:INTERFACES.index("auto eth3")].replace(
    "iface eth1 inet static\n    address 192.168.0.201/24\n", "iface eth1 inet dhcp\n")
DYNAMIC += "auto eth3\niface eth3 inet6 dhcp\n    autoconf 1\n"


@pytest.fixture
def leases(request):
    """The ifupdown lab with dhclient, the dhclient hook installed as the package installs it,
    and dom0's DHCPv4 server for eth1 and RA and DHCPv6 server for eth3. dom0 routes statically,
    or (param "vif-domunet") as vif-domunet does, its anti-spoofing guard included, from each
    vif's `ip`: the addresses the server may lease."""
    with Lab(guest_addresses=False) as lab:
        if getattr(request, "param", "static") == "vif-domunet":
            lab.route_dom0_with_vif_domunet({"vif1.1": " ".join(LEASED), "vif1.3": f"{ROUTED64}/64"})
        else:
            lab.route_dom0_statically()
            route_leases(lab)
        route_the_advertised_prefix(lab)
        lab.install_ifupdown(DYNAMIC, HOOK, dhclient=DHCLIENT_CONF)
        shutil.copy(DHCLIENT_HOOK, lab.etc / "dhcp" / "dhclient-exit-hooks.d" / "domunet")
        # dhclient runs its hooks with its own environment: /etc/default/domunet points at the lab's
        wrapper = lab.workdir / "domunet-for-dhclient"
        env = lab.hook_env()
        exports = " ".join(f"{key}='{value}'" for key, value in env.items())
        log = lab.workdir / "dhclient-hook.log"
        wrapper.write_text(f'#!/bin/sh\nexport {exports}\nexec "{lab.bin}/domunet" -v "$@" 2>>"{log}"\n')
        wrapper.chmod(0o755)
        (lab.etc / "default").mkdir()
        (lab.etc / "default" / "domunet").write_text(f"DOMUNET={wrapper}\n")
        lab.mac = lab.run("guest", "cat", "/sys/class/net/eth1/address").stdout.strip()
        servers = [ra_and_dhcp6(lab, f"{ROUTED64}100")]  # eth3's `inet6 dhcp` waits for one
        lab.serve = lambda server: servers.append(server) or server
        lab.server6 = servers[0]
        try:
            yield lab
        finally:
            lab.ifupdown("ifdown", "-a")
            for server in servers:
                server.stop()


def owned(lab, family=None):
    """domunet's rules and routes (its protocol names them), of both families or one ("-4")."""
    dump = lab.dump() if family is None else "".join(
        lab.run("guest", "ip", "-N", family, *what).stdout for what in (("rule",), ("route", "show", "table", "all")))
    return sorted(line for line in dump.splitlines() if " proto 213" in line)


def answer(lab, *addresses):
    """Every address answers the outside host; else which did not, with what each hop knows of it."""
    silent = [address for address in addresses if not lab.ping(address)]
    assert not silent, "silent: " + ", ".join(silent) + "\n" + "\n".join(lab.trace(a) for a in silent)
    return True


def leased6(lab):
    """eth3's DHCPv6 addresses (dhclient adds them as /128)."""
    shown = lab.run("guest", "ip", "-6", "-o", "addr", "show", "dev", "eth3", "scope", "global").stdout
    return sorted(line.split()[3].split("/")[0] for line in shown.splitlines() if "/128 " in line)


def rules_for_leases(lab):
    """The single addresses of ROUTED64 that domunet's IPv6 rules select (`from ADDRESS`, no prefix length)."""
    words = (line.split() for line in rules(lab, "-6").splitlines())
    return sorted(w[2] for w in words if w[1:2] == ["from"] and w[2].startswith(ROUTED64) and "/" not in w[2])


def rules(lab, family="-4"):
    return lab.run("guest", "ip", family, "rule").stdout


@pytest.mark.parametrize(("leases", "watch"), [("static", True), ("static", False), ("vif-domunet", True)],
                         ids=["watch", "dhclient hook", "watch, vif-domunet's guard in dom0"], indirect=["leases"])
def test_a_dhcp_lease_granted_renewed_and_changed_is_followed(leases, watch):
    """ifup takes the lease and its hook sets the guest up. Renewals with the same address (T1 is
    4 s) change nothing. When dom0's server has another address for this MAC it refuses the
    renewal, dhclient starts over and binds the new address: watch, or without watch the
    dhclient hook, gives it its rule and leaves nothing for the old one. ifdown -a removes all.
    Behind vif-domunet's guard, the client's first broadcasts (from 0.0.0.0) reach the server."""
    lab = leases
    server = lab.serve(dhcp4(lab, LEASED[0], lab.mac))
    result = lab.ifupdown("ifup", "-a")
    assert result.returncode == 0, result.stderr
    assert f"from {LEASED[0]} " in rules(lab)  # ifupdown's hook, after dhclient bound the lease
    assert answer(lab, *STATIC, LEASED[0])
    watcher = Watcher(lab) if watch else None
    try:
        if watcher:
            watcher.settle()
        converged, hooked = owned(lab, "-4"), hook_log(lab).count("domunet: eth1: ")  # eth3: leases of its own
        renewals = server.log().count("DHCPACK(vif1.1)")
        # Not every renewal comes at T1: dhclient unicasts it through an unbound socket, so on a guest
        # whose NICs share a subnet it leaves by main's first route (eth0, from .200) and dom0's server,
        # which listens on vif1.1 only, never sees it (issue 41: counted on vif1.0). dhclient tries again
        # after its initial-interval (10 s), broadcast on eth1 then (T2 has passed): two renewals take
        # about 2 x (4 + 10) s, so a deadline of 30 s failed on busy machines. Either way the lease
        # is renewed with the same address, which is what this test is about.
        wait_until(lambda: server.log().count("DHCPACK(vif1.1)") >= renewals + 2, "two renewals", timeout=90,
                   explain=lambda: renewal_evidence(lab, server, watcher))
        if watcher:
            watcher.settle()
        assert owned(lab, "-4") == converged
        assert hook_log(lab).count("domunet: eth1: ") == hooked  # the same address: the hook ran nothing

        server.stop()
        lab.serve(dhcp4(lab, LEASED[1], lab.mac))
        changed = lambda: f"from {LEASED[1]} " in rules(lab) and LEASED[0] not in "".join(owned(lab))  # noqa: E731
        what = "the new lease's rule, nothing left of the old one"
        # the refusal comes with the first renewal the new server sees (above: up to T1 + 10 s)
        watcher.until(changed, what, timeout=90) if watcher else wait_until(changed, what, timeout=90)
        assert answer(lab, LEASED[1], *STATIC)
        if watcher:  # the dhclient hook ran too, and left it to watch
            assert "domunet watch runs and follows it: nothing to do" in hook_log(lab)
    finally:
        if watcher:
            watcher.stop()
    assert lab.ifupdown("ifdown", "-a").returncode == 0
    assert owned(lab) == []


def test_slaac_and_dhcpv6_addresses_on_an_ifupdown_nic_are_followed_by_watch(leases):
    """eth3 (`inet6 dhcp` with autoconf) takes two addresses from dom0: one by SLAAC when the RA
    comes, one from dhclient -6. Each answers from outside; a new DHCPv6 lease (eth3 down and up)
    moves its rule and leaves nothing for the old one."""
    lab = leases
    lab.serve(dhcp4(lab, LEASED[0], lab.mac))
    server = lab.server6
    result = lab.ifupdown("ifup", "-a")
    assert result.returncode == 0, result.stderr
    watcher = Watcher(lab)
    try:
        watcher.until(lambda: all(dynamic6(lab)), "a SLAAC and a DHCPv6 address on eth3", timeout=60)
        slaac, leased = dynamic6(lab)
        watcher.until(lambda: f"from {ROUTED64}/64 " in rules(lab, "-6") and f"from {leased} " in rules(lab, "-6"),
                      "rules for the advertised prefix and the leased address")
        assert answer(lab, slaac, leased, *STATIC)

        server.stop()
        lab.serve(ra_and_dhcp6(lab, f"{ROUTED64}200"))
        assert lab.ifupdown("ifdown", "eth3").returncode == 0
        watcher.until(lambda: ROUTED64 not in "".join(owned(lab)), "nothing left for eth3's addresses")
        assert lab.ifupdown("ifup", "eth3").returncode == 0
        # dhclient confirms its old lease (on-link) and is granted one from the new range
        watcher.until(lambda: any(a.startswith(f"{ROUTED64}2") for a in leased6(lab)), "a lease from the new range")
        watcher.until(lambda: rules_for_leases(lab) == leased6(lab), "a rule for each lease eth3 holds, no other")
        assert answer(lab, *leased6(lab), dynamic6(lab)[0], *STATIC)
    finally:
        watcher.stop()


def renewal_evidence(lab, server, watcher):
    """Why renewals did not come (issue 41): the server's log, the client's leases and processes,
    the guest's rules and eth1, dom0's guard counters, watch's last lines."""
    leases = lab.workdir / "guest-var-lib-dhcp"
    parts = [("dnsmasq", server.log()[-3000:]),
             ("dhclient leases", "".join(p.read_text(errors="replace")[-1500:] for p in leases.glob("*leases*"))),
             ("dhclient processes", lab.run("guest", "sh", "-c", "ps -o pid,etime,args -C dhclient || true").stdout),
             ("guest rules", rules(lab)), ("guest eth1", lab.run("guest", "ip", "-4", "addr", "show", "eth1").stdout),
             ("dom0 guard", lab.run("dom0", "nft", "list", "ruleset", check=False).stdout[-3000:]),
             ("watch", "\n".join(watcher.lines[-20:]) if watcher else "(no watch)")]
    return "\n".join(f"--- {name}:\n{text.rstrip()}" for name, text in parts)


def hook_log(lab):
    """What `domunet changed`, run by the dhclient hook, said."""
    log = lab.workdir / "dhclient-hook.log"
    return log.read_text(errors="replace") if log.exists() else ""
