"""Where domunet runs: real ifupdown in the guest namespace with the hook installed, the boot
unit's and the udev rule's commands, and concurrent runs."""

import configparser
import shlex
import shutil
import signal
import subprocess

import pytest

from tests.labs import NICS, Lab, wait_until
from tests.shipped import shipped
from tests.stacks import INTERFACES

HOOK = shipped("hooks/ifupdown/domunet")
ALL = [nic.address for nic in NICS]
@pytest.fixture
def ifupdown_lab():
    with Lab(guest_addresses=False) as lab:
        lab.route_dom0_statically()
        (lab.workdir / "empty.conf").write_text("")  # everything comes from /etc/network/interfaces
        lab.install_ifupdown(INTERFACES, HOOK, config=str(lab.workdir / "empty.conf"))
        yield lab


def domunet_objects(lab):
    rules = lab.run("guest", "ip", "rule").stdout + lab.run("guest", "ip", "-6", "rule").stdout
    routes = lab.run("guest", "ip", "route", "show", "table", "all").stdout
    routes += lab.run("guest", "ip", "-6", "route", "show", "table", "all").stdout
    return [line for line in (rules + routes).splitlines() if "domunet" in line]


def test_ifup_all_ifdown_one_ifup_it_again_ifdown_all(ifupdown_lab):
    lab = ifupdown_lab
    result = lab.ifupdown("ifup", "-a")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert lab.answers() == dict.fromkeys(ALL, True)
    before = lab.dump()

    assert lab.ifupdown("ifdown", "eth1").returncode == 0
    assert not [line for line in domunet_objects(lab) if "eth1" in line or "192.168.0.201" in line]
    assert [line for line in domunet_objects(lab) if "oif eth0" in line]
    answers = lab.answers(tries=2)
    assert answers["192.168.0.200"] and answers["192.168.0.202"] and answers["2001:db8:4309:2388::50"]

    assert lab.ifupdown("ifup", "eth1").returncode == 0
    assert lab.answers() == dict.fromkeys(ALL, True)
    assert sorted(lab.dump().splitlines()) == sorted(before.splitlines())  # the kernel's own order may change

    assert lab.ifupdown("ifdown", "-a").returncode == 0
    assert domunet_objects(lab) == []
    assert not list((lab.state_dir / "ifupdown").glob("*"))


def test_stanza_options_reach_the_plan(ifupdown_lab):
    lab = ifupdown_lab
    interfaces = INTERFACES.replace("    address 192.168.0.201/24\n",
                                    "    address 192.168.0.201/24\n    domunet-table 1201\n")
    lab.install_ifupdown(interfaces, HOOK, config=str(lab.workdir / "empty.conf"))
    assert lab.ifupdown("ifup", "-a").returncode == 0
    rules = lab.run("guest", "ip", "rule").stdout
    assert "from 192.168.0.201 lookup domunet-eth1" in rules
    assert "1201\tdomunet-eth1" in (lab.etc / "iproute2" / "rt_tables.d" / "domunet.conf").read_text()
    # a later run without the hook's environment (boot unit, admin) still knows eth3's gateway6
    planned = lab.run("guest", str(lab.bin / "domunet"), "plan", env=lab.hook_env(str(lab.workdir / "empty.conf")))
    assert planned.stdout == ""


def test_bad_stanza_option_is_reported_and_changes_nothing(ifupdown_lab):
    lab = ifupdown_lab
    lab.batch("guest", ["link set eth1 up", "addr add 192.168.0.201/24 dev eth1"])
    before = lab.dump()
    env = {**lab.hook_env(str(lab.workdir / "empty.conf")), "IFACE": "eth1", "LOGICAL": "eth1", "MODE": "start",
           "PHASE": "post-up", "ADDRFAM": "inet", "METHOD": "static", "IF_DOMUNET_GATEWAY6": "2001:db8::zz"}
    result = lab.run("guest", str(lab.bin / "domunet"), "ifupdown", check=False, env=env)
    assert result.returncode == 2
    assert "domunet-gateway6" in result.stderr and "eth1" in result.stderr
    assert lab.dump() == before


def test_hook_returns_at_once_for_loopback_and_all(ifupdown_lab, tmp_path):
    """Without starting Python: a `domunet` that would leave a trace is never called."""
    trace = tmp_path / "called"
    fake = tmp_path / "domunet"
    fake.write_text(f"#!/bin/sh\ntouch {trace}\n")
    fake.chmod(0o755)
    hook = str(HOOK)
    for iface, method in (("lo", "loopback"), ("--all", "")):
        env = {"PATH": "/usr/bin:/bin", "DOMUNET": str(fake), "IFACE": iface, "MODE": "start", "METHOD": method}
        assert subprocess.run(["sh", hook], env=env).returncode == 0
    assert not trace.exists()
    env = {"PATH": "/usr/bin:/bin", "DOMUNET": str(fake), "IFACE": "eth1", "MODE": "start", "METHOD": "static"}
    subprocess.run(["sh", hook], env=env)
    assert trace.exists()  # the check above can fail


def test_concurrent_setups_end_in_the_state_of_one_run(routed_lab, domunet):
    lab = routed_lab
    assert domunet("setup").returncode == 0
    reference = lab.dump()
    for _ in range(3):
        assert domunet("teardown").returncode == 0
        runs = [subprocess.Popen(["ip", "netns", "exec", lab.ns["guest"], str(lab.bin / "domunet"),
                                  "--config", str(lab.workdir / "domunet.conf"), "--state-dir", str(lab.state_dir),
                                  "setup", *([nic.guest] if i < 4 else [])],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i, nic in enumerate([*NICS, NICS[0]])]
        for run in runs:
            _, err = run.communicate(timeout=60)
            assert run.returncode == 0, err
        assert lab.dump() == reference


def _unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(shipped(f"data/systemd/{name}"))
    return parser


def test_boot_unit_runs_setup_after_the_network_and_does_no_harm_after_the_hooks(ifupdown_lab):
    unit = _unit("domunet.service")
    assert unit["Unit"]["After"] == "network-online.target"
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    command = shlex.split(unit["Service"]["ExecStart"])
    assert command == ["/usr/bin/domunet", "setup"]
    lab = ifupdown_lab
    config = str(lab.workdir / "empty.conf")
    assert lab.ifupdown("ifup", "-a").returncode == 0
    before = lab.dump()
    result = lab.run("guest", str(lab.bin / "domunet"), *command[1:], check=False, env=lab.hook_env(config))
    assert result.returncode == 0, result.stderr
    assert lab.dump() == before


def test_udev_rule_matches_xen_vifs_and_removal_tears_down(routed_lab, domunet):
    rules = shipped("data/udev/90-domunet.rules").read_text().splitlines()
    add = next(line for line in rules if 'ACTION=="add"' in line)
    remove = next(line for line in rules if 'ACTION=="remove"' in line)
    assert 'SUBSYSTEM=="net"' in add
    assert 'RUN+="/bin/systemctl --no-block start domunet-iface@$name.service"' in add
    # netfront's vifs only (dom0's backend vifs are /devices/xen-backend/...), and only real
    # hotplug: at boot domunet.service configures every NIC at once
    assert 'DEVPATH=="/devices/vif-*"' in add and 'DEVPATH=="/devices/vif-*"' in remove
    assert 'ENV{SYNTH_UUID}!="?*"' in add
    assert _unit("domunet-iface@.service")["Service"]["ExecStart"] == "/usr/bin/domunet setup"
    command = shlex.split(remove.split('RUN+="')[1].rstrip('"').replace("$name", "eth1"))
    assert command == ["/usr/bin/domunet", "teardown", "eth1"]

    lab = routed_lab
    assert domunet("setup").returncode == 0
    lab.run("dom0", "ip", "link", "del", "vif1.1")  # the guest's eth1 goes with it
    wait_until(lambda: lab.run("guest", "ip", "link", "show", "eth1", check=False).returncode != 0, "eth1 gone")
    assert domunet(*command[1:]).returncode == 0
    rules_now = lab.run("guest", "ip", "rule").stdout
    assert "eth1" not in rules_now and "192.168.0.201" not in rules_now
    assert "oif eth0" in rules_now and "oif eth2" in rules_now


def test_networkd_drop_in_keeps_foreign_rules_and_routes():
    parser = configparser.ConfigParser()
    parser.read(shipped("data/networkd/domunet.conf"))
    assert parser["Network"]["ManageForeignRoutingPolicyRules"] == "no"
    assert parser["Network"]["ManageForeignRoutes"] == "no"


def test_conflicting_stanza_is_not_kept_and_ifup_still_succeeds(ifupdown_lab):
    lab = ifupdown_lab
    interfaces = INTERFACES.replace("    address 192.168.0.201/24\n",
                                    "    address 192.168.0.201/24\n    domunet-gateway 192.168.0.201\n")
    lab.install_ifupdown(interfaces, HOOK, config=str(lab.workdir / "empty.conf"))
    result = lab.ifupdown("ifup", "-a")
    assert result.returncode == 0, result.stderr
    assert "eth1" in result.stderr and "not a gateway" in result.stderr
    assert not list((lab.state_dir / "ifupdown").glob("eth1.*"))
    # the hooks after eth1's (eth2, eth3) plan without the conflict: eth0 and eth2 share the /24
    rules = lab.run("guest", "ip", "rule").stdout
    assert "oif eth0" in rules and "oif eth2" in rules


#: the PATH ifupdown gives its hooks, whatever the caller's
IFUPDOWN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.mark.parametrize("defaults", [True, False], ids=["DOMUNET in /etc/default/domunet", "no defaults"])
def test_the_hook_finds_a_domunet_outside_ifupdowns_path(ifupdown_lab, defaults):
    """A domunet installed in a venv or /opt: ifupdown's fixed PATH misses it, /etc/default/domunet
    (the guest's own, bound over /etc/default by `ip netns exec`) points the hook at it."""
    lab = ifupdown_lab
    if not defaults and shutil.which("domunet", path=IFUPDOWN_PATH):
        pytest.skip("this machine has a domunet on ifupdown's PATH")
    lab.install_ifupdown(INTERFACES, HOOK, config=str(lab.workdir / "empty.conf"), path=IFUPDOWN_PATH)
    if defaults:
        (lab.etc / "default").mkdir()
        (lab.etc / "default" / "domunet").write_text(f"# where pip put it\nDOMUNET={lab.bin / 'domunet'}\n")
    result = lab.ifupdown("ifup", "-a")
    assert result.returncode == 0, result.stderr
    if defaults:
        assert lab.answers() == dict.fromkeys(ALL, True)
        assert [line for line in domunet_objects(lab) if "oif eth1" in line]
    else:
        assert domunet_objects(lab) == []  # nothing found, nothing done, ifup unharmed


@pytest.mark.parametrize(("features", "runs"), [("00002705", True), ("00000801", False), ("0000a9f5", False),
                                                (None, True)], ids=["domU", "dom0", "dom0, more bits", "no Xen"])
@pytest.mark.parametrize("unit", ["domunet.service", "domunet-iface@.service", "domunet-watch.service"])
def test_the_guest_units_never_run_on_a_dom0(tmp_path, unit, features, runs):
    """Xen's feature bit 11 (XENFEAT_dom0) marks dom0: there the units' condition fails, and the
    vifs stay vif-domunet's (issue 13's real-Xen finding)."""
    command = _unit(unit)["Service"]["ExecCondition"].replace("$$", "$")
    path = tmp_path / "features"
    if features is not None:
        path.write_text(features + "\n")
    script = shlex.split(command)[2].replace("/sys/hypervisor/properties/features", str(path))
    result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
    assert (result.returncode == 0) == runs, result.stderr


def test_the_watch_unit_runs_domunet_watch_with_readiness_and_reload():
    service = _unit("domunet-watch.service")["Service"]
    assert service["ExecStart"] == "/usr/bin/domunet watch"
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    assert service["ExecReload"] == """/bin/sh -c 'kill -HUP "$$MAINPID"'"""
    # it signals the main process with no kill program on PATH (a minimal Debian has no procps)
    # (SIGHUP back to its default in the stand-in: a shell cannot trap a signal it was started with
    # ignored, as under nohup; systemd starts domunet watch with it at its default)
    main = subprocess.Popen(["/bin/sh", "-c", 'trap "echo reloaded; exit 0" HUP; echo ready; '
                             "while :; do /bin/sleep 0.05; done"], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    assert main.stdout.readline().strip() == "ready"
    script = shlex.split(service["ExecReload"].replace("$$", "$"))[2]
    subprocess.run(["/bin/sh", "-c", script], env={"MAINPID": str(main.pid), "PATH": "/nonexistent"}, check=True)
    assert main.communicate(timeout=10)[0].strip() == "reloaded"
    assert "is-active domunet-watch.service" in _unit("domunet-iface@.service")["Service"]["ExecCondition"]
