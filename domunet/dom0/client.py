"""vif-domunet's client of the dom0 service: hand libxl's call, as it came, to `domunet dom0 serve`.

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

#: libxl gives a hotplug script 40 s (LIBXL_HOTPLUG_TIMEOUT), then kills it and fails the vif. The
#: client's budget (docs/reliability.md, "The hotplug time budget"): connect, then the service's
#: "queued" within ACK_WITHIN (its reader never waits on the work or on other callers: a hung or
#: stopped service is found out here), then the answer within ANSWER_WITHIN. A request the service
#: cannot start within START_WITHIN of reading it is answered "late", untouched, and done in-process.
CONNECT_TIMEOUT = 1.0
ACK_WITHIN = 5.0
START_WITHIN = 10.0
ANSWER_WITHIN = 20.0
MAX_ANSWER = 64 * 1024
#: The parts of libxl's environment the work reads (the rest of it is the service's own).
ENVIRONMENT = ("vif", "XENBUS_PATH", "netdev")
#: What `hand_over` returns when the caller must do the work itself.
NO_SERVICE, GONE = "no service", "gone"
#: The service's first line to a caller that asked for it: it has the request and will answer.
QUEUED = b'{"queued":true}\n'
#: An answer's kinds (the wire protocol: domunet.dom0.wire): the request was not valid, the work
#: failed (dom0 is as before), or this service does not serve the caller (another network
#: namespace): then the caller works in-process. "late": it could not be started within the
#: caller's start_within (untouched: done in-process).
USAGE, FAILED, REFUSED, LATE = "usage", "failed", "refused", "late"


def socket_path(env: dict[str, str]) -> str:
    return os.path.join(env.get("DOMUNET_STATE_DIR") or "/run/domunet", "dom0.sock")


_ESCAPES = {**{code: f"\\u{code:04x}" for code in range(0x20)}, ord('"'): '\\"', ord("\\"): "\\\\"}


def _string(text: str) -> str:
    """A JSON string (what json.dumps makes of it, without importing json)."""
    return '"' + text.translate(_ESCAPES) + '"'


def settings_of(arguments: list[str]) -> dict[str, str]:
    """libxl's extra arguments (KEY=VALUE ...) as a mapping; a word without `=` is not a setting."""
    return dict(argument.split("=", 1) for argument in arguments if "=" in argument)


def message(command: str, settings: list[str], env: dict[str, str]) -> bytes:
    pairs = settings_of(settings)
    fields = ",".join(f"{_string(k)}:{_string(v)}" for k, v in pairs.items())
    values = ",".join(f"{_string(name)}:{_string(env.get(name) or '')}" for name in ENVIRONMENT)
    text = (f'{{"op":"hotplug","command":{_string(command)},"settings":{{{fields}}},"env":{{{values}}},'
            f'"ack":true,"start_within":{START_WITHIN}}}\n')
    return text.encode("utf-8", "surrogateescape")


def unsafe_directory(path: str) -> str | None:
    """Why dom0.sock in this state directory must not be trusted (None: it may): the directory must
    be root's and writable by root only, as every other path demands (domunet.core.state.check_dir)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None  # nothing listens there: the in-process way makes and checks the directory
    if info.st_mode & 0o170000 != 0o040000:  # S_ISDIR, without importing stat
        return f"{path} is not a directory"
    if os.geteuid() == 0 and (info.st_uid != 0 or info.st_mode & 0o022):
        return f"{path} is not root's alone (owner uid {info.st_uid}, mode {info.st_mode & 0o7777:o})"
    return None


def unsafe_server(client: _socket.socket) -> str | None:
    """Why the listener on dom0.sock is not the dom0 service (None: it is): it must be root, in
    this network namespace (a service of another namespace would configure that one's vifs)."""
    credentials = client.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    pid, uid = (int.from_bytes(credentials[i:i + 4], sys.byteorder) for i in (0, 4))
    if uid != 0:
        return f"its listener is uid {uid}, not root"
    try:
        theirs, ours = os.stat(f"/proc/{pid}/ns/net"), os.stat("/proc/self/ns/net")
    except OSError as error:
        return f"cannot tell its listener's network namespace ({error.strerror})"
    if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
        return "its listener is in another network namespace"
    return None


def _line(client: _socket.socket, data: bytes, timeout: float) -> tuple[bytes, bytes]:
    """The next line the service sends (and what came after it); b"" at its end of stream.
    The timeout is per read: the server is root's own service (unsafe_server)."""
    client.settimeout(timeout)
    while b"\n" not in data and len(data) <= MAX_ANSWER and (chunk := client.recv(65536)):
        data += chunk
    line, _, rest = data.partition(b"\n")
    return (line + b"\n" if line else b""), rest


def hand_over(command: str, settings: list[str], env: dict[str, str]) -> int | str:
    """The exit status when the service did the call; NO_SERVICE or GONE when it did not (GONE:
    it took the call and went away before it answered, and may have done part of it)."""
    path = socket_path(env)
    if unsafe_directory(os.path.dirname(path)):
        return NO_SERVICE  # the in-process way refuses the directory, in the one line it says
    client = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        client.settimeout(CONNECT_TIMEOUT)
        client.connect(path)
        unsafe = unsafe_server(client)
    except TimeoutError:
        client.close()
        sys.stderr.write(f"vif-domunet: the dom0 service did not accept within {CONNECT_TIMEOUT:.0f} s "
                         "(its backlog is full): doing it in-process\n")
        return NO_SERVICE
    except OSError:
        client.close()
        return NO_SERVICE  # none listens: the in-process way, silently (the service is optional)
    if unsafe:
        client.close()
        sys.stderr.write(f"vif-domunet: dom0.sock not used: {unsafe}\n")
        return NO_SERVICE
    try:
        client.sendall(message(command, settings, env))
        client.shutdown(_socket.SHUT_WR)
        try:
            queued, rest = _line(client, b"", ACK_WITHIN)
        except TimeoutError:
            sys.stderr.write(f"vif-domunet: the dom0 service did not take the call within {ACK_WITHIN:.0f} s "
                             "(hung or stopped?): doing it in-process\n")
            return NO_SERVICE  # it never started: a late reader finds this caller gone and drops it
        if queued != QUEUED:
            data = queued + rest  # a service that answers at once (a refusal, a malformed request)
        else:
            data, rest = _line(client, rest, ANSWER_WITHIN)
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
    if not ok and kind in (REFUSED, LATE):
        return NO_SERVICE  # not this service's vifs, or not started in time: untouched
    if error:
        sys.stderr.write(f"vif-domunet: {command} {env.get('vif', '')}: {error[:400]}\n")
    if ok:
        return 0
    return 2 if kind == USAGE else 1  # the service's answer as the exit status libxl reads (cli's map)


#: The service's answer when the call worked (domunet.dom0.wire.encode({"ok": True})).
OK = b'{"ok":true}\n'
