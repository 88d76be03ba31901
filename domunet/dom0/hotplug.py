"""libxl's hotplug protocol for vif-domunet: what libxl hands over (environment, xenstore), what
it expects back (hotplug-status `connected`, or `error` with hotplug-error), and what dom0
publishes for its guest. The work itself is domunet.dom0.executor's; this never prints nor exits."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Callable, Mapping

from domunet.core import xenstore
from domunet.core.errors import DomunetError, UsageError
from domunet.dom0.records import VifRecord
from domunet.dom0.request import XENBUS_PATH_PATTERN, VifRequest, check_ifname, check_xenbus_path, parse_addresses

log = logging.getLogger(__name__)

#: libxl calls these for an HVM guest's emulated (tap) NIC: not domunet's to route.
EMULATED = ("add", "remove")


def handle(command: str, settings: Mapping[str, str], env: Mapping[str, str],
           engine: Callable[[], Any]) -> bool:
    """One hotplug call; False when online failed (libxl then sees hotplug-status error).
    `engine`: a context manager giving a Dom0 (a kernel socket is opened only when needed)."""
    if command in EMULATED or settings.get("type_if") == "tap":
        log.info("%s %s: emulated (tap) NICs are not handled; nothing to do", command, env.get("vif"))
        return True
    path = env.get("XENBUS_PATH", "")
    if command == "offline":
        try:
            with engine() as dom0:
                dom0.offline(hotplug_key(env), env.get("vif") or None)
        except Exception as error:  # noqa: BLE001 (offline always goes on to clear xenstore)
            log.error("offline %s: %s", env.get("vif"), failure(error))
        if path:
            for key in xenstore.PUBLISHED_KEYS:
                try:
                    xenstore.remove(f"{path}/{key}")
                except DomunetError as error:
                    log.error("offline %s: %s", env.get("vif"), error)
        return True
    if command != "online":
        raise UsageError(f"unknown hotplug command {command!r}")
    try:
        request = request_from_hotplug(env, xenstore.read)
        with engine() as dom0:
            record = dom0.online(request)
        for key, value in published_keys(record).items():
            try:
                xenstore.write(f"{path}/{key}", value)
            except DomunetError as error:  # the guest can still be configured by hand
                log.warning("cannot publish %s for the guest: %s", key, error)
        xenstore.write(f"{path}/hotplug-status", "connected")
        return True
    except Exception as error:  # noqa: BLE001 (libxl must hear `error` whatever failed; dom0 is as before)
        message = failure(error)
        log.error("online %s: %s", env.get("vif"), message)
        if path:
            try:
                xenstore.write(f"{path}/hotplug-error", message)
                xenstore.write(f"{path}/hotplug-status", "error")
            except Exception as failed:  # noqa: BLE001
                log.error("cannot report the error in xenstore: %s", failure(failed))
        return False


def failure(error: BaseException) -> str:
    """One line for libxl and the log: the admin's message, an OS error's cause, or a bug's type."""
    if isinstance(error, DomunetError):
        return str(error)
    if isinstance(error, OSError):
        return f"{error.filename + ': ' if error.filename else ''}{error.strerror or error}"
    log.debug("internal error", exc_info=True)
    return f"internal error: {type(error).__name__}: {error} (please report it)"


def published_keys(record: VifRecord) -> dict[str, str]:
    """What the guest may read about this vif (domunet.guest.published): dom0's addresses on it, and that
    it is routed. Written under the vif's backend directory, removed again on offline."""
    keys = {xenstore.ROUTED: "1"}
    for route in record.routes:
        key = xenstore.GATEWAY6 if ipaddress.ip_network(route.destination).version == 6 else xenstore.GATEWAY
        keys.setdefault(key, route.source)
    return keys


def request_from_hotplug(env: Mapping[str, str], read: Callable[[str], str | None]) -> VifRequest:
    """The vif, its guest addresses, uplink and new name, from libxl's environment and xenstore."""
    vif = check_ifname(env.get("vif"), "vif")
    path = check_xenbus_path(env.get("XENBUS_PATH", ""))
    guest = parse_addresses(read(f"{path}/{xenstore.ADDRESSES}"), f"xenstore {path}/{xenstore.ADDRESSES}")
    uplink = env.get("netdev") or read(f"{path}/gatewaydev") or None
    rename = read(f"{path}/vifname") or None
    return VifRequest(
        key=hotplug_key(env), vif=vif, guest=guest,
        uplink=check_ifname(uplink, f"uplink (netdev or {path}/gatewaydev)") if uplink else None,
        rename=check_ifname(rename, f"xenstore {path}/vifname") if rename else None,
        xenbus_path=path,
    )


def hotplug_key(env: Mapping[str, Any]) -> str:
    """Records are keyed by the xenstore backend path (stable across renames), else by vif."""
    path = env.get("XENBUS_PATH") or ""
    match = XENBUS_PATH_PATTERN.match(path)
    if match:
        return f"xen-{match.group(1)}-{match.group(2)}"
    return check_ifname(env.get("vif"), "vif")
