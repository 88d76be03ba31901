"""dom0 through vif-domunet in the lab, with a stand-in xenstore; dom0's rp_filter is off,
so anti-spoofing is domunet's nftables table alone."""

import shutil
import subprocess

import pytest

from tests.labs import NICS, dom0_dump, status, wait_until

ALL = [nic.address for nic in NICS]


@pytest.fixture
def dom0_lab(lab):
    lab.route_dom0_with_vif_domunet()
    return lab


def test_guest_answers_on_every_address_through_a_dom0_set_up_by_vif_domunet(dom0_lab, domunet):
    assert [status(dom0_lab, devid) for devid in range(4)] == ["connected"] * 4
    assert domunet("setup").returncode == 0
    assert dom0_lab.answers() == dict.fromkeys(ALL, True)


def _count_at_router(lab):
    script = """table inet watch {
    chain in { type filter hook prerouting priority 0;
        ip saddr 192.168.0.250 counter
        ip6 saddr 2001:db8:4309:2388::99 counter
        ip saddr 192.168.0.201 counter
    }
}
"""
    subprocess.run(["ip", "netns", "exec", lab.ns["rtr"], "nft", "-f", "-"], input=script, text=True, check=True)


def _counters(lab):
    listing = lab.run("rtr", "nft", "list", "chain", "inet", "watch", "in").stdout
    counts = {}
    for line in listing.splitlines():
        if "counter packets" in line:
            source = line.split("saddr ")[1].split()[0]
            counts[source] = int(line.split("counter packets ")[1].split()[0])
    return counts


def test_spoofed_sources_never_leave_dom0(dom0_lab, domunet):
    lab = dom0_lab
    assert domunet("setup").returncode == 0
    lab.batch("guest", ["addr add 192.168.0.250/24 dev eth1", "addr add 2001:db8:4309:2388::99/64 dev eth3 nodad"])
    _count_at_router(lab)
    lab.run("guest", "ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "192.168.0.250", "203.0.113.10", check=False)
    lab.run("guest", "ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "2001:db8:4309:2388::99", "2001:db8:ffff::10",
            check=False)
    lab.run("guest", "ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "192.168.0.201", "203.0.113.10", check=False)
    counts = _counters(lab)
    assert counts["192.168.0.201"] >= 1  # the counting works: a listed source gets through
    assert counts["192.168.0.250"] == 0
    assert counts["2001:db8:4309:2388::99"] == 0
    drops = lab.run("dom0", "nft", "list", "chain", "inet", "domunet", "antispoof").stdout
    assert "counter packets 0 " not in drops


def test_router_cannot_resolve_an_unlisted_address_of_the_slash64(dom0_lab):
    lab = dom0_lab
    assert not lab.ping("2001:db8:4309:2388::99", tries=1, role="rtr")

    def neigh():
        return lab.run("rtr", "ip", "-6", "neigh", "show", "2001:db8:4309:2388::99").stdout

    # the router's own verdict, however long its probes take: resolved (lladdr) or FAILED
    wait_until(lambda: "FAILED" in neigh() or "lladdr" in neigh(), "the router's neighbour verdict")
    assert "lladdr" not in neigh()
    lab.ping("2001:db8:4309:2388::50", tries=1, wait=3, role="rtr")  # the guest has no way back yet
    assert "lladdr" in lab.run("rtr", "ip", "-6", "neigh", "show", "2001:db8:4309:2388::50").stdout


@pytest.mark.parametrize("key, value, netdev, named", [
    ("ip", "192.168.0.200;reboot", "", "'192.168.0.200;reboot'"),
    ("ip", "192.168.0.200 $(touch /tmp/domunet-pwned)", "", "'$(touch'"),
    ("ip", "2001:db8:4309:2388::zz", "", "'2001:db8:4309:2388::zz'"),
    ("ip", "", "", "no guest address"),
    ("ip", "224.0.0.1", "", "'224.0.0.1'"),
    ("vifname", "eth0/../x", "", "'eth0/../x'"),
    ("vifname", "a" * 40, "", "a" * 40),
    ("ip", "192.168.0.200", "nosuchdev", "uplink nosuchdev"),
])
def test_malformed_values_are_rejected_and_change_nothing(lab, key, value, netdev, named):
    lab.xenstore_write("backend/vif/1/0/ip", "192.168.0.200")
    lab.xenstore_write(f"backend/vif/1/0/{key}", value)
    before = dom0_dump(lab)
    result = lab.vif_hotplug("online", "vif1.0", 0, "type_if=vif", netdev=netdev)
    assert result.returncode != 0
    assert status(lab, 0) == "error"
    assert named in lab.xenstore_read("backend/vif/1/0/hotplug-error")
    assert "Traceback" not in result.stderr
    assert dom0_dump(lab) == before
    assert not list(lab.state_dir.glob("dom0/vif-*.json"))


def test_offline_undoes_everything_also_for_a_vif_already_gone(lab):
    before = dom0_dump(lab, skip="vif1.2")
    lab.route_dom0_with_vif_domunet()
    assert dom0_dump(lab, skip="vif1.2") != before
    lab.run("dom0", "ip", "link", "del", "vif1.2")
    for devid, nic in enumerate(NICS):
        result = lab.vif_hotplug("offline", nic.vif, devid, "type_if=vif")
        assert result.returncode == 0, result.stderr
    assert dom0_dump(lab, skip="vif1.2") == before
    assert lab.vif_hotplug("offline", "vif1.0", 0).returncode == 0  # again: nothing left, still fine
    assert dom0_dump(lab, skip="vif1.2") == before


def test_tap_and_add_calls_do_nothing(lab):
    before = dom0_dump(lab)
    assert lab.vif_hotplug("add", "vif1.0-emu", 0, "type_if=tap").returncode == 0
    assert lab.vif_hotplug("online", "vif1.0-emu", 0, "type_if=tap").returncode == 0
    assert dom0_dump(lab) == before


def test_vifname_renames_the_vif(lab):
    lab.xenstore_write("backend/vif/1/0/ip", "192.168.0.200")
    lab.xenstore_write("backend/vif/1/0/vifname", "web-eth0")
    assert lab.vif_hotplug("online", "vif1.0", 0).returncode == 0
    links = lab.run("dom0", "ip", "-o", "link").stdout
    assert "web-eth0" in links and "vif1.0:" not in links
    assert "192.168.0.200 dev web-eth0" in lab.run("dom0", "ip", "route").stdout
    assert lab.vif_hotplug("offline", "vif1.0", 0).returncode == 0
    assert "web-eth0" not in lab.run("dom0", "ip", "-o", "link").stdout


def _dom0(lab, *args):
    env_dir = f"--state-dir={lab.state_dir}"
    return lab.run("dom0", str(lab.bin / "domunet"), "dom0", env_dir, *args, check=False)


def test_shared_proxy_entries_are_counted_and_reconcile_restores_them(lab):
    lab.batch("dom0", ["link add vif1.3-emu type veth peer name emu0"])
    address = "2001:db8:4309:2388::50"
    assert _dom0(lab, "online", "--vif", "vif1.3", "--ip", address).returncode == 0
    assert _dom0(lab, "online", "--vif", "vif1.3-emu", "--ip", address).returncode == 0

    def proxies():
        return lab.run("dom0", "ip", "-6", "neigh", "show", "proxy").stdout

    assert address in proxies()
    assert _dom0(lab, "offline", "--vif", "vif1.3").returncode == 0
    assert address in proxies()  # still needed by the other device
    lab.batch("dom0", ["link set eth0 down", "link set eth0 up"])
    assert address not in proxies()  # the kernel flushed it with the uplink
    assert _dom0(lab, "reconcile").returncode == 0
    assert address in proxies()
    assert _dom0(lab, "offline", "--vif", "vif1.3-emu").returncode == 0
    assert address not in proxies()


def test_cli_rejects_bad_addresses_with_exit_2(lab):
    before = dom0_dump(lab)
    result = _dom0(lab, "online", "--vif", "vif1.0", "--ip", "192.168.0.200 `id`")
    assert result.returncode == 2 and "'`id`'" in result.stderr
    assert dom0_dump(lab) == before


def test_online_twice_then_offline_leaves_dom0_as_before(lab):
    lab.sysctl("dom0", ["net/ipv4/conf/all/rp_filter=0"])
    lab.xenstore_write("backend/vif/1/0/ip", "192.168.0.200 2001:db8:4309:2388::60")
    lab.xenstore_write("backend/vif/1/0/vifname", "web-eth0")
    before = dom0_dump(lab)
    assert lab.vif_hotplug("online", "vif1.0", 0).returncode == 0
    once = dom0_dump(lab)
    assert lab.vif_hotplug("online", "vif1.0", 0).returncode == 0  # xl retrying, a restart
    assert dom0_dump(lab) == once
    assert lab.vif_hotplug("offline", "vif1.0", 0).returncode == 0
    assert dom0_dump(lab) == before


def test_the_guest_engine_run_on_a_dom0_leaves_vif_domunets_work_alone(dom0_lab):
    """Issue 13: on real Xen the guest's units ran `domunet setup` in dom0 and took
    vif-domunet's routes for leftovers of its own. Its routes carry protocol domunet-dom0 now,
    and the guest engine only ever touches what its plan could have made."""
    lab = dom0_lab
    lab.run("dom0", "ip", "route", "add", "198.51.100.0/24", "dev", "eth0", "proto", "213")  # by hand
    lab.run("dom0", "ip", "rule", "add", "priority", "500", "to", "198.51.100.7", "lookup", "main", "proto", "213")
    before = dom0_dump(lab)
    assert "proto 215" in before
    for verb in ("setup", "teardown", "setup", "teardown"):
        result = lab.domunet(verb, role="dom0")
        assert result.returncode == 0, result.stderr
        assert dom0_dump(lab) == before, verb


@pytest.mark.parametrize("address", ["192.168.0.200 2001:db8:4309:2388::60"])
def test_in_process_nftables_and_the_nft_program_leave_dom0_the_same(lab, address):
    """vif-domunet loads its table through libnftables in-process (python3-nftables), or with
    `nft -f -` where the binding is missing (issue 17): both give dom0 the same state, and
    offline undoes either."""
    pytest.importorskip("nftables", reason="no python3-nftables for this interpreter: only `nft -f -` to test "
                                           "(every other dom0 test runs it)")
    no_nft = f"{lab.bin}:/usr/bin:/bin"  # the in-process way needs no `nft` program: prove it
    assert shutil.which("nft", path=no_nft) is None
    before = dom0_dump(lab)
    states = {}
    for way in ("in-process", "command"):
        env = {**lab.hook_env(path=no_nft if way == "in-process" else None), "DOMUNET_NFT": way}
        online = lab.run("dom0", str(lab.bin / "domunet"), "dom0", "online", "--vif", "vif1.0", "--ip", address,
                         check=False, env=env)
        assert online.returncode == 0, online.stderr
        states[way] = dom0_dump(lab)
        offline = lab.run("dom0", str(lab.bin / "domunet"), "dom0", "offline", "--vif", "vif1.0", check=False,
                          env=env)
        assert offline.returncode == 0, offline.stderr
        assert dom0_dump(lab) == before
    assert states["in-process"] == states["command"]
    assert '"vif1.0" . 192.168.0.200' in states["command"]
