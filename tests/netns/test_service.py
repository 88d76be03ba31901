"""`domunet dom0 serve` (issue 23) in the lab's dom0: vif-domunet hands it each vif over dom0.sock;
without it (stopped, killed, another namespace, not root) the work is done in-process as before."""

import configparser
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading

import pytest

from tests.dom0service import ask
from tests.labs import NICS, Monitor, dom0_dump, package_root, wait_until
from tests.shipped import shipped

ALL = [nic.address for nic in NICS]


def test_vif_domunet_hands_every_vif_to_the_service_and_offline_leaves_dom0_as_before(lab, service, domunet):
    before = dom0_dump(lab)
    running = service()
    lab.route_dom0_with_vif_domunet()  # each vif's hotplug-status checked: connected
    assert all(running.served(nic.vif) for nic in NICS), running.lines[-20:]
    assert domunet("setup").returncode == 0
    assert lab.answers() == dict.fromkeys(ALL, True)
    for devid, nic in enumerate(NICS):
        assert lab.vif_hotplug("offline", nic.vif, devid).returncode == 0
    assert dom0_dump(lab) == before
    assert running.stop() == 0
    assert not running.socket.exists()


def test_without_a_service_and_after_it_stops_vifs_still_come_online(lab, service):
    """A vif never fails because the service is down: stopped (socket gone) or killed (socket left)."""
    running = service()
    running.stop(signal.SIGKILL)
    assert running.socket.exists()  # a dead service's socket: connecting is refused
    lab.route_dom0_with_vif_domunet()  # each vif's hotplug-status checked: connected
    assert not running.served("vif1.0")
    assert running.stop() is not None
    os.unlink(running.socket)  # as a stopped service leaves it: no socket at all
    for devid, nic in enumerate(NICS):
        assert lab.vif_hotplug("offline", nic.vif, devid).returncode == 0
    lab.route_dom0_with_vif_domunet()


def test_the_socket_is_root_only_and_refuses_a_caller_that_is_not_root(lab, service):
    running = service()
    assert (os.stat(running.socket).st_mode & 0o777) == 0o600
    assert ask(lab, "dom0", b"{}\n", uid=65534) == {"connect": "Permission denied"}
    os.chmod(lab.workdir, 0o711)  # past the folders' and the file's modes, the service itself still checks
    os.chmod(running.socket, 0o666)
    answer = ask(lab, "dom0", b'{"op": "offline", "key": "vif1.0", "vif": null}\n', uid=65534)
    assert answer["ok"] is False and answer["kind"] == "refused" and "only root" in answer["error"]


@pytest.mark.parametrize("data, said", [
    (b"not json\n", "not JSON"),
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"op": "reboot"}\n', "unknown op"),
    (b'{"op": "online", "request": {"key": "x;rm -rf /", "vif": "vif1.0", "guest": ["192.0.2.5"]}}\n', "key"),
    (b'{"op": "online", "request": {"key": "xen-1-0", "vif": "vif1.0", "guest": ["0.0.0.0/0"]}}\n',
     "cannot be a guest address"),
    (b'{"op": "offline", "key": "xen-1-0", "vif": "$(id)"}\n', "not a valid interface name"),
    (b'{"op": "online", "request": "' + b"x" * 70000 + b'"}\n', "longer than"),
])
def test_a_malformed_or_oversized_request_gets_one_line_and_changes_nothing(lab, service, data, said):
    running = service()
    before = dom0_dump(lab)
    answer = ask(lab, "dom0", data)
    assert answer["ok"] is False and answer["kind"] == "usage", answer
    assert said in answer["error"] and "\n" not in answer["error"]
    assert dom0_dump(lab) == before
    assert running.process.poll() is None  # and the service goes on


def test_a_caller_in_another_namespace_is_refused_and_works_in_process(lab, service):
    running = service()
    answer = ask(lab, "guest", b'{"op": "offline", "key": "vif1.0", "vif": null}\n')
    assert answer["ok"] is False and answer["kind"] == "refused" and "another network namespace" in answer["error"]
    assert running.process.poll() is None


def test_a_service_killed_mid_online_is_reconciled_by_the_next_and_offline_cleans_up(lab, service):
    """The kill lands while the service changes dom0 (ip monitor sees its first route or proxy entry);
    vif-domunet then finishes the online in-process, the next service reconciles, offline cleans up."""
    lab.xenstore_write("backend/vif/1/3/ip", "2001:db8:4309:2388::50 192.168.0.203")
    before = dom0_dump(lab)
    landed = 0
    for attempt in range(5):
        running = service()
        monitor = Monitor(lab.ns["dom0"], "route", "neigh")
        results = []
        try:
            hotplug = threading.Thread(target=lambda out=results: out.append(lab.vif_hotplug("online", "vif1.3", 3)))
            hotplug.start()
            monitor.wait_for(lambda line: "192.168.0.203" in line or "2001:db8:4309:2388::50" in line)
            running.stop(signal.SIGKILL)
            hotplug.join(120)
        finally:
            monitor.process.terminate()
            monitor.process.wait()
        assert results and results[0].returncode == 0, results
        assert lab.xenstore_read("backend/vif/1/3/hotplug-status") == "connected"
        landed += "went away" in results[0].stderr
        again = service()  # reconciles to exactly the records
        assert lab.vif_hotplug("offline", "vif1.3", 3).returncode == 0
        assert dom0_dump(lab) == before, f"attempt {attempt}"
        again.stop()
        if landed:
            break
    assert landed, "no kill landed before the service answered"


def test_a_second_service_for_the_same_state_directory_is_refused(lab, service):
    service()
    second = subprocess.run(["ip", "netns", "exec", lab.ns["dom0"], sys.executable, "-m", "domunet",
                             "--state-dir", str(lab.state_dir), "dom0", "serve"],
                            env={**os.environ, "PYTHONPATH": package_root()}, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 2 and "another domunet dom0 serve is running" in second.stderr


def test_the_light_client_imports_nothing_but_itself():
    """While the service runs, this is all a vif's hotplug costs (issue 23): no pyroute2, argparse,
    logging, json, socket or re (the last three alone cost as much as the interpreter)."""
    code = ("import sys; before = set(sys.modules); import domunet.entry, domunet.dom0.client; "
            "print(sorted(set(sys.modules) - before))")
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": package_root()})
    assert result.returncode == 0, result.stderr
    # without site (-S), os and what it needs come in here too; a normal start has them already.
    # errno is built into the interpreter (no file read): Python 3.13's _socket brings it in.
    started_anyway = {"os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc", "__future__",
                      "errno"}
    assert set(eval(result.stdout)) - started_anyway == {
        "domunet", "domunet.entry", "domunet.dom0", "domunet.dom0.client", "_socket"}


def _online_together(lab, running, vifs):
    """Hotplug calls for these (vif, devid) that reach the service together: it is stopped
    (SIGSTOP) while they connect, then goes on and finds them all waiting."""
    for vif, devid in vifs:
        lab.xenstore_write(f"backend/vif/1/{devid}/ip", next(n.address for n in NICS if n.vif == vif))
    running.process.send_signal(signal.SIGSTOP)
    results = {}
    threads = [threading.Thread(target=lambda v=vif, d=devid: results.__setitem__(
        v, lab.vif_hotplug("online", v, d, "type_if=vif"))) for vif, devid in vifs]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: _waiting(lab, running) >= len(vifs), "every call waiting on dom0.sock")
    finally:
        running.process.send_signal(signal.SIGCONT)
    return threads, results


def _waiting(lab, running):
    """Connections queued on dom0.sock, not yet accepted (ss: Recv-Q of the listening socket)."""
    shown = lab.run("dom0", "ss", "-xlH", "src", str(running.socket), check=False).stdout.split()
    return int(shown[2]) if len(shown) > 2 and shown[2].isdigit() else 0


def test_vifs_that_arrive_together_are_one_batch_and_all_come_online(lab, service, domunet):
    running = service()
    threads, results = _online_together(lab, running, [(nic.vif, devid) for devid, nic in enumerate(NICS)])
    for thread in threads:
        thread.join(120)
    assert {vif: r.returncode for vif, r in results.items()} == {nic.vif: 0 for nic in NICS}
    assert [lab.xenstore_read(f"backend/vif/1/{d}/hotplug-status") for d in range(4)] == ["connected"] * 4
    assert any(f"{len(NICS)} hotplug calls in one batch" in line for line in running.lines), running.lines[-20:]
    assert domunet("setup").returncode == 0
    assert lab.answers() == dict.fromkeys(ALL, True)


def test_a_service_killed_mid_batch_leaves_every_vif_online_and_the_next_reconciles_to_the_records(lab, service):
    """The kill lands after the batch's vifs are done and before their callers are answered: the
    service is held at its first hotplug-status write (a stand-in xenstore-write that waits while a
    file exists), so the race is won every time, on a busy machine too. The callers left without an
    answer do their vif in-process; the next service reconciles; dom0 then holds exactly what the
    records say."""
    before = dom0_dump(lab)
    hold, seen = lab.workdir / "hold", lab.workdir / "hold.seen"
    write = lab.bin / "xenstore-write"
    original = write.read_text()
    write.write_text(f'#!/bin/sh\ncase "$*" in *hotplug-status*) [ -e "{hold}" ] && touch "{seen}"\n'
                     f'    while [ -e "{hold}" ]; do sleep 0.05; done ;; esac\n' + original.split("\n", 1)[1])
    hold.touch()
    running = service()
    try:
        threads, results = _online_together(lab, running, [(nic.vif, devid) for devid, nic in enumerate(NICS)])
        wait_until(seen.exists, "the service writing its batch's first hotplug-status")
        running.stop(signal.SIGKILL)
    finally:
        hold.unlink()
        write.write_text(original)
    for thread in threads:
        thread.join(120)
    assert {vif: r.returncode for vif, r in results.items()} == {nic.vif: 0 for nic in NICS}
    assert [lab.xenstore_read(f"backend/vif/1/{d}/hotplug-status") for d in range(4)] == ["connected"] * 4
    assert any("went away" in r.stderr for r in results.values()), "the kill came after every answer"
    service()  # reconciles
    argv = ["--config", str(lab.workdir / "empty.conf"), "--state-dir", str(lab.state_dir), "dom0", "status",
            "--json"]
    shown = json.loads(lab.run("dom0", sys.executable, "-m", "domunet", *argv,
                               env={**os.environ, "PYTHONPATH": package_root()}).stdout)
    assert sorted(row["vif"] for row in shown["vifs"]) == sorted(nic.vif for nic in NICS)
    assert all(row["kernel_matches"] for row in shown["vifs"]), shown
    table = lab.run("dom0", "nft", "list", "set", "inet", "domunet", "guarded").stdout
    assert sorted(re.findall(r'"(vif[0-9.]+)"', table)) == sorted(nic.vif for nic in NICS)
    for devid, nic in enumerate(NICS):
        assert lab.vif_hotplug("offline", nic.vif, devid).returncode == 0
    assert dom0_dump(lab) == before


def test_the_table_deleted_behind_the_services_back_is_loaded_whole_at_the_next_vif(lab, service):
    running = service()
    for devid, nic in enumerate(NICS[:2]):
        lab.xenstore_write(f"backend/vif/1/{devid}/ip", nic.address)
        assert lab.vif_hotplug("online", nic.vif, devid, "type_if=vif").returncode == 0
    lab.run("dom0", "nft", "delete", "table", "inet", "domunet")
    lab.xenstore_write("backend/vif/1/2/ip", NICS[2].address)
    assert lab.vif_hotplug("online", NICS[2].vif, 2, "type_if=vif").returncode == 0
    assert running.served(NICS[2].vif)
    table = lab.run("dom0", "nft", "list", "table", "inet", "domunet").stdout
    assert sorted(set(re.findall(r'"(vif[0-9.]+)"', table))) == sorted(nic.vif for nic in NICS[:3])
    assert "counter" in table  # the chains, not only the sets


def test_the_unit_runs_the_service_and_it_says_ready_once_it_listens(lab, tmp_path):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(shipped("data/systemd/domunet-dom0.service"))
    service = unit["Service"]
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "xendomains.service" in unit["Unit"]["Before"]
    command = shlex.split(service["ExecStart"])
    assert command[:1] == ["/usr/bin/domunet"] and command[1:] == ["dom0", "serve"]
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(30)
        env = {**os.environ, "PYTHONPATH": package_root(), "NOTIFY_SOCKET": path}
        process = subprocess.Popen(["ip", "netns", "exec", lab.ns["dom0"], sys.executable, "-m", "domunet",
                                    "--state-dir", str(lab.state_dir), *command[1:]], env=env,
                                   stderr=subprocess.PIPE, text=True)
        try:
            assert listener.recv(100) == b"READY=1"
            assert (lab.state_dir / "dom0.sock").exists()  # ready means listening
            process.send_signal(signal.SIGTERM)
            assert listener.recv(100) == b"STOPPING=1"
            assert process.wait(30) == 0, process.stderr.read()
        finally:
            process.kill()
            process.wait()
    assert not (lab.state_dir / "dom0.sock").exists()


def test_dom0_status_lists_every_vif_and_names_what_the_kernel_lost(lab, service):
    running = service()
    lab.route_dom0_with_vif_domunet()
    argv = ["--config", str(lab.workdir / "empty.conf"), "--state-dir", str(lab.state_dir), "dom0", "status"]
    shown = json.loads(lab.run("dom0", sys.executable, "-m", "domunet", *argv, "--json",
                               env={**os.environ, "PYTHONPATH": package_root()}).stdout)
    assert shown["service"] is True
    lengths = {4: 32, 6: 128}
    assert {row["vif"]: row["guest"] for row in shown["vifs"]} == {
        nic.vif: [f"{nic.address}/{lengths[nic.version]}"] for nic in NICS}
    assert all(row["kernel_matches"] for row in shown["vifs"]), shown
    lab.run("dom0", "ip", "route", "del", "192.168.0.201/32", "dev", "vif1.1")
    lab.run("dom0", "ip", "-6", "neigh", "del", "proxy", "2001:db8:4309:2388::50", "dev", "eth0")
    running.stop()
    shown = json.loads(lab.run("dom0", sys.executable, "-m", "domunet", *argv, "--json",
                               env={**os.environ, "PYTHONPATH": package_root()}).stdout)
    rows = {row["vif"]: row for row in shown["vifs"]}
    assert shown["service"] is False
    assert rows["vif1.1"]["missing"] == ["route 192.168.0.201/32"]
    assert rows["vif1.3"]["missing"] == ["proxy 2001:db8:4309:2388::50 on eth0"]
    assert rows["vif1.0"]["kernel_matches"] and rows["vif1.2"]["kernel_matches"]
    text = lab.run("dom0", sys.executable, "-m", "domunet", *argv, env={**os.environ, "PYTHONPATH": package_root()})
    assert "MISSING route 192.168.0.201/32" in text.stdout and "not running" in text.stdout
