"""Where the files under test are: this source tree, or, when scripts/test runs the suite
against the built packages (DOMUNET_UNPACKED), the .debs unpacked into one root."""

from __future__ import annotations

import os
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
UNPACKED = Path(os.environ["DOMUNET_UNPACKED"]) if os.environ.get("DOMUNET_UNPACKED") else None

_INSTALLED = {
    "hooks/ifupdown/domunet": "etc/network/if-up.d/domunet",
    "hooks/xen/vif-domunet": "etc/xen/scripts/vif-domunet",
    "data/systemd/domunet.service": "lib/systemd/system/domunet.service",
    "data/systemd/domunet-iface@.service": "lib/systemd/system/domunet-iface@.service",
    "data/systemd/domunet-watch.service": "lib/systemd/system/domunet-watch.service",
    "data/systemd/domunet-dom0.service": "lib/systemd/system/domunet-dom0.service",
    "data/udev/90-domunet.rules": "lib/udev/rules.d/90-domunet.rules",
    "data/networkd/domunet.conf": "usr/lib/systemd/networkd.conf.d/domunet.conf",
    "hooks/networkd-dispatcher/domunet": "usr/lib/networkd-dispatcher/routable.d/domunet",
    "hooks/NetworkManager/90-domunet": "usr/lib/NetworkManager/dispatcher.d/90-domunet",
    "hooks/dhclient/domunet": "etc/dhcp/dhclient-exit-hooks.d/domunet",
}


def shipped(path: str) -> Path:
    """The file as the source tree has it, or as the package installs it."""
    if UNPACKED is not None:
        return UNPACKED / _INSTALLED[path]
    return SOURCE / path
