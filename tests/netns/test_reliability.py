"""It cannot hurt: bad input changes nothing, foreign state survives, interrupted or concurrent
runs converge, a vanishing NIC leaves nothing half-made, main never loses a route.

The counts (CLI_CONFIGS, INTERRUPTIONS, ...) are recorded in docs/reliability.md."""

import random
import re
import subprocess
import time

import pytest

from domunet.core import config as configuration
from domunet.core.errors import ConfigError
from tests.labs import GUEST_CONFIG, NICS, Monitor, ScaleLab, dom0_dump, write_config

CLI_CONFIGS = 30
INTERRUPTIONS = 12
DOM0_CRASHES = 8
SIMULTANEOUS = 10
IPV4 = [nic.address for nic in NICS if nic.version == 4]


def assert_one_line_error(result, code=2):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("domunet: "), result.stderr
    return lines[0]


def mutated_configs(count, seed=7):
    """Broken variants of a valid config: flipped characters, cut lines, bad values, garbage."""
    rng = random.Random(seed)
    valid = (GUEST_CONFIG + "table_base = 1000\nmain_prefixes = 172.16.0.0/12\n[[eth1]]\ntable = 1500\n")
    alphabet = "[]=,'\"\\#:/.-_ \tabczZ019\n\x00é$;`"
    found = []
    while len(found) < count:
        text = list(valid)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(text))
            action = rng.choice(("replace", "insert", "delete"))
            if action == "replace":
                text[i] = rng.choice(alphabet)
            elif action == "insert":
                text.insert(i, rng.choice(alphabet))
            else:
                del text[i]
        raw = "".join(text).encode("utf-8")
        try:
            configuration.parse(raw)
        except ConfigError:
            found.append(raw)
    return found


def test_fuzzed_configs_exit_2_with_one_named_line_and_change_nothing(routed_lab, domunet):
    lab = routed_lab
    pristine = lab.dump()
    path = lab.workdir / "fuzzed.conf"
    for raw in mutated_configs(CLI_CONFIGS):
        path.write_bytes(raw)
        line = assert_one_line_error(domunet("setup", config=str(path)))
        assert str(path) in line
    assert lab.dump() == pristine


@pytest.mark.parametrize("argv", [
    ["setup", "--frobnicate"], ["nosuchverb"], ["status", "extra"], ["setup", "eth0/../x"],
    ["dom0", "online", "--vif", "vif1.0"], ["--config"],
])
def test_bad_command_lines_exit_2_with_one_line(routed_lab, domunet, argv):
    pristine = routed_lab.dump()
    assert_one_line_error(domunet(*argv))
    assert routed_lab.dump() == pristine


@pytest.mark.parametrize("env", [
    {"IFACE": "eth1", "MODE": "start", "IF_DOMUNET_TABLE": "12abc"},
    {"IFACE": "eth1", "MODE": "start", "IF_DOMUNET_MANAGE": "maybe"},
    {"IFACE": "eth1;reboot", "MODE": "start"},
    {"IFACE": "eth1", "MODE": "sideways"},
    {"IFACE": "eth3", "MODE": "start", "ADDRFAM": "inet6", "IF_GATEWAY": "fe80::1%eth3"},
])
def test_bad_ifupdown_environments_exit_2_and_change_nothing(routed_lab, env):
    lab = routed_lab
    pristine = lab.dump()
    result = lab.run("guest", str(lab.bin / "domunet"), "ifupdown", check=False,
                     env={**lab.hook_env(), "ADDRFAM": "inet", "METHOD": "static", **env})
    assert_one_line_error(result)
    assert lab.dump() == pristine


def test_foreign_state_survives_setup_resetup_and_teardown(routed_lab, domunet):
    lab = routed_lab
    config = write_config(lab, GUEST_CONFIG + "[[eth1]]\ntable = 1500\n")
    plan = domunet("plan", config=config).stdout
    ours = re.search(r"priority (\d+) from 192\.168\.0\.201/32", plan).group(1)
    foreign = [
        "rule add priority 50 from 192.168.0.0/24 to 198.51.100.0/24 lookup 500",
        f"rule add priority {ours} from 192.168.0.201 lookup 501",  # domunet's own priority
        f"-6 rule add priority {ours} from 2001:db8:4309:2388::50 lookup 501",
        "rule add priority 10000 to 10.0.0.0/8 lookup main",  # the priority of main_prefixes
        "route add 198.51.100.0/24 dev eth1 table 500",
        "route add 10.55.0.0/16 via 192.168.0.1 dev eth2",
        "route add 10.44.0.0/16 dev eth1 table 1500",  # inside domunet's table for eth1
        "route add 2001:db8:77::/48 dev eth3 table 1500",
        "addr add 10.99.0.1/32 dev lo",
    ]
    for line in foreign:
        args = line.split()
        lab.run("guest", "ip", *args)
    addresses = lab.run("guest", "ip", "-o", "addr").stdout
    pristine = lab.dump()
    fixed = [line for line in pristine.splitlines() if "50" in line or "1500" in line or "10.55" in line
             or ours in line or "10000:" in line]
    for step in ("setup", "setup", "teardown"):
        assert domunet(step, config=config).returncode == 0
        dump = lab.dump()
        for line in fixed:
            assert line in dump, (step, line)
        assert lab.run("guest", "ip", "-o", "addr").stdout == addresses
    assert lab.dump() == pristine


def _owned_lines(dump):
    return [line for line in dump.splitlines() if "proto 213" in line or "proto 214" in line
            or "domunet" in line]


def _start_when_changing(lab):
    """Start a setup and return (process, moment of its first kernel change, seen by ip monitor)."""
    monitor = Monitor(lab.ns["guest"], "route", "rule")
    try:
        run = subprocess.Popen(lab.argv("setup"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        monitor.wait_for(lambda line: "213" in line or "214" in line)
        return run, time.monotonic()
    finally:
        monitor.process.kill()
        monitor.process.wait()


def test_kill_9_at_any_point_of_a_large_setup_then_the_next_run_converges():
    with ScaleLab(16, 16) as lab:
        pristine = lab.dump()
        run, first = _start_when_changing(lab)
        assert run.wait(timeout=60) == 0
        applying = time.monotonic() - first
        reference = lab.dump()
        complete = len(_owned_lines(reference))
        assert lab.domunet("teardown").returncode == 0
        assert lab.dump() == pristine
        partial = 0
        for k in range(INTERRUPTIONS):
            run, first = _start_when_changing(lab)
            time.sleep(max(0.0, first + applying * 0.35 * k / INTERRUPTIONS - time.monotonic()))
            run.kill()
            run.wait()
            if 0 < len(_owned_lines(lab.dump())) < complete:
                partial += 1
            assert lab.domunet("setup").returncode == 0
            assert lab.dump() == reference, f"interruption {k}"
            assert lab.domunet("teardown").returncode == 0
            assert lab.dump() == pristine, f"interruption {k}"
        assert partial >= INTERRUPTIONS // 2  # most kills really left a half-made state behind


def _setup_while(lab, change):
    """`domunet setup` in the guest, and `ip CHANGE` the moment its first route or rule appears."""
    monitor = Monitor(lab.ns["guest"], "route", "rule")
    try:
        run = subprocess.Popen(lab.argv("setup"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        monitor.wait_for(lambda line: "213" in line or "domunet" in line)
        subprocess.run(["ip", "-n", lab.ns["guest"], *change], check=True)
    finally:
        monitor.process.terminate()
        monitor.process.wait()
    _, stderr = run.communicate(timeout=60)
    return run.returncode, stderr


def test_nic_deleted_while_setup_runs_others_are_configured_nothing_half_made_stays():
    with ScaleLab(16, 16) as lab:
        assert lab.domunet("setup").returncode == 0
        reference = lab.dump()
        table = re.search(r"oif eth9 lookup (\d+)", reference).group(1)
        assert lab.domunet("teardown").returncode == 0

        def about_eth9(line):
            return "eth9" in line or f"lookup {table} " in line + " " or f"table {table} " in line \
                or "2001:db8:109:" in line or "10.0.0.19" in line

        returncode, stderr = _setup_while(lab, ["link", "del", "eth9"])
        assert returncode == 0, stderr
        assert "eth9" in stderr and "vanished" in stderr
        after = lab.dump()
        assert [line for line in _owned_lines(after) if about_eth9(line)] == []
        expected = [line for line in _owned_lines(reference) if not about_eth9(line)]
        assert sorted(_owned_lines(after)) == sorted(expected)


def test_many_simultaneous_runs_converge_without_duplicate_rules(routed_lab, domunet):
    lab = routed_lab
    assert domunet("setup").returncode == 0
    reference = lab.dump()
    assert domunet("teardown").returncode == 0
    runs = [subprocess.Popen(["ip", "netns", "exec", lab.ns["guest"], str(lab.bin / "domunet"),
                              "--config", str(lab.workdir / "domunet.conf"), "--state-dir", str(lab.state_dir),
                              "setup", *([NICS[i % 4].guest] if i % 2 else [])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(SIMULTANEOUS)]
    for run in runs:
        assert run.wait(timeout=60) == 0, run.stderr.read()
    for family in ("-4", "-6"):
        rules = lab.run("guest", "ip", family, "rule").stdout.splitlines()
        assert len(rules) == len(set(rules))
    assert lab.dump() == reference


def test_ipv6_disabled_ipv4_still_done_with_a_warning(routed_lab, domunet):
    lab = routed_lab
    lab.sysctl("guest", [f"net/ipv6/conf/{dev}/disable_ipv6=1" for dev in ("all", "default", "eth0", "eth1",
                                                                            "eth2", "eth3")])
    result = domunet("setup")
    assert result.returncode == 0, result.stderr
    assert "eth3" in result.stderr and "IPv6" in result.stderr
    rules = lab.run("guest", "ip", "rule").stdout
    assert all(f"from {address} lookup" in rules for address in IPV4)
    assert all(lab.ping(address) for address in IPV4)  # IPv6 is off: its address stays silent


def test_main_table_never_loses_a_route_not_even_for_a_moment(routed_lab, domunet):
    lab = routed_lab
    lab.add_guest_nic("eth4", "vif1.4", "10.9.9.9/32")
    config = write_config(lab, "gateway_strategy = temporary-main-route\n" + GUEST_CONFIG + "[[eth4]]\n"
                               "gateway = 10.9.9.1\n")
    main = lab.run("guest", "ip", "route", "show", "table", "main").stdout
    main6 = lab.run("guest", "ip", "-6", "route", "show", "table", "main").stdout
    monitor = Monitor(lab.ns["guest"], "route")
    for step in (["setup"], ["setup"], ["teardown", "eth1"], ["setup", "eth1"], ["teardown"], ["setup"],
                 ["teardown"]):
        assert domunet(*step, config=config).returncode == 0
    events = monitor.stop().splitlines()
    deleted = [line for line in events if line.startswith("Deleted")]
    assert deleted  # the monitor saw domunet's own removals
    assert [line for line in deleted if "proto 213" not in line and "proto 214" not in line
            and "domunet" not in line] == []
    assert lab.run("guest", "ip", "route", "show", "table", "main").stdout == main
    assert lab.run("guest", "ip", "-6", "route", "show", "table", "main").stdout == main6


def _kill_after_events(lab, argv, events, seconds=30.0):
    """Start argv in dom0 and kill -9 it right after `ip monitor` has seen its first `events`
    changes to dom0 (links, addresses, routes, neighbours): a kill that lands while it changes
    dom0, whatever the machine's speed (a timed kill missed on a busy CI machine)."""
    monitor = Monitor(lab.ns["dom0"], "link", "address", "route", "neigh")
    try:
        run = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen, deadline = 0, time.monotonic() + seconds
        while seen < events and monitor.next_line(deadline - time.monotonic()) is not None:
            seen += 1
        run.kill()
        run.wait()
    finally:
        monitor.process.terminate()
        monitor.process.wait()


def test_dom0_crash_mid_online_then_offline_cleans_up(lab):
    lab.sysctl("dom0", ["net/ipv4/conf/all/rp_filter=0"])
    before = dom0_dump(lab)
    lab.xenstore_write("backend/vif/1/3/ip", "2001:db8:4309:2388::50 192.168.0.203")
    assert lab.vif_hotplug("online", "vif1.3", 3).returncode == 0
    assert lab.vif_hotplug("offline", "vif1.3", 3).returncode == 0
    assert dom0_dump(lab) == before
    env = {**lab.xen_env(0), "vif": "vif1.3", "XENBUS_PATH": "backend/vif/1/3", "netdev": "",
           "DOMUNET_STATE_DIR": str(lab.state_dir)}
    argv = ["ip", "netns", "exec", lab.ns["dom0"], "env", *(f"{a}={b}" for a, b in env.items()),
            str(lab.bin / "domunet"), "dom0", "hotplug", "online"]
    partial = 0
    for k in range(DOM0_CRASHES):
        _kill_after_events(lab, argv, 1 + k % 4)  # online makes 6 or more such changes
        partial += dom0_dump(lab) != before  # the kill landed while online was changing dom0
        assert lab.vif_hotplug("offline", "vif1.3", 3).returncode == 0
        assert dom0_dump(lab) == before, f"crash {k}"
    assert partial >= DOM0_CRASHES // 2, f"only {partial} of {DOM0_CRASHES} kills landed mid-online"


def test_an_address_deleted_while_setup_runs_is_converged_around():
    """Issue 15: an address that vanishes mid-run was a rollback of every NIC; like a vanishing
    NIC, the run now converges with what is there."""
    with ScaleLab(16, 16) as lab:
        assert lab.domunet("setup").returncode == 0
        last = max(re.findall(r"oif (eth\d+) lookup (\d+)", lab.dump()), key=lambda found: int(found[1]))[0]
        address = f"10.0.0.{10 + int(last[3:])}/24"
        assert lab.domunet("teardown").returncode == 0
        returncode, stderr = _setup_while(lab, ["addr", "del", address, "dev", last])
        assert returncode == 0, stderr
        assert "Traceback" not in stderr
        planned = lab.domunet("plan")
        assert planned.returncode == 0 and planned.stdout == "", planned.stdout
        # as a whole word: 10.0.0.25 (eth15's, when eth15 has the last table: its table slot
        # follows its random MAC) is also the start of every NIC's broadcast 10.0.0.255
        assert not re.search(rf"(?<![\d.]){re.escape(address.split('/')[0])}(?![\d.])", lab.dump())
