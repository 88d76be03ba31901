"""`domunet status`: per interface, what domunet decided, what it owns, and what the kernel does."""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

from domunet.core.model import Facts, IPAddress, Route, State

#: Destinations for "a reply from this address leaves through which NIC?" (documentation ranges,
#: never sent to: the kernel only looks the route up).
PROBES = {4: ipaddress.ip_address("192.0.2.1"), 6: ipaddress.ip_address("2001:db8::1")}


def report(facts: Facts, desired: State, owned: State,
           route_get: Callable[[IPAddress, IPAddress], str],
           refused: tuple[tuple[str, str], ...] = ()) -> list[dict[str, Any]]:
    managed = {m.name: m for m in desired.managed}
    rows = []
    for interface in facts.interfaces:
        if interface.loopback:
            continue
        decision = managed.get(interface.name)
        owned_tables = {r.table for r in owned.rules if r.oif == interface.name}
        table = decision.table if decision else (min(owned_tables) if owned_tables else None)
        rules = sorted(
            (r for r in owned.rules if r.table == table or r.oif == interface.name),
            key=lambda r: (r.version, r.priority, repr(r)),
        )
        addresses = [a for a in interface.addresses if not a.ip.is_link_local]
        kept = sorted(((obj, route) for obj, route in desired.stands_for.items() if route.dev == interface.name),
                      key=lambda item: (item[0].version, repr(item[0])))
        rows.append({
            "interface": interface.name,
            "up": interface.up,
            "managed": decision is not None,
            "why": list(decision.reasons) if decision else [],
            "table": table,
            "gateway": str(decision.gateway) if decision and decision.gateway else None,
            "gateway_source": decision.gateway_source if decision else None,
            "gateway6": str(decision.gateway6) if decision and decision.gateway6 else None,
            "gateway6_source": decision.gateway6_source if decision else None,
            "xenstore": facts.published[interface.name].backend if interface.name in facts.published else None,
            "addresses": [str(a) for a in addresses],
            "rules": [f"ip -{r.version} rule: {r.describe()}" for r in rules],
            "replies_leave_by": {str(a.ip): route_get(PROBES[a.version], a.ip) for a in addresses},
            "in_sync": {r for r in desired.rules if r.oif == interface.name} <= owned.rules,
            "keeps_main": [{
                "object": f"ip -{obj.version} {'route' if isinstance(obj, Route) else 'rule'}: {obj.describe()}",
                "for": route.describe(),
                "in_kernel": obj in (owned.routes if isinstance(obj, Route) else owned.rules),
            } for obj, route in kept],
            "refused": [why for name, why in refused if name == interface.name],
            "connmark": f"{desired.marks[interface.name]:#x}" if interface.name in desired.marks else None,
            "passed_over": [{"route": route.describe(), "why": why}
                            for route, why in desired.passed_over if route.dev == interface.name],
        })
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        head = f"{row['interface']}: " + ("managed" if row["managed"] else "not managed")
        if row["managed"]:
            head += f", table {row['table']}" + ("" if row["in_sync"] else " (NOT SET UP: run domunet setup)")
        if not row["up"]:
            head += ", link down"
        lines.append(head)
        if row["why"]:
            lines.append(f"  why:        {'; '.join(row['why'])}")
        for key in ("gateway", "gateway6"):
            if row[key]:
                lines.append(f"  {key + ':':<11} {row[key]} (from {row[key + '_source']})")
        if row["xenstore"]:
            lines.append(f"  xenstore:   {row['xenstore']}")
        for address in row["addresses"]:
            ip = address.split("/")[0]
            leaves = row["replies_leave_by"].get(ip, "?")
            mark = "" if leaves == row["interface"] else "  <- not its own NIC"
            lines.append(f"  address:    {address:<28} replies leave by {leaves}{mark}")
        for rule in row["rules"]:
            lines.append(f"  {rule}")
        for why in row["refused"]:
            lines.append(f"  REFUSED:    {why}")
        if row["connmark"]:
            lines.append(f"  connmark:   {row['connmark']} (forwarded connections that came in here answer here)")
        for kept in row["keeps_main"]:
            missing = "" if kept["in_kernel"] else "  (NOT SET UP: run domunet setup)"
            lines.append(f"  keeps main: {kept['object']} (for {kept['for']}){missing}")
        for passed in row["passed_over"]:
            lines.append(f"  passed over: {passed['route']}: {passed['why']}")
    return "\n".join(lines)
