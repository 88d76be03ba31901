"""vif-domunet's way to the dom0 service: hand libxl's call, as it came, to `domunet dom0 serve`.

This is all a vif's hotplug costs while the service runs: the interpreter, this module, and
os and _socket (no pyroute2, no argparse, no logging, nothing of domunet's; not even `socket`
and `json`, which import enum and re: 15 ms, as much again as the interpreter itself; json is
imported only to read an error). The service reads
xenstore, checks the request, does the work and writes hotplug-status (`connected`, or `error`
with hotplug-error) exactly as the in-process way does (domunet.dom0.hotplug). When no service
answers (none runs, it refuses this caller, or it went away), the caller does it in-process.
"""

from __future__ import annotations

import _socket
import os
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


_ESCAPES = {**{code: f"\\u{code:04x}" for code in range(0x20)}, ord('"'): '\\"', ord("\\"): "\\\\"}


def _string(text: str) -> str:
    """A JSON string (what json.dumps makes of it, without importing json)."""
    return '"' + text.translate(_ESCAPES) + '"'


def message(command: str, settings: list[str], env: dict[str, str]) -> bytes:
    pairs = dict(s.split("=", 1) for s in settings if "=" in s)
    fields = ",".join(f"{_string(k)}:{_string(v)}" for k, v in pairs.items())
    values = ",".join(f"{_string(name)}:{_string(env.get(name) or '')}" for name in ENVIRONMENT)
    text = f'{{"op":"hotplug","command":{_string(command)},"settings":{{{fields}}},"env":{{{values}}}}}\n'
    return text.encode("utf-8", "surrogateescape")


def hand_over(command: str, settings: list[str], env: dict[str, str]) -> int | str:
    """The exit status when the service did the call; NO_SERVICE or GONE when it did not (GONE:
    it took the call and went away before it answered, and may have done part of it)."""
    client = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        client.settimeout(ANSWER_TIMEOUT)
        client.connect(socket_path(env))
    except OSError:
        client.close()
        return NO_SERVICE
    try:
        client.sendall(message(command, settings, env))
        client.shutdown(_socket.SHUT_WR)
        data = b""
        while len(data) <= MAX_ANSWER and (chunk := client.recv(65536)):
            data += chunk
    except OSError:
        return GONE
    finally:
        client.close()
    if data == OK:
        return 0
    import json

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


#: The service's answer when the call worked (domunet.dom0.wire.encode({"ok": True})).
OK = b'{"ok":true}\n'
