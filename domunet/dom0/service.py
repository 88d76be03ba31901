"""`domunet dom0 serve`: dom0's long-lived service, so that a vif's hotplug call costs a message
instead of a Python start-up and a pyroute2 import (issue 23).

It listens on dom0.sock in the state directory (root only, mode 0600), runs `reconcile` when it
starts (the records on disk stay the source of truth across restarts), and does online and offline
in-process with one kernel socket, one request at a time, under the same dom0 lock as an in-process
run. It serves only root, and only callers in its own network namespace: a caller in another
namespace is refused and does the work itself, so a service never configures another namespace's
vifs. A malformed or oversized request gets a one-line error and changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import struct
import time
from typing import Any, Callable

from domunet.core.errors import DomunetError, UsageError
from domunet.core.lock import held_alone
from domunet.core.state import Layout, check_dir
from domunet.core.systemd import notify
from domunet.dom0 import hotplug, wire

log = logging.getLogger(__name__)

#: How long one caller may take to send its request.
REQUEST_TIMEOUT = 10.0
#: At most this many waiting callers are served as one batch (xendomains' boot storm: 8-16 at once).
MAX_BATCH = 64
_UCRED = struct.Struct("3i")  # pid, uid, gid (SO_PEERCRED)


def own_namespace() -> tuple[int, int]:
    info = os.stat("/proc/self/ns/net")
    return info.st_dev, info.st_ino


def peer_refusal(connection: socket.socket, namespace: tuple[int, int]) -> str | None:
    """Why this caller is not served (None: it is): not root, or another network namespace."""
    pid, uid, _ = _UCRED.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    if uid != 0:
        return f"only root may use dom0.sock (the caller is uid {uid})"
    try:
        info = os.stat(f"/proc/{pid}/ns/net")
    except OSError as error:
        return f"cannot tell the caller's network namespace ({error.strerror})"
    if (info.st_dev, info.st_ino) != namespace:
        return "the caller is in another network namespace; it does the work itself"
    return None


def read_request(connection: socket.socket, timeout: float = REQUEST_TIMEOUT) -> bytes:
    """One line, at most wire.MAX_REQUEST bytes (UsageError beyond, without reading on)."""
    connection.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > wire.MAX_REQUEST:
            raise UsageError(f"request longer than {wire.MAX_REQUEST} bytes")
    return data


def _drain(connection: socket.socket, limit: int = 1 << 20, timeout: float = 0.5) -> None:
    """Read what the caller sent and was not read (a refused or oversized request), within bounds:
    closing a socket with unread data resets the connection, and the caller would lose the answer."""
    connection.settimeout(timeout)
    with contextlib.suppress(OSError):
        while limit > 0 and (chunk := connection.recv(65536)):
            limit -= len(chunk)


class Service:
    """The accept loop around one Dom0 engine (`engine` gives it, e.g. with the config's settings)."""

    def __init__(self, layout: Layout, engine: Any) -> None:
        self.layout = layout
        self.engine = engine
        self.namespace = own_namespace()
        self.stopping = False
        self.served = 0

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """What to answer one request; never raises for the caller's mistakes or the work's failure."""
        return self.answer_all([message])[0]

    def answer_all(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Requests that arrived together: vif-domunet's hotplug calls as one batch (one
        anti-spoofing transaction for all of them), the others one by one."""
        answers: list[dict[str, Any] | None] = [None] * len(messages)
        calls: dict[int, hotplug.Call] = {}
        for index, message in enumerate(messages):
            if message.get("op") == "hotplug":
                try:
                    calls[index] = wire.parse_hotplug(message)
                except UsageError as error:
                    answers[index] = {"ok": False, "kind": wire.USAGE, "error": str(error)}
            else:
                answers[index] = self._answer_one(message)
        if calls:
            started = time.monotonic()
            try:
                results = hotplug.handle_many(list(calls.values()), lambda: contextlib.nullcontext(self.engine))
            except Exception as error:  # noqa: BLE001 (a bug: every caller hears it, the service goes on)
                results = [hotplug.failure(error)] * len(calls)
            for index, result in zip(calls, results):
                answers[index] = {"ok": True} if result is None else {"ok": False, "kind": wire.FAILED,
                                                                      "error": result}
            log.log(logging.INFO if len(calls) > 1 else logging.DEBUG, "%d hotplug call%s in one batch, %.1f ms",
                    len(calls), "s" if len(calls) > 1 else "", (time.monotonic() - started) * 1000)
        return [answer or {"ok": False, "kind": wire.FAILED, "error": "not answered"} for answer in answers]

    def _answer_one(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            op = message.get("op")
            if op == "online":
                record = self.engine.online(wire.parse_online(message))
                return {"ok": True, "record": record.as_json()}
            if op == "offline":
                key, vif = wire.parse_offline(message)
                return {"ok": True, "found": self.engine.offline(key, vif)}
            raise UsageError(f"unknown op {str(op)[:20]!r} (hotplug, online or offline)")
        except UsageError as error:
            return {"ok": False, "kind": wire.USAGE, "error": str(error)}
        except DomunetError as error:
            return {"ok": False, "kind": wire.FAILED, "error": str(error)}
        except OSError as error:
            return {"ok": False, "kind": wire.FAILED,
                    "error": f"{error.filename + ': ' if error.filename else ''}{error.strerror or error}"}

    def receive(self, connection: socket.socket) -> dict[str, Any] | None:
        """One caller's request, or None when it was answered already (refused, malformed) or went away."""
        refusal = peer_refusal(connection, self.namespace)
        if refusal is not None:
            log.info("refused a caller: %s", refusal)
            _drain(connection)
            self.reply(connection, {"ok": False, "kind": wire.REFUSED, "error": refusal})
            return None
        try:
            return wire.decode(read_request(connection))
        except UsageError as error:
            _drain(connection)
            self.reply(connection, {"ok": False, "kind": wire.USAGE, "error": f"malformed request: {error}"})
        except (TimeoutError, OSError) as error:
            log.warning("a caller went away before its request was complete: %s", error)
            connection.close()
        return None

    def reply(self, connection: socket.socket, answer: dict[str, Any]) -> None:
        with connection, contextlib.suppress(OSError):
            connection.sendall(wire.encode(answer))
            connection.shutdown(socket.SHUT_WR)
        self.served += 1

    def serve_batch(self, connections: list[socket.socket]) -> None:
        waiting = [(connection, message) for connection in connections
                   if (message := self.receive(connection)) is not None]
        if waiting:
            for (connection, _), answer in zip(waiting, self.answer_all([m for _, m in waiting])):
                self.reply(connection, answer)

    def run(self, listener: socket.socket, wake: int) -> None:
        while not self.stopping:
            readable, _, _ = select.select([listener, wake], [], [])
            if wake in readable:
                with contextlib.suppress(OSError):
                    os.read(wake, 64)
                continue
            connections = []
            while len(connections) < MAX_BATCH:  # all that are waiting now: one batch
                try:
                    connection, _ = listener.accept()
                except BlockingIOError:
                    break
                except OSError as error:
                    if error.errno in (errno.EINTR, errno.ECONNABORTED):
                        continue
                    raise
                connections.append(connection)
            if connections:
                self.serve_batch(connections)


def listen(layout: Layout) -> socket.socket:
    """dom0.sock, bound for root only. A socket file left by a service that died is replaced (the
    caller holds the serve lock, so no live service owns it)."""
    path = layout.dom0_socket
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        listener.listen(64)
    except OSError as error:
        listener.close()
        raise UsageError(f"cannot listen on {path}: {error.strerror}") from None
    listener.setblocking(False)
    return listener


def serve(state_dir: str, engine: Any, ready: Callable[[], None] = lambda: None) -> None:
    """Run until SIGTERM or SIGINT: reconcile, listen, tell systemd, answer requests."""
    layout = Layout(state_dir)
    check_dir(layout.root)
    check_dir(layout.dom0)
    with held_alone(layout.dom0_serve_lock, f"another domunet dom0 serve is running for {state_dir}"):
        count = engine.reconcile()
        log.info("reconciled %d vif(s) from the records", count)
        listener = listen(layout)
        service = Service(layout, engine)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)

        def stop(number: int, frame: Any) -> None:
            service.stopping = True

        previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(wake_w)
        try:
            ready()
            notify("READY=1")
            log.info("serving on %s", layout.dom0_socket)
            service.run(listener, wake_r)
            notify("STOPPING=1")
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for number, handler in previous.items():
                signal.signal(number, handler)
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(layout.dom0_socket)
            os.close(wake_r)
            os.close(wake_w)
        log.info("stopped after %d request(s)", service.served)
