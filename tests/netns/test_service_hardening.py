"""Round 3 (issue 34, C1-C6): the dom0 service and vif-domunet's client cannot be fooled by a
listener that is not the service, stalled by a slow caller or a hung service, killed by one
request, and every entry point keys a vif the same way. Each test fails on 62adf90."""

import difflib
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from tests.dom0service import ask
from tests.labs import NICS, dom0_dump, package_root, wait_until

FAKE_LISTENER = """
import os, socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
if sys.argv[2] != "root":
    os.setgid(65534)
    os.setuid(65534)
listener.listen()  # SO_PEERCRED tells the client who called listen()
print("listening", flush=True)
while True:
    connection, _ = listener.accept()
    connection.recv(65536)
    connection.sendall(b'{"ok":true}\\n')
    connection.close()
    print("answered", flush=True)
"""


def _guarded(lab):
    return lab.run("dom0", "nft", "list", "set", "inet", "domunet", "guarded", check=False).stdout


def _online(lab, devid=1):
    nic = NICS[devid]
    lab.xenstore_write(f"backend/vif/1/{devid}/ip", nic.address)
    return nic, lab.vif_hotplug("online", nic.vif, devid, "type_if=vif")


def _fake(lab, role, path, user):
    process = subprocess.Popen(["ip", "netns", "exec", lab.ns[role], sys.executable, "-c", FAKE_LISTENER,
                                str(path), user], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "listening"
    return process


@pytest.mark.parametrize("who", ["a listener of user nobody", "root's listener in another network namespace"])
def test_vif_domunet_does_not_trust_a_listener_that_is_not_the_service(lab, who):
    """C1: whatever answers {"ok":true} at dom0.sock, only root in dom0's own namespace is the
    service; anything else is ignored and the vif is done in-process: routed, guarded, connected."""
    lab.sysctl("dom0", [f"net/ipv4/conf/{dev}/rp_filter=0" for dev in ("all", "default", "eth0")])
    nobody = who.startswith("a listener of user nobody")
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    fake = _fake(lab, "dom0" if nobody else "guest", lab.state_dir / "dom0.sock", "nobody" if nobody else "root")
    try:
        nic, result = _online(lab)
        assert result.returncode == 0, result.stderr
        assert "dom0.sock not used" in result.stderr
        assert ("uid 65534" if nobody else "another network namespace") in result.stderr
        assert lab.xenstore_read("backend/vif/1/1/hotplug-status") == "connected"
        assert f"{nic.address} dev {nic.vif}" in lab.run("dom0", "ip", "route").stdout
        assert f'"{nic.vif}"' in _guarded(lab)
    finally:
        fake.kill()
        fake.wait()
    assert lab.vif_hotplug("offline", nic.vif, 1).returncode == 0


def test_a_state_directory_that_is_not_roots_alone_is_refused_on_every_path(lab):
    """C1: with a listener of nobody's answering in it, and without one, the state directory must
    be root's: vif-domunet fails the vif as libxl's contract says (hotplug-status error naming the
    directory, exit 1), `domunet dom0 online` exits 2; nothing in dom0 changed."""
    lab.sysctl("dom0", [f"net/ipv4/conf/{dev}/rp_filter=0" for dev in ("all", "default", "eth0")])
    before = dom0_dump(lab)
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    os.chown(lab.state_dir, 65534, 65534)
    fake = _fake(lab, "dom0", lab.state_dir / "dom0.sock", "nobody")
    try:
        for listening in (True, False):
            if not listening:
                fake.kill()
                fake.wait()
                os.unlink(lab.state_dir / "dom0.sock")
            nic, result = _online(lab)
            assert result.returncode == 1, (listening, result.stderr)
            assert str(lab.state_dir) in result.stderr and "root" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert lab.xenstore_read("backend/vif/1/1/hotplug-status") == "error"
            assert "must be owned by root" in lab.xenstore_read("backend/vif/1/1/hotplug-error")
            assert dom0_dump(lab) == before, listening
            (lab.workdir / "empty.conf").write_text("")
            command = lab.run("dom0", sys.executable, "-m", "domunet", "--state-dir", str(lab.state_dir),
                              "--config", str(lab.workdir / "empty.conf"), "dom0", "online", "--vif", nic.vif,
                              "--ip", nic.address, check=False, env={**os.environ, "PYTHONPATH": package_root()})
            assert command.returncode == 2 and "must be owned by root" in command.stderr, command.stderr
            assert dom0_dump(lab) == before, listening
    finally:
        fake.kill()
        fake.wait()
        os.chown(lab.state_dir, 0, 0)


SLOW_CALLER = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
print("connected", flush=True)
for _ in range(600):
    if sys.argv[2] == "drip":
        s.send(b" ")
    time.sleep(0.5)
"""


@pytest.mark.parametrize("how", ["drip", "idle"])
def test_a_slow_or_idle_caller_does_not_hold_up_another_vif(lab, service, how):
    """C2: one caller sending a byte every half second (or nothing at all) while another vif comes
    online: the service serves that vif (not the in-process way after a timeout) while the slow
    caller is still connected or was dropped at its own deadline."""
    running = service()
    slow = subprocess.Popen(["ip", "netns", "exec", lab.ns["dom0"], sys.executable, "-c", SLOW_CALLER,
                             str(running.socket), how], stdout=subprocess.PIPE, text=True)
    try:
        assert slow.stdout.readline().strip() == "connected"
        nic, result = _online(lab)
        assert result.returncode == 0, result.stderr
        assert running.served(nic.vif), running.lines[-10:]
        assert "in-process" not in result.stderr
        wait_until(lambda: any("did not send its request within" in line for line in running.lines),
                   "the slow caller dropped at its deadline")
        assert running.process.poll() is None
    finally:
        slow.kill()
        slow.wait()
    assert lab.vif_hotplug("offline", nic.vif, 1).returncode == 0


def test_a_hung_service_is_passed_over_and_never_does_the_call_twice(lab, service):
    """C3: the service SIGSTOPped (hung): vif-domunet stops waiting for it at its budget's first
    deadline and does the vif in-process, while the service is still stopped; once it goes on,
    it finds the caller gone and does nothing. dom0 holds exactly one online, and offline leaves
    dom0 as before."""
    before = dom0_dump(lab)
    running = service()
    running.process.send_signal(signal.SIGSTOP)
    try:
        nic, result = _online(lab)
        assert running.process.poll() is None
        assert result.returncode == 0, result.stderr
        assert "did not take the call" in result.stderr
        assert lab.xenstore_read("backend/vif/1/1/hotplug-status") == "connected"
    finally:
        running.process.send_signal(signal.SIGCONT)
    dropped = ("went away before its request was queued", "gave up waiting", "refused a caller: cannot tell")
    wait_until(lambda: any(why in line for line in running.lines for why in dropped),
               f"the resumed service dropping the caller that left: {running.lines}")
    assert not running.served(nic.vif)
    assert lab.vif_hotplug("offline", nic.vif, 1).returncode == 0
    after = dom0_dump(lab)
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="")
    assert after == before, "\n".join([*running.lines, *diff])


def test_many_callers_at_once_are_read_together_and_each_is_answered(lab, service):
    """A flood of requests (200 callers, each a malformed request, all connected before any is
    read) beside a real vif: each gets its own answer, the vif is served by the service."""
    running = service()
    code = f"""
import socket
callers = []
for _ in range(200):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect({str(running.socket)!r})
    s.sendall(b'{{"op": "reboot"}}\\n')
    s.shutdown(socket.SHUT_WR)
    callers.append(s)
answers = 0
for s in callers:
    s.settimeout(30)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    answers += b"unknown op" in data
print(answers)
"""
    flood = subprocess.Popen(["ip", "netns", "exec", lab.ns["dom0"], sys.executable, "-c", code],
                             stdout=subprocess.PIPE, text=True)
    nic, result = _online(lab)
    assert flood.wait(120) == 0
    assert flood.stdout.read().strip() == "200"
    assert result.returncode == 0 and running.served(nic.vif), "\n".join([result.stderr, *running.lines])
    assert lab.vif_hotplug("offline", nic.vif, 1).returncode == 0


def test_a_request_nested_30000_deep_gets_one_line_and_the_service_goes_on(lab, service):
    """C4: 30,000 `[` killed the service (RecursionError), and every caller of its batch with it."""
    running = service()
    answer = ask(lab, "dom0", b"[" * 30000 + b"\n")
    assert answer["ok"] is False and answer["kind"] == "usage" and "nested too deeply" in answer["error"]
    assert running.process.poll() is None
    nic, result = _online(lab)
    assert result.returncode == 0 and running.served(nic.vif)
    assert lab.vif_hotplug("offline", nic.vif, 1).returncode == 0


def test_a_vif_brought_online_by_the_command_line_goes_with_libxls_offline(lab):
    """C5: `domunet dom0 online --vif vif1.0` keyed its record vif1.0; libxl's offline asks for
    xen-1-0 and found nothing, leaving routes, proxies, guard elements and the claim behind."""
    lab.sysctl("dom0", [f"net/ipv4/conf/{dev}/rp_filter=0" for dev in ("all", "default", "eth0")])
    before = dom0_dump(lab)
    env = {**os.environ, "PYTHONPATH": package_root()}
    (lab.workdir / "empty.conf").write_text("")
    argv = [sys.executable, "-m", "domunet", "--state-dir", str(lab.state_dir),
            "--config", str(lab.workdir / "empty.conf")]
    for devid in (0, 3):
        nic = NICS[devid]
        lab.run("dom0", *argv, "dom0", "online", "--vif", nic.vif, "--ip", nic.address, env=env)
    assert sorted(p.name for p in (lab.state_dir / "dom0").glob("vif-*.json")) == ["vif-xen-1-0.json",
                                                                                   "vif-xen-1-3.json"]
    for devid in (0, 3):
        assert lab.vif_hotplug("offline", NICS[devid].vif, devid).returncode == 0
    assert dom0_dump(lab) == before
    assert not list((lab.state_dir / "dom0").glob("vif-*.json"))


@pytest.mark.parametrize("message", [
    {"op": "offline", "key": "xen-9-0\n", "vif": None},
    {"op": "online", "request": {"key": "xen-9-0\n", "vif": "vif9.0", "guest": ["192.168.0.210"]}},
    {"op": "online", "request": {"key": "xen-9-0", "vif": "vif9.0\n", "guest": ["192.168.0.210"]}},
    {"op": "online", "request": {"key": "xen-9-0", "vif": "vif9.0", "guest": ["192.168.0.210"],
                                 "xenbus_path": "backend/vif/9/0\n"}},
])
def test_a_trailing_newline_in_a_key_name_or_path_is_refused(lab, service, message):
    """C6: `$` accepted "xen-9-0\\n": a record file with a newline in its name, and domain 9
    claiming an address."""
    running = service()
    before = dom0_dump(lab)
    answer = ask(lab, "dom0", json.dumps(message).encode() + b"\n")
    assert answer["ok"] is False and answer["kind"] == "usage", answer
    assert dom0_dump(lab) == before
    assert not list((lab.state_dir / "dom0").glob("vif-*"))
    assert running.process.poll() is None


def test_a_batch_waiting_on_the_worker_does_not_keep_new_callers_from_being_queued(lab, service):
    """The reader says "queued" while the worker is busy: callers that arrive during a batch are
    not timed out by the client's ACK deadline (the worker is held by the dom0 lock here)."""
    running = service()
    holder = subprocess.Popen(["ip", "netns", "exec", lab.ns["dom0"], sys.executable, "-c",
                               "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(8)",
                               str(lab.state_dir / "dom0" / "lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        results = {}
        threads = [threading.Thread(target=lambda d=d: results.__setitem__(d, _online(lab, d)[1])) for d in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        holder.kill()
        holder.wait()
    assert all(r.returncode == 0 for r in results.values()), {d: r.stderr for d, r in results.items()}
    assert all(running.served(NICS[d].vif) for d in (1, 2)), running.lines[-10:]
    for devid in (1, 2):
        assert lab.vif_hotplug("offline", NICS[devid].vif, devid).returncode == 0
