"""plan(config, facts) -> the desired routes and rules. Pure: no kernel, no files, no clock.

Who is managed: every interface whose IPv4 subnet is shared with another interface (the
primary included), every interface with an IPv6 gateway, and every interface the config
says `manage = yes` or gives a gateway. Each gets a table of its own and one block of rule
priorities, both derived from something stable (Xen vif device id, else MAC), never the ifindex.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from domunet.core.config import TABLE_SLOTS, Config, InterfaceConfig
from domunet.core.model import (
    LINK_LOCAL6,
    METRIC6,
    PROTO_KERNEL,
    TABLE_MAIN,
    Facts,
    Interface,
    IPAddress,
    IPNetwork,
    ManagedInterface,
    PublishedVif,
    Route,
    Rule,
    State,
    default_network,
    host_network,
)
from domunet.guest.owned import FIRST_INTERFACE_PRIORITY, MARK_PRIORITY

log = logging.getLogger(__name__)

#: Slots below this are for Xen vif device ids; MAC-derived slots use the rest.
XEN_SLOTS = 256


@dataclass(frozen=True)
class _Candidate:
    interface: Interface
    families: tuple[int, ...]
    gateway: ipaddress.IPv4Address | None
    gateway6: ipaddress.IPv6Address | None
    reasons: tuple[str, ...]
    gateway_source: str | None = None
    gateway6_source: str | None = None


def preferred_slot(interface: Interface) -> int:
    """Xen device id when the NIC is a vif; else a hash of the MAC (stable across renames)."""
    if interface.xen_devid is not None and interface.xen_devid < XEN_SLOTS:
        return interface.xen_devid
    key = (interface.mac or interface.name).lower().encode()
    return XEN_SLOTS + zlib.crc32(key) % (TABLE_SLOTS - XEN_SLOTS)


def allocate_tables(config: Config, interfaces: list[Interface], foreign: frozenset[int] = frozenset(),
                    ) -> dict[str, int]:
    """Table per interface: explicit config first, then preferred slots, collisions probed in MAC order.
    A table with someone else's routes in it is never picked by itself (only when the config names it)."""
    tables: dict[str, int] = {}
    taken: set[int] = set(foreign)
    for interface in interfaces:
        explicit = config.for_interface(interface.name).table
        if explicit is not None:
            tables[interface.name] = explicit
            taken.add(explicit)
    rest = sorted(
        (i for i in interfaces if i.name not in tables),
        key=lambda i: (preferred_slot(i), i.mac, i.name),
    )
    for interface in rest:
        slot = preferred_slot(interface)
        table = config.table_base + slot
        while table in taken:
            slot = (slot + 1) % TABLE_SLOTS
            table = config.table_base + slot
        if slot != preferred_slot(interface):
            first = config.table_base + preferred_slot(interface)
            log.info("%s: table %d %s, using %d", interface.name, first,
                     "holds routes domunet did not make" if first in foreign else "was taken", table)
        tables[interface.name] = table
        taken.add(table)
    return tables


def ignored(config: Config, interface: Interface) -> bool:
    """Loopback, or a name the config's `ignore` matches: never domunet's."""
    return interface.loopback or any(fnmatch.fnmatchcase(interface.name, p) for p in config.ignore)


def _main_gateway(facts: Facts, interface: Interface) -> ipaddress.IPv4Address | None:
    """The main table's IPv4 default gateway, when it lies in one of this interface's subnets."""
    defaults = sorted(
        (r for r in facts.main_defaults if r.version == 4 and r.gateway is not None),
        key=lambda r: (r.dev != interface.name, r.metric),
    )
    for route in defaults:
        if interface.reaches(route.gateway):  # type: ignore[arg-type]
            return route.gateway  # type: ignore[return-value]
    return None


def _gateway4(settings: InterfaceConfig, facts: Facts, interface: Interface,
              published: PublishedVif | None) -> tuple[ipaddress.IPv4Address | None, str | None]:
    """config or ifupdown, else main's default gateway in the subnet, else what dom0 published."""
    if settings.gateway:
        return settings.gateway, settings.source("gateway")
    main = _main_gateway(facts, interface)
    if main:
        return main, "kernel"
    if published and published.gateway:
        return published.gateway, "xenstore"
    return None, None


class _Held(Exception):
    """One NIC's fact is unusable: that NIC is left as it is, the others are served."""


def _source_of(config: Config, interface: Interface, key: str, source: str | None,
               published: PublishedVif | None) -> str:
    """Where a gateway came from, as the admin finds it: the file and key, or the xenstore path."""
    if source == "xenstore" and published is not None:
        return f"xenstore {published.backend}/domunet-{key}"
    if source in (None, "config"):
        return f"{config.path} [interfaces] [[{interface.name}]] key '{key}'"
    return f"{key} from {source}"


def _check_gateway(config: Config, interface: Interface, key: str, gateway: IPAddress | None,
                   source: str | None = None, published: PublishedVif | None = None) -> None:
    if gateway is None:
        return
    where = _source_of(config, interface, key, source, published)
    if interface.holds(gateway):
        raise _Held(f"{where}: {gateway} is an address of {interface.name} itself, not a gateway")
    for address in interface.addresses_of(4):
        network = address.network
        if network.prefixlen < 31 and gateway in (network.network_address, network.broadcast_address):
            raise _Held(f"{where}: {gateway} is the network or broadcast address of {network} on "
                        f"{interface.name}, not a gateway")


def _usable(config: Config, facts: Facts) -> list[Interface]:
    usable = []
    for interface in facts.interfaces:
        settings = config.for_interface(interface.name)
        if ignored(config, interface) or settings.manage == "no":
            continue
        if not interface.up:
            log.info("%s: link is down, not managed", interface.name)
            continue
        usable.append(interface)
    return usable


def _shared(interfaces: list[Interface]) -> set[IPNetwork]:
    """On-link prefixes that more than one interface holds (both families)."""
    holders: dict[IPNetwork, set[str]] = defaultdict(set)
    for interface in interfaces:
        for version in (4, 6):
            for network, _ in interface.networks_of(version):
                holders[network].add(interface.name)
    return {network for network, names in holders.items() if len(names) > 1}


def _candidates(config: Config, facts: Facts, usable: list[Interface], shared_networks: set[IPNetwork],
                held: dict[str, str]) -> list[_Candidate]:
    """The NICs to manage; a NIC with an unusable fact goes to `held` (with why), not here."""
    candidates = []
    with_ipv4 = sum(1 for i in usable if i.addresses_of(4))
    for interface in usable:
        if interface.name in config.broken:
            held[interface.name] = config.broken[interface.name]
            continue
        try:
            candidate = _candidate(config, facts, interface, shared_networks, with_ipv4)
        except _Held as error:
            held[interface.name] = str(error)
            continue
        if candidate is not None:
            candidates.append(candidate)
    for name, why in held.items():
        log.warning("%s: left as it is: %s", name, why)
    return candidates


def _candidate(config: Config, facts: Facts, interface: Interface, shared_networks: set[IPNetwork],
               with_ipv4: int) -> _Candidate | None:
    settings = config.for_interface(interface.name)
    published = facts.published.get(interface.name)
    families: list[int] = []
    reasons: list[str] = []
    gateway = gateway6 = None
    gateway_source = gateway6_source = None
    if interface.addresses_of(4):
        shared = sorted({
            str(network) for network, _ in interface.networks_of(4) if network in shared_networks
        })
        if shared:
            reasons.append(f"shares {', '.join(shared)}")
        if settings.gateway:
            reasons.append(f"gateway from {settings.source('gateway')}")
        if settings.manage == "yes":
            reasons.append(f"manage = yes ({settings.source('manage')})")
        if published and published.routed and published.gateway and with_ipv4 > 1:
            reasons.append("routed by dom0 (xenstore)")
        if reasons:
            families.append(4)
            gateway, gateway_source = _gateway4(settings, facts, interface, published)
            _check_gateway(config, interface, "gateway", gateway, gateway_source, published)
    gateway6, gateway6_source = (settings.gateway6, settings.source("gateway6")) if settings.gateway6 else (
        (published.gateway6, "xenstore") if published and published.gateway6 else (None, None))
    if gateway6 and not interface.addresses_of(6):
        log.warning("%s: gateway6 %s (from %s) is set, but %s has no IPv6 address (IPv6 disabled?): "
                    "IPv6 skipped", interface.name, gateway6, gateway6_source, interface.name)
    if interface.addresses_of(6) and (gateway6 or settings.manage == "yes"):
        families.append(6)
        _check_gateway(config, interface, "gateway6", gateway6, gateway6_source, published)
        reasons.append(f"IPv6 gateway from {gateway6_source}" if gateway6 else "manage = yes (IPv6)")
    else:
        gateway6 = gateway6_source = None
    if families:
        return _Candidate(interface, tuple(families), gateway, gateway6, tuple(reasons),
                          gateway_source, gateway6_source)
    return None


def _family_routes(
    interface: Interface, version: int, table: int, gateway: IPAddress | None,
) -> list[Route]:
    """Link routes with the right source, a host route to an off-link gateway, the default route.

    IPv6 routes carry no source: the kernel refuses a tentative address (still in DAD) as
    one, and the `from` rules and RFC 6724 already pick the NIC's own address.
    """
    name = interface.name
    metric = METRIC6 if version == 6 else 0
    addresses = interface.addresses_of(version)
    networks = [(network, src if version == 4 else None) for network, src in interface.networks_of(version)]
    routes = [Route(table, network, name, src=src, metric=metric) for network, src in networks]
    if version == 6:
        routes.append(Route(table, LINK_LOCAL6, name, metric=metric))
    if gateway is None:
        return routes
    on_link = [src for network, src in networks if gateway in network]
    src = on_link[0] if on_link else addresses[0].ip if version == 4 else None
    if not on_link:
        routes.append(Route(table, host_network(gateway), name, src=src, metric=metric))
    routes.append(Route(table, default_network(version), name, gateway=gateway, src=src, metric=metric))
    return routes


def _family_rules(interface: Interface, version: int, table: int, priority: int,
                  shared: set[IPNetwork]) -> list[Rule]:
    """`from` rules, then the `oif` rule. A prefix only this NIC holds gets one rule for the whole
    prefix (256 IPv6 addresses: one rule, not 256); in a shared subnet each address its own."""
    sources: list[IPNetwork] = []
    for network, _ in interface.networks_of(version):
        if network in shared:
            sources += [host_network(ip) for ip in interface.members_of(network)]
        else:
            sources.append(network)
    sources += [host_network(ip) for ip in interface.hosts_of(version)]
    rules = [Rule(version, priority, table, src=source) for source in dict.fromkeys(sources)]
    rules.append(Rule(version, priority + 1, table, oif=interface.name))
    return rules


def _main_default6(config: Config, facts: Facts, candidates: list[_Candidate], tables: dict[str, int]) -> list[Route]:
    """The guest's IPv6 default in main, via the dom0 /128, unless main already has one."""
    carriers = sorted((c for c in candidates if c.gateway6), key=lambda c: tables[c.interface.name])
    if not carriers or any(r.version == 6 for r in facts.main_defaults):
        return []
    chosen = next((c for c in carriers if c.interface.name == config.default6_interface), carriers[0])
    gateway = chosen.gateway6
    assert gateway is not None
    name = chosen.interface.name
    routes = []
    if not chosen.interface.reaches(gateway):
        routes.append(Route(TABLE_MAIN, host_network(gateway), name, metric=METRIC6))
    routes.append(Route(TABLE_MAIN, default_network(6), name, gateway=gateway, metric=METRIC6))
    return routes


def _excluded(config: Config, prefix: IPNetwork) -> bool:
    return any(prefix.version == e.version and prefix.subnet_of(e) for e in config.main_exclude)  # type: ignore[arg-type]


def _mirror_targets(route: Route, candidates: list[_Candidate]) -> list[_Candidate]:
    """Managed NICs that can carry a main route through a managed NIC: the NIC itself for an
    on-link or link-local next hop, else every managed NIC whose subnet holds the gateway."""
    carriers = [c for c in candidates if route.version in c.families]
    if route.gateway is None or route.gateway.is_link_local:
        return [c for c in carriers if c.interface.name == route.dev]
    return [c for c in carriers
            if any(route.gateway in network for network, _ in c.interface.networks_of(route.version))]


def _coexistence(config: Config, facts: Facts, candidates: list[_Candidate], tables: dict[str, int],
                 planned: list[Route]) -> tuple[list[Rule], list[Route], dict[Route | Rule, Route],
                                                list[tuple[Route, str]]]:
    """Keep main's routes through everything domunet does not manage (bridges, tunnels, veths,
    static routes through them): a `to PREFIX lookup main` rule above the `from` rules, one per
    prefix. A route in main through a managed NIC (a static or DHCP route via its gateway) is
    mirrored into the table of each managed NIC that reaches its next hop, so that it applies to
    that NIC's addresses through that NIC. A prefix that covers a managed subnet or gateway gets
    no rule (main would take the managed subnet's traffic away from its NIC): passed over."""
    versions = {v for c in candidates for v in c.families}
    managed = {c.interface.name for c in candidates}
    covered: list[IPNetwork] = [network for c in candidates for v in c.families
                                for network, _ in c.interface.networks_of(v)]
    covered += [host_network(g) for c in candidates for g in (c.gateway, c.gateway6) if g is not None]
    taken = {(r.table, r.dst, r.metric) for r in planned}
    tunnels = full_tunnels(facts.main_routes, managed)
    exempt: dict[IPNetwork, Route] = {}
    mirrored: list[Route] = []
    stands_for: dict[Route | Rule, Route] = {}
    passed_over: list[tuple[Route, str]] = []
    for route in sorted(facts.main_routes, key=lambda r: (r.version, r.dst.prefixlen, repr(r))):
        dst = route.dst
        if route.version not in versions or dst.is_link_local or dst.is_multicast or not route.dev:
            continue
        if _excluded(config, dst):
            passed_over.append((route, "in main_exclude"))
            continue
        if route.dev in managed:
            if route.proto == PROTO_KERNEL:
                continue  # the NIC's own subnet: its table has it already
            targets = _mirror_targets(route, candidates)
            if not targets:
                passed_over.append((route, "no managed NIC reaches its gateway on-link"))
            for target in targets:
                copy = Route(tables[target.interface.name], dst, target.interface.name, gateway=route.gateway,
                             metric=route.metric)
                if (copy.table, copy.dst, copy.metric) not in taken:
                    taken.add((copy.table, copy.dst, copy.metric))
                    mirrored.append(copy)
                    stands_for[copy] = route
            continue
        inside = [n for n in covered if n.version == dst.version and n.subnet_of(dst)]  # type: ignore[arg-type]
        share = tunnels.get((route.dev, route.version))
        if share is not None and route.proto != PROTO_KERNEL and not _private(dst):
            passed_over.append((route, f"{route.dev} takes over the default (its routes cover {share:.0%} of the "
                                       f"{'IPv4' if route.version == 4 else 'IPv6 global unicast'} space: a "
                                       "full-tunnel VPN): replies from managed addresses leave by their NIC, "
                                       "what the guest itself starts still follows main"))
            continue
        pieces = _around(dst, inside)
        if pieces is None:
            passed_over.append((route, f"covers {inside[0]}, which domunet manages, and would take "
                                       f"more than {MAX_PIECES} rules to go around it"))
        for piece in pieces or ():
            if not any(piece.subnet_of(other) for other in exempt if other.version == piece.version):  # type: ignore[arg-type]
                exempt[piece] = route
    rules = []
    for dst, route in exempt.items():
        rule = Rule(dst.version, config.priority_base, TABLE_MAIN, dst=dst)
        rules.append(rule)
        stands_for[rule] = route
    return rules, mirrored, stands_for, passed_over


#: A covering prefix is split around the managed subnets into at most this many `lookup main` rules.
MAX_PIECES = 64

#: An unmanaged device whose routes in main cover at least this share of the address space that
#: replies go to (all of IPv4; IPv6's global unicast 2000::/3) has taken over the default: a VPN's
#: full tunnel (OpenVPN's def1, a WireGuard client's "all but private" AllowedIPs, `::/2`).
#: A bridge, a container network or a site behind a tunnel covers a tiny share (10.0.0.0/8 is
#: 0.4 %); the smallest full tunnel seen covers 87 % (WireGuard's list).
FULL_TUNNEL_SHARE = 0.25
_REPLY_SPACE = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("2000::/3")}
#: Where a tunnel's own networks live (its peers, a site behind it): these keep main even on a
#: full tunnel, as do the device's own link routes.
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                     "100.64.0.0/10", "fc00::/7"))


def _private(prefix: IPNetwork) -> bool:
    return any(prefix.version == p.version and prefix.subnet_of(p) for p in _PRIVATE)  # type: ignore[arg-type]


def full_tunnels(routes: Iterable[Route], managed: set[str]) -> dict[tuple[str, int], float]:
    """Pure: (device, family) -> the share of the reply space its main routes cover, for every
    unmanaged device that takes over the default (at least FULL_TUNNEL_SHARE). Whatever the route
    set looks like (two halves, 30 prefixes, one /2), what counts is how much of the Internet a
    device's routes send into it together."""
    by_device: dict[tuple[str, int], list[IPNetwork]] = defaultdict(list)
    for route in routes:
        if route.dev and route.dev not in managed and route.table == TABLE_MAIN:
            by_device[(route.dev, route.version)].append(route.dst)
    shares = {}
    for key, prefixes in by_device.items():
        space = _REPLY_SPACE[key[1]]
        covered = 0
        for prefix in ipaddress.collapse_addresses(prefixes):  # type: ignore[type-var]
            if prefix.subnet_of(space):  # type: ignore[arg-type]
                covered += prefix.num_addresses
            elif space.subnet_of(prefix):  # type: ignore[arg-type]
                covered += space.num_addresses
        share = covered / space.num_addresses
        if share >= FULL_TUNNEL_SHARE:
            shares[key] = share
    return shares


def _around(prefix: IPNetwork, managed: list[IPNetwork]) -> list[IPNetwork] | None:
    """Pure: `prefix` less the managed subnets and gateways inside it, as the fewest prefixes (a
    bridge's 192.168.0.0/16 around a NIC's 192.168.200.0/24: 8 of them), so that the rest of the
    bridge's traffic still looks up main while the managed subnet stays with its NICs; None when
    that takes more than MAX_PIECES rules."""
    pieces = [prefix]
    for hole in sorted(set(managed), key=lambda n: n.prefixlen):
        next_pieces: list[IPNetwork] = []
        for piece in pieces:
            if hole.subnet_of(piece):  # type: ignore[arg-type]
                next_pieces += piece.address_exclude(hole)  # type: ignore[arg-type]
            elif not piece.subnet_of(hole):  # type: ignore[arg-type]
                next_pieces.append(piece)
        pieces = next_pieces
        if len(pieces) > MAX_PIECES:
            return None
    return sorted(pieces)


def _marks(config: Config, facts: Facts, candidates: list[_Candidate], tables: dict[str, int]) -> dict[str, int]:
    """A connection mark per managed NIC, when the host forwards: a reply to a connection that came
    in on a NIC (a port published with DNAT to a container) still has the container's source when
    it is routed, so no `from` rule matches; its mark sends it back out the NIC it came in on."""
    if not config.connmark or not facts.forwarding:
        return {}
    if not facts.nft:
        log.warning("this host forwards, but nft is not installed: replies of forwarded connections "
                    "(DNAT to containers) on secondary addresses may leave by the wrong NIC "
                    "(apt-get install nftables)")
        return {}
    shift = (config.fwmark_mask & -config.fwmark_mask).bit_length() - 1
    return {c.interface.name: (tables[c.interface.name] - config.table_base + 1) << shift
            for c in candidates if set(c.families) & facts.forwarding}


def plan(config: Config, facts: Facts) -> State:
    """The complete desired state for this host."""
    usable = _usable(config, facts)
    shared = _shared(usable)
    held: dict[str, str] = {}
    candidates = _candidates(config, facts, usable, shared, held)
    tables = allocate_tables(config, [c.interface for c in candidates], facts.foreign_tables)
    routes: list[Route] = []
    rules: list[Rule] = []
    managed = []
    for candidate in candidates:
        interface = candidate.interface
        table = tables[interface.name]
        priority = config.priority_base + FIRST_INTERFACE_PRIORITY + 2 * (table - config.table_base)
        for version in candidate.families:
            gateway = candidate.gateway if version == 4 else candidate.gateway6
            routes += _family_routes(interface, version, table, gateway)
            rules += _family_rules(interface, version, table, priority, shared)
        managed.append(ManagedInterface(
            name=interface.name, table=table, priority=priority, gateway=candidate.gateway,
            gateway6=candidate.gateway6, families=candidate.families, reasons=candidate.reasons,
            gateway_source=candidate.gateway_source, gateway6_source=candidate.gateway6_source,
        ))
    routes += _main_default6(config, facts, candidates, tables)
    versions = {version for c in candidates for version in c.families}
    rules += [
        Rule(prefix.version, config.priority_base, TABLE_MAIN, dst=prefix)
        for prefix in config.main_prefixes if prefix.version in versions
    ]
    marks = _marks(config, facts, candidates, tables)
    rules += [Rule(version, config.priority_base + MARK_PRIORITY, tables[name], fwmark=mark, fwmask=config.fwmark_mask)
              for c in candidates for name, mark in marks.items() if c.interface.name == name
              for version in c.families if version in facts.forwarding]
    stands_for: dict[Route | Rule, Route] = {}
    passed_over: list[tuple[Route, str]] = []
    if config.coexistence:
        exempt, mirrored, stands_for, passed_over = _coexistence(config, facts, candidates, tables, routes)
        rules += exempt
        routes += mirrored
    return State(routes=frozenset(routes), rules=frozenset(rules), managed=tuple(managed),
                 stands_for=stands_for, passed_over=tuple(passed_over), marks=marks, fwmask=config.fwmark_mask,
                 held=held)
