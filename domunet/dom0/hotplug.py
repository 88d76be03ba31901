"""libxl's hotplug protocol for vif-domunet: what libxl hands over (environment, xenstore), what
it expects back (hotplug-status `connected`, or `error` with hotplug-error), and what dom0
publishes for its guest. The work itself is domunet.dom0.executor's; this never prints nor exits."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from domunet.core import xenstore
from domunet.core.errors import DomunetError, UsageError
from domunet.dom0.records import VifRecord
from domunet.dom0.request import XENBUS_PATH_PATTERN, VifRequest, check_ifname, check_xenbus_path, parse_addresses

log = logging.getLogger(__name__)

#: libxl calls these for an HVM guest's emulated (tap) NIC: not domunet's to route.
EMULATED = ("add", "remove")


class Call(NamedTuple):
    """One hotplug call as libxl made it."""

    command: str
    settings: Mapping[str, str]
    env: Mapping[str, str]


def handle(command: str, settings: Mapping[str, str], env: Mapping[str, str],
           engine: Callable[[], Any]) -> bool:
    """One hotplug call; False when online failed (libxl then sees hotplug-status error).
    `engine`: a context manager giving a Dom0 (a kernel socket is opened only when needed)."""
    if command not in (*EMULATED, "online", "offline"):
        raise UsageError(f"unknown hotplug command {command!r}")
    return handle_many([Call(command, settings, env)], engine)[0] is None


def handle_many(calls: Sequence[Call], engine: Callable[[], Any]) -> list[str | None]:
    """Calls that arrived together (the dom0 service's batch; in-process, one): the offlines, then
    the onlines, each group in one go (one anti-spoofing transaction). Per call: None, or the error
    libxl was told (hotplug-status error and hotplug-error written)."""
    results: list[str | None] = [None] * len(calls)
    offline: list[int] = []
    online: dict[int, VifRequest] = {}
    for index, call in enumerate(calls):
        if call.command in EMULATED or call.settings.get("type_if") == "tap":
            log.info("%s %s: emulated (tap) NICs are not handled; nothing to do", call.command, call.env.get("vif"))
        elif call.command == "offline":
            offline.append(index)
        else:
            try:
                online[index] = request_from_hotplug(call.env, backend_reader(call.env.get("XENBUS_PATH", "")))
            except Exception as error:  # noqa: BLE001 (libxl must hear `error` whatever failed)
                results[index] = report_failure(call, error)
    if offline:
        _offline([calls[index] for index in offline], engine)
    if online:
        try:
            with engine() as dom0:
                outcomes = dom0.online_many(list(online.values()))
        except Exception as error:  # noqa: BLE001 (the engine itself failed: every vif of the batch)
            outcomes = [error] * len(online)
        for index, outcome in zip(online, outcomes):
            if isinstance(outcome, BaseException):
                results[index] = report_failure(calls[index], outcome)
            else:
                path = calls[index].env.get("XENBUS_PATH", "")
                try:
                    xenstore.write_many({**{f"{path}/{key}": value for key, value in published_keys(outcome).items()},
                                         f"{path}/hotplug-status": "connected"})
                except Exception as error:  # noqa: BLE001 (libxl must hear `error`; dom0 is as before)
                    results[index] = report_failure(calls[index], error, undo=True, engine=engine)
    return results


def _offline(calls: Sequence[Call], engine: Callable[[], Any]) -> None:
    """Offline always goes on to clear what was published in xenstore, whatever failed before."""
    try:
        with engine() as dom0:
            dom0.offline_many([(hotplug_key(call.env), call.env.get("vif") or None) for call in calls])
    except Exception as error:  # noqa: BLE001
        log.error("offline %s: %s", " ".join(str(call.env.get("vif")) for call in calls), failure(error))
    for call in calls:
        path = call.env.get("XENBUS_PATH", "")
        if path:
            try:
                xenstore.remove(*(f"{path}/{key}" for key in xenstore.PUBLISHED_KEYS))
            except DomunetError as error:
                log.error("offline %s: %s", call.env.get("vif"), error)


def report_failure(call: Call, error: BaseException, undo: bool = False,
                    engine: Callable[[], Any] | None = None) -> str:
    """Tell libxl (hotplug-error, then hotplug-status error) and the log; with `undo`, the vif's
    online is undone first (it was done, but libxl could not be told so)."""
    message = failure(error)
    log.error("online %s: %s", call.env.get("vif"), message)
    if undo and engine is not None:
        try:
            with engine() as dom0:
                dom0.offline_many([(hotplug_key(call.env), call.env.get("vif") or None)])
        except Exception as failed:  # noqa: BLE001
            log.error("online %s: undo failed: %s", call.env.get("vif"), failure(failed))
    path = call.env.get("XENBUS_PATH", "")
    if path:
        try:
            xenstore.write_many({f"{path}/hotplug-error": message, f"{path}/hotplug-status": "error"})
        except Exception as failed:  # noqa: BLE001
            log.error("cannot report the error in xenstore: %s", failure(failed))
    return message


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


#: The keys of a vif's backend directory that online reads.
BACKEND_KEYS = (xenstore.ADDRESSES, "gatewaydev", "vifname")


def backend_reader(path: str) -> Callable[[str], str | None]:
    """xenstore's reader for one vif's backend directory: two processes (list it, then read the
    keys it holds at once) instead of one per key; one per key when that does not work out."""
    try:
        present = set(xenstore.directory(path)) if path else set()
        keys = [f"{path}/{key}" for key in BACKEND_KEYS if key in present]
        values = xenstore.read_many(keys) if xenstore.ADDRESSES in present else None
    except DomunetError:
        values = None
    if values is None:
        return xenstore.read
    known = {f"{path}/{key}" for key in BACKEND_KEYS}
    return lambda key: values.get(key) if key in known else xenstore.read(key)


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
    match = XENBUS_PATH_PATTERN.fullmatch(path)
    if match:
        return f"xen-{match.group(1)}-{match.group(2)}"
    return check_ifname(env.get("vif"), "vif")
