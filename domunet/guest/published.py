"""What dom0 published for each of the guest's vifs in xenstore (zero configuration).

vif-domunet writes, under the vif's backend directory, keys of domunet's own (defined in
domunet.core.xenstore: dom0's gateways on the vif, and that it routes the vif), and libxl keeps
the vif's `ip` list there. The guest finds its vif's backend through
`device/vif/N/backend`, N from sysfs (device/vif/N) or, where sysfs has no such link, by
matching the NIC's MAC against `device/vif/N/mac`. Every value is validated like any other
input: a malformed one is reported with its key and ignored. No xenstore (not a Xen guest,
tools missing, permission denied) is normal and yields nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from domunet.core import xenstore
from domunet.core.model import Interface, IPAddress, IPNetwork, PublishedVif, parse_address, parse_network

log = logging.getLogger(__name__)

def _address(value: str | None, version: int, key: str) -> IPAddress | None:
    if value is None or value == "":
        return None
    try:
        address = parse_address(value)
    except ValueError:
        address = None
    if address is None or address.version != version or address.is_multicast or address.is_unspecified \
            or address.is_loopback:
        log.warning("xenstore %s: %r is not an IPv%d address; ignored", key, value[:80], version)
        return None
    return address


def _networks(value: str | None, key: str) -> tuple[IPNetwork, ...]:
    if not value:
        return ()
    try:
        return tuple(parse_network(token) for token in value.split())
    except ValueError:
        log.warning("xenstore %s: %r is not a list of addresses; ignored", key, value[:80])
        return ()


def vif_facts(backend: str, read: Callable[[str], str | None]) -> PublishedVif:
    def key(name: str) -> str:
        return f"{backend}/{name}"

    routed = read(key(xenstore.ROUTED))
    if routed not in (None, "", "0", "1"):
        log.warning("xenstore %s: %r is neither 0 nor 1; ignored", key(xenstore.ROUTED), routed[:80])
    return PublishedVif(
        backend=backend,
        gateway=_address(read(key(xenstore.GATEWAY)), 4, key(xenstore.GATEWAY)),  # type: ignore[arg-type]
        gateway6=_address(read(key(xenstore.GATEWAY6)), 6, key(xenstore.GATEWAY6)),  # type: ignore[arg-type]
        routed=routed == "1",
        addresses=_networks(read(key(xenstore.ADDRESSES)), key(xenstore.ADDRESSES)),
    )


def _backend(devid: int, read: Callable[[str], str | None]) -> str | None:
    backend = read(f"device/vif/{devid}/backend")
    if not backend or len(backend) > 256 or any(c.isspace() or c in ";`$\\'\"" for c in backend) \
            or ".." in backend.split("/"):
        if backend:
            log.warning("xenstore device/vif/%d/backend: %r is not a backend path; ignored", devid, backend[:80])
        return None
    return backend


#: All of xenstore's answers for one run must come within this (a hung xenstored must not hold up
#: boot; it is read before the lock, so it holds up no other run). Generous: under emulation
#: (QEMU TCG) each xenstore-read process takes a few hundred ms.
DEADLINE = 20.0


@dataclass(frozen=True)
class Published:
    """What dom0 published, per interface name. `complete` is False when xenstore ran out of time:
    what is not here may still be published, so nothing made from earlier answers is to be removed."""

    vifs: Mapping[str, PublishedVif] = field(default_factory=dict)
    complete: bool = True


def read_published(interfaces: Iterable[Interface], read: Callable[[str], str | None] | None = None,
             listing: Callable[[str], list[str]] | None = None, deadline: float = DEADLINE) -> Published:
    """Facts per interface name, for the NICs that are Xen vifs with a readable backend."""
    clock = None
    if read is None:
        if not xenstore.available():
            return Published()
        clock = _Deadline(deadline)
        read, listing = _safe(clock.bound(xenstore.read)), _safe_list(clock.bound(xenstore.directory))
    listing = listing or (lambda path: [])
    by_mac: dict[str, int] | None = None
    found: dict[str, PublishedVif] = {}
    for interface in interfaces:
        if interface.loopback:
            continue
        devid = interface.xen_devid
        if devid is None:
            if by_mac is None:
                by_mac = {}
                for entry in listing("device/vif"):
                    if entry.isdigit():
                        mac = (read(f"device/vif/{entry}/mac") or "").strip().lower()
                        if mac:
                            by_mac[mac] = int(entry)
            devid = by_mac.get(interface.mac.lower())
        if devid is None:
            continue
        backend = _backend(devid, read)
        if backend:
            found[interface.name] = vif_facts(backend, read)
    return Published(found, complete=clock is None or not clock.spent)


class _OutOfTime(xenstore.XenstoreError):
    pass


class _Deadline:
    """One deadline for many calls: each gets what is left; once it is spent, none is made."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.spent = False

    def bound(self, call: Callable[..., Any]) -> Callable[[str], Any]:
        def bounded(path: str) -> Any:
            left = self.end - time.monotonic()
            if left <= 0:
                self._spend()
            try:
                return call(path, timeout=left)
            except xenstore.XenstoreError:
                if time.monotonic() >= self.end:
                    self._spend()
                raise
        return bounded

    def _spend(self) -> None:
        if not self.spent:
            self.spent = True
            log.warning("xenstore did not answer within %.0f s; going on without the rest of it, and "
                        "removing nothing this run", DEADLINE)
        raise _OutOfTime("xenstore: out of time")


def _safe(read: Callable[[str], str | None]) -> Callable[[str], str | None]:
    def wrapped(path: str) -> str | None:
        try:
            return read(path)
        except _OutOfTime:
            return None
        except xenstore.XenstoreError as error:
            log.warning("%s", error)
            return None
    return wrapped


def _safe_list(listing: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
    def wrapped(path: str) -> list[str]:
        try:
            return listing(path)
        except _OutOfTime:
            return []
        except xenstore.XenstoreError as error:
            log.warning("%s", error)
            return []
    return wrapped
