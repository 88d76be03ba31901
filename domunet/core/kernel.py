"""The only module that talks netlink (pyroute2); 0.7 (Debian 12) vs 0.9 (PyPI) lives here.

It maps one request to one kernel call, translates messages into domunet.core.model objects
and NetlinkError into domunet.core.errors. It decides nothing.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any, Iterator

from domunet.core import pyroute2_diet
from domunet.core.errors import GatewayRefused, KernelError, ObjectExists, ObjectMissing
from domunet.core.model import TABLE_MAIN, IPAddress, Route, Rule, default_network

pyroute2_diet.prepare()  # only when the command switched it on (domunet.entry); else nothing
from pyroute2.iproute.linux import IPRoute  # noqa: E402 (after the diet)
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

log = logging.getLogger(__name__)


def _dump_request() -> dict[str, Any]:
    """0.9 puts a dump's fields into the request only when it is given a client-side filter of
    its own (else it filters after decoding everything); 0.7 always sends them."""
    import importlib.util

    has_new_core = importlib.util.find_spec("pyroute2.netlink.core") is not None
    return {"dump_filter": lambda message: True} if has_new_core else {}


DUMP_REQUEST = _dump_request()

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
RTN_UNICAST = 1
FR_ACT_TO_TBL = 1
FIB_RULE_INVERT = 0x2
#: What a rule does when it sends to no table (FR_ACT_*), as `ip rule` says it.
_RULE_ACTIONS = {2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
#: Neighbour states (NUD_*), the one to report first when several bits are set.
_NUD = ((0x20, "FAILED"), (0x01, "INCOMPLETE"), (0x02, "REACHABLE"), (0x04, "STALE"), (0x08, "DELAY"),
        (0x10, "PROBE"), (0x80, "PERMANENT"), (0x40, "NOARP"))
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFA_F_NODAD = 0x02
NTF_PROXY = 0x08
_GATEWAY_ERRNOS = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL)


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    up: bool
    loopback: bool


def _listed(result: Any) -> list[Any]:
    """0.7 returns tuples, 0.9 lists or generators: always give a list."""
    return list(result) if result is not None else []


def _attr(message: Any, name: str, default: Any = None) -> Any:
    value = message.get_attr(name)
    return default if value is None else value


def address_of(msg: Any) -> Any:
    """An address message's address as an ipaddress interface (with prefix length), or None."""
    address = msg.get_attr("IFA_ADDRESS") if msg["family"] == socket.AF_INET6 else (
        msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
    return ipaddress.ip_interface(f"{address}/{msg['prefixlen']}") if address else None


class Kernel:
    """One netlink socket in the current network namespace."""

    def __init__(self) -> None:
        try:
            self._ipr = IPRoute()
        except (OSError, NetlinkError) as error:
            raise KernelError(f"cannot open a netlink socket: {error}") from None
        self._links: dict[str, Link] | None = None
        self._named: dict[str, Link | None] = {}  # interfaces asked for one by one since the last forget
        self._strict: Any = None  # a second socket for kernel-filtered dumps, made when first needed

    def close(self) -> None:
        self._ipr.close()
        if self._strict:
            self._strict.close()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads: a failure is an error, never an empty answer -------------------------------

    def _dump(self, what: str, call: Any, kwargs: dict[str, Any] | None = None, *args: Any, **more: Any) -> list[Any]:
        try:
            return _listed(call(*args, **(kwargs or {}), **more))
        except NetlinkError as error:
            raise KernelError(f"cannot read {what} from the kernel: {error}", error.code) from None

    def links(self, refresh: bool = False) -> dict[str, Link]:
        if self._links is None or refresh:
            links = {}
            for msg in self._dump("the interfaces", self._ipr.get_links):
                link = self._link_from(msg)
                if link is not None:
                    links[link.name] = link
            self._links = links
        return self._links

    @staticmethod
    def _link_from(msg: Any) -> Link | None:
        name = _attr(msg, "IFLA_IFNAME")
        if not isinstance(name, str) or not name.isprintable():
            log.warning("interface %d: its name %r is not printable UTF-8; skipped (rename it to "
                        "have domunet serve it)", msg["index"], name)
            return None
        flags = msg["flags"]
        return Link(index=msg["index"], name=name, mac=_attr(msg, "IFLA_ADDRESS", ""),
                    up=bool(flags & IFF_UP), loopback=bool(flags & IFF_LOOPBACK))

    def link(self, name: str) -> Link | None:
        """One interface by name (None: there is none): from the last dump of them all, else asked
        for alone, so that dom0's work per vif does not grow with the vifs already there."""
        if self._links is not None:
            return self._links.get(name)
        if name not in self._named:
            try:
                found = _listed(self._ipr.link("get", ifname=name))
            except NetlinkError as error:
                if error.code != errno.ENODEV:
                    raise KernelError(f"cannot read interface {name} from the kernel: {error}", error.code) from None
                found = []
            self._named[name] = next((link for link in map(self._link_from, found) if link is not None), None)
        return self._named[name]

    def forget_links(self) -> None:
        """Interfaces come and go (a long-lived service): read them again when next asked."""
        self._links = None
        self._named = {}

    def _index(self, name: str) -> int:
        link = self.link(name)
        if link is None:
            raise KernelError(f"interface {name} does not exist", errno.ENODEV)
        return link.index

    def _name(self, index: int | None) -> str:
        """An interface's name by index: from the last dump of them all, else asked for alone."""
        if index is None:
            return ""
        if self._links is None:
            known = next((link for link in self._named.values() if link is not None and link.index == index), None)
            if known is None:
                try:
                    found = _listed(self._ipr.link("get", index=index))
                except NetlinkError:
                    found = []
                known = next((link for link in map(self._link_from, found) if link is not None), None)
                if known is not None:
                    self._named[known.name] = known
            return known.name if known is not None else f"if{index}"
        for link in self._links.values():
            if link.index == index:
                return link.name
        return f"if{index}"

    def address_labels(self) -> dict[str, list[str]]:
        """IPv4 address labels other than the interface's own name (`eth2:0`, as ifupdown's alias
        stanzas make them), per interface: netifaces lists those addresses under the label only."""
        labels: dict[str, list[str]] = {}
        names = {link.index: link.name for link in self.links().values()}
        for msg in self._dump("the IPv4 addresses", self._ipr.get_addr, family=socket.AF_INET):
            name = names.get(msg["index"])
            label = msg.get_attr("IFA_LABEL")
            if name and isinstance(label, str) and label != name and label.startswith(name + ":") \
                    and label not in labels.get(name, []):
                labels.setdefault(name, []).append(label)
        return labels

    def route_from(self, msg: Any) -> Route | None:
        """A route message (dump or event) as a Route; None for what domunet never makes
        (local, broadcast, multicast, blackhole, multipath)."""
        if msg["type"] != RTN_UNICAST or msg.get_attr("RTA_MULTIPATH") is not None:
            return None
        version = 4 if msg["family"] == socket.AF_INET else 6
        dst = msg.get_attr("RTA_DST")
        gateway = msg.get_attr("RTA_GATEWAY")
        src = msg.get_attr("RTA_PREFSRC")
        return Route(
            table=_attr(msg, "RTA_TABLE", msg["table"]),
            dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}") if dst else default_network(version),
            dev=self._name(msg.get_attr("RTA_OIF")),
            gateway=ipaddress.ip_address(gateway) if gateway else None,
            src=ipaddress.ip_address(src) if src else None,
            metric=_attr(msg, "RTA_PRIORITY", 0),
            proto=msg["proto"],
        )

    def paths_from(self, msg: Any) -> list[Route]:
        """A route message as Routes, a multipath route as one per next hop (marked `multipath`):
        networkd merges an IPv6 static gateway and a router advertisement's into one such default.
        domunet never makes one, but has to see them: a default that is there, a table in use."""
        hops = msg.get_attr("RTA_MULTIPATH") if msg["type"] == RTN_UNICAST else None
        if not hops:
            route = self.route_from(msg)
            return [route] if route is not None else []
        version = 4 if msg["family"] == socket.AF_INET else 6
        dst = msg.get_attr("RTA_DST")
        paths = []
        for hop in hops:
            gateway = hop.get_attr("RTA_GATEWAY")
            paths.append(Route(
                table=_attr(msg, "RTA_TABLE", msg["table"]),
                dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}") if dst else default_network(version),
                dev=self._name(hop["oif"]),
                gateway=ipaddress.ip_address(gateway) if gateway else None,
                metric=_attr(msg, "RTA_PRIORITY", 0),
                proto=msg["proto"],
                multipath=True,
            ))
        return paths

    def rule_from(self, msg: Any) -> Rule | None:
        """A rule message (dump or event) as a Rule; None unless it sends traffic to a table."""
        if msg["action"] != FR_ACT_TO_TBL:
            return None
        src = msg.get_attr("FRA_SRC")
        dst = msg.get_attr("FRA_DST")
        fwmark = msg.get_attr("FRA_FWMARK")
        return Rule(
            version=4 if msg["family"] == socket.AF_INET else 6,
            priority=_attr(msg, "FRA_PRIORITY", 0),
            table=_attr(msg, "FRA_TABLE", msg["table"]),
            src=ipaddress.ip_network(f"{src}/{msg['src_len']}") if src else None,
            dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}") if dst else None,
            oif=msg.get_attr("FRA_OIFNAME"),
            fwmark=fwmark if fwmark else None,
            fwmask=_attr(msg, "FRA_FWMASK", 0xFFFFFFFF) if fwmark else None,
            proto=_attr(msg, "FRA_PROTOCOL", 0),
        )

    def routes(self, version: int, table: int | None = None) -> list[Route]:
        """All unicast routes of one family, in every table or in one, as Route objects (a
        multipath route as one per next hop).

        The kernel filters the dump (a socket with strict checking, rtm_type unicast, and the
        table when one is asked for): a guest with 4,096 addresses has as many local-table
        entries, which cost 180-240 ms to decode and are never domunet's. Where strict checking
        is not to be had, the same filter runs here instead (route_from)."""
        call, request, *args = self._route_dump(version)
        if table is not None and self._strict:
            request = {**request, "table": table}
        routes = [route for msg in self._dump(f"the IPv{version} routes", call, request, *args)
                  for route in self.paths_from(msg)]
        return routes if table is None else [route for route in routes if route.table == table]

    def _strict_socket(self) -> bool:
        """A second socket for dumps the kernel filters (made when first needed)."""
        if self._strict is None:
            try:
                self._strict = IPRoute(strict_check=True)
            except Exception as error:  # noqa: BLE001 (an old kernel or pyroute2: the plain dump does it too)
                log.debug("no strict netlink dumps (%s); filtering here", error)
                self._strict = False
        return self._strict is not False

    def _route_dump(self, version: int) -> tuple[Any, ...]:
        if not self._strict_socket():
            return (self._ipr.get_routes, {"family": FAMILY[version]})
        return (self._strict.route, {"family": FAMILY[version], "type": RTN_UNICAST, **DUMP_REQUEST}, "dump")

    def rules(self, version: int) -> list[Rule]:
        """All rules of one family that send traffic to a table."""
        messages = self._dump(f"the IPv{version} rules", self._ipr.get_rules, family=FAMILY[version])
        return [rule for rule in map(self.rule_from, messages) if rule is not None]

    def route_get(self, dst: IPAddress, src: IPAddress | None = None) -> str:
        """The kernel's own answer: which interface would a packet to dst (from src) leave by?"""
        kwargs: dict[str, Any] = {"dst": str(dst), "family": FAMILY[dst.version]}
        if src is not None:
            kwargs["src"] = str(src)
        try:
            answer = _listed(self._ipr.route("get", **kwargs))
        except NetlinkError as error:
            return f"none ({error.args[-1] if error.args else error})"
        return self._name(answer[0].get_attr("RTA_OIF")) if answer else "none"

    def lookup(self, dst: IPAddress, src: IPAddress) -> tuple[str, IPAddress | None]:
        """The kernel's route lookup for a packet from src (one of this host's addresses) to dst:
        the interface it leaves by (or "none (why)") and the next hop. Not the table: for IPv4 the
        kernel reports main whichever rule chose the route (domunet.guest.doctor works that out)."""
        try:
            answer = _listed(self._ipr.route("get", dst=str(dst), src=str(src), family=FAMILY[dst.version]))
        except NetlinkError as error:
            return f"none ({error.args[-1] if error.args else error})", None
        if not answer:
            return "none", None
        gateway = answer[0].get_attr("RTA_GATEWAY")
        return self._name(answer[0].get_attr("RTA_OIF")), ipaddress.ip_address(gateway) if gateway else None

    def address_states(self) -> dict[tuple[str, str], tuple[int, int | None]]:
        """Each address's kernel flags (IFA_F_*) and preferred lifetime in seconds (None: forever),
        by (interface, address)."""
        names = {link.index: link.name for link in self.links(refresh=True).values()}
        states = {}
        for msg in self.address_messages():
            address = address_of(msg)
            if address is None or msg["index"] not in names:
                continue
            info = msg.get_attr("IFA_CACHEINFO")
            preferred = info["ifa_preferred"] if info else None
            states[(names[msg["index"]], str(address.ip))] = (
                _attr(msg, "IFA_FLAGS", msg["flags"]), None if preferred in (None, 0xFFFFFFFF) else preferred)
        return states

    def rule_details(self, version: int) -> list[dict[str, Any]]:
        """Every rule of one family, whatever it selects and does (a VPN's, a container runtime's,
        ours), sorted by priority: priority, table (None unless it sends to one), src, iif, oif,
        fwmark, fwmask, invert, proto, and `text` as `ip rule` would say it."""
        rules = []
        for msg in self._dump(f"the IPv{version} rules", self._ipr.get_rules, family=FAMILY[version]):
            src, dst = msg.get_attr("FRA_SRC"), msg.get_attr("FRA_DST")
            fwmark = msg.get_attr("FRA_FWMARK")
            rule: dict[str, Any] = {
                "priority": _attr(msg, "FRA_PRIORITY", 0),
                "table": _attr(msg, "FRA_TABLE", msg["table"]) if msg["action"] == FR_ACT_TO_TBL else None,
                "src": ipaddress.ip_network(f"{src}/{msg['src_len']}") if src else None,
                "dst": ipaddress.ip_network(f"{dst}/{msg['dst_len']}") if dst else None,
                "iif": msg.get_attr("FRA_IIFNAME"), "oif": msg.get_attr("FRA_OIFNAME"),
                "fwmark": fwmark, "fwmask": _attr(msg, "FRA_FWMASK", 0xFFFFFFFF) if fwmark is not None else None,
                "invert": bool(msg["flags"] & FIB_RULE_INVERT), "proto": _attr(msg, "FRA_PROTOCOL", 0),
            }
            words = [f"{rule['priority']}:", *(["not"] if rule["invert"] else []),
                     f"from {rule['src']}" if src else "from all", *([f"to {rule['dst']}"] if dst else [])]
            if fwmark is not None:
                words.append(f"fwmark {fwmark:#x}/{rule['fwmask']:#x}")
            words += [f"{word} {rule[word]}" for word in ("iif", "oif") if rule[word]]
            words.append(f"lookup {rule['table']}" if rule["table"] is not None
                         else _RULE_ACTIONS.get(msg["action"], "other"))
            rule["text"] = " ".join(words)
            rules.append(rule)
        return sorted(rules, key=lambda r: r["priority"])

    def neighbour_state(self, name: str, address: IPAddress) -> str | None:
        """The neighbour entry for address on interface name: its state (REACHABLE, STALE, FAILED
        ...), or None when there is none."""
        index = self._index(name)
        messages = self._dump(f"the neighbours of {name}", self._ipr.get_neighbours, family=FAMILY[address.version])
        for msg in messages:
            if msg["ifindex"] == index and msg.get_attr("NDA_DST") == str(address):
                state = msg["state"]
                return next((text for bit, text in _NUD if state & bit), f"{state:#x}")
        return None

    # --- writes: one object, one request ---------------------------------------------------

    def _request(self, call: Any, command: str, what: str, has_gateway: bool, **kwargs: Any) -> None:
        try:
            call(command, **kwargs)
        except NetlinkError as error:
            text = f"cannot {command} {what}: {error.args[-1] if error.args else error}"
            if error.code == errno.EEXIST:
                raise ObjectExists(text, error.code) from None
            if error.code in (errno.ENOENT, errno.ESRCH) and command == "del":
                raise ObjectMissing(text, error.code) from None
            if has_gateway and command == "add" and error.code in _GATEWAY_ERRNOS:
                raise GatewayRefused(text, error.code) from None
            raise KernelError(text, error.code) from None

    def _route_args(self, route: Route) -> dict[str, Any]:
        args: dict[str, Any] = {
            "family": FAMILY[route.version],
            "table": route.table,
            "dst": str(route.dst.network_address),
            "dst_len": route.dst.prefixlen,
            "oif": self._index(route.dev),
            "proto": route.proto,
            "type": "unicast",
        }
        if route.metric:
            args["priority"] = route.metric
        if route.gateway is not None:
            args["gateway"] = str(route.gateway)
        if route.src is not None:
            args["prefsrc"] = str(route.src)
        if route.version == 4:
            args["scope"] = SCOPE_UNIVERSE if route.gateway else SCOPE_LINK
        return args

    def add_route(self, route: Route) -> None:
        self._request(self._ipr.route, "add", f"route {route.describe()}", route.gateway is not None,
                      **self._route_args(route))

    def remove_route(self, route: Route) -> None:
        try:
            args = self._route_args(route)
        except KernelError:
            raise ObjectMissing(f"route {route.describe()}: interface is gone, and so is the route") from None
        args.pop("type")  # scope stays: IPv4 deletes match it, and link routes are scope link
        self._request(self._ipr.route, "del", f"route {route.describe()}", False, **args)

    def _rule_args(self, rule: Rule) -> dict[str, Any]:
        args: dict[str, Any] = {
            "family": FAMILY[rule.version],
            "priority": rule.priority,
            "table": rule.table,
            "action": "to_tbl",
            "protocol": rule.proto,
        }
        # prefixes as "address/length": pyroute2 0.7 cannot encode a bare "0.0.0.0" or "::" with a
        # length (inet_pton fails, 0.9 sends EINVAL), so `to 0.0.0.0/5` needs this form
        if rule.src is not None:
            args["src"] = str(rule.src)
        if rule.dst is not None:
            args["dst"] = str(rule.dst)
        if rule.oif is not None:
            args["oifname"] = rule.oif
        if rule.fwmark is not None:
            args.update(fwmark=rule.fwmark, fwmask=rule.fwmask if rule.fwmask is not None else 0xFFFFFFFF)
        return args

    def add_rule(self, rule: Rule) -> None:
        self._request(self._ipr.rule, "add", f"rule {rule.describe()}", False, **self._rule_args(rule))

    def remove_rule(self, rule: Rule) -> None:
        self._request(self._ipr.rule, "del", f"rule {rule.describe()}", False, **self._rule_args(rule))

    # --- dom0: addresses, proxy neighbour entries, links -----------------------------------

    def address_messages(self) -> list[Any]:
        """Every interface's address messages as the kernel sent them (KernelView counts them)."""
        return self._dump("the addresses of every interface", self._ipr.get_addr)

    def addresses(self, name: str | None = None) -> list[Any]:
        """Addresses of one interface (or of all) as ipaddress interfaces (with prefix length).
        One interface's are filtered by the kernel (strict checking) where it can."""
        index = self._index(name) if name is not None else None
        what = f"the addresses of {name or 'every interface'}"
        if index is not None and self._strict_socket():
            messages = self._strict_address_dump(index, what)
        else:
            messages = self._dump(what, self._ipr.get_addr, {"index": index} if index is not None else {})
        return [address for msg in messages
                if (index is None or msg["index"] == index)  # 0.7 filters in the client, be explicit
                and (address := address_of(msg)) is not None]

    def _strict_address_dump(self, index: int, what: str) -> list[Any]:
        if DUMP_REQUEST:
            return self._dump(what, self._strict.addr, {"index": index, **DUMP_REQUEST}, "dump")
        from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
        from pyroute2.netlink.rtnl import RTM_GETADDR
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

        request = ifaddrmsg()
        request["index"] = index
        return self._dump(what, self._strict.nlm_request, None, request, msg_type=RTM_GETADDR,
                          msg_flags=NLM_F_REQUEST | NLM_F_DUMP)

    def add_address(self, name: str, address: Any) -> None:
        kwargs: dict[str, Any] = {"index": self._index(name), "address": str(address.ip),
                                  "prefixlen": address.network.prefixlen}
        if address.version == 6:
            kwargs["flags"] = IFA_F_NODAD
        self._request(self._ipr.addr, "add", f"address {address} on {name}", False, **kwargs)

    def remove_address(self, name: str, address: Any) -> None:
        what = f"address {address} on {name}"
        try:
            index = self._index(name)
            self._request(self._ipr.addr, "del", what, False, index=index, address=str(address.ip),
                          prefixlen=address.network.prefixlen)
        except KernelError as error:
            if error.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
                raise ObjectMissing(f"{what}: already gone", error.errno) from None
            raise

    def add_proxy(self, name: str, address: IPAddress) -> None:
        """A proxy neighbour entry (`ip neigh add proxy`): answer NDP/ARP for address on name."""
        self._request(self._ipr.neigh, "add", f"proxy entry {address} on {name}", False,
                      dst=str(address), ifindex=self._index(name), flags=NTF_PROXY,
                      family=FAMILY[address.version])

    def remove_proxy(self, name: str, address: IPAddress) -> None:
        what = f"proxy entry {address} on {name}"
        if self.link(name) is None:
            raise ObjectMissing(f"{what}: {name} is gone, and the entry with it", errno.ENODEV)
        self._request(self._ipr.neigh, "del", what, False, dst=str(address), ifindex=self._index(name),
                      flags=NTF_PROXY, family=FAMILY[address.version])

    def proxies(self, version: int) -> list[tuple[str, IPAddress]]:
        """Every proxy neighbour entry of one family (`ip neigh show proxy`): (interface, address).
        The kernel lists them only when the dump request itself carries NTF_PROXY: 0.9 sends it
        given a dump filter; 0.7's dump leaves it out, so the request is made by hand there."""
        what = f"the IPv{version} proxy neighbour entries"
        if DUMP_REQUEST:
            messages = self._dump(what, self._ipr.neigh, {"family": FAMILY[version], "flags": NTF_PROXY,
                                                          **DUMP_REQUEST}, "dump")
        else:
            from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
            from pyroute2.netlink.rtnl import RTM_GETNEIGH
            from pyroute2.netlink.rtnl.ndmsg import ndmsg

            request = ndmsg()
            request["family"], request["flags"] = FAMILY[version], NTF_PROXY
            messages = self._dump(what, self._ipr.nlm_request, None, request, msg_type=RTM_GETNEIGH,
                                  msg_flags=NLM_F_REQUEST | NLM_F_DUMP)
        names = {link.index: name for name, link in self.links().items()}
        return [(names.get(m["ifindex"], str(m["ifindex"])), ipaddress.ip_address(m.get_attr("NDA_DST")))
                for m in messages if m["flags"] & NTF_PROXY and m.get_attr("NDA_DST")]

    def set_link(self, name: str, up: bool | None = None, rename: str | None = None) -> None:
        kwargs: dict[str, Any] = {"index": self._index(name)}
        if up is not None:
            kwargs["state"] = "up" if up else "down"
        if rename:
            kwargs["ifname"] = rename
        self._request(self._ipr.link, "set", f"interface {name}", False, **kwargs)
        if rename:
            self.forget_links()

    def main_defaults(self) -> list[Route]:
        """The main table's default routes, IPv4's first: one kernel-filtered dump per family."""
        return [route for version in (4, 6) for route in self.routes(version, table=TABLE_MAIN)
                if route.dst.prefixlen == 0]


#: rtnetlink multicast groups (1 << (RTNLGRP_x - 1)): links, addresses, routes, rules of both families.
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE = 0x1, 0x10, 0x40, 0x80
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_IPV6_RULE = 0x100, 0x400, 1 << 18
WATCHED_GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE
                  | RTMGRP_IPV6_ROUTE | RTMGRP_IPV4_RULE | RTMGRP_IPV6_RULE)
#: Kernel-side queue for a burst of events (1,000 address changes in a second fit many times).
_EVENT_BUFFER = 8 << 20


class EventsLost(KernelError):
    """The kernel dropped events (ENOBUFS): what changed is unknown, converge from scratch."""


class _Subscription:
    """A netlink socket subscribed to multicast groups, to select() on and drain without blocking."""

    what = "events"

    def __init__(self, protocol: int, groups: int, buffer: int | None = None) -> None:
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            if buffer:
                try:
                    self._socket.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), buffer)
                except OSError:
                    self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            self._socket.bind((0, groups))
        except OSError:
            self._socket.close()
            raise
        self._socket.setblocking(False)

    def fileno(self) -> int:
        return self._socket.fileno()

    def close(self) -> None:
        self._socket.close()

    def _datagrams(self) -> Iterator[bytes | None]:
        """Every datagram queued now; None where the kernel dropped some (ENOBUFS: a burst)."""
        while True:
            try:
                yield self._socket.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise KernelError(f"cannot read {self.what}: {error.strerror}", error.errno) from None
                yield None


class Events(_Subscription):
    """The kernel's change notifications: a plain netlink socket to select() on, messages decoded
    by pyroute2's own marshal (the same classes in 0.7 and 0.9)."""

    what = "change events"

    def __init__(self, groups: int = WATCHED_GROUPS) -> None:
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        self._marshal = MarshalRtnl()
        super().__init__(socket.NETLINK_ROUTE, groups, _EVENT_BUFFER)

    def read(self) -> list[Any]:
        """Every message queued now (never blocks)."""
        messages: list[Any] = []
        for data in self._datagrams():
            if data is None:
                raise EventsLost("the kernel dropped change events (a burst)", errno.ENOBUFS)
            messages.extend(self._marshal.parse(data))
        return messages


NETLINK_NETFILTER = 12
#: nf_tables' change notifications (NFNLGRP_NFTABLES), and the messages of that subsystem.
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
#: NFT_MSG_DELTABLE, DELCHAIN, DELRULE, DELSET, DELSETELEM: something of a table was removed.
NFT_DELETES = frozenset({2, 5, 8, 11, 14})
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_NFGENMSG_SIZE = 4


def nft_tables_deleted_from(data: bytes) -> set[str]:
    """Pure: the tables that nf_tables notifications in one datagram removed something from (a
    table, chain, rule, set or element: `nft flush ruleset`, a firewall reload). The table's
    name is the first attribute (NFTA_*_TABLE = 1) of each of these messages."""
    tables: set[str] = set()
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        end = min(offset + length, len(data))
        if kind >> 8 == NFNL_SUBSYS_NFTABLES and kind & 0xFF in NFT_DELETES:
            at = offset + _NLMSG.size + _NFGENMSG_SIZE
            while at + _NLA.size <= end:
                size, number = _NLA.unpack_from(data, at)
                if size < _NLA.size:
                    break
                if number & 0x3FFF == 1:
                    tables.add(data[at + _NLA.size:at + size].split(b"\0", 1)[0].decode("utf-8", "replace"))
                    break
                at += (size + 3) & ~3
        offset += (length + 3) & ~3
    return tables


class NftEvents(_Subscription):
    """nf_tables' notifications: which tables someone removed something from. None where the
    kernel has no nf_tables (then nothing is followed, as before)."""

    what = "nftables events"

    def __init__(self) -> None:
        super().__init__(NETLINK_NETFILTER, 1 << (NFNLGRP_NFTABLES - 1))

    def read(self) -> set[str]:
        """Tables touched by what is queued now (never blocks); a lost burst counts as all of them."""
        tables: set[str] = set()
        for data in self._datagrams():
            tables |= {"*"} if data is None else nft_tables_deleted_from(data)
        return tables


RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE = 20, 21, 24, 25


class KernelView:
    """What a long-lived dom0 service checks every vif against, kept current from the kernel's
    change events instead of dumped per vif: every address dom0 holds (with 500 vifs, each holding
    dom0's address, that dump alone costs 20-40 ms), and the main table's default routes (their
    dump holds every vif's host route)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._events: Events | None = None
        self._held: set[tuple[int, Any]] | None = None  # (ifindex, address)
        self._count: dict[Any, int] = {}  # address -> on how many interfaces
        self._defaults: list[Route] | None = None

    def _update(self) -> None:
        if self._events is None:  # subscribed before the first dumps: nothing is missed
            self._events = Events(RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        try:
            messages = self._events.read()
        except EventsLost:
            self._held, self._defaults, messages = None, None, []
        if self._held is None:
            self._held, self._count = set(), {}
            for msg in self.kernel.address_messages():
                self._note(msg, True)
        for msg in messages:
            kind = msg["header"]["type"]
            if kind in (RTM_NEWROUTE, RTM_DELROUTE):
                if msg["dst_len"] == 0:
                    self._defaults = None  # read again when next asked
            elif kind in (RTM_NEWADDR, RTM_DELADDR):
                self._note(msg, kind == RTM_NEWADDR)

    def _note(self, msg: Any, held: bool) -> None:
        address = address_of(msg)
        if address is None or self._held is None:
            return
        entry = (msg["index"], address)
        if held and entry not in self._held:
            self._held.add(entry)
            self._count[address] = self._count.get(address, 0) + 1
        elif not held and entry in self._held:
            self._held.discard(entry)
            self._count[address] -= 1
            if not self._count[address]:
                del self._count[address]

    def now(self) -> tuple[list[Route], list[Any]]:
        """The main table's default routes and dom0's addresses (each once: dom0's own on 500 vifs
        is one), from one reading of the events."""
        self._update()
        if self._defaults is None:
            self._defaults = self.kernel.main_defaults()
        return list(self._defaults), list(self._count)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
