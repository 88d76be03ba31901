"""Fail safe (issue 21): any failure rolls back, one bad fact costs one NIC, anti-spoofing fails
closed. Each test reproduces one finding in the namespace lab; each failed on 3e85a59."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import tests
from tests.labs import NICS, Watcher, assert_ok, dom0_dump, package_root, status, wait_until, write_config

ALL = [nic.address for nic in NICS]
FORWARDING = ["net/ipv4/ip_forward=1", "net/ipv6/conf/all/forwarding=1"]
SUITE_ROOT = str(Path(tests.__file__).resolve().parent.parent)


# --- the injected fault at every step -----------------------------------------------------------

def faulty(lab, role, at, kind, *args, env=None):
    """domunet's command line in a namespace with step `at` failing (tests/faults.py)."""
    environment = {**os.environ, **(env or {}), "PYTHONPATH": f"{package_root()}:{SUITE_ROOT}",
                   "FAULT_AT": str(at), "FAULT_KIND": kind}
    result = lab.run(role, sys.executable, "-m", "tests.faults", *args, check=False, env=environment)
    steps = [line for line in result.stderr.splitlines() if line.startswith("fault-steps: ")]
    return result, int(steps[-1].split()[1]) if steps else 0


def guest_args(lab):
    return ["--config", str(lab.workdir / "domunet.conf"), "--state-dir", str(lab.state_dir)]


def guest_snapshot(lab):
    """Routes, rules, nftables, the NICs' src_valid_mark and domunet's state files."""
    marks = "".join(f"{n.guest}={lab.run('guest', 'cat', f'/proc/sys/net/ipv4/conf/{n.guest}/src_valid_mark').stdout}"
                    for n in NICS)
    files = sorted(f"{p.relative_to(lab.state_dir)}:{p.read_text()}" for p in lab.state_dir.rglob("*.json"))
    # rules in sorted order: a rolled-back removal re-adds a rule after others of its priority, and
    # domunet's rules of one priority never overlap (distinct sources, marks or oifs)
    return "\n".join(sorted(lab.dump().splitlines())) + lab.run("guest", "nft", "list", "ruleset").stdout \
        + marks + "\n".join(files)


@pytest.fixture
def forwarding_guest(routed_lab):
    routed_lab.sysctl("guest", FORWARDING)
    return routed_lab


def run_faults(lab, verb, kind, expected):
    result, total = faulty(lab, "guest", 0, kind, *guest_args(lab), verb)
    assert result.returncode == 0, result.stderr
    after = guest_snapshot(lab)
    undo = "teardown" if verb == "setup" else "setup"
    assert faulty(lab, "guest", 0, kind, *guest_args(lab), undo)[0].returncode == 0
    assert guest_snapshot(lab) == expected
    assert total >= 10, total
    for at in range(1, total + 1):
        result, _ = faulty(lab, "guest", at, kind, *guest_args(lab), verb)
        assert result.returncode == 1, (at, result.stderr)
        assert ("internal error" in result.stderr) == (kind == "bug"), (at, result.stderr)
        assert "Traceback" not in result.stderr
        assert guest_snapshot(lab) == expected, (at, result.stderr)
    return after


@pytest.mark.parametrize("kind", ["bug", "oserror"])
def test_a_fault_at_any_step_of_setup_leaves_the_guest_as_it_was(forwarding_guest, kind):
    lab = forwarding_guest
    before = guest_snapshot(lab)
    after = run_faults(lab, "setup", kind, before)
    assert "domunet-guest" in after and "src_valid_mark" not in before  # marks were part of it


def test_a_fault_at_any_step_of_teardown_leaves_the_guest_set_up(forwarding_guest):
    lab = forwarding_guest
    assert faulty(lab, "guest", 0, "bug", *guest_args(lab), "setup")[0].returncode == 0
    set_up = guest_snapshot(lab)
    run_faults(lab, "teardown", "bug", set_up)
    assert lab.answers() == dict.fromkeys(ALL, True)


@pytest.mark.parametrize("kind", ["bug", "oserror"])
def test_a_fault_at_any_step_of_a_vif_online_leaves_dom0_as_it_was(lab, kind):
    lab.xenstore_write("backend/vif/1/3/ip", "2001:db8:4309:2388::50 192.168.0.203")
    env = {**lab.xen_env(0), "vif": "vif1.3", "XENBUS_PATH": "backend/vif/1/3", "netdev": ""}
    args = ["--state-dir", str(lab.state_dir), "dom0", "hotplug"]
    before = dom0_dump(lab)
    result, total = faulty(lab, "dom0", 0, kind, *args, "online", "type_if=vif", env=env)
    assert result.returncode == 0 and status(lab, 3) == "connected", result.stderr
    assert faulty(lab, "dom0", 0, kind, *args, "offline", "type_if=vif", env=env)[0].returncode == 0
    assert dom0_dump(lab) == before
    assert total >= 8, total
    for at in range(1, total + 1):
        (lab.xenstore / "local/domain/0/backend/vif/1/3/hotplug-status").unlink(missing_ok=True)
        result, _ = faulty(lab, "dom0", at, kind, *args, "online", "type_if=vif", env=env)
        assert result.returncode == 1, (at, result.stderr)
        assert status(lab, 3) == "error", (at, result.stderr)
        error = lab.xenstore_read("backend/vif/1/3/hotplug-error")
        assert ("internal error" in error) == (kind == "bug"), (at, error)
        assert dom0_dump(lab) == before, (at, result.stderr)
        assert not list(lab.state_dir.glob("dom0/vif-*.json")), at


# --- N0: no /etc/protocols (a minbase dom0) --------------------------------------------------------

@pytest.mark.parametrize("way", ["library", "command"])
def test_a_vif_comes_online_on_a_dom0_without_etc_protocols(lab, way):
    etc = Path("/etc/netns") / lab.ns["dom0"]
    etc.mkdir(parents=True, exist_ok=True)
    try:
        (etc / "protocols").write_text("")  # `ip netns exec` binds it over /etc/protocols
        lab.xenstore_write("backend/vif/1/0/ip", "192.168.0.200")
        env = {**lab.xen_env(0), "vif": "vif1.0", "XENBUS_PATH": "backend/vif/1/0", "netdev": "",
               "DOMUNET_STATE_DIR": str(lab.state_dir), **({"DOMUNET_NFT": "command"} if way == "command" else {})}
        result = lab.run("dom0", "sh", str(lab.vif_hook), "online", "type_if=vif", check=False, env=env)
        assert status(lab, 0) == "connected", result.stderr
        assert "chain guestinput" in lab.run("dom0", "nft", "list", "ruleset").stdout
    finally:
        for path in (etc / "protocols", etc):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)


# --- N1: an unusable record keeps its vif guarded ---------------------------------------------------

def drops(lab):
    chain = lab.run("dom0", "nft", "list", "chain", "inet", "domunet", "antispoof").stdout
    line = next(line for line in chain.splitlines() if "drop" in line and "counter" in line)
    return int(line.split("packets")[1].split()[0])


@pytest.mark.parametrize("damage", ["truncated", "newer"])
def test_an_unusable_dom0_record_keeps_its_vif_guarded_and_its_address_claimed(lab, damage):
    lab.route_dom0_with_vif_domunet()
    record = lab.state_dir / "dom0" / "vif-xen-1-1.json"
    if damage == "truncated":
        record.write_text(record.read_text()[:40])
    else:
        record.write_text(json.dumps({**json.loads(record.read_text()), "from_a_newer_domunet": 1}))
    reconcile = lab.domunet("dom0", "reconcile", role="dom0", python=sys.executable)
    assert reconcile.returncode == 0 and "stays guarded" in reconcile.stderr, reconcile.stderr
    allowed = lab.run("dom0", "nft", "list", "set", "inet", "domunet", "allowed4").stdout
    assert '"vif1.1" . 192.168.0.201' in allowed
    # a spoofed source from that guest is still dropped
    lab.run("guest", "ip", "addr", "add", "198.51.100.7/32", "dev", "eth1")
    before = drops(lab)
    lab.run("guest", "ping", "-c", "2", "-W", "1", "-I", "198.51.100.7", "203.0.113.10", check=False)
    assert drops(lab) >= before + 2
    # another domain cannot claim its address
    lab.batch("dom0", ["link add vif2.0 type veth peer name vif2p", "link set vif2.0 up"])
    lab.xenstore_write("backend/vif/2/0/ip", "192.168.0.201")
    claim = lab.vif_hotplug("online", "vif2.0", 0, "type_if=vif", domid=2)
    assert lab.xenstore_read("backend/vif/2/0/hotplug-status") == "error", claim.stderr
    assert "192.168.0.201" in lab.xenstore_read("backend/vif/2/0/hotplug-error")
    # the vif's own offline (libxl's, or the admin's by the vif's name) undoes what can be read
    # and releases the guard
    if damage == "truncated":
        offline = lab.vif_hotplug("offline", "vif1.1", 1)
    else:
        offline = lab.domunet("dom0", "offline", "--vif", "vif1.1", role="dom0", python=sys.executable)
    assert offline.returncode == 0, offline.stderr
    routes = lab.run("dom0", "ip", "route").stdout
    guarded = lab.run("dom0", "nft", "list", "set", "inet", "domunet", "guarded").stdout
    assert "vif1.1" not in guarded
    if damage == "newer":  # readable: its route and /32 went with it
        assert "192.168.0.201" not in routes
        assert "192.168.0.100" not in lab.run("dom0", "ip", "-4", "addr", "show", "dev", "vif1.1").stdout
    assert list((lab.state_dir / "dom0").glob("vif-xen-1-1.json.corrupt"))


# --- N2: a WireGuard-style split default through an unmanaged device --------------------------------

def test_main_routes_from_0_0_0_0_and_colon_colon_get_their_main_rules(routed_lab, domunet):
    lab = routed_lab
    lab.batch("guest", ["link add wg0 type veth peer name wg0p", "link set wg0 up", "link set wg0p up",
                        "route add 0.0.0.0/5 dev wg0", "route add 0.0.0.0/8 dev wg0",
                        "route add ::/3 dev wg0", "route add ::/8 dev wg0"])
    result = domunet("setup")
    assert_ok(result)
    rules = lab.run("guest", "ip", "rule").stdout + lab.run("guest", "ip", "-6", "rule").stdout
    for prefix in ("0.0.0.0/5", "::/3"):
        assert f"to {prefix} lookup main" in rules
    assert lab.answers() == dict.fromkeys(ALL, True)
    assert_ok(domunet("teardown"))
    assert "lookup main proto" not in lab.run("guest", "ip", "rule").stdout


# --- N3: a full /run ----------------------------------------------------------------------------

FILL = 'mount -t tmpfs -o size=256k,mode=0755 tmpfs "$STATE" && cp -a "$SAVED/." "$STATE/" && ' \
       '(dd if=/dev/zero of="$STATE/fill" bs=4k 2>/dev/null; truncate -s -"$FREE" "$STATE/fill"; true) && '


def on_full_run(lab, role, free, command, env=None):
    """`command` with the state dir on a tmpfs with `free` bytes left (in its own mount namespace)."""
    saved = lab.workdir / "saved-state"
    subprocess.run(["cp", "-a", f"{lab.state_dir}/.", str(saved)], check=False)
    lab.state_dir.mkdir(exist_ok=True)
    environment = {**os.environ, **(env or {}), "STATE": str(lab.state_dir), "SAVED": str(saved), "FREE": str(free)}
    return lab.run(role, "sh", "-c", FILL + command, check=False, env=environment)


@pytest.mark.parametrize("free", [0, 8192])
def test_online_on_a_full_run_reports_error_and_leaves_dom0_as_it_was(lab, free):
    lab.xenstore_write("backend/vif/1/0/ip", "192.168.0.200")
    (lab.workdir / "saved-state").mkdir()
    before = dom0_dump(lab)
    env = {**lab.xen_env(0), "vif": "vif1.0", "XENBUS_PATH": "backend/vif/1/0", "netdev": "",
           "DOMUNET_STATE_DIR": str(lab.state_dir)}
    result = on_full_run(lab, "dom0", free, f'exec sh {lab.vif_hook} online type_if=vif', env)
    assert result.returncode == 1, result.stderr
    assert status(lab, 0) == "error"
    assert "No space left" in lab.xenstore_read("backend/vif/1/0/hotplug-error")
    assert "internal error" not in result.stderr
    assert dom0_dump(lab) == before


def test_a_forwarding_guest_on_a_full_run_is_rolled_back(forwarding_guest):
    lab = forwarding_guest
    (lab.workdir / "saved-state").mkdir()
    before = guest_snapshot(lab)
    command = f'exec {sys.executable} -m domunet {" ".join(guest_args(lab))} setup'
    result = on_full_run(lab, "guest", 0, command, {"PYTHONPATH": package_root()})
    assert result.returncode == 1 and "No space left" in result.stderr, result.stderr
    assert "internal error" not in result.stderr
    assert guest_snapshot(lab) == before


# --- N4: one bad published fact costs one NIC ----------------------------------------------------

@pytest.mark.parametrize("gateway6, why", [("2001:db8:4309:2388::50", "address of eth3 itself"),
                                           ("::1", "not an IPv6 address")])
def test_a_bad_gateway_dom0_published_costs_that_nic_only(routed_lab, gateway6, why):
    lab = routed_lab
    mac = lab.run("guest", "cat", "/sys/class/net/eth3/address").stdout.strip()
    lab.xenstore_write("device/vif/3/backend", "/local/domain/0/backend/vif/1/3", domain=1)
    lab.xenstore_write("device/vif/3/mac", mac, domain=1)
    lab.xenstore_write("backend/vif/1/3/domunet-gateway6", gateway6)
    config = write_config(lab, "")
    env = {**lab.xen_env(1), "PYTHONPATH": package_root()}
    base = [sys.executable, "-m", "domunet", "--config", config, "--state-dir", str(lab.state_dir)]
    for verb in ("setup", "status"):
        result = lab.run("guest", *base, verb, check=False, env=env)
        assert result.returncode == 0, (verb, result.stderr)
        assert "backend/vif/1/3/domunet-gateway6" in result.stderr and why in result.stderr, result.stderr
        assert "[interfaces]" not in result.stderr  # the config file is not to blame
    rules = lab.run("guest", "ip", "rule").stdout
    assert all(f"oif {nic}" in rules for nic in ("eth0", "eth1", "eth2"))
    assert lab.ping("192.168.0.201") and lab.ping("192.168.0.202")  # eth3 is held: its address stays silent


def test_a_bad_value_in_one_interface_section_costs_that_nic_only(routed_lab, domunet):
    lab = routed_lab
    config = write_config(lab, (lab.workdir / "domunet.conf").read_text() + "[[eth1]]\ngateway = 2001:db8::1\n")
    result = domunet("setup", config=config)
    assert result.returncode == 0, result.stderr
    assert "[[eth1]] key 'gateway'" in result.stderr
    rules = lab.run("guest", "ip", "rule").stdout
    assert "oif eth2" in rules and "oif eth1" not in rules
    assert domunet("status", config=config).returncode == 0


# --- N5, N8, N10, N14: watch ---------------------------------------------------------------------

def start_watch(lab, *extra, state_dir=None, config=None):
    env = dict(os.environ, PYTHONPATH=package_root())
    argv = ["ip", "netns", "exec", lab.ns["guest"], sys.executable, "-m", "domunet", "--config",
            config or str(lab.workdir / "domunet.conf"), "--state-dir", str(state_dir or lab.state_dir),
            "watch", *extra]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(process):
    process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


def test_watch_backs_off_when_every_run_fails(routed_lab):
    """A run that always fails (a foreign route in the table eth1 must use) is retried 2 s, then
    4 s later, as watch says; the delays themselves are tested on a fake clock (tests/unit/test_watch.py)."""
    lab = routed_lab
    lab.run("guest", "ip", "route", "add", "192.168.0.0/24", "dev", "eth1", "table", "1500")
    config = write_config(lab, (lab.workdir / "domunet.conf").read_text() + "[[eth1]]\ntable = 1500\n")
    watch = Watcher(lab, config=config, first_run=False)
    try:
        watch.until(lambda: sum("trying again in" in line for line in watch.lines) >= 2, "two failed runs")
    finally:
        watch.stop()
    delays = [re.search(r"trying again in (\d+) s", line).group(1) for line in watch.lines if "trying again" in line]
    assert delays[:2] == ["2", "4"], "\n".join(watch.lines[-20:])


def test_one_watch_per_network_namespace_whatever_its_state_dir(routed_lab):
    lab = routed_lab
    first = start_watch(lab)
    try:
        wait_until(lambda: "oif eth1" in lab.run("guest", "ip", "rule").stdout, "eth1's rules")
        other = lab.workdir / "other-state"
        second = start_watch(lab, state_dir=other)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 2 and "another domunet watch is running in this network namespace" in err
    finally:
        stop(first)


def test_watch_puts_back_its_nftables_table_after_a_flush_ruleset(forwarding_guest):
    lab = forwarding_guest
    watch = start_watch(lab)
    try:
        listed = lambda: "domunet-guest" in lab.run("guest", "nft", "list", "tables").stdout  # noqa: E731
        wait_until(listed, "the connection-mark table", timeout=20)
        lab.run("guest", "nft", "flush", "ruleset")
        wait_until(listed, "the connection-mark table put back after a flush", timeout=20)
    finally:
        stop(watch)


def test_watch_on_a_read_only_state_dir_is_a_clean_usage_error(routed_lab):
    lab = routed_lab
    lab.state_dir.mkdir(exist_ok=True)
    command = (f'mount --bind "$STATE" "$STATE" && mount -o remount,bind,ro "$STATE" && '
               f'exec {sys.executable} -m domunet --config {lab.workdir / "domunet.conf"} --state-dir "$STATE" watch')
    env = {**os.environ, "PYTHONPATH": package_root(), "STATE": str(lab.state_dir)}
    result = lab.run("guest", "sh", "-c", command, check=False, env=env)
    assert result.returncode == 2, result.stderr
    assert "internal error" not in result.stderr and "Read-only" in result.stderr


# --- N7, N12: interface names ---------------------------------------------------------------------

def test_a_nic_named_with_a_quote_is_left_alone_by_every_verb(forwarding_guest, domunet):
    lab = forwarding_guest
    subprocess.run(["ip", "-n", lab.ns["guest"], "link", "add", 'a"b', "type", "veth", "peer", "name", "qpeer"],
                   check=True)
    lab.batch("guest", ['addr add 192.168.0.210/24 dev a"b', 'link set a"b up', "link set qpeer up"])
    for verb in ("setup", "status", "plan", "setup"):
        result = domunet(verb)
        assert result.returncode == 0, (verb, result.stderr)
        assert "not a name domunet serves" in result.stderr
    assert "domunet-guest" in lab.run("guest", "nft", "list", "tables").stdout
    assert lab.answers() == dict.fromkeys(ALL, True)


def test_a_nic_with_a_plus_in_its_name_keeps_its_saved_sysctls(forwarding_guest, domunet):
    lab = forwarding_guest
    lab.run("guest", "ip", "link", "set", "eth2", "name", "eth+9", check=False)
    lab.run("guest", "ip", "link", "set", "eth+9", "up")
    key = "/proc/sys/net/ipv4/conf/eth+9/src_valid_mark"
    assert lab.run("guest", "cat", key).stdout.strip() == "0"
    for _ in range(2):
        assert_ok(domunet("setup"))
    assert lab.run("guest", "cat", key).stdout.strip() == "1"
    assert not list(lab.state_dir.glob("*.corrupt"))
    assert_ok(domunet("teardown"))
    assert lab.run("guest", "cat", key).stdout.strip() == "0"


# --- N9: a hand-made main default with domunet's protocol ----------------------------------------

def test_a_main_default_made_by_hand_with_protocol_213_is_still_the_gateway(routed_lab, domunet):
    lab = routed_lab
    lab.run("guest", "ip", "route", "replace", "default", "via", "192.168.0.1", "dev", "eth0", "proto", "213")
    assert_ok(domunet("setup"))
    tables = lab.run("guest", "ip", "route", "show", "table", "all").stdout
    defaults = [line for line in tables.splitlines() if line.startswith("default via 192.168.0.1 dev eth")
                and "table" in line]
    assert len(defaults) == 3, tables
    assert "default via 192.168.0.1 dev eth0 proto 213" in lab.run("guest", "ip", "-N", "route").stdout
    assert lab.answers() == dict.fromkeys(ALL, True)
    assert_ok(domunet("teardown"))
    assert "default via 192.168.0.1 dev eth0 proto 213" in lab.run("guest", "ip", "-N", "route").stdout


# --- N13: dom0 refuses what is not a guest's --------------------------------------------------------

@pytest.mark.parametrize("ip, fragment", [
    ("10.250.0.1", "dom0's own address 10.250.0.1"),
    ("::ffff:192.168.0.100", "IPv4-mapped"),
    ("192.168.0.128/26", "slice of dom0's uplink subnet"),
    ("2001:db8:4309:2388:8000::/65", "slice of dom0's uplink subnet"),
])
def test_dom0_refuses_its_own_addresses_mapped_ranges_and_uplink_slices(lab, ip, fragment):
    from tests.netns.test_hostile import refused_online

    lab.batch("dom0", ["link add mgmt0 type veth peer name mgmt0p", "addr add 10.250.0.1/24 dev mgmt0",
                       "link set mgmt0 up"])
    refused_online(lab, 0, ip, fragment)


# --- N6: a prefix that covers a managed subnet ----------------------------------------------------

def test_a_bridge_covering_the_managed_subnet_keeps_the_rest_of_its_prefix(routed_lab, domunet):
    lab = routed_lab
    lab.batch("guest", ["link add br1 type veth peer name br1p", "addr add 192.168.200.1/16 dev br1",
                        "link set br1 up", "link set br1p up"])
    assert_ok(domunet("setup"))
    for source in ("192.168.0.200", "192.168.0.201", "192.168.0.202"):
        answer = lab.run("guest", "ip", "route", "get", "192.168.200.2", "from", source).stdout
        assert "dev br1" in answer, (source, answer)
        back = lab.run("guest", "ip", "route", "get", "192.168.0.1", "from", source).stdout
        assert "dev br1" not in back, (source, back)
    assert lab.answers() == dict.fromkeys(ALL, True)


# --- N11: priority_base and table_base changed ----------------------------------------------------

@pytest.mark.parametrize("content", [b"garbage", b'[["x", 1]]', b"[[1, 2]]", b'{"a": 1}', b"[" * 30000 + b"]" * 30000,
                                     b"\xff\xfe"], ids=["text", "strings", "out-of-range", "mapping", "deep", "bytes"])
def test_a_corrupt_blocks_json_is_set_aside_and_every_verb_goes_on(routed_lab, domunet, content):
    """Round 3 (issue 34): the remembered blocks file, corrupt in every way: set aside with one
    warning, every verb goes on from the kernel (nothing of domunet's lost: its block is the
    config's), teardown leaves the kernel as before."""
    lab = routed_lab
    before = lab.dump()
    assert_ok(domunet("setup"))
    path = lab.state_dir / "blocks.json"
    for verb in ("plan", "status", "setup", "doctor"):
        path.write_bytes(content)
        result = domunet(verb)
        assert result.returncode == 0, (verb, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert (lab.state_dir / "blocks.json.corrupt").exists()
    assert domunet("plan").stdout == ""
    assert lab.answers() == dict.fromkeys(ALL, True)
    assert_ok(domunet("teardown"))
    assert lab.dump() == before



def test_changing_the_bases_moves_everything_and_teardown_leaves_nothing(routed_lab, domunet):
    lab = routed_lab
    before = lab.dump()
    assert_ok(domunet("setup"))
    moved = write_config(lab, "table_base = 5000\npriority_base = 20000\n"
                         + (lab.workdir / "domunet.conf").read_text())
    assert_ok(domunet("setup", config=moved))
    rules = lab.run("guest", "ip", "-N", "rule").stdout + lab.run("guest", "ip", "-N", "-6", "rule").stdout
    old = [line for line in rules.splitlines() if "proto 213" in line and int(line.split(":")[0]) < 20000]
    assert not old, old
    assert lab.answers() == dict.fromkeys(ALL, True)
    assert domunet("plan", config=moved).stdout == ""
    assert_ok(domunet("teardown", config=moved))
    assert lab.dump() == before
    assert not (lab.state_dir / "blocks.json").exists()
