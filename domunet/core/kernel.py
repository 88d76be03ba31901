"""The only module that talks netlink (pyroute2); 0.7 (Debian 12) vs 0.9 (PyPI) lives here.

It maps one request to one kernel call, and NetlinkError into domunet.core.errors; messages
become domunet.core.model objects in domunet.core.decode, change events come from
domunet.core.events. It decides nothing.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from typing import Any

from domunet.core import pyroute2_diet
from domunet.core.decode import (
    RTN_UNICAST,
    Link,
    address_of,
    attr,
    link_from,
    neighbour_state,
    routes_from,
    rule_details,
    rule_from,
)
from domunet.core.errors import GatewayRefused, KernelError, ObjectExists, ObjectMissing
from domunet.core.model import TABLE_MAIN, IPAddress, Route, Rule

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
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
IFA_F_NODAD = 0x02
NTF_PROXY = 0x08
_GATEWAY_ERRNOS = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL)


def _listed(result: Any) -> list[Any]:
    """0.7 returns tuples, 0.9 lists or generators: always give a list."""
    return list(result) if result is not None else []


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
                link = link_from(msg)
                if link is not None:
                    links[link.name] = link
            self._links = links
        return self._links

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
            self._named[name] = next((link for link in map(link_from, found) if link is not None), None)
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

    def name_of(self, index: int | None) -> str:
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
                known = next((link for link in map(link_from, found) if link is not None), None)
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

    def routes(self, version: int, table: int | None = None) -> list[Route]:
        """All unicast routes of one family, in every table or in one, as Route objects (a
        multipath route as one per next hop).

        The kernel filters the dump (a socket with strict checking, rtm_type unicast, and the
        table when one is asked for): a guest with 4,096 addresses has as many local-table
        entries, which cost 180-240 ms to decode and are never domunet's. Where strict checking
        is not to be had, the same filter runs here instead (routes_from)."""
        call, request, *args = self._route_dump(version)
        if table is not None and self._strict:
            request = {**request, "table": table}
        routes = [route for msg in self._dump(f"the IPv{version} routes", call, request, *args)
                  for route in routes_from(msg, self.name_of)]
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
        return [rule for rule in map(rule_from, messages) if rule is not None]

    def route_get(self, dst: IPAddress, src: IPAddress | None = None) -> str:
        """The kernel's own answer: which interface would a packet to dst (from src) leave by?"""
        return self.lookup(dst, src)[0]

    def lookup(self, dst: IPAddress, src: IPAddress | None = None) -> tuple[str, IPAddress | None]:
        """The kernel's route lookup for a packet from src (one of this host's addresses) to dst:
        the interface it leaves by (or "none (why)") and the next hop. Not the table: for IPv4 the
        kernel reports main whichever rule chose the route (domunet.guest.doctor works that out)."""
        try:
            answer = _listed(self._ipr.route("get", dst=str(dst), family=FAMILY[dst.version],
                                             **({"src": str(src)} if src is not None else {})))
        except NetlinkError as error:
            return f"none ({error.args[-1] if error.args else error})", None
        if not answer:
            return "none", None
        gateway = answer[0].get_attr("RTA_GATEWAY")
        return self.name_of(answer[0].get_attr("RTA_OIF")), ipaddress.ip_address(gateway) if gateway else None

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
                attr(msg, "IFA_FLAGS", msg["flags"]), None if preferred in (None, 0xFFFFFFFF) else preferred)
        return states

    def rule_details(self, version: int) -> list[dict[str, Any]]:
        """Every rule of one family, whatever it does (domunet.core.decode.rule_details), by priority."""
        messages = self._dump(f"the IPv{version} rules", self._ipr.get_rules, family=FAMILY[version])
        return sorted(map(rule_details, messages), key=lambda r: r["priority"])

    def neighbour_state(self, name: str, address: IPAddress) -> str | None:
        """The neighbour entry for address on interface name: its state (REACHABLE, STALE, FAILED
        ...), or None when there is none."""
        index = self._index(name)
        messages = self._dump(f"the neighbours of {name}", self._ipr.get_neighbours, family=FAMILY[address.version])
        for msg in messages:
            if msg["ifindex"] == index and msg.get_attr("NDA_DST") == str(address):
                return neighbour_state(msg)
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
