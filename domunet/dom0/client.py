"""vif-domunet's side of dom0.sock: hand online/offline to `domunet dom0 serve` when it runs.

Imports nothing heavy (no pyroute2, no argparse): a hotplug call that the service answers costs
the interpreter, this module and xenstore's tools. When there is no service (a dom0 without
systemd, the service stopped or failed), when it refuses this caller (another network namespace),
or when it goes away before it answers, the work is done in-process as before: a vif never fails
because the service is down.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from typing import Any, Callable, Iterator

from domunet.core.errors import DomunetError
from domunet.core.state import Layout
from domunet.dom0 import wire
from domunet.dom0.records import VifRecord
from domunet.dom0.request import VifRequest

log = logging.getLogger(__name__)

#: A service busy with a boot storm answers later; online itself takes well under a second.
ANSWER_TIMEOUT = 120.0


class NoService(Exception):
    """No service answered this request: do it in-process. `gone`: one took the request and went
    away before it answered (it may have done part of it; in-process online undoes that first)."""

    def __init__(self, why: str, gone: bool = False) -> None:
        super().__init__(why)
        self.gone = gone


def connect(layout: Layout) -> socket.socket | None:
    """A connection to the service, or None when none listens (or it is not ours to use)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.settimeout(ANSWER_TIMEOUT)
        client.connect(str(layout.dom0_socket))
        return client
    except OSError as error:
        client.close()
        if error.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EACCES, errno.EPERM, errno.ENOTDIR):
            log.info("cannot reach the dom0 service (%s): working in-process", error.strerror)
        return None


def call(layout: Layout, message: dict[str, Any]) -> dict[str, Any]:
    """The service's answer (NoService when there is none, it refused, or it went away)."""
    connection = connect(layout)
    if connection is None:
        raise NoService("no service")
    with connection:
        try:
            connection.sendall(wire.encode(message))
            connection.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := connection.recv(65536):
                data += chunk
                if len(data) > wire.MAX_ANSWER:
                    raise NoService("the service's answer is too long", gone=True)
        except OSError as error:
            raise NoService(f"the service went away ({error.strerror or error})", gone=True) from None
    if not data:
        raise NoService("the service went away without an answer", gone=True)
    try:
        answer = wire.decode(data, wire.MAX_ANSWER)
    except DomunetError as error:
        raise NoService(f"the service's answer is not valid ({error})", gone=True) from None
    if not answer.get("ok"):
        failure = wire.failure(answer)
        if isinstance(failure, wire.Refused):
            raise NoService(str(failure))
        raise failure
    return answer


class Remote:
    """The Dom0 interface hotplug.handle uses, carried out by the service; each call falls back to
    `local` (a context manager giving an in-process Dom0) when no service answers it."""

    def __init__(self, layout: Layout, local: Callable[[], Any]) -> None:
        self.layout = layout
        self.local = local

    def online(self, request: VifRequest) -> VifRecord:
        try:
            return wire.record_of(call(self.layout, wire.online_request(request)))
        except NoService as why:
            _say(f"online {request.vif}", why)
            with self.local() as dom0:
                return dom0.online(request)  # type: ignore[no-any-return]

    def offline(self, key: str, vif: str | None = None) -> bool:
        try:
            return bool(call(self.layout, wire.offline_request(key, vif)).get("found"))
        except NoService as why:
            _say(f"offline {key}", why)
            with self.local() as dom0:
                return bool(dom0.offline(key, vif))


def _say(what: str, why: NoService) -> None:
    """No service is normal (debug); one that took the request and went away is worth a warning."""
    if why.gone:
        log.warning("%s: %s; doing it in-process", what, why)
    else:
        log.debug("%s in-process: %s", what, why)


@contextlib.contextmanager
def engine(state_dir: str, local: Callable[[], Any]) -> Iterator[Remote]:
    """What hotplug.handle's `engine` gives: the service's way, with the in-process way behind it."""
    yield Remote(Layout(state_dir), local)


def run_hotplug(command: str, settings: dict[str, str], env: dict[str, str], config_path: str | None,
                state_dir: str) -> bool:
    """One hotplug call, by the service when it answers, else in-process (a kernel socket and the
    config file are opened only then); False when online failed."""
    from domunet.dom0 import hotplug

    @contextlib.contextmanager
    def local() -> Iterator[Any]:
        from domunet.core.kernel import Kernel
        from domunet.dom0.executor import Dom0

        with Kernel() as kernel:
            yield Dom0.from_config(kernel, config_path, state_dir, offline=command == "offline")

    return hotplug.handle(command, settings, env, lambda: engine(state_dir, local))
