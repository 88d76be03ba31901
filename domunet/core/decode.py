"""rtnetlink messages as domunet.core.model objects: one decoder per kind of object, for dumps
and change events alike. Pure: it reads the pyroute2 message it is given (the same classes in 0.7
and 0.9) and nothing else; an interface's name comes from the caller (`name_of`).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable

from domunet.core.model import Route, Rule, default_network, rule_words

log = logging.getLogger(__name__)

RTN_UNICAST = 1
FR_ACT_TO_TBL = 1
FIB_RULE_INVERT = 0x2
#: What a rule does when it sends to no table (FR_ACT_*), as `ip rule` says it.
_RULE_ACTIONS = {2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
#: Neighbour states (NUD_*), the one to report first when several bits are set.
_NUD = ((0x20, "FAILED"), (0x01, "INCOMPLETE"), (0x02, "REACHABLE"), (0x04, "STALE"), (0x08, "DELAY"),
        (0x10, "PROBE"), (0x80, "PERMANENT"), (0x40, "NOARP"))
IFF_UP = 0x1
IFF_LOOPBACK = 0x8

NameOf = Callable[[Any], str]  # an interface index (or None) -> its name


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    up: bool
    loopback: bool


def attr(message: Any, name: str, default: Any = None) -> Any:
    value = message.get_attr(name)
    return default if value is None else value


def link_from(msg: Any) -> Link | None:
    """A link message as a Link; None for a name that is not printable UTF-8 (said once, here)."""
    name = attr(msg, "IFLA_IFNAME")
    if not isinstance(name, str) or not name.isprintable():
        log.warning("interface %d: its name %r is not printable UTF-8; skipped (rename it to "
                    "have domunet serve it)", msg["index"], name)
        return None
    flags = msg["flags"]
    return Link(index=msg["index"], name=name, mac=attr(msg, "IFLA_ADDRESS", ""),
                up=bool(flags & IFF_UP), loopback=bool(flags & IFF_LOOPBACK))


def address_of(msg: Any) -> Any:
    """An address message's address as an ipaddress interface (with prefix length), or None."""
    address = msg.get_attr("IFA_ADDRESS") if msg["family"] == socket.AF_INET6 else (
        msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
    return ipaddress.ip_interface(f"{address}/{msg['prefixlen']}") if address else None


def routes_from(msg: Any, name_of: NameOf) -> list[Route]:
    """A route message as Routes: none for what domunet never makes (local, broadcast,
    multicast, blackhole), one per next hop for a multipath route (marked `multipath`): networkd
    merges an IPv6 static gateway and a router advertisement's into one such default. domunet
    never makes one, but has to see them: a default that is there, a table in use."""
    if msg["type"] != RTN_UNICAST:
        return []
    dst = msg.get_attr("RTA_DST")
    common = {
        "table": attr(msg, "RTA_TABLE", msg["table"]),
        "dst": ipaddress.ip_network(f"{dst}/{msg['dst_len']}") if dst else
        default_network(4 if msg["family"] == socket.AF_INET else 6),
        "metric": attr(msg, "RTA_PRIORITY", 0),
        "proto": msg["proto"],
    }
    hops = msg.get_attr("RTA_MULTIPATH")
    if hops:
        return [Route(**common, dev=name_of(hop["oif"]), gateway=_ip(hop.get_attr("RTA_GATEWAY")), multipath=True)
                for hop in hops]
    return [Route(**common, dev=name_of(msg.get_attr("RTA_OIF")), gateway=_ip(msg.get_attr("RTA_GATEWAY")),
                  src=_ip(msg.get_attr("RTA_PREFSRC")))]


def route_from(msg: Any, name_of: NameOf) -> Route | None:
    """A route message as one Route; None for a multipath route or what domunet never makes."""
    routes = routes_from(msg, name_of)
    return routes[0] if len(routes) == 1 and not routes[0].multipath else None


def _ip(text: str | None) -> Any:
    return ipaddress.ip_address(text) if text else None


def _rule_fields(msg: Any) -> dict[str, Any]:
    """A rule message's fields, whatever the rule does (no text: dumps and events decode many)."""
    src, dst, fwmark = msg.get_attr("FRA_SRC"), msg.get_attr("FRA_DST"), msg.get_attr("FRA_FWMARK")
    return {
        "priority": attr(msg, "FRA_PRIORITY", 0),
        "table": attr(msg, "FRA_TABLE", msg["table"]) if msg["action"] == FR_ACT_TO_TBL else None,
        "src": ipaddress.ip_network(f"{src}/{msg['src_len']}") if src else None,
        "dst": ipaddress.ip_network(f"{dst}/{msg['dst_len']}") if dst else None,
        "iif": msg.get_attr("FRA_IIFNAME"), "oif": msg.get_attr("FRA_OIFNAME"),
        "fwmark": fwmark, "fwmask": attr(msg, "FRA_FWMASK", 0xFFFFFFFF) if fwmark is not None else None,
        "invert": bool(msg["flags"] & FIB_RULE_INVERT), "proto": attr(msg, "FRA_PROTOCOL", 0),
    }


def rule_details(msg: Any) -> dict[str, Any]:
    """Any rule, whatever it selects and does (a VPN's, a container runtime's, ours): priority,
    table (None unless it sends to one), src, dst, iif, oif, fwmark, fwmask, invert, proto, and
    `text` as `ip rule` would say it."""
    rule = _rule_fields(msg)
    action = f"lookup {rule['table']}" if rule["table"] is not None else _RULE_ACTIONS.get(msg["action"], "other")
    words = rule_words(rule["priority"], rule["src"], rule["dst"], rule["fwmark"], rule["fwmask"], rule["oif"],
                       action, iif=rule["iif"], invert=rule["invert"])
    rule["text"] = f"{rule['priority']}: " + " ".join(words[2:])
    return rule


def rule_from(msg: Any) -> Rule | None:
    """A rule message as a Rule; None unless it sends traffic to a table."""
    if msg["action"] != FR_ACT_TO_TBL:
        return None
    fields = _rule_fields(msg)
    fwmark = fields["fwmark"] or None
    return Rule(version=4 if msg["family"] == socket.AF_INET else 6, priority=fields["priority"],
                table=fields["table"], src=fields["src"], dst=fields["dst"], oif=fields["oif"],
                fwmark=fwmark, fwmask=fields["fwmask"] if fwmark else None, proto=fields["proto"])


def neighbour_state(msg: Any) -> str:
    """A neighbour message's state as `ip neigh` names it (REACHABLE, STALE, FAILED ...)."""
    state = msg["state"]
    return next((text for bit, text in _NUD if state & bit), f"{state:#x}")
