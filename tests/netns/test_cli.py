"""Every verb as a user types it, in the lab: options after the verb, and no traceback whatever
goes wrong (a missing program or Python module, an unusable state directory, hostile
arguments, environment and files). Each failure is one line with the README's exit code, and
changes nothing in the guest or in dom0."""

import os
import subprocess
import sys

import pytest

from tests.labs import NICS, Lab, dom0_dump, package_root
from tests.shipped import shipped

ALL = [nic.address for nic in NICS]
HUGE = "a" * 10_000
#: what the lab's xenstore stand-ins and domunet's wrapper need, besides the programs under test
BASIC = ("sh", "cat", "mkdir", "dirname", "ls", "rm")


@pytest.fixture(scope="module")
def cli_lab():
    """dom0 set up by vif-domunet, the guest by `domunet setup`: every verb has work it could undo."""
    with Lab(vif_hook=shipped("hooks/xen/vif-domunet")) as lab:
        lab.route_dom0_with_vif_domunet()
        (lab.workdir / "bad.conf").write_bytes(b"table_base = 1000\n# caf\xe9 \xff\xfe\n")
        (lab.workdir / "state-file").write_text("not a directory\n")
        # a vif that libxl would bring online: its `ip` in xenstore, no device (the tests fail first)
        lab.xenstore_write("backend/vif/1/9/ip", "192.0.2.99")
        assert run(lab, "guest", "setup").returncode == 0
        yield lab


def path_without(lab, *missing):
    """A PATH with the lab's domunet and stand-ins, and of the programs under test all but these."""
    directory = lab.workdir / ("bin-without-" + "-".join(missing))
    if not directory.exists():
        directory.mkdir()
        for program in (*BASIC, "ip", "nft", "ping"):
            found = subprocess.run(["sh", "-c", f"command -v {program}"], capture_output=True, text=True).stdout
            if program not in missing and found.strip():
                (directory / program).symlink_to(found.strip())
    return f"{lab.bin}:{directory}"


def run(lab, role, *args, env=None, flags=(), state=None, config=None):
    """domunet inside a namespace, its options after the verb; output as bytes."""
    environment = {**lab.xen_env(1 if role == "guest" else 0), "PYTHONPATH": package_root(), **(env or {})}
    verb_end = 2 if args and args[0] == "dom0" else 1
    options = ["--config", config or str(lab.workdir / "domunet.conf"), "--state-dir", state or str(lab.state_dir)]
    argv = ["ip", "netns", "exec", lab.ns[role], sys.executable, *flags, "-m", "domunet",
            *args[:verb_end], *options, *args[verb_end:]]
    return subprocess.run(argv, capture_output=True, env=environment, timeout=120, stdin=subprocess.DEVNULL)


def hotplug(lab, command, state=None, env=None):
    """`domunet dom0 hotplug` as vif-domunet execs it for libxl, for device 9 (no such vif)."""
    environment = {"vif": "vif1.9", "XENBUS_PATH": "backend/vif/1/9", "netdev": "", **(env or {})}
    return run(lab, "dom0", "dom0", "hotplug", command, "type_if=vif", env=environment, state=state)


def snapshot(lab):
    return lab.dump("guest"), dom0_dump(lab)


def assert_one_line(result, code, *fragments):
    err = result.stderr.decode("utf-8")  # valid UTF-8, whatever bytes came in
    assert result.returncode == code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(("domunet: ", "vif-domunet: ")), err
    assert len(lines[0]) <= 420, err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


# --- options after the verb, for real --------------------------------------------------------

def test_setup_config_after_the_verb_in_a_guest():
    with Lab() as lab:
        lab.route_dom0_statically()
        config = str(lab.workdir / "domunet.conf")  # eth3's gateway6 is only in this file
        pristine = lab.dump()
        env = {"PYTHONPATH": package_root(), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

        def domunet(*args):
            return lab.run("guest", sys.executable, "-m", "domunet", *args, check=False, env=env)

        result = domunet("setup", "--config", config, "--state-dir", str(lab.state_dir), "-v")
        assert result.returncode == 0, result.stderr
        assert "change(s)" in result.stderr  # -v after the verb counts
        assert lab.answers() == dict.fromkeys(ALL, True)
        assert domunet("plan", "-c", config, "--state-dir", str(lab.state_dir)).stdout == ""
        status = domunet("status", "--json", "--config", config, "--state-dir", str(lab.state_dir))
        assert status.returncode == 0 and '"eth3"' in status.stdout
        assert domunet("teardown", "--config", config, "--state-dir", str(lab.state_dir)).returncode == 0
        assert lab.dump() == pristine


# --- no traceback, whatever goes wrong --------------------------------------------------------

GUEST_VERBS = [["setup"], ["teardown"], ["plan"], ["status", "--json"]]
DOM0_ACTIONS = [["dom0", "online", "--vif", "vif1.0", "--ip", "192.168.0.200"], ["dom0", "reconcile"]]
START = {"IFACE": "eth1", "LOGICAL": "eth1", "MODE": "start", "ADDRFAM": "inet", "METHOD": "static"}


#: with no `nft` on PATH, also no in-process libnftables (python3-nftables): nftables not installed
NO_NFTABLES = {"DOMUNET_NFT": "command"}


@pytest.mark.parametrize("args", DOM0_ACTIONS, ids=" ".join)
def test_dom0_without_nft_names_the_package_and_changes_nothing(cli_lab, args):
    before = snapshot(cli_lab)
    result = run(cli_lab, "dom0", *args, env={"PATH": path_without(cli_lab, "nft"), **NO_NFTABLES})
    assert_one_line(result, 2, "needs `nft`", "apt-get install nftables")
    assert snapshot(cli_lab) == before


def test_hotplug_without_nft_reports_to_libxl(cli_lab):
    before = snapshot(cli_lab)
    result = hotplug(cli_lab, "online", env={"PATH": path_without(cli_lab, "nft"), **NO_NFTABLES})
    assert_one_line(result, 1, "vif-domunet: online vif1.9: ", "apt-get install nftables")
    assert cli_lab.xenstore_read("backend/vif/1/9/hotplug-status") == "error"
    assert "apt-get install nftables" in cli_lab.xenstore_read("backend/vif/1/9/hotplug-error")
    assert snapshot(cli_lab) == before


def test_lab_without_its_programs_names_them_and_builds_nothing(cli_lab):
    """Judged by this command's own traces, not by the machine's (other labs come and go meanwhile):
    its TMPDIR (where a lab's folder goes) stays empty, and its `ip` (a wrapper that logs, first on
    its PATH) was never asked to add a namespace, not even one removed again."""
    before = snapshot(cli_lab)
    own = cli_lab.workdir / "lab-tmp"
    (own / "bin").mkdir(parents=True)
    calls = cli_lab.workdir / "ip-calls"
    real_ip = subprocess.run(["sh", "-c", "command -v ip"], capture_output=True, text=True).stdout.strip()
    (own / "bin" / "ip").write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec {real_ip} "$@"\n')
    (own / "bin" / "ip").chmod(0o755)
    path = f"{own / 'bin'}:{path_without(cli_lab, 'nft', 'ping')}"
    result = run(cli_lab, "guest", "lab", env={"PATH": path, "TMPDIR": str(own / "bin")})
    assert_one_line(result, 2, "domunet lab needs `nft`, `ping`", "apt-get install iputils-ping nftables")
    assert snapshot(cli_lab) == before
    assert sorted(p.name for p in (own / "bin").iterdir()) == ["ip"]
    assert "netns add" not in (calls.read_text() if calls.exists() else "")


@pytest.mark.parametrize("args", [*GUEST_VERBS, ["ifupdown"], ["changed", "eth1"], ["doctor"],
                                  ["dom0", "offline", "--vif", "vif1.0"], ["dom0", "doctor"]], ids=" ".join)
def test_without_the_python_libraries_names_the_debian_package(cli_lab, args):
    before = snapshot(cli_lab)
    result = run(cli_lab, "dom0" if args[0] == "dom0" else "guest", *args, flags=["-S"], env=START)
    assert_one_line(result, 2, "needs the Python module ", "apt-get install python3-")
    assert snapshot(cli_lab) == before


@pytest.mark.parametrize(("args", "code"), [
    (["setup"], 2), (["teardown"], 2), (["teardown", "eth1"], 2), (["plan"], 0), (["status"], 0), (["ifupdown"], 2),
    (["changed", "eth1", "routable"], 2),
    (["dom0", "offline", "--vif", "vif1.0"], 2), *((args, 2) for args in DOM0_ACTIONS),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_an_unusable_state_directory_is_named(cli_lab, args, code):
    before = snapshot(cli_lab)
    role = "dom0" if args[0] == "dom0" else "guest"
    result = run(cli_lab, role, *args, state=str(cli_lab.workdir / "state-file"), env=START)
    assert_one_line(result, code, "state directory ", "state-file")
    assert snapshot(cli_lab) == before


@pytest.mark.parametrize(("command", "code"), [("online", 1), ("offline", 0)])
def test_hotplug_with_an_unusable_state_directory(cli_lab, command, code):
    before = snapshot(cli_lab)
    result = hotplug(cli_lab, command, state=str(cli_lab.workdir / "state-file"))
    assert_one_line(result, code, "state directory ")
    assert snapshot(cli_lab) == before


@pytest.mark.parametrize("args", [*GUEST_VERBS, ["ifupdown"], ["changed", "eth1"], ["doctor"]], ids=" ".join)
def test_a_config_with_bytes_that_are_not_utf8(cli_lab, args):
    before = snapshot(cli_lab)
    result = run(cli_lab, "guest", *args, config=str(cli_lab.workdir / "bad.conf"), env=START)
    assert_one_line(result, 2, "bad.conf: not valid UTF-8")
    assert snapshot(cli_lab) == before


HOSTILE = [
    (["setup", HUGE], "IFACE argument: "), (["teardown", HUGE], "IFACE argument: "), (["plan", HUGE], "IFACE argument"),
    (["setup", b"eth\xff1"], "IFACE argument: 'eth\\udcff1'"), (["teardown", "eth1;reboot"], "IFACE argument"),
    (["changed", "eth1;reboot", "up"], "IFACE argument"), (["changed", HUGE], "IFACE argument"),
    (["status", "--frobnicate", HUGE], "unrecognized arguments"), (["lab", HUGE], "unrecognized arguments"),
    (["dom0", "online", "--vif", HUGE, "--ip", "192.0.2.5"], "--vif: "),
    (["dom0", "online", "--vif", "vif1.0", "--ip", HUGE], "--ip: "),
    (["dom0", "online", "--vif", "vif1.0", "--ip", b"192.0.2.\xff"], "--ip: "),
    (["dom0", "offline", "--vif", "vif1.0;reboot"], "--vif: "),
    (["dom0", "offline", "--vif", b"vif\xff"], "--vif: "),
    (["doctor", HUGE], "ADDRESS argument"), (["doctor", "192.0.2.1;reboot"], "ADDRESS argument"),
    (["dom0", "doctor", HUGE], "neither a vif name nor an IP address"),
]


@pytest.mark.parametrize(("args", "fragment"), HOSTILE, ids=lambda v: repr(v)[:40])
def test_hostile_arguments(cli_lab, args, fragment):
    before = snapshot(cli_lab)
    result = run(cli_lab, "dom0" if args[0] == "dom0" else "guest", *args)
    assert_one_line(result, 2, fragment)
    assert snapshot(cli_lab) == before


@pytest.mark.parametrize("args", [["setup"], ["status"], ["doctor"], ["dom0", "reconcile"]], ids=" ".join)
def test_a_10kb_config_or_state_path(cli_lab, args):
    before = snapshot(cli_lab)
    role = "dom0" if args[0] == "dom0" else "guest"
    result = run(cli_lab, role, *args, config="/" + HUGE, state="/tmp/" + HUGE)
    line = assert_one_line(result, 2)
    assert "File name too long" in line or "shortened" in line
    assert snapshot(cli_lab) == before


@pytest.mark.parametrize("iface", ["eth1;touch /tmp/domunet-pwned", "$(touch /tmp/domunet-pwned)", HUGE,
                                   "eth1\nMODE=stop"])
def test_hostile_ifupdown_environment(cli_lab, iface):
    if os.path.exists("/tmp/domunet-pwned"):
        os.unlink("/tmp/domunet-pwned")  # left by anything else: the assertion below must be able to fail
    before = snapshot(cli_lab)
    env = {**START, "IFACE": iface}
    assert_one_line(run(cli_lab, "guest", "ifupdown", env=env), 2, "IFACE: ")
    hook = subprocess.run(["ip", "netns", "exec", cli_lab.ns["guest"], "sh", str(shipped("hooks/ifupdown/domunet"))],
                          env={**cli_lab.hook_env(), **env}, capture_output=True, timeout=120)
    assert hook.returncode == 0  # never fails ifup
    assert b"Traceback" not in hook.stderr
    assert not os.path.exists("/tmp/domunet-pwned")
    assert snapshot(cli_lab) == before


@pytest.mark.parametrize("hook", ["hooks/networkd-dispatcher/domunet", "hooks/NetworkManager/90-domunet",
                                  "hooks/dhclient/domunet"])
@pytest.mark.parametrize("iface", ["eth1;touch /tmp/domunet-pwned", "$(touch /tmp/domunet-pwned)", HUGE])
def test_hostile_dispatcher_interface_names(cli_lab, hook, iface):
    """What a dispatcher passes on is never run by a shell, and never fails the dispatcher."""
    if os.path.exists("/tmp/domunet-pwned"):
        os.unlink("/tmp/domunet-pwned")
    before = snapshot(cli_lab)
    args = [iface, "up"] if "NetworkManager" in hook else []
    env = {**cli_lab.hook_env(), **START, "IFACE": iface, "STATE": "routable"}
    argv = ["sh", str(shipped(hook)), *args]
    if "dhclient" in hook:  # dhclient-script sources it, with the lease in its variables
        argv = ["sh", "-c", '. "$0"', str(shipped(hook))]
        env.update(interface=iface, reason="BOUND", new_ip_address="192.168.0.201")
    result = subprocess.run(["ip", "netns", "exec", cli_lab.ns["guest"], *argv],
                            env=env, capture_output=True, timeout=120)
    assert result.returncode == 0
    assert b"Traceback" not in result.stderr
    assert b"IFACE argument" in result.stderr or b"unrecognized" in result.stderr or b"usage" in result.stderr, \
        result.stderr
    assert not os.path.exists("/tmp/domunet-pwned")
    assert snapshot(cli_lab) == before


def test_hotplug_with_a_hostile_vif_name(cli_lab):
    before = snapshot(cli_lab)
    result = hotplug(cli_lab, "online", env={"vif": "vif1.9;reboot" + HUGE})
    assert_one_line(result, 1, "vif-domunet: ")
    assert cli_lab.xenstore_read("backend/vif/1/9/hotplug-status") == "error"
    assert snapshot(cli_lab) == before
