"""The dom0 service in the lab's dom0, for the namespace tests: `domunet -v dom0 serve` with its
log collected, and raw requests to its socket."""

import json
import os
import signal
import subprocess
import sys
import threading

from tests.labs import package_root, wait_until


class Service:
    """`domunet -v dom0 serve` in the lab's dom0, its stderr collected."""

    def __init__(self, lab):
        self.lab = lab
        self.socket = lab.state_dir / "dom0.sock"
        env = {**os.environ, **lab.xen_env(0), "PYTHONPATH": package_root()}
        argv = ["ip", "netns", "exec", lab.ns["dom0"], sys.executable, "-m", "domunet", "-v",
                "--config", str(lab.workdir / "empty.conf"), "--state-dir", str(lab.state_dir), "dom0", "serve"]
        (lab.workdir / "empty.conf").write_text("")
        self.process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_until(lambda: any("serving on" in line for line in self.lines) or self.process.poll() is not None,
                   "the service listening")
        assert self.process.poll() is None, "\n".join(self.lines)

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def stop(self, sig=signal.SIGTERM):
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)
        return self.process.returncode

    def served(self, vif):
        return any(f"{vif}: online:" in line for line in self.lines)


def ask(lab, role, data, uid=None):
    """Send raw bytes to dom0.sock from a namespace (as root, or as uid); the answer, parsed."""
    code = f"""
import json, os, socket, sys
if {uid!r} is not None:
    os.setgid({uid!r} or 0); os.setuid({uid!r})
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect({str(lab.state_dir / "dom0.sock")!r})
except OSError as error:
    print(json.dumps({{"connect": error.strerror}})); sys.exit()
s.sendall(sys.stdin.buffer.read())
s.shutdown(socket.SHUT_WR)
data = b""
while chunk := s.recv(65536):
    data += chunk
sys.stdout.write(data.decode())
"""
    result = subprocess.run(["ip", "netns", "exec", lab.ns[role], sys.executable, "-c", code], input=data,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
