"""Hostile input and corrupt state (issue 15): each case failed before, in namespaces, real tools."""

import json
import os
import subprocess
import sys

import pytest

from tests.labs import NICS, assert_ok, dom0_dump, package_root, status, wait_until, write_config

ALL = [nic.address for nic in NICS]
ZONED = "2001:db8:4309:2388::50%eth0"


def no_traceback(result):
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


def refused_online(lab, devid, ip, fragment):
    """libxl's online of vif1.DEVID with `ip=IP`: refused, said in hotplug-error, dom0 untouched."""
    lab.xenstore_write(f"backend/vif/1/{devid}/ip", ip)
    before = dom0_dump(lab)
    result = lab.vif_hotplug("online", f"vif1.{devid}", devid)
    no_traceback(result)
    assert status(lab, devid) == "error"
    assert fragment in lab.xenstore_read(f"backend/vif/1/{devid}/hotplug-error")
    assert dom0_dump(lab) == before
    assert not list(lab.state_dir.glob("dom0/vif-*.json"))


# --- 1: zone ids ------------------------------------------------------------------------------

def test_a_zone_id_in_a_vifs_ip_is_refused_and_nothing_is_left(lab):
    refused_online(lab, 3, ZONED, "zone")
    offline = lab.vif_hotplug("offline", "vif1.3", 3)
    assert offline.returncode == 0
    no_traceback(offline)


def test_a_zone_id_on_the_command_line_is_a_usage_error(lab, domunet):
    result = lab.domunet("dom0", "online", "--vif", "vif1.3", "--ip", ZONED, role="dom0", python=sys.executable)
    assert result.returncode == 2 and "zone" in result.stderr
    no_traceback(result)


def test_a_zone_id_published_as_gateway6_is_reported_and_ignored(routed_lab, domunet):
    lab = routed_lab
    mac = lab.run("guest", "cat", "/sys/class/net/eth3/address").stdout.strip()
    lab.xenstore_write("device/vif/3/backend", "/local/domain/0/backend/vif/1/3", domain=1)
    lab.xenstore_write("device/vif/3/mac", mac, domain=1)
    lab.xenstore_write("backend/vif/1/3/domunet-gateway6", "2001:db8:4309:2388::2%eth0")
    env = {**lab.xen_env(1), "PYTHONPATH": package_root()}
    result = lab.run("guest", sys.executable, "-m", "domunet", "--state-dir", str(lab.state_dir), "setup",
                     check=False, env=env)
    assert result.returncode == 0 and "domunet-gateway6" in result.stderr
    no_traceback(result)
    rules = lab.run("guest", "ip", "-6", "rule").stdout
    assert "oif eth3" not in rules  # ignored, so eth3 is not managed: no routes without rules


# --- 2: stanza tables -------------------------------------------------------------------------

def hint(lab, iface, **values):
    directory = lab.state_dir / "ifupdown"
    directory.mkdir(parents=True, exist_ok=True)
    data = {"iface": iface, "addrfam": "inet", "mode": "start", **values}
    (directory / f"{iface}.inet.json").write_text(json.dumps(data))


def test_a_kept_table_outside_the_range_is_refused_shown_and_changes_nothing(routed_lab, domunet):
    hint(routed_lab, "eth1", table=4294967295)
    hint(routed_lab, "eth0", table=1500)
    hint(routed_lab, "eth2", table=1500)
    assert_ok(domunet("setup"))
    assert routed_lab.answers() == dict.fromkeys(ALL, True)
    report = domunet("status")
    assert "REFUSED:    domunet-table 4294967295 (ifupdown): outside domunet's tables 1000..1999" in report.stdout
    assert "REFUSED:    domunet-table 1500 (ifupdown): table 1500 is already eth0's" in report.stdout
    assert_ok(domunet("setup"))
    assert domunet("plan").stdout == ""


def test_the_hook_refuses_an_out_of_range_table_and_does_not_keep_it(routed_lab):
    lab = routed_lab
    before = lab.dump()
    env = {**lab.hook_env(), "IFACE": "eth1", "LOGICAL": "eth1", "MODE": "start", "PHASE": "post-up",
           "ADDRFAM": "inet", "METHOD": "static", "IF_DOMUNET_TABLE": "4294967295"}
    result = lab.run("guest", str(lab.bin / "domunet"), "ifupdown", check=False, env=env)
    assert result.returncode == 2 and "domunet-table 4294967295" in result.stderr
    no_traceback(result)
    assert lab.dump() == before
    assert not list((lab.state_dir / "ifupdown").glob("eth1.*"))


# --- 3: labels --------------------------------------------------------------------------------

def test_an_address_with_a_label_counts_for_its_nic(routed_lab, domunet):
    lab = routed_lab
    lab.run("guest", "ip", "addr", "del", "192.168.0.202/24", "dev", "eth2")
    lab.run("guest", "ip", "addr", "add", "192.168.0.202/24", "dev", "eth2", "label", "eth2:0")
    assert_ok(domunet("setup"))
    assert "oif eth2" in lab.run("guest", "ip", "rule").stdout
    assert lab.answers() == dict.fromkeys(ALL, True)


# --- 5: names ---------------------------------------------------------------------------------

def test_a_nic_whose_name_is_not_utf8_is_skipped_and_the_others_served(routed_lab, domunet):
    lab = routed_lab
    subprocess.run(["ip", "-n", lab.ns["guest"], "link", "add", b"x\xffy", "type", "veth", "peer", "name", "xpeer"],
                   check=True)
    for verb in ("setup", "status", "plan", "teardown", "setup"):
        result = domunet(verb)
        assert result.returncode == 0, (verb, result.stderr)
        no_traceback(result)
    assert "not printable UTF-8" in result.stderr
    assert lab.answers() == dict.fromkeys(ALL, True)


# --- 6: corrupt state -------------------------------------------------------------------------

@pytest.mark.parametrize("values", [{"gateway": "garbage"}, {"table": "abc"}, {"table": 77},
                                    {"gateway6": "2001:db8::1%eth0"}, {"nonsense": 1}])
def test_a_corrupt_hint_is_set_aside_and_every_verb_goes_on(routed_lab, domunet, values):
    hint(routed_lab, "eth1", **values)
    for verb in ("status", "setup", "plan", "teardown", "setup"):
        result = domunet(verb)
        assert result.returncode == 0, (verb, result.stderr)
        no_traceback(result)
    assert (routed_lab.state_dir / "ifupdown" / "eth1.inet.json.corrupt").exists()
    assert routed_lab.answers() == dict.fromkeys(ALL, True)


@pytest.fixture
def dom0_online(lab):
    lab.xenstore_write("backend/vif/1/0/ip", "192.168.0.200")
    lab.xenstore_write("backend/vif/1/1/ip", "192.168.0.201")
    before = dom0_dump(lab)
    assert lab.vif_hotplug("online", "vif1.0", 0).returncode == 0
    return before


@pytest.mark.parametrize("corrupt", ["guest", "sysctl", "json"])
def test_corrupt_dom0_state_is_set_aside_and_online_offline_reconcile_go_on(lab, dom0_online, corrupt):
    records = lab.state_dir / "dom0"
    record = records / "vif-xen-1-0.json"
    if corrupt == "guest":
        data = json.loads(record.read_text())
        data["guest"] = ["garbage", 5]
        record.write_text(json.dumps(data))
    elif corrupt == "sysctl":
        (records / "sysctl-origin.json").write_text(json.dumps({"/etc/shadow": "x"}))
    else:
        record.write_text("{not json")
    result = lab.vif_hotplug("online", "vif1.1", 1)
    no_traceback(result)
    assert status(lab, 1) == "connected", result.stderr
    reconcile = lab.domunet("dom0", "reconcile", role="dom0", python=sys.executable)
    assert reconcile.returncode == 0
    no_traceback(reconcile)
    for devid in (0, 1):
        offline = lab.vif_hotplug("offline", f"vif1.{devid}", devid)
        assert offline.returncode == 0
        no_traceback(offline)
    assert list(records.glob("*.corrupt"))
    assert not list(records.glob("vif-*.json"))


# --- 7: rt_tables_file ------------------------------------------------------------------------

def test_a_foreign_names_file_is_never_replaced_nor_deleted(routed_lab, domunet):
    foreign = routed_lab.etc / "iproute2" / "rt_tables.d" / "admin.conf"
    foreign.write_text("200\tadmin-table\n")
    config = write_config(routed_lab, "rt_tables_file = /etc/iproute2/rt_tables.d/admin.conf\n"
                          + (routed_lab.workdir / "domunet.conf").read_text())
    for verb in ("setup", "teardown"):
        result = domunet(verb, config=config)
        assert result.returncode == 0
        assert foreign.read_text() == "200\tadmin-table\n"
    assert "not written by domunet" in result.stderr


# --- 8: symlinks and the state directory ------------------------------------------------------

def test_a_symlinked_temporary_file_does_not_redirect_roots_write(routed_lab):
    lab = routed_lab
    target = lab.workdir / "precious"
    target.write_text("precious\n")
    directory = lab.state_dir / "ifupdown"
    directory.mkdir(parents=True, exist_ok=True)
    os.symlink(target, directory / "eth1.inet.json.tmp")
    os.symlink(target, directory / "eth1.inet.tmp")  # the name 0.2 used
    env = {**lab.hook_env(), "IFACE": "eth1", "LOGICAL": "eth1", "MODE": "start", "PHASE": "post-up",
           "ADDRFAM": "inet", "METHOD": "static", "IF_DOMUNET_MANAGE": "yes"}
    result = lab.run("guest", str(lab.bin / "domunet"), "ifupdown", check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "precious\n"
    assert json.loads((directory / "eth1.inet.json").read_text())["manage"] == "yes"


@pytest.mark.parametrize("kind", ["symlink", "world-writable", "a file", "lock symlink"])
def test_an_unsafe_state_directory_is_refused_before_anything_changes(routed_lab, kind):
    lab = routed_lab
    real = lab.workdir / "real-state"
    real.mkdir()
    state = lab.workdir / "state"
    if kind == "symlink":
        os.symlink(real, state)
    elif kind == "world-writable":
        state.mkdir()
        os.chmod(state, 0o777)
    elif kind == "a file":
        state.write_text("")
    else:
        state.mkdir(mode=0o755)
        os.symlink(lab.workdir / "elsewhere", state / "lock")
    before = lab.dump()
    result = lab.run("guest", sys.executable, "-m", "domunet", "--config", str(lab.workdir / "domunet.conf"),
                     "--state-dir", str(state), "setup", check=False, env={**os.environ, "PYTHONPATH": package_root()})
    assert result.returncode == 2, result.stderr
    assert "state directory" in result.stderr or "symlink" in result.stderr
    no_traceback(result)
    assert lab.dump() == before
    assert not (lab.workdir / "elsewhere").exists()


# --- 9: smaller -------------------------------------------------------------------------------

def test_a_newline_in_iface_stays_one_line(routed_lab):
    lab = routed_lab
    env = {**lab.hook_env(), "IFACE": "eth1\nforged line", "MODE": "start", "ADDRFAM": "inet", "METHOD": "static"}
    result = lab.run("guest", str(lab.bin / "domunet"), "ifupdown", check=False, env=env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_broadcast_address_is_no_gateway(routed_lab, domunet):
    config = write_config(routed_lab, "[interfaces]\n[[eth1]]\ngateway = 192.168.0.255\n")
    result = domunet("setup", config=config)
    assert result.returncode == 0 and "broadcast" in result.stderr  # issue 21: eth1 only is left as it is
    rules = routed_lab.run("guest", "ip", "rule").stdout
    assert "oif eth1" not in rules and "oif eth0" in rules and "oif eth2" in rules


@pytest.mark.parametrize("argv", [["setup"], ["teardown"], ["dom0", "reconcile"],
                                  ["dom0", "offline", "--vif", "vif1.0"]])
def test_a_state_directory_that_is_a_file_is_a_usage_error_for_every_verb(routed_lab, argv):
    lab = routed_lab
    state = lab.workdir / "state-file"
    state.write_text("")
    role = "dom0" if argv[0] == "dom0" else "guest"
    result = lab.run(role, sys.executable, "-m", "domunet", "--config", str(lab.workdir / "domunet.conf"),
                     "--state-dir", str(state), *argv, check=False, env={**os.environ, "PYTHONPATH": package_root()})
    assert result.returncode == 2, result.stderr
    assert "state directory" in result.stderr
    no_traceback(result)


# --- gaps -------------------------------------------------------------------------------------

def test_a_table_the_admin_uses_is_not_adopted(routed_lab, domunet):
    lab = routed_lab
    assert_ok(domunet("setup"))
    wanted = int(next(line.split("lookup ")[1].split()[0] for line in lab.run("guest", "ip", "-N", "rule").stdout
                      .splitlines() if "oif eth1 " in line))
    assert_ok(domunet("teardown"))
    lab.run("guest", "ip", "route", "add", "192.168.0.201/32", "dev", "eth0", "table", str(wanted))
    assert_ok(domunet("setup"))
    assert f"lookup {wanted} " not in lab.run("guest", "ip", "-N", "rule").stdout + " "
    admins = lab.run("guest", "ip", "route", "show", "table", str(wanted)).stdout
    assert admins == "192.168.0.201 dev eth0 scope link \n"
    assert lab.answers() == dict.fromkeys(ALL, True)


def test_a_hand_made_default_route_with_domunets_protocol_is_never_removed(routed_lab, domunet):
    lab = routed_lab
    lab.run("guest", "ip", "route", "replace", "default", "via", "192.168.0.1", "dev", "eth0", "proto", "213")
    assert_ok(domunet("setup"))
    assert_ok(domunet("teardown"))
    assert "default via 192.168.0.1 dev eth0 proto 213" in lab.run("guest", "ip", "-N", "route").stdout


def test_a_hung_xenstore_costs_one_deadline_and_never_holds_the_lock(routed_lab, domunet, tmp_path):
    """Told by what happened, not by how long it took: the teardown ends while setup still waits for
    xenstore (so it never waited behind it), and once the deadline is spent no other xenstore call
    is made (one deadline for the run, not a timeout per read)."""
    lab = routed_lab
    calls = tmp_path / "calls"
    for tool in ("xenstore-read", "xenstore-list"):
        (tmp_path / tool).write_text(f"#!/bin/sh\necho {tool} >> '{calls}'\nexec sleep 60\n")
        (tmp_path / tool).chmod(0o755)
    env = {**os.environ, "PYTHONPATH": package_root(), "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    argv = ["ip", "netns", "exec", lab.ns["guest"], sys.executable, "-m", "domunet", "--config",
            str(lab.workdir / "domunet.conf"), "--state-dir", str(lab.state_dir), "setup"]
    setup = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(calls.exists, "setup asking xenstore")
    assert domunet("teardown").returncode == 0
    assert setup.poll() is None  # setup is still waiting for xenstore: teardown did not wait behind it
    _, stderr = setup.communicate(timeout=120)
    assert setup.returncode == 0, stderr
    assert "xenstore did not answer within 20 s" in stderr
    assert len(calls.read_text().split()) == 1, calls.read_text()  # nothing asked once the deadline was spent
    assert lab.answers() == dict.fromkeys(ALL, True)


# --- gaps on dom0 -----------------------------------------------------------------------------

def dom0_cli(lab, *args, config=None):
    extra = ["--config", config] if config else []
    return lab.run("dom0", str(lab.bin / "domunet"), "dom0", f"--state-dir={lab.state_dir}", *extra, *args,
                   check=False)


def test_dom0s_gateway_and_another_domains_address_are_refused(lab):
    refused_online(lab, 0, "192.168.0.1", "dom0's gateway 192.168.0.1")
    lab.batch("dom0", ["link add vif2.0 type veth peer name other2"])
    assert dom0_cli(lab, "online", "--vif", "vif1.1", "--ip", "192.168.0.201").returncode == 0
    second = dom0_cli(lab, "online", "--vif", "vif2.0", "--ip", "192.168.0.201")
    assert second.returncode == 2 and "routed to vif1.1 already" in second.stderr
    assert "vif2.0" not in lab.run("dom0", "ip", "route").stdout


def test_a_vif_takes_no_router_advertisement_nor_redirect_from_its_guest(lab):
    keys = ["net/ipv6/conf/vif1.3/accept_ra", "net/ipv6/conf/vif1.3/accept_redirects",
            "net/ipv4/conf/vif1.3/accept_redirects"]
    lab.sysctl("dom0", [f"{key}=1" for key in keys])
    assert dom0_cli(lab, "online", "--vif", "vif1.3", "--ip", "2001:db8:4309:2388::50").returncode == 0
    read = "".join(f"cat /proc/sys/{key};" for key in keys)
    assert lab.run("dom0", "sh", "-c", read).stdout.split() == ["0", "0", "0"]
    ruleset = lab.run("dom0", "nft", "list", "chain", "inet", "domunet", "antispoof").stdout
    assert "icmpv6 type { nd-router-advert, nd-redirect } drop" in ruleset
    assert "icmp type redirect drop" in ruleset
    assert dom0_cli(lab, "offline", "--vif", "vif1.3").returncode == 0
    assert lab.run("dom0", "sh", "-c", read).stdout.split() == ["1", "1", "1"]


@pytest.mark.parametrize("policy", ["restricted", "open"])
def test_guests_reach_dom0_itself_only_for_what_they_need(routed_lab, domunet, policy, tmp_path):
    from tests.neighbours import TCP_CLIENT, TCP_SERVER

    lab = routed_lab
    config = tmp_path / "dom0.conf"
    config.write_text(f"[dom0]\ninput = {policy}\n")
    lab.run("dom0", "ip", "route", "del", "192.168.0.200/32")
    assert dom0_cli(lab, "online", "--vif", "vif1.0", "--ip", "192.168.0.200", config=str(config)).returncode == 0
    assert_ok(domunet("setup"))
    assert lab.ping("192.168.0.100", role="guest")  # ICMP to dom0: always
    server = subprocess.Popen(["ip", "netns", "exec", lab.ns["dom0"], sys.executable, "-c", TCP_SERVER, "0.0.0.0",
                               "2222"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        client = lab.run("guest", sys.executable, "-c", TCP_CLIENT, "192.168.0.100", "2222", "192.168.0.200",
                         check=False)
    finally:
        server.kill()
        server.wait()
    assert (client.returncode == 0) == (policy == "open"), client.stderr
