"""vif-domunet's call when the dom0 service does not take it: the work done in-process.

The service's way is domunet.dom0.light (tried first, by domunet.entry and domunet.cli). This is the
way a dom0 without systemd, with the service stopped or failed, or a caller in another network
namespace takes: a vif never fails because the service is down.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from typing import Any, Iterator

from domunet.core.state import Layout

log = logging.getLogger(__name__)


def connect(layout: Layout, timeout: float = 5.0) -> socket.socket | None:
    """A connection to the service, or None when none listens (or it is not ours to use)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.settimeout(timeout)
        client.connect(str(layout.dom0_socket))
        return client
    except OSError as error:
        client.close()
        if error.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EACCES, errno.EPERM, errno.ENOTDIR):
            log.info("cannot reach the dom0 service (%s)", error.strerror)
        return None


def run_hotplug(command: str, settings: dict[str, str], env: dict[str, str], config_path: str | None,
                state_dir: str, handed: str) -> bool:
    """One hotplug call in-process (a kernel socket and the config file are opened only when
    needed); False when online failed. `handed`: why the service did not take it (light.GONE: it
    took it and went away, so it may have done part of it; online undoes an earlier online first)."""
    from domunet.dom0 import hotplug, light

    if handed == light.GONE:
        log.warning("%s %s: the dom0 service went away before it answered; doing it in-process",
                    command, env.get("vif"))
    else:
        log.debug("%s %s in-process: %s", command, env.get("vif"), handed)

    @contextlib.contextmanager
    def engine() -> Iterator[Any]:
        from domunet.core.kernel import Kernel
        from domunet.dom0.executor import Dom0

        with Kernel() as kernel:
            yield Dom0.from_config(kernel, config_path, state_dir, offline=command == "offline")

    return hotplug.handle(command, settings, env, engine)
