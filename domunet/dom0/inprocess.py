"""vif-domunet's call when the dom0 service does not take it: the work done in this process.

The service's way is domunet.dom0.client (tried first, by domunet.entry or domunet.cli). This is
the way a dom0 without systemd, with the service stopped or failed, or a caller in another network
namespace takes: a vif never fails because the service is down.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

log = logging.getLogger(__name__)


def run_hotplug(command: str, settings: dict[str, str], env: dict[str, str], config_path: str | None,
                state_dir: str, handed: str) -> bool:
    """One hotplug call in-process (a kernel socket and the config file are opened only when
    needed); False when online failed. `handed`: why the service did not take it (client.GONE: it
    took it and went away, so it may have done part of it; online undoes an earlier online first)."""
    from domunet.dom0 import client, hotplug

    if handed == client.GONE:
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
