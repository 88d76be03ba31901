#!/usr/bin/python3
"""The xen-lab agent: runs commands for the host over a serial line, inside dom0 and the guest.

Installed in both images as /usr/local/sbin/xenlab-agent and started by systemd on a console
(dom0: /dev/ttyS1, QEMU's second serial port; guest: /dev/hvc0, its Xen console). Requests
and answers are single lines with a marker, so kernel messages on the same line are ignored:
    @@XL REQ <id> <base64 JSON {"argv": [...], "timeout": s, "stdin": text}>
    @@XL RES <id> <base64 JSON {"rc": n, "stdout": text, "stderr": text}>
In dom0, a request {"guest": {...}} is passed on to the guest's console (the pty xenconsoled
gives it, as `xl console` uses) and its answer is passed back. Standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
import termios
import time
import tty

MARK = b"@@XL "


def encode(kind: str, ident: str, payload: dict) -> bytes:
    data = base64.b64encode(json.dumps(payload).encode()).decode()
    return f"\r\n@@XL {kind} {ident} {data}\r\n".encode()


def decode(line: bytes) -> tuple[str, str, dict] | None:
    at = line.find(MARK)
    if at < 0:
        return None
    parts = line[at + len(MARK):].split()
    if len(parts) < 2:
        return None
    if len(parts) == 2:
        return parts[0].decode(errors="replace"), parts[1].decode(errors="replace"), {}
    try:
        return parts[0].decode(), parts[1].decode(), json.loads(base64.b64decode(parts[2]))
    except ValueError:
        return None


def raw(fd: int) -> None:
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def lines(fd: int, deadline: float | None = None):
    """Lines from fd until the deadline (None: forever)."""
    buffer = b""
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if wait == 0.0:
            return
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            time.sleep(0.1)
            continue
        buffer += chunk
        *complete, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
        yield from (line for line in complete if line)


def write_all(fd: int, data: bytes) -> None:
    while data:
        done = os.write(fd, data)
        data = data[done:]


def run(request: dict) -> dict:
    try:
        result = subprocess.run(request["argv"], input=request.get("stdin", ""), capture_output=True, text=True,
                                errors="replace", timeout=request.get("timeout", 120))
        return {"rc": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
    except subprocess.TimeoutExpired as error:
        return {"rc": 124, "stdout": "", "stderr": f"xenlab-agent: timed out after {error.timeout} s"}
    except OSError as error:
        return {"rc": 127, "stdout": "", "stderr": f"xenlab-agent: {error}"}


def guest_console(name: str) -> str:
    domid = subprocess.run(["xl", "domid", name], capture_output=True, text=True, timeout=30).stdout.strip()
    if not domid:
        raise OSError(f"no domain named {name}")
    tty_path = subprocess.run(["xenstore-read", f"/local/domain/{domid}/console/tty"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    if not tty_path:
        raise OSError(f"domain {domid} has no console tty yet")
    return tty_path


def forward(ident: str, request: dict, name: str) -> dict:
    """Pass a request on to a guest's agent (the domain of that name) and wait for its answer."""
    timeout = request.get("timeout", 120) + 30
    try:
        fd = os.open(guest_console(name), os.O_RDWR | os.O_NOCTTY)
    except OSError as error:
        return {"rc": 125, "stdout": "", "stderr": f"xenlab-agent: guest console: {error}"}
    try:
        raw(fd)
        write_all(fd, encode("REQ", ident, request))
        for line in lines(fd, time.monotonic() + timeout):
            message = decode(line)
            if message and message[0] == "RES" and message[1] == ident:
                return message[2]
        return {"rc": 124, "stdout": "", "stderr": "xenlab-agent: the guest did not answer"}
    finally:
        os.close(fd)


def main() -> int:
    device = sys.argv[1]
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
    raw(fd)
    write_all(fd, encode("READY", "0", {"host": os.uname().nodename}))
    for line in lines(fd):
        message = decode(line)
        if not message or message[0] != "REQ":
            continue
        _, ident, request = message
        if "guest" in request:
            answer = forward(ident, request["guest"], request.get("domain", "guest"))
        else:
            answer = run(request)
        write_all(fd, encode("RES", ident, answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
