"""dom0: route, proxy and guard each guest address of a vif (the vif-domunet hotplug script).

online:  validate everything first; then, in this order: a record under /run (so that a
         crash still leaves something for offline to undo), the vif's rename, anti-spoofing
         (before the vif is up), sysctls, dom0's addresses on the vif, link up, a host route
         per guest address, proxy NDP entries on the uplink. A failure undoes it all.
offline: undoes exactly what the record says, tolerating what is already gone (a destroyed
         guest's vif), then drops the anti-spoofing entries (after the vif is down).
Proxy entries are shared: one is removed only when no other vif's record still lists it.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import re
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from domunet.core import nftables, sysctl
from domunet.core.errors import KernelError, ObjectExists, ObjectMissing, UsageError
from domunet.core.kernel import Kernel
from domunet.core.lock import locked
from domunet.core.model import (
    DEFAULT_STATE_DIR,
    IFNAME_CHARS,
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
from domunet.core.state import CorruptState, read_json, set_aside, write_json
from domunet.dom0 import guard

log = logging.getLogger(__name__)

MAX_ADDRESSES = 256
METRIC_TRIES = 8
XENBUS_PATH_PATTERN = re.compile(r"^backend/vif/(\d{1,5})/(\d{1,5})$")


def check_ifname(value: str | None, what: str) -> str:
    if not valid_ifname(value):
        raise UsageError(f"{what}: {value!r} is not a valid interface name")
    return value


def check_xenbus_path(value: str) -> str:
    if not XENBUS_PATH_PATTERN.match(value):
        raise UsageError(f"XENBUS_PATH: {value!r} is not backend/vif/DOMID/DEVID")
    return value


def parse_addresses(text: str | None, what: str) -> tuple[IPNetwork, ...]:
    """Guest addresses or prefixes, space separated (libxl never validates them: we do)."""
    if text is None or not text.strip():
        raise UsageError(f"{what}: no guest address given; a routed vif needs its guest's addresses")
    if len(text) > 16 * MAX_ADDRESSES:
        raise UsageError(f"{what}: value is too long")
    networks: list[IPNetwork] = []
    for token in text.split():
        if "%" in token:
            raise UsageError(f"{what}: {token!r} has a %zone id; give the address without it")
        try:
            network = parse_network(token)
        except ValueError:
            raise UsageError(f"{what}: {token!r} is not an IPv4/IPv6 address or prefix") from None
        if network.is_multicast or network.is_loopback or network.is_link_local or network.is_unspecified \
                or network.prefixlen == 0:
            raise UsageError(f"{what}: {token!r} cannot be a guest address")
        if network not in networks:
            networks.append(network)
    if len(networks) > MAX_ADDRESSES:
        raise UsageError(f"{what}: more than {MAX_ADDRESSES} addresses")
    return tuple(networks)


_VIF_NAME = re.compile(r"^vif(\d{1,5})\.\d{1,5}(-emu)?$")


def domain_of(key: str, vif: str) -> int | None:
    """The guest domain a vif belongs to (from libxl's backend path, else its vifD.N name): one
    domain's PV vif and emulated NIC may carry the same address, two domains may not."""
    match = re.match(r"^xen-(\d+)-\d+$", key) or _VIF_NAME.match(vif)
    return int(match.group(1)) if match else None


#: Narrowest prefix length given to a guest without [dom0] allow_prefixes: wider ones are deliberate.
WIDEST = {4: 24, 6: 48}
_LIMITED_BROADCAST = ipaddress.ip_network("255.255.255.255/32")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_MAPPED4 = ipaddress.ip_network("::ffff:0:0/96")


def check_guest_networks(vif: str, guest: tuple[IPNetwork, ...], uplink_addresses: list[IPInterface],
                         gateways: list[Any], others: dict[str, list[IPNetwork]],
                         allow: tuple[IPNetwork, ...] = (), dom0_addresses: Sequence[IPInterface] = ()) -> None:
    """Pure: refuse what would let a guest capture traffic that is not its own: dom0's own
    addresses (on any device) or gateway, a slice or the whole of an uplink subnet (a single
    address in it is what proxy ARP/NDP is for), broadcast, reserved and IPv4-mapped ranges,
    prefixes wider than /24 or /48 (unless listed in [dom0] allow_prefixes), an address already
    routed to another vif."""
    for network in guest:
        allowed = any(network.version == a.version and network.subnet_of(a) for a in allow)  # type: ignore[arg-type]

        def refuse(why: str, network: IPNetwork = network) -> None:
            raise UsageError(f"{vif}: guest address {network} {why}")

        if network.version == 6 and network.overlaps(_MAPPED4):
            refuse("is an IPv4-mapped IPv6 range (give the IPv4 address)")
        if network.is_reserved or (network.version == 4 and (network.overlaps(_LIMITED_BROADCAST)
                                                             or network.overlaps(_THIS_NETWORK))):
            refuse("is a broadcast or reserved range")
        for own in (a for a in [*uplink_addresses, *dom0_addresses]
                    if a.version == network.version and not a.ip.is_link_local and not a.ip.is_loopback):
            if own.ip in network:
                refuse(f"holds dom0's own address {own.ip}")
        for own in (a for a in uplink_addresses if a.version == network.version and not a.ip.is_link_local):
            subnet = own.network
            if allowed or subnet.prefixlen == subnet.max_prefixlen or not network.overlaps(subnet):
                continue
            if network.prefixlen <= subnet.prefixlen:
                refuse(f"covers dom0's whole uplink subnet {subnet} (list it in [dom0] allow_prefixes if deliberate)")
            if network.prefixlen < network.max_prefixlen:
                refuse(f"is a slice of dom0's uplink subnet {subnet}: proxy ARP/NDP would claim its neighbours' "
                       "addresses (give single addresses, or list it in [dom0] allow_prefixes if deliberate)")
            if network.version == 4 and subnet.prefixlen < 31 and (
                    subnet.broadcast_address in network or subnet.network_address in network):
                refuse(f"holds the network or broadcast address of {subnet}")
        for gateway in gateways:
            if gateway.version == network.version and gateway in network:
                refuse(f"holds dom0's gateway {gateway}")
        if not allowed and network.prefixlen < WIDEST[network.version]:
            refuse(f"is wider than /{WIDEST[network.version]} (list it in [dom0] allow_prefixes if deliberate)")
        for other, networks in sorted(others.items()):
            clash = next((n for n in networks if n.version == network.version and n.overlaps(network)), None)
            if clash is not None:
                refuse(f"overlaps {clash}, which is routed to {other} already")


@dataclass(frozen=True)
class VifRequest:
    """Validated input for one vif: from xenstore (hotplug) or the command line."""

    key: str
    vif: str
    guest: tuple[IPNetwork, ...]
    uplink: str | None = None
    rename: str | None = None
    xenbus_path: str | None = None


@dataclass
class VifRecord:
    """What online did for one vif, kept under /run so that offline undoes exactly that."""

    key: str
    vif: str
    uplink: str
    guest: list[str]
    dom0_addresses: list[str] = field(default_factory=list)
    routes: list[list[str]] = field(default_factory=list)  # [destination, source, metric]
    proxies: list[str] = field(default_factory=list)
    vif_sysctls: dict[str, str] = field(default_factory=dict)  # key -> value before online
    original_name: str | None = None
    xenbus_path: str | None = None

    def networks(self) -> list[IPNetwork]:
        return [ipaddress.ip_network(g) for g in self.guest]


def plan_online(request: VifRequest, uplink: str, uplink_addresses: list[IPInterface], ipv6: bool) -> VifRecord:
    """Pure: what online must do for this vif, given dom0's uplink addresses."""
    vif = request.rename or request.vif
    guest = list(request.guest)
    if not ipv6 and any(n.version == 6 for n in guest):
        log.warning("%s: IPv6 is disabled in dom0; skipping the IPv6 guest addresses", vif)
        guest = [n for n in guest if n.version == 4]
        if not guest:
            raise UsageError(f"{vif}: only IPv6 guest addresses, and IPv6 is disabled in dom0")
    record = VifRecord(key=request.key, vif=vif, uplink=uplink, guest=[str(n) for n in guest],
                       original_name=request.vif if request.rename else None,
                       xenbus_path=request.xenbus_path)
    for version in (4, 6):
        wanted = [n for n in guest if n.version == version]
        if not wanted:
            continue
        own = [a for a in uplink_addresses if a.version == version and not a.ip.is_link_local]
        if not own:
            raise UsageError(f"uplink {uplink} has no IPv{version} address to route the guest's "
                             f"{', '.join(map(str, wanted))} with")
        record.dom0_addresses += [f"{a.ip}/{a.max_prefixlen}" for a in own]
        record.routes += [[str(n), str(own[0].ip)] for n in wanted]
        singles = [n for n in wanted if n.version == 6 and n.prefixlen == n.max_prefixlen]
        record.proxies += [str(n.network_address) for n in singles]
        for prefix in (n for n in wanted if n.version == 6 and n.prefixlen < n.max_prefixlen):
            log.info("%s: prefix %s is routed, but gets no proxy NDP entries (only single addresses do)",
                     vif, prefix)
    return record


def _route(vif: str, destination: str, source: str, metric: str | None = None) -> Route:
    network = ipaddress.ip_network(destination)
    default = METRIC6 if network.version == 6 else 0
    return Route(TABLE_MAIN, network, vif, src=ipaddress.ip_address(source),
                 metric=int(metric) if metric is not None else default, proto=PROTO_DOM0)


class Dom0:
    """Applies and undoes vif records; all state lives in the kernel and in state_dir."""

    def __init__(self, kernel: Kernel, state_dir: str = DEFAULT_STATE_DIR,
                 allow_prefixes: tuple[IPNetwork, ...] = (), input_policy: str = "restricted") -> None:
        self.kernel = kernel
        self.dir = Path(state_dir) / "dom0"
        self.allow_prefixes = allow_prefixes
        self.input_policy = input_policy
        #: Records that cannot be used, as last read: their vifs stay guarded (fail closed).
        self.unusable: list[Unusable] = []
        #: vifs whose unusable record an offline released during this run (no longer kept guarded).
        self.released: set[str] = set()

    # --- records ---------------------------------------------------------------------------

    def locked(self) -> AbstractContextManager[None]:
        """Hotplug scripts for several vifs run at once: serialise them."""
        return locked(str(self.dir))

    def _path(self, key: str) -> Path:
        return self.dir / f"vif-{key}.json"

    def records(self) -> list[VifRecord]:
        """The usable records. One that is not (a newer domunet's, a truncated file) stays where it
        is and keeps its vif guarded (see `unusable`); the rest go on."""
        return self._read()[0]

    def _read(self) -> tuple[list[VifRecord], list[Unusable]]:
        found, unusable = [], []
        for path in sorted(self.dir.glob("vif-*.json")):
            key = path.name[len("vif-"):-len(".json")]
            try:
                data = read_json(path)
                found.append(record_from(data))
                continue
            except CorruptState as error:
                reason, data = str(error).removeprefix(f"{path}: "), None
            except (ValueError, TypeError, UsageError) as error:
                reason = f"not a valid record ({error})"
            except OSError as error:
                reason, data = f"unreadable ({error.strerror})", None
            held = Unusable(key, path, reason, salvage(data))
            log.error("%s: %s; %s", path, reason, held.consequence())
            unusable.append(held)
        self.unusable = unusable
        return found, unusable

    def _save(self, record: VifRecord) -> None:
        write_json(self._path(record.key), asdict(record))

    def _guarded(self, records: list[VifRecord]) -> dict[str, list[IPNetwork]]:
        """The vifs to guard and their allowed sources: every usable record's, and fail closed for
        every unusable one: what could be read of it, else what the kernel's table allows it now,
        else nothing at all (its vif still guarded)."""
        guarded = {r.vif: r.networks() for r in records}
        held = [u for u in self.unusable if u.key not in {r.key for r in records}]
        if not held:
            return guarded
        now = guard.guarded_now()
        for unusable in held:
            if unusable.salvaged is not None:
                vif = unusable.salvaged.vif
                guarded.setdefault(vif, [])
                guarded[vif] += [n for n in [*unusable.salvaged.networks(), *now.get(vif, [])]
                                 if n not in guarded[vif]]
        if any(u.salvaged is None for u in held):  # whose vif it was is unknown: keep every unnamed one
            for vif, networks in now.items():
                if vif not in guarded and vif not in self.released:
                    guarded[vif] = list(networks)
        return guarded

    def _guard(self, records: list[VifRecord]) -> None:
        guard.load(guard.ruleset(self._guarded(records), restrict_input=self.input_policy == "restricted"))

    # --- online ----------------------------------------------------------------------------

    def online(self, request: VifRequest) -> VifRecord:
        nftables.require(f"online of {request.vif}")  # before anything changes
        with self.locked():
            records, unusable = self._read()
            if any(r.key == request.key for r in records) or any(u.key == request.key for u in unusable):
                log.info("%s: online again: undoing the earlier online first", request.vif)
                self._offline(request.key, request.vif)
                records = self.records()  # read again only when the offline changed them
            links = self.kernel.links(refresh=True)
            if request.vif not in links:
                raise UsageError(f"vif {request.vif} does not exist")
            if request.rename and request.rename != request.vif and request.rename in links:
                raise UsageError(f"vifname {request.rename}: an interface of that name exists already")
            defaults = self.kernel.main_defaults()
            uplink = request.uplink or next((route.dev for route in defaults if route.dev), None)
            if not uplink:
                raise UsageError("no uplink: give gatewaydev/netdev, or give dom0 a default route")
            if uplink not in links:
                raise UsageError(f"uplink {uplink} does not exist")
            ipv6 = sysctl.ipv6_enabled()
            uplink_addresses = self.kernel.addresses(uplink)
            others = [r for r in records if r.key != request.key]
            gateways = [route.gateway for route in defaults if route.gateway is not None]
            domain = domain_of(request.key, request.vif)
            other_domains = {r.vif: r.networks() for r in others
                             if domain is None or domain_of(r.key, r.original_name or r.vif) != domain}
            # a vif whose record is unusable keeps its addresses: nobody claims them until an admin acts
            other_domains.update({vif: networks for vif, networks in self._guarded(others).items()
                                  if vif not in {r.vif for r in others} and networks})
            check_guest_networks(request.rename or request.vif, request.guest, uplink_addresses, gateways,
                                 other_domains, self.allow_prefixes, self.kernel.addresses())
            record = plan_online(request, uplink, uplink_addresses, ipv6)
            undo: list[Callable[[], None]] = []
            try:
                self._online(request, record, others, ipv6, undo)
            except BaseException:  # whatever failed (a full /run, a bug, an interrupt): dom0 as before
                for step in reversed(undo):
                    try:
                        step()
                    except ObjectMissing:
                        pass  # e.g. IPv6 addresses go with the link
                    except Exception as error:  # noqa: BLE001 (undo the rest, say what stayed)
                        log.error("%s: undo failed: %s", record.vif, error)
                raise
            return record

    def _online(self, request: VifRequest, record: VifRecord, others: list[VifRecord], ipv6: bool,
                undo: list[Callable[[], None]]) -> None:
        kernel, vif = self.kernel, record.vif
        self._save(record)
        undo.append(lambda: self._path(record.key).unlink(missing_ok=True))
        if request.rename and request.rename != request.vif:
            kernel.set_link(request.vif, up=False, rename=request.rename)
            undo.append(lambda: kernel.set_link(vif, rename=request.vif))
        self._guard(others + [record])
        undo.append(lambda: self._guard(others))
        self._set_sysctls(record, others, ipv6, undo)
        added: list[str] = []
        for text in record.dom0_addresses:
            address = ipaddress.ip_interface(text)
            try:
                kernel.add_address(vif, address)
            except ObjectExists:
                continue  # already there: not ours to remove later
            added.append(text)
            undo.append(lambda a=address: kernel.remove_address(vif, a))
        record.dom0_addresses = added
        kernel.set_link(vif, up=True)
        undo.append(lambda: kernel.set_link(vif, up=False))
        for entry in record.routes:
            route = self._add_route(vif, entry)
            undo.append(lambda r=route: kernel.remove_route(r))
        shared = {p for r in others for p in r.proxies}
        for text in record.proxies:
            kernel.add_proxy(record.uplink, ipaddress.ip_address(text))
            if text not in shared:
                undo.append(lambda t=text: kernel.remove_proxy(record.uplink, ipaddress.ip_address(t)))
        self._save(record)
        log.info("%s: online: %s routed via uplink %s", vif, " ".join(record.guest), record.uplink)

    def _add_route(self, vif: str, entry: list[str]) -> Route:
        """A host route to a guest address; when another device routes it already (an HVM
        guest's emulated NIC, an overlapping restart), take the next metric and say so."""
        route = _route(vif, *entry)
        for _ in range(METRIC_TRIES):
            try:
                self.kernel.add_route(route)
                entry[2:] = [str(route.metric)]
                return route
            except ObjectExists:
                log.warning("%s: %s is routed already; adding ours with metric %d",
                            vif, route.dst, route.metric + 1)
                route = dataclasses.replace(route, metric=route.metric + 1)
        raise KernelError(f"{vif}: cannot route {route.dst}: {METRIC_TRIES} routes to it exist already")

    def _set_sysctls(self, record: VifRecord, others: list[VifRecord], ipv6: bool,
                     undo: list[Callable[[], None]]) -> None:
        """Global ones keep their values from before the first vif; restored after the last."""
        uplink, vif = record.uplink, record.vif
        wanted = {"net/ipv4/ip_forward": "1", f"net/ipv4/conf/{uplink}/proxy_arp": "1"}
        if ipv6:
            if sysctl.read(f"net/ipv6/conf/{uplink}/accept_ra") == "1":
                wanted[f"net/ipv6/conf/{uplink}/accept_ra"] = "2"  # keep taking RAs while forwarding
            wanted.update({
                "net/ipv6/conf/all/forwarding": "1",
                f"net/ipv6/conf/{uplink}/proxy_ndp": "1",
                "net/ipv6/conf/all/proxy_ndp": "1",  # unicast reachability probes check 'all'
            })
        saved = self._sysctl_origin()
        fresh = {k: v for k in wanted if k not in saved and (v := sysctl.read(k)) is not None}
        if fresh:
            write_json(self.dir / SYSCTL_ORIGIN, {**saved, **fresh})
        if not others:
            undo.append(self._restore_sysctls)
        for key, value in wanted.items():
            sysctl.write(key, value)
        # the vif: answer ARP for dom0's side; never take a router advertisement or a redirect
        # from the guest (a guest's RA would otherwise install a default route in dom0)
        per_vif = {f"net/ipv4/conf/{vif}/proxy_arp": "1", f"net/ipv4/conf/{vif}/accept_redirects": "0"}
        if ipv6:
            per_vif.update({f"net/ipv6/conf/{vif}/accept_ra": "0", f"net/ipv6/conf/{vif}/accept_redirects": "0"})
        record.vif_sysctls = {}
        for key, value in per_vif.items():
            before = sysctl.read(key)
            if before is None:
                continue
            record.vif_sysctls[key] = before
            sysctl.write(key, value)

    def _sysctl_origin(self) -> dict[str, str]:
        """The sysctls' values before the first vif; a corrupt file is set aside (nothing to restore)."""
        path = self.dir / SYSCTL_ORIGIN
        try:
            data = read_json(path)
            return {} if data is None else sysctl.saved_values(data)
        except CorruptState as error:
            set_aside(path, str(error))
        except ValueError as error:
            set_aside(path, f"not a list of sysctl values ({error})")
        return {}

    def _restore_sysctls(self) -> None:
        for key, value in self._sysctl_origin().items():
            try:
                sysctl.write(key, value)
            except KernelError as error:
                log.warning("could not restore %s: %s", key, error)
        (self.dir / SYSCTL_ORIGIN).unlink(missing_ok=True)

    # --- offline ---------------------------------------------------------------------------

    def offline(self, key: str, vif: str | None = None) -> bool:
        """Undo what online recorded; False when there was nothing recorded. Never raises for
        what is already gone; other errors are logged and the rest is still undone. `vif`: the
        vif's name as libxl gives it (releases the guard of a vif whose record is unusable)."""
        with self.locked():
            return self._offline(key, vif)

    def _offline(self, key: str, vif_name: str | None = None) -> bool:
        records, unusable = self._read()
        keys = _keys_for(key)
        record = next((r for r in records if r.key in keys), None)
        held = next((u for u in unusable if u.key in keys or (u.salvaged and u.salvaged.vif == key)), None)
        if record is None and held is not None:
            key = held.key
        elif record is not None:
            key = record.key
        if held is not None:
            # the vif itself goes offline: undo what could be read of its record, release its guard
            log.warning("%s: offline of a vif whose record is unusable: undoing what could be read of it",
                        key)
            self.released |= {name for name in (vif_name, held.salvaged and held.salvaged.vif) if name}
            self.unusable = [u for u in unusable if u is not held]
            set_aside(held.path, held.reason)
            record = held.salvaged
        if record is None:
            log.info("%s: offline: nothing recorded, nothing to undo", key)
            self._path(key).unlink(missing_ok=True)
            if held is not None:
                self._guard(records)
            return held is not None
        others = [r for r in records if r.key != key]
        kernel, vif = self.kernel, record.vif
        exists = vif in kernel.links(refresh=True)

        def attempt(what: str, step: Callable[[], None]) -> None:
            try:
                step()
            except ObjectMissing:
                log.debug("%s: %s: already gone", vif, what)
            except Exception as error:  # noqa: BLE001 (offline undoes all it can, whatever one step does)
                log.error("%s: offline: %s: %s", vif, what, error)

        if exists:
            attempt("link down", lambda: kernel.set_link(vif, up=False))
        shared = {p for r in others for p in r.proxies}
        for text in record.proxies:
            if text not in shared:
                attempt(f"proxy {text}",
                        lambda t=text: kernel.remove_proxy(record.uplink, ipaddress.ip_address(t)))
        if exists:
            for entry in record.routes:
                attempt(f"route {entry[0]}", lambda e=entry: kernel.remove_route(_route(vif, *e)))
            for text in record.dom0_addresses:
                attempt(f"address {text}",
                        lambda t=text: kernel.remove_address(vif, ipaddress.ip_interface(t)))
            for name, value in record.vif_sysctls.items():
                attempt(name, lambda n=name, v=value: sysctl.write(n, v))
            if record.original_name:
                attempt("rename back", lambda: kernel.set_link(vif, rename=record.original_name))
        attempt("anti-spoofing", lambda: self._guard(others))
        self._path(key).unlink(missing_ok=True)
        if not others:
            self._restore_sysctls()
        log.info("%s: offline: done", vif)
        return True

    def reconcile(self) -> int:
        """Re-add what the kernel drops behind our back (proxy entries when the uplink was down)."""
        nftables.require("reconcile")
        with self.locked():
            records = self.records()
            for record in records:
                for text in record.proxies:
                    try:
                        self.kernel.add_proxy(record.uplink, ipaddress.ip_address(text))
                    except KernelError as error:
                        if error.errno != errno.ENODEV:
                            raise
                        log.warning("%s: uplink %s is missing; proxy %s not restored", record.vif, record.uplink, text)
            self._guard(records)
            return len(records)


@dataclass(frozen=True)
class Unusable:
    """A record that fails validation (a newer domunet's after a downgrade, a truncated file). It
    is left in place and read again every run, its vif stays guarded and its addresses claimed,
    until the vif goes offline or an admin removes the file."""

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


def _keys_for(name: str) -> set[str]:
    """Record keys an offline by this name means: the key itself, and for a vif named as Xen names
    them (vifD.N) its hotplug key xen-D-N (so `domunet dom0 offline --vif vif1.1` finds it)."""
    match = re.match(r"^vif(\d{1,5})\.(\d{1,5})$", name)
    return {name, f"xen-{match.group(1)}-{match.group(2)}"} if match else {name}


def salvage(data: object) -> VifRecord | None:
    """The parts of an unusable record that check out on their own; None without a valid vif name."""
    if not isinstance(data, dict) or not valid_ifname(data.get("vif")):
        return None
    vif = data["vif"]

    def items(name: str, check: Callable[[Any], object]) -> list[Any]:
        good = []
        for item in data.get(name) if isinstance(data.get(name), list) else []:
            try:
                check(item)
                good.append(item)
            except (ValueError, TypeError, UsageError):
                continue
        return good

    def route(entry: Any) -> None:
        if not isinstance(entry, list) or not 2 <= len(entry) <= 3 or not all(isinstance(e, str) for e in entry):
            raise ValueError("not a route")
        _route(vif, *entry)

    uplink = data.get("uplink") if valid_ifname(data.get("uplink")) else ""
    original = data.get("original_name") if valid_ifname(data.get("original_name")) else None
    return VifRecord(key=str(data.get("key", ""))[:40], vif=vif, uplink=uplink,
                     guest=items("guest", lambda t: parse_network(t)),
                     dom0_addresses=items("dom0_addresses", lambda t: parse_network(t, strict=False)),
                     routes=items("routes", route) if uplink else [],
                     proxies=items("proxies", parse_address) if uplink else [],
                     original_name=original)


SYSCTL_ORIGIN = "sysctl-origin.json"
_RECORD_KEY = re.compile(rf"^(xen-\d{{1,5}}-\d{{1,5}}|{IFNAME_CHARS}{{1,15}})$")
def record_from(data: object) -> VifRecord:
    """A record as read back, checked as strictly as online's own input (ValueError if not)."""
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    record = VifRecord(**data)
    if not isinstance(record.key, str) or not _RECORD_KEY.match(record.key):
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
    for entry in record.routes:
        if not isinstance(entry, list) or not 2 <= len(entry) <= 3 or not all(isinstance(e, str) for e in entry):
            raise ValueError(f"route {str(entry)[:60]!r}")
        _route(record.vif, *entry)
    sysctl.saved_values(record.vif_sysctls)
    return record
