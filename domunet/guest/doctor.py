"""`domunet doctor`: why does this address not answer? A walk in the order a reply takes.

gather() reads once what the walk needs (the kernel, xenstore, sysctls; no lock, nothing
changed: safe while setup or watch runs); walk() is pure: one Step per check, and the first
failing step names the cause (a code for --json and tests), what was found, and the command
that fixes it.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from domunet.core import sysctl
from domunet.core.config import Config
from domunet.core.diagnosis import Step, Verdict
from domunet.core.errors import UsageError
from domunet.core.kernel import Kernel
from domunet.core.lock import watch_running
from domunet.core.model import Facts, Interface, IPAddress, ManagedInterface, Route, Rule, State
from domunet.guest.discover import discover, published_for
from domunet.guest.owned import foreign_rule, within_reach
from domunet.guest.pipeline import remembered_blocks
from domunet.guest.plan import ignored, plan
from domunet.guest.status import PROBES

log = logging.getLogger(__name__)

IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE = 0x08, 0x20, 0x40
TABLE_LOCAL = 255
BROKEN_NEIGHBOUR = ("FAILED", "INCOMPLETE")


@dataclass(frozen=True)
class Evidence:
    """What the walk looks at, read once."""

    facts: Facts
    desired: State
    owned: State
    #: (interface, address) -> (IFA_F_* flags, preferred lifetime in seconds or None for forever)
    flags: Mapping[tuple[str, str], tuple[int, int | None]]
    #: family -> every rule (Kernel.rule_details), by priority
    rules: Mapping[int, Sequence[Mapping[str, Any]]]
    #: (family, table) -> the table has a route for a reply to the probe destination (a rule into
    #: a table without one lets the lookup go on to the next rule)
    covers: Mapping[tuple[int, int], bool]
    #: address -> the kernel's lookup of a reply from it: (leaves by, next hop)
    lookups: Mapping[str, tuple[str, IPAddress | None]]
    #: (interface, gateway) -> neighbour state, None when there is no entry
    neighbours: Mapping[tuple[str, str], str | None]
    #: interface -> effective IPv4 rp_filter (the higher of all's and the interface's)
    rp_filter: Mapping[str, int]
    watch: bool
    #: gateway -> answered one echo (--probe only)
    probes: Mapping[str, bool] = field(default_factory=dict)
    #: interfaces the config's `ignore` names
    ignored: frozenset[str] = frozenset()


def parse_addresses(texts: Sequence[str]) -> list[str]:
    """The addresses asked about, each once. A link-local address (with or without a %zone) is
    refused, whatever the zone: it answers on its own link only, and doctor follows replies that
    are routed."""
    found = []
    for text in texts:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise UsageError(f"ADDRESS argument {text[:80]!r} is not an IP address") from None
        if "%" in text:
            raise UsageError(f"ADDRESS argument {text[:80]!r} has a %zone id: doctor checks routed addresses, "
                             "not link-local ones (give the address without it)")
        if ip.is_link_local:
            raise UsageError(f"ADDRESS argument {text[:80]!r} is link-local: it answers on its own link "
                             "only (doctor checks routed addresses; give a global one)")
        found.append(str(ip))
    return list(dict.fromkeys(found))


def gather(kernel: Kernel, config: Config, state_dir: str, addresses: Sequence[str], probe: bool = False) -> Evidence:
    """Read everything once. No lock is taken: a setup or watch running now is not held up."""
    xen = published_for(kernel)
    facts, owned = discover(kernel, xen)
    desired = plan(config, facts)
    owned = within_reach(owned, config, remembered_blocks(state_dir))
    wanted = addresses or every_address(config, facts)
    lookups = {a: kernel.lookup(PROBES[ipaddress.ip_address(a).version], ipaddress.ip_address(a))
               for a in wanted if _holder(facts, a) is not None}
    neighbours: dict[tuple[str, str], str | None] = {}
    probes: dict[str, bool] = {}
    for managed in desired.managed:
        for gateway in (managed.gateway, managed.gateway6):
            if gateway is not None:
                neighbours[(managed.name, str(gateway))] = kernel.neighbour_state(managed.name, gateway)
                if probe:
                    probes[str(gateway)] = _echo(gateway, managed.name)
    rp_filter = {}
    for interface in facts.interfaces:
        values = [sysctl.read(f"net/ipv4/conf/{name}/rp_filter") for name in ("all", interface.name)]
        rp_filter[interface.name] = max((int(v) for v in values if v and v.strip().isdigit()), default=0)
    rules = {v: kernel.rule_details(v) for v in (4, 6)}
    covers = {(v, r["table"]): any(PROBES[v] in route.dst for route in kernel.routes(v, r["table"]))
              for v in (4, 6) for r in rules[v] if r["table"] not in (None, TABLE_LOCAL)}
    return Evidence(facts, desired, owned, kernel.address_states(), rules, covers, lookups, neighbours, rp_filter,
                    watch_running(state_dir), probes, frozenset(i.name for i in facts.interfaces if ignored(config, i)))


def every_address(config: Config, facts: Facts) -> list[str]:
    """With no argument: every routed address of every interface but loopback, up or down,
    managed, held or not: exactly the addresses an admin asks about are the ones that fail."""
    return list(dict.fromkeys(str(a.ip) for i in facts.interfaces if not i.loopback for a in i.addresses
                              if not a.ip.is_link_local and not a.ip.is_loopback))


def _echo(gateway: IPAddress, interface: str) -> bool:
    """One ICMP echo to the gateway through the interface, three seconds for the answer (a
    neighbour entry to resolve first, and dom0's proxy answers after up to 0.8 s)."""
    import socket
    import struct
    import time

    family, proto, kind = ((socket.AF_INET, socket.IPPROTO_ICMP, 8) if gateway.version == 4
                           else (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128))
    packet = struct.pack("!BBHHH", kind, 0, 0, 0x646E, 1) + b"domunet doctor"
    if gateway.version == 4:
        total = sum(struct.unpack(f"!{len(packet) // 2}H", packet))
        total = (total >> 16) + (total & 0xFFFF)
        packet = packet[:2] + struct.pack("!H", ~(total + (total >> 16)) & 0xFFFF) + packet[4:]
    try:
        with socket.socket(family, socket.SOCK_RAW, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            sock.settimeout(3.0)
            sock.sendto(packet, (str(gateway), 0))
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                data, peer = sock.recvfrom(2048)
                reply = data[(data[0] & 0x0F) * 4:] if gateway.version == 4 else data
                if peer[0].split("%")[0] == str(gateway) and reply[:1] in (b"\x00", b"\x81"):
                    return True
    except OSError:
        return False
    return False


def _holder(facts: Facts, address: str) -> Interface | None:
    ip = ipaddress.ip_address(address)
    return next((i for i in facts.interfaces if any(a.ip == ip for a in i.addresses)), None)


def walk(evidence: Evidence, address: str) -> Verdict:
    """The checks for one address, in the order a reply from it takes."""
    interface = _holder(evidence.facts, address)
    if interface is None:
        return Verdict(address, None, (Step("address", False, f"{address} is on no interface of this host",
                                            "address-missing",
                                            "add it (ip addr add ADDRESS/PREFIX dev IFACE), or through the network "
                                            "stack's own configuration"),))
    ip = ipaddress.ip_address(address)
    managed = next((m for m in evidence.desired.managed if m.name == interface.name), None)
    steps = [_address_step(evidence, interface, ip)]
    if managed is None:
        held = evidence.desired.held.get(interface.name)
        if held:
            steps.append(Step("managed", False, f"{interface.name} is held as it is: {held}", "held",
                              "correct the fact named above, then domunet setup"))
        elif interface.name in evidence.ignored:
            steps.append(Step("managed", True, f"{interface.name} is ignored (`ignore` in the config): its "
                                               "replies follow the main table"))
        else:
            steps.append(Step("managed", True, f"{interface.name} is not managed (no other NIC shares its subnet, "
                                               "no IPv6 gateway): replies use the main table"))
        if not held and interface.name not in evidence.ignored:
            steps.append(_leaves_step(evidence, interface, ip, None) if _outward(evidence, interface) else
                         Step("lookup", True, f"{interface.name} is not a Xen NIC and carries no default route "
                                              "(a bridge, tunnel or container link): its replies are main's to route"))
    else:
        steps += [_rules_step(evidence, interface, ip, managed), _table_step(evidence, interface, ip, managed),
                  _leaves_step(evidence, interface, ip, managed), _neighbour_step(evidence, interface, ip, managed),
                  _state_step(evidence, managed)]
    steps.append(_xenstore_step(evidence, interface, ip, managed))
    return Verdict(address, interface.name, tuple(steps))


def _outward(evidence: Evidence, interface: Interface) -> bool:
    """Whether replies from this NIC's addresses must leave by it: a Xen NIC (dom0's guard and
    rp_filter judge the source), or the NIC of one of main's default routes."""
    return interface.xen_devid is not None or interface.name in evidence.facts.published \
        or any(route.dev == interface.name for route in evidence.facts.main_defaults)


def _address_step(evidence: Evidence, interface: Interface, ip: IPAddress) -> Step:
    flags, preferred = evidence.flags.get((interface.name, str(ip)), (0, None))
    prefix = next((a.network.prefixlen for a in interface.addresses if a.ip == ip), None)
    if not interface.up:
        return Step("address", False, f"{interface.name} is down", "link-down", f"ip link set {interface.name} up")
    if flags & IFA_F_DADFAILED:
        return Step("address", False, f"{ip} on {interface.name}: duplicate address detection failed (another host "
                    "on the link has it)", "address-dadfailed",
                    f"free it on the other host, then: ip addr del {ip}/{prefix} dev {interface.name} && "
                    f"ip addr add {ip}/{prefix} dev {interface.name}")
    if flags & IFA_F_TENTATIVE:
        return Step("address", False, f"{ip} on {interface.name}: tentative (duplicate address detection runs)",
                    "address-tentative", "wait a second or two and ask again")
    if flags & IFA_F_DEPRECATED or preferred == 0:
        return Step("address", False, f"{ip} on {interface.name}: deprecated (its preferred lifetime ran out: "
                    "not chosen as a source)", "address-deprecated",
                    "renew its lease, or let the router advertise the prefix again")
    return Step("address", True, f"{ip}/{prefix} on {interface.name}, usable")


def _ours_for(rules: frozenset[Rule], ip: IPAddress, interface: str, table: int) -> list[Rule]:
    return sorted(r for r in rules if r.version == ip.version and r.table == table
                  and ((r.src is not None and ip in r.src) or r.oif == interface))


def _rules_step(evidence: Evidence, interface: Interface, ip: IPAddress, managed: ManagedInterface) -> Step:
    wanted = _ours_for(evidence.desired.rules, ip, interface.name, managed.table)
    missing = [r for r in wanted if r not in evidence.owned.rules]
    if not missing:
        return Step("rule", True, "; ".join(r.describe() for r in wanted) or "no rule needed")
    anything = [r for r in evidence.owned.rules if r.table == managed.table] + \
        [r for r in evidence.owned.routes if r.table == managed.table]
    if not anything:
        leaves = evidence.lookups.get(str(ip), ("?", None))[0]
        strict = evidence.rp_filter.get(interface.name, 0) == 1
        if ip.version == 4 and strict and leaves != interface.name:
            return Step("rule", False, f"domunet has not set {interface.name} up: replies from {ip} leave by {leaves}, "
                        f"and rp_filter is strict on {interface.name}: the kernel drops what comes in there",
                        "rp-filter", "domunet setup")
        return Step("rule", False, f"domunet has not set {interface.name} up (no rule, no table {managed.table})",
                    "not-set-up", "domunet setup")
    watch = "" if evidence.watch else " (domunet watch is not running: it would have put it back)"
    return Step("rule", False, "missing: " + "; ".join(f"ip -{r.version} rule {r.describe()}" for r in missing) + watch,
                "rule-missing", "domunet setup" + ("" if evidence.watch else "; systemctl start domunet-watch"))


def _table_step(evidence: Evidence, interface: Interface, ip: IPAddress, managed: ManagedInterface) -> Step:
    routes = [r for r in evidence.owned.routes if r.table == managed.table and r.version == ip.version]
    link = [r for r in routes if r.gateway is None and ip in r.dst and r.dst.prefixlen > 0]
    default = [r for r in routes if r.dst.prefixlen == 0]
    wanted_default = [r for r in evidence.desired.routes if r.table == managed.table and r.version == ip.version
                      and r.dst.prefixlen == 0]
    if not link and any(r.gateway is None and ip in r.dst for r in evidence.desired.routes
                        if r.table == managed.table):
        return Step("table", False, f"table {managed.table} has no link route for {ip}", "table-link-missing",
                    "domunet setup")
    if wanted_default and not default:
        return Step("table", False, f"table {managed.table} has no default route (wanted: "
                    f"{wanted_default[0].describe()})", "table-default-missing", "domunet setup")
    for route in default:
        reachable = route.gateway is None or route.gateway.is_link_local or any(
            r.gateway is None and route.gateway in r.dst for r in routes)
        if not reachable:
            return Step("table", False, f"the gateway {route.gateway} of table {managed.table} is on no link route "
                        "there", "gateway-not-on-link", "domunet setup")
    return Step("table", True, f"table {managed.table}: " + "; ".join(r.describe() for r in [*link, *default]))


def _catches(rule: Mapping[str, Any], ip: IPAddress, evidence: Evidence) -> bool:
    """Would this rule take a reply from ip to the probe destination (a locally sent packet:
    `iif lo`, no mark)? A rule into a table without a route for it lets the lookup go on."""
    probe = PROBES[ip.version]
    selected = (rule["iif"] in (None, "lo") and rule["oif"] is None
                and (rule["src"] is None or ip in rule["src"]) and (rule["dst"] is None or probe in rule["dst"])
                and (rule["fwmark"] is None or rule["fwmark"] == 0))
    if rule["invert"]:
        selected = not selected
    return selected and (rule["table"] is None or evidence.covers.get((ip.version, rule["table"]), False))


def _leaves_step(evidence: Evidence, interface: Interface, ip: IPAddress, managed: ManagedInterface | None) -> Step:
    leaves, hop = evidence.lookups.get(str(ip), ("?", None))
    found = f"a reply from {ip} leaves by {leaves}" + (f" via {hop}" if hop else "")
    if managed is not None:
        ours = min((r.priority for r in _ours_for(evidence.owned.rules, ip, interface.name, managed.table)),
                   default=None)
        above = [r for r in evidence.rules[ip.version] if ours is not None and r["priority"] < ours
                 and r["table"] not in (TABLE_LOCAL, managed.table) and foreign_rule(r)
                 and _catches(r, ip, evidence)]
        if above:
            rule = above[0]
            return Step("lookup", False, f"{found}: the rule `{rule['text']}` takes it before domunet's (priority "
                        f"{ours})", "rule-above", f"ip -{ip.version} rule del priority {rule['priority']} (if nothing "
                        f"needs it), or priority_base below {rule['priority']} in /etc/domunet.conf")
    if leaves != interface.name:
        strict = ip.version == 4 and evidence.rp_filter.get(interface.name, 0) == 1
        why = f"; rp_filter is strict on {interface.name}: what comes in there is dropped" if strict else ""
        cause = "rp-filter" if strict and managed is None else "replies-leave-elsewhere"
        return Step("lookup", False, found + why, cause,
                    "domunet setup" if managed is not None else
                    f"manage = yes for {interface.name} in /etc/domunet.conf, then domunet setup")
    return Step("lookup", True, found)


def _neighbour_step(evidence: Evidence, interface: Interface, ip: IPAddress, managed: ManagedInterface) -> Step:
    gateway = managed.gateway if ip.version == 4 else managed.gateway6
    if gateway is None:
        return Step("neighbour", True, f"no IPv{ip.version} gateway on {interface.name}")
    state = evidence.neighbours.get((interface.name, str(gateway)))
    answered = evidence.probes.get(str(gateway))
    found = f"{gateway} on {interface.name}: {state or 'no entry yet'}" + (
        "" if answered is None else f", {'answered' if answered else 'did not answer'} an echo")
    if state in BROKEN_NEIGHBOUR or answered is False:
        return Step("neighbour", False, found, "gateway-unreachable",
                    f"the gateway does not answer on {interface.name}: in dom0, domunet dom0 doctor; "
                    f"here, ip neigh flush dev {interface.name} and try again")
    return Step("neighbour", True, found)


def _state_step(evidence: Evidence, managed: ManagedInterface) -> Step:
    objects = [o for o in (*evidence.desired.routes, *evidence.desired.rules) if o.table == managed.table]
    missing = [o for o in objects if o not in (evidence.owned.routes if isinstance(o, Route) else evidence.owned.rules)]
    watch = "domunet watch runs" if evidence.watch else "domunet watch is not running"
    if missing:
        return Step("state", False, f"{len(missing)} of domunet's objects for {managed.name} are not in the kernel "
                    f"({watch})", "out-of-sync", "domunet setup")
    return Step("state", True, f"domunet's {len(objects)} objects for {managed.name} are in the kernel ({watch})")


def _xenstore_step(evidence: Evidence, interface: Interface, ip: IPAddress, managed: ManagedInterface | None) -> Step:
    published = evidence.facts.published.get(interface.name)
    if published is None:
        return Step("xenstore", True, f"nothing published for {interface.name} (not a Xen vif, or no xenstore)")
    if published.addresses and not any(ip in network for network in published.addresses):
        given = " ".join(str(n) for n in published.addresses)
        return Step("xenstore", False, f"dom0 gave {published.backend} only {given}: its guard drops what {ip} sends",
                    "address-not-given", f"in dom0, give the vif {ip} (its `ip` in the domain's config), or "
                    f"remove {ip} here")
    used = managed.gateway6 if managed else None
    if ip.version == 6 and published.gateway6 and used and used != published.gateway6:
        return Step("xenstore", False, f"{interface.name} uses the IPv6 gateway {used} (from "
                    f"{managed.gateway6_source if managed else '?'}), dom0 published {published.gateway6}",
                    "gateway6-mismatch", f"remove gateway6 of [[{interface.name}]] from /etc/domunet.conf, or set "
                    f"it to {published.gateway6}; then domunet setup")
    return Step("xenstore", True, f"{published.backend} agrees (address given"
                + (f", IPv6 gateway {published.gateway6}" if published.gateway6 else "") + ")")
