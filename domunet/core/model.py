"""The objects domunet reasons about: interfaces, routes, rules, and the owner marker.

Everything here is frozen and hashable, so a desired or owned state is a set and a
diff is set arithmetic. Addresses are `ipaddress` objects, normalised on construction,
so what is planned and what is read back from the kernel compare equal.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]

#: Route protocol and rule protocol of everything domunet makes (rt_protos.d/domunet.conf).
PROTO = 213
#: Protocol of the temporary main-table routes; a crash can leave one, the next run removes it.
PROTO_TEMP = 214
#: Protocol of dom0's routes to its guests (vif-domunet): apart, so that the guest engine, run
#: on a dom0 by mistake, never takes them for its own.
PROTO_DOM0 = 215
PROTO_NAMES = {PROTO: "domunet", PROTO_TEMP: "domunet-temp", PROTO_DOM0: "domunet-dom0"}

TABLE_MAIN = 254
TABLE_LOCAL = 255
TABLE_DEFAULT = 253

#: The small vocabularies, named once.
Action = Literal["add", "remove"]
ADD: Action = "add"
REMOVE: Action = "remove"
Manage = Literal["auto", "yes", "no"]
MANAGE_VALUES: tuple[Manage, ...] = ("auto", "yes", "no")
Strategy = Literal["auto", "temporary-main-route"]
STRATEGY_AUTO: Strategy = "auto"
STRATEGY_TEMPORARY: Strategy = "temporary-main-route"
STRATEGIES: tuple[Strategy, ...] = (STRATEGY_AUTO, STRATEGY_TEMPORARY)
#: Route protocol of the kernel's own routes (a NIC's connected subnets).
PROTO_KERNEL = 2
#: Records of what dom0's vif script did (under /run: gone at reboot, like the vifs).
DEFAULT_STATE_DIR = "/run/domunet"
#: IPv6 routes without an explicit metric get this one from the kernel.
METRIC6 = 1024
#: Link-local prefix every IPv6 table needs for neighbour discovery through the oif rule.
LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/64")

DEFAULT4 = ipaddress.IPv4Network("0.0.0.0/0")
DEFAULT6 = ipaddress.IPv6Network("::/0")


#: Interface names as domunet accepts them everywhere (config, stanzas, IFACE, vif, vifname,
#: uplink): what admins and the toolstack write; the kernel allows more, shells and tools do not.
IFNAME_CHARS = r"[A-Za-z0-9_.@+-]"
IFNAME = re.compile(rf"{IFNAME_CHARS}{{1,15}}")


def valid_ifname(name: object) -> bool:
    return isinstance(name, str) and IFNAME.fullmatch(name) is not None and name not in (".", "..")


def parse_address(text: str) -> IPAddress:
    """ipaddress.ip_address, without what Python accepts and the kernel does not: a %zone."""
    if "%" in text:
        raise ValueError(f"{text!r}: an address with a %zone id (give it without)")
    return ipaddress.ip_address(text.strip())


def parse_network(text: str, strict: bool = True) -> IPNetwork:
    if "%" in text:
        raise ValueError(f"{text!r}: an address with a %zone id (give it without)")
    return ipaddress.ip_network(text.strip(), strict=strict)


def default_network(version: int) -> IPNetwork:
    return DEFAULT4 if version == 4 else DEFAULT6


def host_network(address: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(address)


@dataclass(frozen=True)
class Interface:
    """A network interface as discovered: the facts the planner needs, nothing more."""

    name: str
    index: int
    mac: str
    up: bool
    addresses: tuple[IPInterface, ...] = ()
    xen_devid: int | None = None
    loopback: bool = False

    def addresses_of(self, version: int) -> tuple[IPInterface, ...]:
        """Usable addresses of one family (link-local excluded: not routable)."""
        return self._derived().usable[version]

    def networks_of(self, version: int) -> tuple[tuple[IPNetwork, IPAddress], ...]:
        """Each distinct on-link prefix of one family with its first address (host prefixes have
        no link route)."""
        return self._derived().networks[version]

    def hosts_of(self, version: int) -> tuple[IPAddress, ...]:
        """Usable addresses of one family that have no prefix of their own (a /32 or /128)."""
        return self._derived().hosts[version]

    def members_of(self, network: IPNetwork) -> tuple[IPAddress, ...]:
        """This interface's usable addresses on one of its prefixes (networks_of), in order."""
        return self._derived().members.get(network, ())

    def reaches(self, address: IPAddress) -> bool:
        """Whether the address is on one of this interface's prefixes, or is one of its host
        addresses (a /32 or /128): on-link, no gateway needed to get there."""
        return any(address in network for network, _ in self.networks_of(address.version)) \
            or address in self.hosts_of(address.version)

    def holds(self, address: IPAddress) -> bool:
        """Whether the address is one of this interface's own (link-local ones included)."""
        return int(address) in self._derived().numbers[address.version]

    def _derived(self) -> _Derived:
        """Worked out once per Interface, in one pass (4,096 addresses are planned over many
        times): frozen objects never change, so the cache lives on the instance, outside eq and
        hash. An address's `.ip` is a new object on every access: asked for once per address."""
        cached: _Derived | None = self.__dict__.get("_cache")
        if cached is None:
            cached = _Derived(self.addresses)
            object.__setattr__(self, "_cache", cached)
        return cached


_LINK_LOCAL = {4: ipaddress.IPv4Network("169.254.0.0/16"), 6: ipaddress.IPv6Network("fe80::/10")}


class _Derived:
    """What an Interface's addresses give the planner, per family (4, 6)."""

    __slots__ = ("usable", "networks", "members", "hosts", "numbers")

    def __init__(self, addresses: tuple[IPInterface, ...]) -> None:
        usable: dict[int, list[IPInterface]] = {4: [], 6: []}
        hosts: dict[int, list[IPAddress]] = {4: [], 6: []}
        members: dict[IPNetwork, list[IPAddress]] = {}
        self.numbers: dict[int, set[int]] = {4: set(), 6: set()}
        for address in addresses:
            version = address.version
            self.numbers[version].add(int(address))
            if address in _LINK_LOCAL[version]:
                continue
            usable[version].append(address)
            network = address.network
            if network.prefixlen == address.max_prefixlen:
                hosts[version].append(address.ip)
            else:
                members.setdefault(network, []).append(address.ip)
        self.usable = {v: tuple(found) for v, found in usable.items()}
        self.hosts = {v: tuple(found) for v, found in hosts.items()}
        self.members = {network: tuple(ips) for network, ips in members.items()}
        self.networks: dict[int, tuple[tuple[IPNetwork, IPAddress], ...]] = {
            v: tuple((network, ips[0]) for network, ips in self.members.items() if network.version == v)
            for v in (4, 6)}


@dataclass(frozen=True, order=True)
class Route:
    """A unicast route; `dev` is an interface name, resolved to an index by the kernel layer."""

    table: int
    dst: IPNetwork
    dev: str
    gateway: IPAddress | None = None
    src: IPAddress | None = None
    metric: int = 0
    proto: int = PROTO
    #: One next hop of a multipath route (never domunet's): seen, never mirrored or changed.
    multipath: bool = False

    @property
    def version(self) -> int:
        return self.dst.version

    @property
    def is_link(self) -> bool:
        """A route without a gateway: it makes gateways reachable, so it goes in first."""
        return self.gateway is None

    def words(self, command: bool = False, quote: Callable[[str], str] = str) -> list[str]:
        """The route as `ip route` words: what log lines and reports say, and with `command` what
        `domunet plan` prints (protocol, scope, metric: what `ip route add` needs)."""
        words = ["default" if self.dst.prefixlen == 0 else str(self.dst)]
        if self.gateway is not None:
            words += ["via", str(self.gateway)]
        words += ["dev", quote(self.dev), "table", table_name(self.table)]
        if command:
            words += ["proto", str(self.proto)]
            if self.version == 4 and self.gateway is None:
                words += ["scope", "link"]
            if self.metric:
                words += ["metric", str(self.metric)]
        if self.src is not None:
            words += ["src", str(self.src)]
        return words

    def describe(self) -> str:
        return " ".join(self.words())


@dataclass(frozen=True, order=True)
class Rule:
    """A policy routing rule that sends matching traffic to `table`."""

    version: int
    priority: int
    table: int
    src: IPNetwork | None = None
    dst: IPNetwork | None = None
    oif: str | None = None
    #: Packet mark and mask: replies of forwarded connections, marked by the NIC they came in on.
    fwmark: int | None = None
    fwmask: int | None = None
    proto: int = PROTO

    def words(self, command: bool = False, quote: Callable[[str], str] = str) -> list[str]:
        """The rule as `ip rule` words (with `command`, its protocol too: what `ip rule add` takes)."""
        words = rule_words(self.priority, self.src, self.dst, self.fwmark, self.fwmask, self.oif,
                           f"lookup {table_name(self.table)}", quote=quote)
        return words + ["proto", str(self.proto)] if command else words

    def describe(self) -> str:
        return " ".join(self.words())


def table_name(table: int) -> str:
    return "main" if table == TABLE_MAIN else str(table)


def rule_words(priority: int, src: Any, dst: Any, fwmark: int | None, fwmask: int | None, oif: str | None,
               action: str, iif: str | None = None, invert: bool = False,
               quote: Callable[[str], str] = str) -> list[str]:
    """Any rule as `ip rule` says it (one text form: domunet's own rules and the kernel's others)."""
    words = ["priority", str(priority), *(["not"] if invert else []), "from", str(src) if src else "all"]
    if dst:
        words += ["to", str(dst)]
    if fwmark is not None:
        words += ["fwmark", f"{fwmark:#x}/{fwmask if fwmask is not None else 0xFFFFFFFF:#x}"]
    words += [word for name, value in (("iif", iif), ("oif", oif)) if value for word in (name, quote(value))]
    return words + action.split()


@dataclass(frozen=True)
class ManagedInterface:
    """What the planner decided for one interface; used by `status` and the names file."""

    name: str
    table: int
    priority: int
    gateway: IPAddress | None = None
    gateway6: IPAddress | None = None
    families: tuple[int, ...] = ()
    reasons: tuple[str, ...] = ()
    #: Where each gateway came from: config, ifupdown, kernel (main's default), xenstore.
    gateway_source: str | None = None
    gateway6_source: str | None = None


@dataclass(frozen=True)
class State:
    """A set of routes and rules: what domunet wants, or what it owns in the kernel."""

    routes: frozenset[Route] = frozenset()
    rules: frozenset[Rule] = frozenset()
    managed: tuple[ManagedInterface, ...] = field(default=(), compare=False)
    #: Coexistence: the main-table route that each `lookup main` rule or mirrored route stands for.
    stands_for: Mapping[Route | Rule, Route] = field(default_factory=dict, compare=False)
    #: Main-table routes left out of coexistence, with the reason (shown by plan and status).
    passed_over: tuple[tuple[Route, str], ...] = field(default=(), compare=False)
    #: Connection marks per NIC (domunet.guest.connmark): forwarded connections answer by the NIC they came in on.
    marks: Mapping[str, int] = field(default_factory=dict, compare=False)
    fwmask: int = 0
    #: NICs left exactly as they are this run, with why: one bad fact (a config value, a gateway dom0
    #: published) costs that NIC, never the others.
    held: Mapping[str, str] = field(default_factory=dict, compare=False)

    def tables(self) -> set[int]:
        return {r.table for r in self.routes} | {r.table for r in self.rules}


@dataclass(frozen=True)
class PublishedVif:
    """What dom0 published in xenstore for one of the guest's vifs (domunet.guest.published)."""

    backend: str
    gateway: ipaddress.IPv4Address | None = None
    gateway6: ipaddress.IPv6Address | None = None
    routed: bool = False
    addresses: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class Facts:
    """Everything the planner needs to know about this host."""

    interfaces: tuple[Interface, ...]
    #: Default routes in the main table that domunet did not make (the admin's, DHCP's, RA's).
    main_defaults: tuple[Route, ...] = ()
    #: The main table's other routes that domunet did not make: bridges, tunnels, static routes.
    main_routes: tuple[Route, ...] = ()
    #: What dom0 published in xenstore, per interface name (domunet.guest.published).
    published: Mapping[str, PublishedVif] = field(default_factory=dict)
    #: IP versions this host forwards (a container host, a router): those get connection marks.
    forwarding: frozenset[int] = frozenset()
    #: Whether `nft` is installed (connection marks need it).
    nft: bool = False
    #: Tables (other than main, local, default) that hold routes domunet did not make: never adopted.
    foreign_tables: frozenset[int] = frozenset()

    def interface(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)
