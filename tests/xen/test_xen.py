"""domunet on real Xen: xl, netback and netfront, the real xenstored, libxl's hotplug calls
to vif-domunet (through the dom0 service), and two guests booted at the same time (by default a
Debian 13 and a Debian 12 guest on a Debian 13 dom0), each with systemd and ifupdown, four routed
vifs, no domunet config.

The tests share one lab. A test about a guest runs against each guest (`each_guest`); each
test gets the guests it needs running (the fixtures create a guest again after a test that
destroyed it), so they pass in any order."""

import json
import re

from tests.xen import xenlab

#: each guest's addresses, by its Xen domain name (files/guest*/etc/network/interfaces)
ADDRESSES = {
    "guest": {"enX0": "192.168.0.200", "enX1": "192.168.0.201", "enX2": "192.168.0.202",
              "enX3": "2001:db8:4309:2388::50"},
    "guest2": {"enX0": "192.168.0.210", "enX1": "192.168.0.211", "enX2": "192.168.0.212",
               "enX3": "2001:db8:4309:2388::60"},
}
#: the address of the vif a test hot-plugs into each guest (its enX4 stanza), and its MACs' prefix
HOTPLUGGED = {"guest": "192.168.0.204", "guest2": "192.168.0.214"}
MACS = {"guest": "00:16:3e:00:00", "guest2": "00:16:3e:00:01"}

#: what dom0's DHCP server leases each guest on the vif a test plugs in with devid 5 (its enX5
#: stanza takes DHCP): the first lease, then the address the server changes it to
LEASES = {"guest": ("192.168.0.205", "192.168.0.206"), "guest2": ("192.168.0.215", "192.168.0.216")}

TCP_ECHO = """import socket, sys
with socket.create_connection((sys.argv[1], 7007), timeout=5) as s:
    s.sendall(b"domunet"); assert s.recv(64) == b"domunet"
"""


def answers(dom0, address, timeout=60):
    """Ping from the outside host until it answers (proxied neighbours answer late)."""
    return dom0.until(f"ip netns exec out ping -n -q -c 1 -W 2 {address}", timeout=timeout)["rc"] == 0


def tcp_works(dom0, address):
    return dom0.run("ip", "netns", "exec", "out", "python3", "-c", TCP_ECHO, address, check=False)["rc"] == 0


def domunet_lines(guest):
    rules = guest.sh("ip rule; ip -6 rule")["stdout"]
    routes = guest.sh("ip route show table all; ip -6 route show table all")["stdout"]
    return [line for line in (rules + routes).splitlines() if "domunet" in line]


def test_the_boot_unit_ran_and_every_address_answers_from_outside(dom0, each_guest):
    state = each_guest.until("systemctl is-active domunet.service", timeout=120)
    assert state["stdout"].strip() == "active", state
    assert each_guest.run("systemctl", "is-failed", "domunet.service", check=False)["stdout"].strip() != "failed"
    for address in ADDRESSES[each_guest.name].values():
        assert answers(dom0, address), f"{each_guest.name}: {address} does not answer ping from outside"
        assert tcp_works(dom0, address), f"{each_guest.name}: {address} does not answer TCP from outside"


def test_watch_runs_in_the_guest_and_puts_back_a_deleted_rule(dom0, each_guest):
    guest, address = each_guest, ADDRESSES[each_guest.name]["enX1"]
    state = guest.until("systemctl is-active domunet-watch.service", timeout=120)
    assert state["stdout"].strip() == "active", guest.run("journalctl", "-u", "domunet-watch", check=False)
    line = next(line for line in guest.run("ip", "rule")["stdout"].splitlines() if f"from {address} " in line)
    guest.sh(f"ip rule del priority {line.split(':')[0]} from {address}")
    back = guest.until(f"ip rule | grep -q 'from {address} '", timeout=10)
    assert back["rc"] == 0, guest.run("journalctl", "-u", "domunet-watch", check=False)
    assert answers(dom0, address)


def test_dom0_carries_no_guest_units_and_keeps_vif_domunets_routes(dom0, guest, guest2):
    """On real Xen the guest's udev rule and units, pulled into dom0 by a dependency, ran the
    guest engine there, which deleted vif-domunet's routes seconds after they were made."""
    assert dom0.run("dpkg-query", "-W", "-f=${Status}", "domunet", check=False)["stdout"] != "install ok installed"
    assert dom0.run("systemctl", "cat", "domunet.service", check=False)["rc"] != 0
    assert dom0.run("ls", "/lib/udev/rules.d/90-domunet.rules", check=False)["rc"] != 0
    routes = dom0.sh("ip route show proto domunet-dom0; ip -6 route show proto domunet-dom0")["stdout"]
    for address in [*ADDRESSES["guest"].values(), *ADDRESSES["guest2"].values()]:
        assert address in routes, routes
    log = dom0.run("cat", "/var/log/xen/xen-hotplug.log")["stdout"]
    assert "rror" not in log and "Traceback" not in log, log


def test_the_guest_took_its_ipv6_gateway_from_the_real_xenstore(each_guest):
    guest = each_guest
    assert guest.run("ls", "/etc/domunet.conf", check=False)["rc"] != 0 or not [
        line for line in guest.run("cat", "/etc/domunet.conf")["stdout"].splitlines()
        if line.strip() and not line.lstrip().startswith("#") and line.strip() != "[interfaces]"]
    rows = json.loads(guest.run("domunet", "status", "--json")["stdout"])
    eth3 = next(row for row in rows if row["interface"] == "enX3")
    assert eth3["gateway6"] == "2001:db8:4309:2388::2"
    assert eth3["gateway6_source"] == "xenstore"


def dropped(dom0):
    """Packets dom0's anti-spoofing has dropped so far."""
    chain = dom0.run("nft", "list", "chain", "inet", "domunet", "antispoof")["stdout"]
    return int(chain.split("counter packets ")[-1].split()[0])


def test_dom0_drops_a_source_the_guest_was_not_given(dom0, each_guest):
    dom0.sh("ip netns exec rtr nft 'add table inet watch'; "
            "ip netns exec rtr nft 'add chain inet watch in { type filter hook prerouting priority 0; }'; "
            "ip netns exec rtr nft 'flush chain inet watch in'; "
            "ip netns exec rtr nft 'add rule inet watch in ip saddr 192.168.0.250 counter'")
    before = dropped(dom0)
    each_guest.sh("ip addr add 192.168.0.250/32 dev enX1; ping -n -c 3 -i 0.3 -W 1 -I 192.168.0.250 203.0.113.10; "
                  "ip addr del 192.168.0.250/32 dev enX1", check=False)
    at_router = dom0.run("ip", "netns", "exec", "rtr", "nft", "list", "table", "inet", "watch")["stdout"]
    assert dropped(dom0) >= before + 3
    assert "counter packets 0 " in at_router, at_router


def _devid(dom0, guest, mac):
    found = dom0.sh(f"xl network-list {guest.name} | awk '$2 == \"{mac}\" || $3 ~ /{mac}/ {{print $1}}'")
    devid = found["stdout"].split()
    assert devid, dom0.run("xl", "network-list", guest.name)["stdout"]
    return devid[0]


def _attach_and_detach(dom0, guest, mac):
    """xl network-attach a vif with the guest's hot-plug address (its enX4 stanza configures it):
    it answers from outside; then detach it."""
    address = HOTPLUGGED[guest.name]
    dom0.run("xl", "network-attach", guest.name, f"mac={mac}", "script=vif-domunet", "ip=" + address)
    assert answers(dom0, address, timeout=90), "the hot-plugged vif's address does not answer"
    assert [line for line in domunet_lines(guest) if "oif enX4" in line]
    dom0.run("xl", "network-detach", guest.name, _devid(dom0, guest, mac))
    gone = guest.until(f"! ip rule | grep -q 'from {address} '", timeout=60)
    assert gone["rc"] == 0, domunet_lines(guest)


def _served(dom0, address):
    """How often the dom0 service's journal says it brought this address online."""
    journal = dom0.run("journalctl", "-u", "domunet-dom0.service", "--no-pager", "-o", "cat")["stdout"]
    return journal.count(f"online: {address}/32 routed")


def test_the_dom0_service_serves_a_hot_plugged_vif_its_removal_removes_its_rules_and_status_sees_every_vif(
        dom0, each_guest):
    guest, address = each_guest, HOTPLUGGED[each_guest.name]
    assert dom0.run("systemctl", "is-active", "domunet-dom0.service", check=False)["stdout"].strip() == "active"
    shown = json.loads(dom0.run("domunet", "dom0", "status", "--json")["stdout"])
    assert shown["service"] is True
    assert set(f"{a}/{128 if ':' in a else 32}" for a in ADDRESSES[guest.name].values()) <= {
        g for row in shown["vifs"] for g in row["guest"]}
    assert all(row["kernel_matches"] for row in shown["vifs"]), shown
    before = _served(dom0, address)
    _attach_and_detach(dom0, guest, f"{MACS[guest.name]}:15")
    assert _served(dom0, address) == before + 1
    gone = guest.until("! ip rule | grep -q enX4 && ! ip -6 rule | grep -q enX4", timeout=60)
    assert gone["rc"] == 0, domunet_lines(guest)
    assert not [line for line in domunet_lines(guest) if "enX4" in line or address in line]


def test_with_the_dom0_service_stopped_a_hot_plugged_vif_still_comes_online(dom0, each_guest):
    dom0.run("systemctl", "stop", "domunet-dom0.service")
    try:
        before = _served(dom0, HOTPLUGGED[each_guest.name])
        _attach_and_detach(dom0, each_guest, f"{MACS[each_guest.name]}:16")
        assert _served(dom0, HOTPLUGGED[each_guest.name]) == before  # the in-process way did it
    finally:
        dom0.run("systemctl", "start", "domunet-dom0.service")
    assert dom0.run("systemctl", "is-active", "domunet-dom0.service", check=False)["stdout"].strip() == "active"


def test_after_xl_reboot_both_guests_converge_again(dom0, guest, guest2):
    """Both guests rebooted at the same time (under TCG a reboot is minutes; at the same time,
    dom0's service also gets their vifs' hotplug calls together)."""
    guests = (guest, guest2)
    before = {g.name: sorted(domunet_lines(g)) for g in guests}
    domids = {g.name: dom0.run("xl", "domid", g.name)["stdout"].strip() for g in guests}
    for g in guests:
        dom0.run("xl", "reboot", g.name)
    for g in guests:
        rebooted = dom0.until(f'[ "$(xl domid {g.name} 2>/dev/null)" != "" ] && '
                              f'[ "$(xl domid {g.name})" != {domids[g.name]} ]', timeout=180)
        assert rebooted["rc"] == 0, f"{g.name} did not come back as a new domain"
    for g in guests:
        xenlab.wait_booted(g.role)
        assert g.until("systemctl is-active domunet.service", timeout=120)["rc"] == 0, g.name
    for g in guests:
        for address in ADDRESSES[g.name].values():
            assert answers(dom0, address, timeout=90), f"{g.name}: {address} does not answer after the reboot"
        assert sorted(domunet_lines(g)) == before[g.name], g.name


def _elements(dom0):
    """The anti-spoofing table's (vif, address) elements."""
    nft = dom0.run("nft", "list", "table", "inet", "domunet", check=False)["stdout"]
    return set(re.findall(r'"(vif[0-9.]+)" \. ([0-9a-f:.]+)', nft))


def _of_domain(dom0, domid):
    """What dom0 holds for one domain: its vifs' routes, records, anti-spoofing elements."""
    routes = dom0.sh("ip route show proto domunet-dom0; ip -6 route show proto domunet-dom0")["stdout"]
    records = dom0.sh(f"ls /run/domunet/dom0/ | grep '^vif-xen-{domid}-' || true")["stdout"]
    return {"routes": [line for line in routes.splitlines() if f" dev vif{domid}." in line],
            "records": records.split(), "nft": sorted(e for e in _elements(dom0) if e[0].startswith(f"vif{domid}."))}


def _dom0_side(dom0, addresses):
    """dom0's routes, proxy entries and anti-spoofing elements for these addresses."""
    def first_is_one(text):
        return sorted({line.strip() for line in text.splitlines()
                       if line.split()[:1] and line.split()[0].split("/")[0] in addresses})

    return {"routes": first_is_one(dom0.sh("ip route show table all; ip -6 route show table all")["stdout"]),
            "proxies": first_is_one(dom0.sh("ip neigh show proxy; ip -6 neigh show proxy")["stdout"]),
            "nft": sorted(f"{vif} . {address}" for vif, address in _elements(dom0) if address in addresses)}


def test_two_guests_booted_together_have_all_eight_vifs_connected_and_every_address_answers(dom0, guest, guest2):
    for name in ("guest", "guest2"):
        domid = dom0.run("xl", "domid", name)["stdout"].strip()
        for devid in range(4):
            status = dom0.run("xenstore-read", f"/local/domain/0/backend/vif/{domid}/{devid}/hotplug-status")
            assert status["stdout"].strip() == "connected", (name, devid)
    for machine in (guest, guest2):
        assert machine.until("systemctl is-active domunet.service", timeout=120)["rc"] == 0
    for address in [*ADDRESSES["guest"].values(), *ADDRESSES["guest2"].values()]:
        assert answers(dom0, address), f"{address} does not answer ping from outside"
        assert tcp_works(dom0, address), f"{address} does not answer TCP from outside"


def test_a_guest_cannot_take_the_other_guests_address(dom0, each_guest, other_guest):
    """xl network-attach of a vif with the other guest's address: libxl hears hotplug-status
    error, dom0 changes nothing, and the other guest keeps answering on that address. libxl
    keeps the refused vif in the guest's configuration (a restore or reboot would try it again):
    the admin's `xl network-detach` of it changes nothing either."""
    taken = ADDRESSES[other_guest.name]["enX1"]
    everything = list(ADDRESSES["guest"].values()) + list(ADDRESSES["guest2"].values())
    before = _dom0_side(dom0, everything)
    records = dom0.sh("ls /run/domunet/dom0/")["stdout"]
    mac = f"{MACS[each_guest.name]}:17"
    attach = dom0.run("xl", "network-attach", each_guest.name, f"mac={mac}", "script=vif-domunet",
                      "ip=" + taken, check=False, timeout=180)
    assert attach["rc"] != 0, attach
    said = attach["stdout"] + attach["stderr"]
    assert f"guest address {taken}/32 overlaps" in said and "routed to vif" in said, said
    devid = _devid(dom0, each_guest, mac)  # Xen's behaviour: the refused vif stays until detached
    try:
        domid = dom0.run("xl", "domid", each_guest.name)["stdout"].strip()
        backend = f"/local/domain/0/backend/vif/{domid}/{devid}"
        assert dom0.run("xenstore-read", f"{backend}/hotplug-status")["stdout"].strip() == "error"
        assert taken in dom0.run("xenstore-read", f"{backend}/hotplug-error")["stdout"]
        assert _dom0_side(dom0, everything) == before
        assert dom0.sh("ls /run/domunet/dom0/")["stdout"] == records
        assert answers(dom0, taken), f"{taken} of {other_guest.name} no longer answers"
        assert tcp_works(dom0, taken)
    finally:
        dom0.run("xl", "network-detach", each_guest.name, devid)
    assert mac not in dom0.run("xl", "network-list", each_guest.name)["stdout"]
    assert _dom0_side(dom0, everything) == before
    assert dom0.sh("ls /run/domunet/dom0/")["stdout"] == records
    assert answers(dom0, taken) and tcp_works(dom0, taken)


def test_xl_save_and_restore_the_guest_answers_again_and_dom0_keeps_nothing_of_the_old_domid(dom0, each_guest):
    name = each_guest.name
    old = dom0.run("xl", "domid", name)["stdout"].strip()
    dom0.run("xl", "save", name, f"/var/tmp/{name}.save", timeout=600)
    try:
        assert dom0.run("xl", "domid", name, check=False)["rc"] != 0
        dom0.run("xl", "restore", f"/var/tmp/{name}.save", timeout=600)
    finally:
        dom0.run("rm", "-f", f"/var/tmp/{name}.save")
    new = dom0.run("xl", "domid", name)["stdout"].strip()
    assert new != old
    for address in ADDRESSES[name].values():
        assert answers(dom0, address, timeout=120), f"{address} does not answer after xl restore"
    assert _of_domain(dom0, old) == {"routes": [], "records": [], "nft": []}
    kept = _of_domain(dom0, new)
    assert len(kept["records"]) == 4 and len(kept["routes"]) == 4 and len(kept["nft"]) == 4, kept
    shown = json.loads(dom0.run("domunet", "dom0", "status", "--json")["stdout"])
    assert not [row for row in shown["vifs"] if (row["vif"] or "").startswith(f"vif{old}.")], shown
    assert all(row["kernel_matches"] for row in shown["vifs"]), shown


def test_xl_destroy_leaves_nothing_of_the_guest_in_dom0_and_the_other_guest_untouched(dom0, each_guest, other_guest):
    mine, theirs = list(ADDRESSES[each_guest.name].values()), list(ADDRESSES[other_guest.name].values())
    others = _dom0_side(dom0, theirs)
    assert [len(others[part]) for part in ("proxies", "nft")] == [1, 4], others
    assert len([line for line in others["routes"] if "proto domunet-dom0" in line]) == 4, others
    domid = dom0.run("xl", "domid", each_guest.name)["stdout"].strip()
    dom0.run("xl", "destroy", each_guest.name)
    dom0.until(f"! ip link | grep -q 'vif{domid}\\.'", timeout=60)
    assert _of_domain(dom0, domid) == {"routes": [], "records": [], "nft": []}
    assert _dom0_side(dom0, mine) == {"routes": [], "proxies": [], "nft": []}
    addresses = dom0.sh(f"ip -o addr show | grep ' vif{domid}\\.'", check=False)["stdout"]
    assert addresses.strip() == "", addresses
    assert _dom0_side(dom0, theirs) == others
    for address in theirs:
        assert answers(dom0, address), f"{address} of {other_guest.name} no longer answers"


#: How each guest's own network stack reconfigures a NIC, as its admin would.
RECONFIGURE = {
    "ifupdown": "ifdown enX1 && ifup enX1",
    "netplan": "netplan apply",
    "networkmanager": "nmcli connection down enX1 && nmcli connection up enX1",
}


def test_the_guests_own_stack_reconfigures_a_nic_and_every_address_answers_again(dom0, each_guest):
    """ifupdown, netplan (rendering to systemd-networkd) or NetworkManager, as the lab's guest
    runs it: domunet-watch converges again after the stack's own reconfiguration."""
    stack = xenlab.running_lab().stacks[each_guest.name]
    each_guest.sh(RECONFIGURE[stack], timeout=300)
    converged = each_guest.until('[ -z "$(domunet plan)" ]', timeout=60)
    assert converged["rc"] == 0, (stack, each_guest.run("domunet", "plan", check=False))
    for address in ADDRESSES[each_guest.name].values():
        assert answers(dom0, address), f"{each_guest.name} ({stack}): {address} silent after {RECONFIGURE[stack]}"
    assert each_guest.run("domunet", "status", check=False)["rc"] == 0


DNSMASQ = "/run/xenlab-dnsmasq"


def _dhcp_server(dom0, vif, mac, address):
    """dnsmasq in dom0 for one vif, as a provider runs one for guests that take DHCP: this MAC
    gets `address`, the provider's router as gateway, renewal after 4 s and rebinding after 8 s
    (T1, T2; the shortest lease dnsmasq grants is 2 min). No DNS (port 0)."""
    dom0.sh(f"dnsmasq --conf-file=/dev/null --port=0 --user=root --group=root --bind-interfaces "
            f"--interface={vif} --except-interface=lo --pid-file={DNSMASQ}.pid --dhcp-leasefile={DNSMASQ}.leases "
            f"--dhcp-authoritative --log-dhcp --log-facility={DNSMASQ}.log "
            f"--dhcp-range={address},{address},255.255.255.0,2m --dhcp-host={mac},{address} "
            f"--dhcp-option=option:router,192.168.0.1 --dhcp-option=option:T1,4 --dhcp-option=option:T2,8 "
            f"</dev/null >/dev/null 2>&1")


def _stop_dhcp_server(dom0):
    dom0.sh(f"[ -e {DNSMASQ}.pid ] && kill $(cat {DNSMASQ}.pid); rm -f {DNSMASQ}.pid {DNSMASQ}.leases; "
            f"while pidof dnsmasq >/dev/null; do sleep 0.2; done", check=False, timeout=30)


def _acks(dom0, vif):
    return int(dom0.sh(f"grep -c 'DHCPACK({vif})' {DNSMASQ}.log || true")["stdout"].strip() or 0)


def test_a_dhcp_lease_on_a_hot_plugged_vif_is_followed_granted_renewed_and_changed(dom0, each_guest):
    """The guest's enX5 takes its address from dom0's DHCP server; vif-domunet routes both
    addresses the server may lease to it (the vif's `ip`). The lease answers from outside and
    keeps answering through renewals; when the server has another address for this MAC, the
    guest's stack takes it (the server refuses the renewal, the client starts over) and domunet
    gives the new lease its rule, with nothing left for the old one. Detached, nothing stays."""
    guest, (first, second) = each_guest, LEASES[each_guest.name]
    stack = xenlab.running_lab().stacks[guest.name]
    mac = f"{MACS[guest.name]}:17"
    dom0.run("xl", "network-attach", guest.name, f"mac={mac}", "script=vif-domunet", f"ip={first} {second}",
             "devid=5", timeout=180)
    vif = f"vif{dom0.run('xl', 'domid', guest.name)['stdout'].strip()}.5"
    try:
        _dhcp_server(dom0, vif, mac, first)
        assert answers(dom0, first, timeout=240), (stack, dom0.sh(f"cat {DNSMASQ}.log", check=False)["stdout"][-3000:])
        leased = guest.until(f"ip rule | grep -q 'from {first} '", timeout=60)
        assert leased["rc"] == 0, (stack, domunet_lines(guest))
        acks = _acks(dom0, vif)
        renewed = dom0.until(f"[ $(grep -c 'DHCPACK({vif})' {DNSMASQ}.log) -ge {acks + 2} ]", timeout=120)
        assert renewed["rc"] == 0, (stack, "no two renewals at T1")
        assert answers(dom0, first), f"{guest.name} ({stack}): {first} silent after its lease was renewed"

        _stop_dhcp_server(dom0)
        _dhcp_server(dom0, vif, mac, second)
        moved = guest.until(f"ip rule | grep -q 'from {second} ' && ! ip rule | grep -q 'from {first} '",
                            timeout=240)
        assert moved["rc"] == 0, (stack, domunet_lines(guest), guest.sh("ip -4 addr show enX5", check=False))
        assert answers(dom0, second), f"{guest.name} ({stack}): the new lease {second} does not answer"
    finally:
        _stop_dhcp_server(dom0)
        dom0.run("xl", "network-detach", guest.name, "5", check=False, timeout=180)
    gone = guest.until(f"! ip rule | grep -q 'from {second} ' && ! ip rule | grep -q enX5", timeout=90)
    assert gone["rc"] == 0, domunet_lines(guest)


def test_doctor_on_both_sides_passes_on_the_healthy_guest_and_names_a_deleted_rule_and_route(dom0, each_guest):
    """`domunet doctor` in the guest and `domunet dom0 doctor` in dom0, on real Xen (the real
    xenstore's hotplug-status, netfront's NICs): every address passes, and with --probe dom0
    answers the echo to the gateway through netfront and the vif; a domunet rule deleted in
    the guest (watch stopped, else it puts it back at once) and the vif's route deleted in dom0
    are named, with the command that fixes each; that command fixes it."""
    guest, address = each_guest, ADDRESSES[each_guest.name]["enX1"]
    domid = dom0.run("xl", "domid", guest.name)["stdout"].strip()
    healthy = guest.until("domunet doctor", timeout=120)
    assert healthy["rc"] == 0, healthy
    probed = json.loads(guest.run("domunet", "doctor", "--json", "--probe")["stdout"])
    gateways = [step["found"] for verdict in probed["addresses"] for step in verdict["steps"]
                if step["check"] == "neighbour" and not step["found"].startswith("no IPv")]
    assert all(verdict["ok"] for verdict in probed["addresses"]), probed
    assert gateways and all(found.endswith(", answered an echo") for found in gateways), probed
    shown = json.loads(dom0.run("domunet", "dom0", "doctor", "--json", f"vif{domid}.1")["stdout"])
    assert [a["ok"] for a in shown["addresses"]] == [True], shown
    assert "hotplug-status connected" in json.dumps(shown)

    guest.run("systemctl", "stop", "domunet-watch.service")
    try:
        guest.sh(f"ip rule del from {address}")
        found = json.loads(guest.run("domunet", "doctor", "--json", address, check=False)["stdout"])
        assert found["addresses"][0]["cause"] == "rule-missing", found
        assert "domunet setup" in guest.run("domunet", "doctor", address, check=False)["stdout"]
        guest.run("domunet", "setup")
    finally:
        guest.run("systemctl", "start", "domunet-watch.service")
    assert guest.run("domunet", "doctor", address, check=False)["rc"] == 0

    dom0.run("ip", "route", "del", f"{address}/32", "dev", f"vif{domid}.1")
    found = json.loads(dom0.run("domunet", "dom0", "doctor", "--json", address, check=False)["stdout"])
    assert found["addresses"][0]["cause"] == "route-missing", found
    dom0.run("domunet", "dom0", "reconcile")
    assert dom0.run("domunet", "dom0", "doctor", address, check=False)["rc"] == 0
    assert answers(dom0, address), f"{guest.name}: {address} silent after dom0 reconcile"
