"""vif-domunet's way to the dom0 service: hand libxl's call, as it came, to `domunet dom0 serve`.

This is all a vif's hotplug costs while the service runs: the interpreter, this module, and
os/socket/json (no pyroute2, no argparse, no logging, nothing of domunet's). The service reads
xenstore, checks the request, does the work and writes hotplug-status (`connected`, or `error`
with hotplug-error) exactly as the in-process way does (domunet.dom0.hotplug). When no service
answers (none runs, it refuses this caller, or it went away), the caller does it in-process.
"""

from __future__ import annotations

import json
import os
import socket
import sys

#: A service busy with a boot storm answers later; one vif takes well under a second.
ANSWER_TIMEOUT = 120.0
MAX_ANSWER = 64 * 1024
#: The parts of libxl's environment the work reads (the rest of it is the service's own).
ENVIRONMENT = ("vif", "XENBUS_PATH", "netdev")
#: What `hand_over` returns when the caller must do the work itself.
NO_SERVICE, GONE = "no service", "gone"


def socket_path(env: dict[str, str]) -> str:
    return os.path.join(env.get("DOMUNET_STATE_DIR") or "/run/domunet", "dom0.sock")


def message(command: str, settings: list[str], env: dict[str, str]) -> bytes:
    pairs = dict(s.split("=", 1) for s in settings if "=" in s)
    body = {"op": "hotplug", "command": command, "settings": pairs,
            "env": {name: env.get(name) or "" for name in ENVIRONMENT}}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def hand_over(command: str, settings: list[str], env: dict[str, str]) -> int | str:
    """The exit status when the service did the call; NO_SERVICE or GONE when it did not (GONE:
    it took the call and went away before it answered, and may have done part of it)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.settimeout(ANSWER_TIMEOUT)
        client.connect(socket_path(env))
    except OSError:
        client.close()
        return NO_SERVICE
    with client:
        try:
            client.sendall(message(command, settings, env))
            client.shutdown(socket.SHUT_WR)
            data = b""
            while len(data) <= MAX_ANSWER and (chunk := client.recv(65536)):
                data += chunk
        except OSError:
            return GONE
    try:
        answer = json.loads(data.decode())
        ok, kind, error = bool(answer["ok"]), answer.get("kind"), str(answer.get("error") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return GONE  # no answer, or not one this client understands: it may have done part of it
    if not ok and kind == "refused":
        return NO_SERVICE  # another network namespace: not this service's vifs
    if error:
        sys.stderr.write(f"vif-domunet: {command} {env.get('vif', '')}: {error[:400]}\n")
    if ok:
        return 0
    return 2 if kind == "usage" else 1
