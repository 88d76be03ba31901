"""What online did for each vif, kept under /run/domunet/dom0 so that offline undoes exactly that.

A record is written before online changes anything (a crash still leaves something for offline)
and again when it is done. Reading one back checks it as strictly as online's own input: a record
that fails (a newer domunet's after a downgrade, a truncated file) is left in place and reported
as Unusable, with what could be salvaged of it, so that its vif stays guarded (fail closed).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from domunet.core.errors import UsageError
from domunet.core.model import (
    METRIC6,
    PROTO_DOM0,
    TABLE_MAIN,
    IPInterface,
    IPNetwork,
    Route,
    parse_address,
    parse_network,
    valid_ifname,
)
from domunet.core.state import Layout, read_folder, write_json
from domunet.core.sysctl import saved_values
from domunet.dom0.request import RECORD_KEY, VifRequest, check_ifname, check_xenbus_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostRoute:
    """A host route online made to a guest address, from dom0's address on the uplink; `metric`
    once the kernel took it (another device may route the address already)."""

    destination: str
    source: str
    metric: int | None = None

    def route(self, vif: str) -> Route:
        network = ipaddress.ip_network(self.destination)
        default = METRIC6 if network.version == 6 else 0
        return Route(TABLE_MAIN, network, vif, src=ipaddress.ip_address(self.source),
                     metric=self.metric if self.metric is not None else default, proto=PROTO_DOM0)

    def placed(self, route: Route) -> HostRoute:
        return replace(self, metric=route.metric)

    def as_json(self) -> list[str]:
        """As records have always held it: [destination, source] or [destination, source, metric]."""
        return [self.destination, self.source, *([str(self.metric)] if self.metric is not None else [])]

    @classmethod
    def from_json(cls, entry: Any, vif: str) -> HostRoute:
        """ValueError unless it is such a list and makes a valid route on vif."""
        if not isinstance(entry, list) or not 2 <= len(entry) <= 3 or not all(isinstance(e, str) for e in entry):
            raise ValueError(f"route {str(entry)[:60]!r}")
        host = cls(entry[0], entry[1], int(entry[2]) if len(entry) == 3 else None)
        host.route(vif)
        return host


@dataclass
class VifRecord:
    """What online did for one vif."""

    key: str
    vif: str
    uplink: str
    guest: list[str]
    dom0_addresses: list[str] = field(default_factory=list)
    routes: list[HostRoute] = field(default_factory=list)
    proxies: list[str] = field(default_factory=list)
    vif_sysctls: dict[str, str] = field(default_factory=dict)  # key -> value before online
    original_name: str | None = None
    xenbus_path: str | None = None

    def networks(self) -> list[IPNetwork]:
        """The guest addresses as networks (kept: the service asks for every record's per vif)."""
        kept = self.__dict__.get("_networks")
        if kept is None or kept[0] != self.guest:
            kept = self.__dict__["_networks"] = (list(self.guest), [ipaddress.ip_network(g) for g in self.guest])
        return kept[1]

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "routes": [r.as_json() for r in self.routes]}


@dataclass(frozen=True)
class VifPlan:
    """What online will do for one vif (plan_online's answer; never changed: what online did is
    its record, VifRecord, which starts as the plan's intent)."""

    key: str
    vif: str
    uplink: str
    guest: tuple[str, ...]
    dom0_addresses: tuple[str, ...] = ()
    routes: tuple[HostRoute, ...] = ()
    proxies: tuple[str, ...] = ()
    original_name: str | None = None
    xenbus_path: str | None = None

    def intent(self) -> VifRecord:
        """The record written before online changes anything: everything online may do (a crash
        leaves offline all it needs); online then narrows it to what it did."""
        return VifRecord(key=self.key, vif=self.vif, uplink=self.uplink, guest=list(self.guest),
                         dom0_addresses=list(self.dom0_addresses), routes=list(self.routes),
                         proxies=list(self.proxies), original_name=self.original_name, xenbus_path=self.xenbus_path)


def plan_online(request: VifRequest, uplink: str, uplink_addresses: list[IPInterface], ipv6: bool) -> VifPlan:
    """Pure: what online must do for this vif, given dom0's uplink addresses."""
    vif = request.rename or request.vif
    guest = list(request.guest)
    if not ipv6 and any(n.version == 6 for n in guest):
        log.warning("%s: IPv6 is disabled in dom0; skipping the IPv6 guest addresses", vif)
        guest = [n for n in guest if n.version == 4]
        if not guest:
            raise UsageError(f"{vif}: only IPv6 guest addresses, and IPv6 is disabled in dom0")
    addresses: list[str] = []
    routes: list[HostRoute] = []
    proxies: list[str] = []
    for version in (4, 6):
        wanted = [n for n in guest if n.version == version]
        if not wanted:
            continue
        own = [a for a in uplink_addresses if a.version == version and not a.ip.is_link_local]
        if not own:
            raise UsageError(f"uplink {uplink} has no IPv{version} address to route the guest's "
                             f"{', '.join(map(str, wanted))} with")
        addresses += [f"{a.ip}/{a.max_prefixlen}" for a in own]
        routes += [HostRoute(str(n), str(own[0].ip)) for n in wanted]
        proxies += [str(n.network_address) for n in wanted if n.version == 6 and n.prefixlen == n.max_prefixlen]
        for prefix in (n for n in wanted if n.version == 6 and n.prefixlen < n.max_prefixlen):
            log.info("%s: prefix %s is routed, but gets no proxy NDP entries (only single addresses do)",
                     vif, prefix)
    return VifPlan(key=request.key, vif=vif, uplink=uplink, guest=tuple(str(n) for n in guest),
                   dom0_addresses=tuple(addresses), routes=tuple(routes), proxies=tuple(proxies),
                   original_name=request.vif if request.rename else None, xenbus_path=request.xenbus_path)


def record_from(data: object) -> VifRecord:
    """A record as read back, checked as strictly as online's own input (ValueError if not)."""
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    record = VifRecord(**data)
    if not isinstance(record.key, str) or not RECORD_KEY.fullmatch(record.key):
        raise ValueError(f"key {record.key!r}")
    for name in (record.vif, record.uplink, *([record.original_name] if record.original_name else [])):
        check_ifname(name, "record")
    if record.xenbus_path is not None:
        check_xenbus_path(record.xenbus_path)
    strings = [*record.guest, *record.dom0_addresses, *record.proxies]
    if not all(isinstance(text, str) for text in strings) or not isinstance(record.routes, list):
        raise ValueError("addresses are not strings")
    for text in record.guest:
        parse_network(text)
    for text in record.dom0_addresses:
        parse_network(text, strict=False)
    for text in record.proxies:
        parse_address(text)
    record.routes = [HostRoute.from_json(entry, record.vif) for entry in record.routes]
    saved_values(record.vif_sysctls)
    return record


def salvage(data: object) -> VifRecord | None:
    """The parts of an unusable record that check out on their own; None without a valid vif name."""
    if not isinstance(data, dict) or not valid_ifname(data.get("vif")):
        return None
    vif = data["vif"]

    def items(name: str, check: Callable[[Any], object]) -> list[Any]:
        good = []
        for item in data.get(name) if isinstance(data.get(name), list) else []:
            try:
                good.append(check(item))
            except (ValueError, TypeError, UsageError):
                continue
        return good

    def keep(check: Callable[[Any], object]) -> Callable[[Any], Any]:
        return lambda item: (check(item), item)[1]

    uplink = data.get("uplink") if valid_ifname(data.get("uplink")) else ""
    original = data.get("original_name") if valid_ifname(data.get("original_name")) else None
    return VifRecord(key=str(data.get("key", ""))[:40], vif=vif, uplink=uplink,
                     guest=items("guest", keep(parse_network)),
                     dom0_addresses=items("dom0_addresses", keep(lambda t: parse_network(t, strict=False))),
                     routes=items("routes", lambda entry: HostRoute.from_json(entry, vif)) if uplink else [],
                     proxies=items("proxies", keep(parse_address)) if uplink else [],
                     original_name=original)


@dataclass(frozen=True)
class Unusable:
    """A record that fails validation. It is left in place and read again every run, its vif stays
    guarded and its addresses claimed, until the vif goes offline or an admin removes the file."""

    key: str
    path: Path
    reason: str
    salvaged: VifRecord | None  # what could be read of it, field by field and item by item

    def consequence(self) -> str:
        if self.salvaged is None:
            return ("its vif is unknown, so every guarded vif without a usable record stays guarded as it is now, "
                    "and their addresses stay claimed: remove the file once you know which vif it was")
        vif = self.salvaged.vif
        return (f"{vif} stays guarded with the sources it is allowed now, and its addresses stay claimed: "
                f"fix or remove the file, or take the vif offline (domunet dom0 offline --vif {vif})")


def read_records(layout: Layout, cache: dict[str, Any] | None = None) -> tuple[list[VifRecord], list[Unusable]]:
    """Every record under the dom0 directory: the usable ones, and the unusable ones (logged).
    `cache`: the service's, so that a request re-reads only the records that changed (the records
    read back are never changed in place: online plans a new one)."""
    good, bad = read_folder(layout.dom0, Layout.VIF_RECORDS, record_from, "record", cache)
    unusable = []
    for failed in bad:
        broken = Unusable(Layout.vif_record_key(failed.path), failed.path, failed.reason, salvage(failed.data))
        log.error("%s: %s; %s", failed.path, failed.reason, broken.consequence())
        unusable.append(broken)
    return [record for _, record in good], unusable


def save_record(layout: Layout, record: VifRecord) -> None:
    write_json(layout.vif_record(record.key), record.as_json())


def folder_stamp(layout: Layout) -> tuple[int, int, int, bytes]:
    """The records folder as it is now: its times and size, and the last run's token (a reader
    that keeps records in memory knows from it whether anyone changed them since)."""
    info = os.stat(layout.dom0)
    try:
        token = layout.dom0_generation.read_bytes()[:64]
    except OSError:
        token = b""
    return info.st_mtime_ns, info.st_ctime_ns, info.st_size, token
