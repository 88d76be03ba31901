"""`domunet dom0 serve`: dom0's long-lived service, so that a vif's hotplug call costs a message
instead of a Python start-up and a pyroute2 import (issue 23).

It listens on dom0.sock in the state directory (root only, mode 0600), runs `reconcile` when it
starts (the records on disk stay the source of truth across restarts), and does online and offline
in-process with one kernel socket, one batch at a time, under the same dom0 lock as an in-process
run (a worker thread; the caller's thread reads every caller at once, so none waits on another).
It serves only root, and only callers in its own network namespace: a caller in another namespace
is refused and does the work itself, so a service never configures another namespace's vifs.
A malformed or oversized request gets a one-line error and changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import select
import signal
import socket
import struct
import threading
import time
from typing import Any, Callable, NamedTuple

from domunet.core.errors import DomunetError, UsageError
from domunet.core.lock import held_alone
from domunet.core.state import Layout, check_dir
from domunet.core.systemd import notify
from domunet.dom0 import client, hotplug, wire

log = logging.getLogger(__name__)

#: How long one caller may take to send its whole request (from its accept, not per read).
REQUEST_TIMEOUT = 2.0
#: At most this many waiting callers are served as one batch (xendomains' boot storm: 8-16 at once).
MAX_BATCH = 64
#: At most this many callers being read at once; more wait in the listen backlog.
MAX_READING = 256
#: The listen backlog: every caller of a storm (and of a root flood beside it) connects at once and
#: waits its turn there, instead of blocking in connect past the client's CONNECT_TIMEOUT (the
#: kernel caps it at net.core.somaxconn, 4096 by default).
BACKLOG = 4096
#: While callers that connected are still sending, the worker waits this long for them to join
#: its batch (a boot storm's calls connect together; under load, their bytes come a little later).
GATHER = 0.1
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


class _Caller:
    """One connection being read: its bytes so far, its deadline, and why it will be refused."""

    DRAIN_LIMIT = 1 << 20  # what is read (and dropped) of an oversized or refused request

    def __init__(self, connection: socket.socket, refusal: str | None, deadline: float) -> None:
        self.connection = connection
        self.refusal = refusal
        self.deadline = deadline
        self.data = b""
        self.oversized = False
        self.read = 0

    def feed(self) -> bool:
        """Read what is there; True when the request is complete (a line, or the caller's end).
        An oversized or refused request is read on (and dropped) to its end, within bounds:
        closing a socket with unread data resets it, and the caller would lose the answer."""
        chunk = self.connection.recv(65536)
        self.read += len(chunk)
        if not chunk or self.read > self.DRAIN_LIMIT:
            return True
        if self.refusal or self.oversized:
            return False
        self.data += chunk
        if len(self.data) > wire.MAX_REQUEST:
            self.oversized, self.data = True, b""
            return False
        return self.data.endswith(b"\n")


class _Queued(NamedTuple):
    connection: socket.socket
    message: dict[str, Any]
    start_by: float


class Service:
    """dom0.sock's two halves: a reader (the caller's thread) that accepts, checks and reads every
    caller at once, each against its own deadline, and says "queued" as soon as a request is in;
    and a worker thread that does the queued requests, all that are waiting as one batch. No
    caller waits on another's bytes, and a hung batch cannot hide the service from its callers:
    they stop waiting (client.ACK_WITHIN) and work in-process."""

    def __init__(self, layout: Layout, engine: Any) -> None:
        self.layout = layout
        self.engine = engine
        self.namespace = own_namespace()
        self.stopping = False
        self.served = 0
        #: what the reader read in one round, as one group (the worker joins waiting groups)
        self.queue: queue.SimpleQueue[list[_Queued] | None] = queue.SimpleQueue()
        #: callers the reader has accepted and not finished reading (the worker's batch waits on them)
        self.being_read = 0

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

    def reply(self, connection: socket.socket, answer: dict[str, Any]) -> None:
        with connection, contextlib.suppress(OSError):
            connection.setblocking(True)
            connection.settimeout(REQUEST_TIMEOUT)
            connection.sendall(wire.encode(answer))
            connection.shutdown(socket.SHUT_WR)
        self.served += 1

    # --- the reader ------------------------------------------------------------------------

    def _accept(self, listener: socket.socket, reading: dict[int, _Caller]) -> None:
        while len(reading) < MAX_READING:
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno == errno.ECONNABORTED:
                    continue
                raise
            try:
                refusal = peer_refusal(connection, self.namespace)
            except OSError as error:
                refusal = f"cannot tell who the caller is ({error.strerror})"
            if refusal is not None:
                log.info("refused a caller: %s", refusal)
            connection.setblocking(False)
            reading[connection.fileno()] = _Caller(connection, refusal, time.monotonic() + REQUEST_TIMEOUT)
        self._count(reading)

    def _complete(self, caller: _Caller) -> _Queued | None:
        """A caller's request is in: refuse it, answer its mistake, or take it (and say so)."""
        connection = caller.connection
        if caller.refusal:
            self.reply(connection, {"ok": False, "kind": wire.REFUSED, "error": caller.refusal})
            return None
        try:
            if caller.oversized:
                raise UsageError(f"request longer than {wire.MAX_REQUEST} bytes")
            message = wire.decode(caller.data)
        except UsageError as error:
            self.reply(connection, {"ok": False, "kind": wire.USAGE, "error": f"malformed request: {error}"})
            return None
        within = message.get("start_within")
        start_by = time.monotonic() + (float(within) if isinstance(within, (int, float)) and within > 0
                                       else float("inf"))
        if message.get("ack") is True:
            try:
                connection.send(client.QUEUED)  # one short line: the socket's buffer takes it whole
            except OSError:
                log.warning("a caller went away before its request was queued (it does the work itself)")
                connection.close()
                return None
        return _Queued(connection, message, start_by)

    def _read(self, readable: list[int], reading: dict[int, _Caller]) -> None:
        """Read every caller that has sent something; the requests completed now go to the
        worker as one group (callers that arrived together are one batch)."""
        group = []
        for fd in readable:
            caller = reading[fd]
            try:
                complete = caller.feed()
            except BlockingIOError:
                continue
            except OSError as error:
                log.warning("a caller went away before its request was complete: %s", error)
                del reading[fd]
                caller.connection.close()
                continue
            if complete:
                del reading[fd]
                if (taken := self._complete(caller)) is not None:
                    group.append(taken)
        self._count(reading)  # before the worker looks
        if group:
            self.queue.put(group)

    def _expire(self, reading: dict[int, _Caller]) -> None:
        now = time.monotonic()
        for fd, caller in list(reading.items()):
            if now >= caller.deadline:
                log.warning("a caller did not send its request within %.0f s: dropped", REQUEST_TIMEOUT)
                del reading[fd]
                caller.connection.close()
        self._count(reading)

    def _count(self, reading: dict[int, _Caller]) -> None:
        self.being_read = sum(1 for c in reading.values() if not c.refusal)

    def run(self, listener: socket.socket, wake: int) -> None:
        worker = threading.Thread(target=self._work, name="domunet-dom0-work", daemon=True)
        worker.start()
        reading: dict[int, _Caller] = {}
        try:
            while not self.stopping:
                deadline = min((c.deadline for c in reading.values()), default=None)
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                watched = [wake, *reading] + ([listener] if len(reading) < MAX_READING else [])
                readable, _, _ = select.select(watched, [], [], timeout)
                if wake in readable:
                    with contextlib.suppress(OSError):
                        os.read(wake, 64)
                    continue
                if listener in readable:
                    self._accept(listener, reading)
                self._read([fd for fd in readable if fd in reading], reading)
                self._expire(reading)
        finally:
            for caller in reading.values():
                caller.connection.close()
            self.queue.put(None)
            worker.join()

    # --- the worker ------------------------------------------------------------------------

    def _gather(self, first: list[_Queued]) -> tuple[list[_Queued], bool]:
        """The batch: this group, every group waiting, and those of callers still being read
        for up to GATHER; and whether the reader has stopped (its None came)."""
        batch, until = list(first), time.monotonic() + GATHER
        while len(batch) < MAX_BATCH:
            wait = until - time.monotonic() if self.being_read else 0.0
            try:
                group = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if group is None:
                return batch, True
            batch += group
        return batch, False

    def _work(self) -> None:
        while (first := self.queue.get()) is not None:
            batch, stop = self._gather(first)
            try:
                self.serve_batch(batch)
            except Exception:  # noqa: BLE001 (a bug: logged; the callers' connections close, they go in-process)
                log.exception("the dom0 service failed a batch")
                for item in batch:
                    with contextlib.suppress(OSError):
                        item.connection.close()
            if stop:
                return

    def serve_batch(self, batch: list[_Queued]) -> None:
        """Do what is still wanted: a caller that went away (it gave up and works in-process) or
        whose start deadline passed is not served, so the work is never done twice."""
        now = time.monotonic()
        live = []
        for item in batch:
            if _hung_up(item.connection):
                log.warning("a caller gave up waiting before its request was started: dropped")
                item.connection.close()
            elif now > item.start_by:
                self.reply(item.connection, {"ok": False, "kind": wire.LATE,
                                             "error": "the dom0 service could not start it in time"})
            else:
                live.append(item)
        if live:
            for item, answer in zip(live, self.answer_all([item.message for item in live])):
                self.reply(item.connection, answer)


def _hung_up(connection: socket.socket) -> bool:
    """The caller closed its end (not only its writing half, which every caller does)."""
    poller = select.poll()
    poller.register(connection, select.POLLHUP)
    try:
        return any(events & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, events in poller.poll(0))
    finally:
        poller.unregister(connection)


def running(layout: Layout, timeout: float = 5.0) -> bool:
    """Does a service listen on dom0.sock (what `domunet dom0 status` says)?"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(timeout)
        probe.connect(str(layout.dom0_socket))
        return True
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EACCES, errno.EPERM, errno.ENOTDIR):
            log.info("cannot reach the dom0 service (%s)", error.strerror)
        return False
    finally:
        probe.close()


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
        listener.listen(BACKLOG)
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
