"""`domunet doctor`: each fault made on purpose, one at a time, and named by its cause code, its
address and the command that fixes it; nothing wrong: every address passes. Doctor reads
only: the kernel dump is the same before and after every run, and it takes no lock."""

import fcntl
import json
import os
import re
import sys

import pytest

from tests.labs import NICS, Lab, dom0_dump, package_root, wait_until

ALL = [nic.address for nic in NICS]


@pytest.fixture
def routed():
    with Lab() as lab:
        lab.route_dom0_statically()
        yield lab


def doctor(lab, *args, env=None):
    """doctor as JSON and as text; the guest's kernel state unchanged by either run."""
    before = lab.dump()
    if env is None:
        as_json = lab.domunet("doctor", "--json", *args)
        text = lab.domunet("doctor", *args)
    else:
        argv = [str(lab.bin / "domunet"), "--config", str(lab.workdir / "domunet.conf"), "doctor"]
        as_json = lab.run("guest", *argv, "--json", *args, check=False, env=env)
        text = lab.run("guest", *argv, *args, check=False, env=env)
    assert lab.dump() == before, "doctor changed the kernel's state"
    assert as_json.returncode == text.returncode, (as_json.stderr, text.stderr)
    assert "Traceback" not in as_json.stderr + text.stderr
    return as_json.returncode, {a["address"]: a for a in json.loads(as_json.stdout)["addresses"]}, text.stdout


def assert_named(lab, address, cause, fix, *args, env=None):
    code, verdicts, text = doctor(lab, address, *args, env=env)
    assert code == 1, text
    assert verdicts[address]["cause"] == cause, json.dumps(verdicts[address], indent=1)
    assert f"{cause}:" in text and address in text and fix in text, text
    return verdicts[address]


def set_up(lab):
    result = lab.domunet("setup")
    assert result.returncode == 0, result.stderr


def table_of(lab, name):
    rows = {row["interface"]: row for row in json.loads(lab.domunet("status", "--json").stdout)}
    return rows[name]["table"]


def test_nothing_wrong_every_address_passes_and_doctor_changes_nothing(routed):
    set_up(routed)
    code, verdicts, text = doctor(routed)
    assert code == 0, text
    assert sorted(verdicts) == sorted(ALL)
    assert all(v["ok"] and v["cause"] is None for v in verdicts.values())
    steps = [step["check"] for step in verdicts["192.168.0.201"]["steps"]]
    assert steps == ["address", "rule", "table", "lookup", "neighbour", "state", "xenstore"]
    assert "PROBLEM" not in text and text.count(" ok ") == 4


def test_doctor_takes_no_lock_a_running_setup_holds(routed):
    set_up(routed)
    with open(routed.state_dir / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a setup that runs now holds it
        code, verdicts, _ = doctor(routed, "192.168.0.201")
    assert code == 0 and verdicts["192.168.0.201"]["ok"]


def test_1_a_domunet_rule_deleted_by_hand(routed):
    set_up(routed)
    routed.run("guest", "ip", "rule", "del", "from", "192.168.0.201")
    assert_named(routed, "192.168.0.201", "rule-missing", "fix: domunet setup")
    assert doctor(routed, "192.168.0.202")[0] == 0  # the others still pass


def test_2_a_foreign_rule_above_domunets_sends_the_replies_elsewhere(routed):
    set_up(routed)
    routed.run("guest", "ip", "route", "add", "default", "via", "192.168.0.1", "dev", "eth0", "table", "200")
    routed.run("guest", "ip", "rule", "add", "priority", "100", "from", "192.168.0.201", "lookup", "200")
    verdict = assert_named(routed, "192.168.0.201", "rule-above", "ip -4 rule del priority 100")
    assert "100: from 192.168.0.201/32 lookup 200" in verdict["found"]


def test_2b_a_vpn_style_rule_into_an_empty_table_lets_the_lookup_go_on(routed):
    """A rule whose table has no route for the reply does not take it: no cause is made up."""
    set_up(routed)
    routed.run("guest", "ip", "rule", "add", "priority", "100", "from", "all", "lookup", "201")
    assert doctor(routed, "192.168.0.201")[0] == 0


def test_3_the_tables_default_route_deleted(routed):
    set_up(routed)
    routed.run("guest", "ip", "route", "del", "default", "table", str(table_of(routed, "eth1")))
    assert_named(routed, "192.168.0.201", "table-default-missing", "fix: domunet setup")


def test_4_the_gateways_neighbour_entry_failed(routed):
    set_up(routed)
    routed.run("dom0", "ip", "link", "set", "vif1.1", "down")
    routed.run("guest", "ping", "-n", "-c", "1", "-W", "1", "-I", "192.168.0.201", "192.168.0.1", check=False)
    wait_until(lambda: "FAILED" in routed.run("guest", "ip", "neigh", "show", "192.168.0.1", "dev", "eth1").stdout,
               "the gateway's entry on eth1 FAILED", timeout=20)
    verdict = assert_named(routed, "192.168.0.201", "gateway-unreachable", "domunet dom0 doctor")
    assert "192.168.0.1 on eth1: FAILED" in verdict["found"]


def test_4b_probe_sends_one_echo_to_each_gateway(routed):
    set_up(routed)
    code, verdicts, _ = doctor(routed, "--probe")
    assert code == 0
    assert "answered an echo" in json.dumps(verdicts["192.168.0.201"]["steps"])
    routed.run("dom0", "ip", "link", "set", "vif1.2", "down")
    verdict = assert_named(routed, "192.168.0.202", "gateway-unreachable", "ip neigh flush dev eth2", "--probe")
    assert "did not answer an echo" in verdict["found"]


def test_5_rp_filter_strict_where_replies_leave_by_another_nic_before_setup(routed):
    verdict = assert_named(routed, "192.168.0.201", "rp-filter", "fix: domunet setup")
    assert "leave by eth0" in verdict["found"] and "rp_filter is strict on eth1" in verdict["found"]


def test_6_an_ipv6_address_dadfailed(routed):
    set_up(routed)
    routed.sysctl("guest", ["net/ipv6/conf/eth3/accept_dad=1"])
    taken = "2001:db8:4309:2388::2"  # dom0's own address on the vif
    routed.run("guest", "ip", "addr", "add", f"{taken}/64", "dev", "eth3")
    wait_until(lambda: "dadfailed" in routed.run("guest", "ip", "-6", "addr", "show", "dev", "eth3").stdout,
               "duplicate address detection failed", timeout=20)
    assert_named(routed, taken, "address-dadfailed", f"ip addr del {taken}/64 dev eth3")


def test_10_dom0_published_another_ipv6_gateway_than_the_guest_uses(lab):
    lab.route_dom0_with_vif_domunet()
    env = {**lab.xen_env(1), "DOMUNET_STATE_DIR": str(lab.state_dir)}
    set_up(lab)
    assert doctor(lab, NICS[3].address, env=env)[0] == 0
    lab.xenstore_write("backend/vif/1/3/domunet-gateway6", "2001:db8:4309:2388::99")
    verdict = assert_named(lab, NICS[3].address, "gateway6-mismatch", "remove gateway6 of [[eth3]]", env=env)
    assert "dom0 published 2001:db8:4309:2388::99" in verdict["found"]


def test_an_address_on_no_interface_and_bad_usage(routed):
    assert_named(routed, "192.168.0.250", "address-missing", "ip addr add")
    result = routed.domunet("doctor", "not-an-address")
    assert result.returncode == 2 and "not an IP address" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_without_arguments_a_nic_that_is_down_is_walked_and_fails(routed):
    """Round 3's B: with eth1 down, doctor listed eth0 and eth2 only and exited 0."""
    set_up(routed)
    routed.run("guest", "ip", "link", "set", "eth1", "down")
    code, verdicts, text = doctor(routed)
    assert code == 1, text
    assert sorted(verdicts) == sorted(ALL)
    assert verdicts["192.168.0.201"]["cause"] == "link-down" and verdicts["192.168.0.201"]["interface"] == "eth1"
    assert "ip link set eth1 up" in text


def test_without_arguments_a_held_nic_and_an_unmanaged_one_are_walked(routed):
    """Round 3's B: a NIC held for a bad config value was not listed; an unmanaged one neither. Both
    are walked now, with their verdict and why; a bridge's address is walked and passes."""
    config = routed.workdir / "held.conf"
    config.write_text((routed.workdir / "domunet.conf").read_text() + "[[eth2]]\ngateway = 2001:db8::1\n")
    routed.batch("guest", ["link add br9 type bridge", "addr add 10.77.0.1/24 dev br9", "link set br9 up"])
    assert routed.domunet("setup", config=str(config)).returncode == 0
    before = routed.dump()
    as_json = routed.domunet("doctor", "--json", config=str(config))
    assert routed.dump() == before
    verdicts = {a["address"]: a for a in json.loads(as_json.stdout)["addresses"]}
    assert as_json.returncode == 1
    assert sorted(verdicts) == sorted([*ALL, "10.77.0.1"])
    assert verdicts["192.168.0.202"]["cause"] == "held" and "gateway" in verdicts["192.168.0.202"]["found"]
    assert verdicts["10.77.0.1"]["ok"], verdicts["10.77.0.1"]
    assert "not managed" in verdicts["10.77.0.1"]["steps"][1]["found"]
    assert all(verdicts[a]["ok"] for a in ALL if a != "192.168.0.202")


def test_an_address_given_twice_is_walked_once_and_every_zone_is_refused_alike(routed):
    set_up(routed)
    code, verdicts, text = doctor(routed, "192.168.0.201", "192.168.0.201")
    assert code == 0 and text.count("192.168.0.201") == 1
    for zoned in ("fe80::1%lo", "fe80::1%eth0", "fe80::1", "2001:db8:4309:2388::50%eth3"):
        result = routed.domunet("doctor", zoned)
        assert result.returncode == 2, (zoned, result.stdout)
        assert "link-local" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_doctor_runs_as_its_installed_command_does(routed):
    set_up(routed)
    result = routed.run("guest", str(routed.bin / "domunet"), "--config", str(routed.workdir / "domunet.conf"),
                        "--state-dir", str(routed.state_dir), "doctor", check=False,
                        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert result.returncode == 0, result.stderr


# --- dom0 ---------------------------------------------------------------------------------------

@pytest.fixture
def xen(lab):
    """dom0 configured by vif-domunet (its guard included), the guest set up from what it published."""
    lab.route_dom0_with_vif_domunet()
    set_up(lab)
    return lab


def dom0_doctor(lab, *args):
    """dom0 doctor (xenstore's hotplug-status read too) as JSON and as text; dom0 unchanged by it,
    what its guard dropped aside (a set that fills as packets are dropped)."""
    env = {**os.environ, "PYTHONPATH": package_root(), **lab.xen_env(0)}
    argv = [sys.executable, "-m", "domunet", "--config", str(lab.workdir / "domunet.conf"), "--state-dir",
            str(lab.state_dir), "dom0", "doctor", *args]
    before = still(dom0_dump(lab))
    as_json = lab.run("dom0", *argv, "--json", check=False, env=env)
    text = lab.run("dom0", *argv, check=False, env=env)
    assert still(dom0_dump(lab)) == before, "dom0 doctor changed dom0's state"
    assert as_json.returncode == text.returncode and "Traceback" not in as_json.stderr + text.stderr, text.stderr
    return as_json.returncode, {(a["interface"], a["address"]): a for a in json.loads(as_json.stdout)["addresses"]}, \
        text.stdout


def still(dump):
    """dom0's dump without the time each dropped source has left in the guard's set (it counts down)."""
    return re.sub(r" expires [0-9hms]+", "", dump)


def assert_dom0_named(lab, vif, address, cause, fix, *args):
    code, verdicts, text = dom0_doctor(lab, *args)
    assert code == 1, text
    assert verdicts[(vif, address)]["cause"] == cause, json.dumps(verdicts[(vif, address)], indent=1)
    assert f"{cause}:" in text and address in text and fix in text, text
    return verdicts[(vif, address)]


def test_12_dom0_nothing_wrong_every_guest_address_passes(xen):
    code, verdicts, text = dom0_doctor(xen)
    assert code == 0, text
    assert sorted(a for _, a in verdicts) == sorted(ALL)
    steps = [step["check"] for step in verdicts[("vif1.3", NICS[3].address)]["steps"]]
    assert steps == ["vif", "route", "proxy", "sysctl", "guard", "claims"]
    assert "hotplug-status connected" in json.dumps(verdicts[("vif1.1", "192.168.0.201")]["steps"])
    assert dom0_doctor(xen, "vif1.1")[1].keys() == {("vif1.1", "192.168.0.201")}
    assert dom0_doctor(xen, NICS[3].address)[1].keys() == {("vif1.3", NICS[3].address)}
    assert doctor(xen, env={**xen.xen_env(1), "DOMUNET_STATE_DIR": str(xen.state_dir)})[0] == 0  # the guest's side


def test_7_dom0_the_vifs_route_deleted_and_reconcile_puts_it_back(xen):
    xen.run("dom0", "ip", "route", "del", "192.168.0.201/32", "dev", "vif1.1")
    verdict = assert_dom0_named(xen, "vif1.1", "192.168.0.201", "route-missing", "fix: domunet dom0 reconcile")
    assert "192.168.0.201 is routed by eth0" in verdict["found"]
    assert xen.domunet("dom0", "reconcile", role="dom0").returncode == 0
    assert dom0_doctor(xen)[0] == 0
    assert xen.answers() == dict.fromkeys(ALL, True)


def test_8_dom0_the_proxy_ndp_entry_flushed_by_an_uplink_bounce(xen):
    xen.run("dom0", "ip", "-6", "neigh", "del", "proxy", NICS[3].address, "dev", "eth0")
    xen.run("dom0", "ip", "link", "set", "eth0", "down")
    xen.run("dom0", "ip", "link", "set", "eth0", "up")
    assert_dom0_named(xen, "vif1.3", NICS[3].address, "proxy-missing", "fix: domunet dom0 reconcile")
    assert xen.domunet("dom0", "reconcile", role="dom0").returncode == 0
    assert dom0_doctor(xen)[0] == 0


def test_9_the_guest_sends_from_an_address_it_was_not_given_both_sides_name_it(xen):
    xen.run("guest", "ip", "addr", "add", "192.168.0.99/24", "dev", "eth1")
    set_up(xen)  # its replies leave by eth1 now: vif1.1's guard drops them
    xen.run("guest", "ping", "-n", "-c", "1", "-W", "1", "-I", "192.168.0.99", "192.168.0.1", check=False)
    verdict = assert_dom0_named(xen, "vif1.1", "192.168.0.99", "source-not-given", "in the guest, use only")
    assert "vif1.1 was given 192.168.0.201/32" in verdict["found"]
    env = {**xen.xen_env(1), "DOMUNET_STATE_DIR": str(xen.state_dir)}
    assert_named(xen, "192.168.0.99", "address-not-given", "in dom0, give the vif 192.168.0.99", env=env)


def test_11_two_vifs_claim_one_address(xen):
    result = xen.domunet("dom0", "online", "--vif", "vif1.2", "--ip", "192.168.0.201", role="dom0")
    assert result.returncode == 0, result.stderr
    verdict = assert_dom0_named(xen, "vif1.1", "192.168.0.201", "claimed-twice", "domunet dom0 offline --vif vif1.2")
    assert "vif1.2 also claim" in verdict["found"]


def test_dom0_doctor_names_a_vif_it_has_no_record_of_and_refuses_bad_arguments(xen):
    code, verdicts, text = dom0_doctor(xen, "vif9.9")
    assert code == 1 and verdicts[("vif9.9", "vif9.9")]["cause"] == "not-online", text
    result = xen.domunet("dom0", "doctor", "bad name;x", role="dom0")
    assert result.returncode == 2 and "neither a vif name nor an IP address" in result.stderr
