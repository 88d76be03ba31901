"""`domunet dom0 status`: every vif recorded and whether the kernel still has all of it (read-only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from domunet.core.model import PROTO_DOM0, TABLE_MAIN
from domunet.dom0 import guard

if TYPE_CHECKING:
    from domunet.dom0.executor import Dom0


def rows(engine: Dom0) -> list[dict[str, Any]]:
    """Every vif recorded (what a service knows: it records each vif it serves), what it was
    given and made, and whether the kernel still has all of it; unusable records with why.
    Read-only: no lock, nothing changed."""
    records = engine.records()
    unusable = engine.unusable
    links = engine.kernel.links(refresh=True)
    routes = {(r.dev, r.dst, r.metric) for version in (4, 6)
              for r in engine.kernel.routes(version, TABLE_MAIN) if r.proto == PROTO_DOM0}
    proxies = {(name, str(address)) for version in (4, 6) for name, address in engine.kernel.proxies(version)}
    guarded = guard.guarded_now()
    found: list[dict[str, Any]] = []
    for record in records:
        missing = [] if record.vif in links else [f"the vif {record.vif}"]
        for entry in record.routes:
            route = entry.route(record.vif)
            if (route.dev, route.dst, route.metric) not in routes:
                missing.append(f"route {entry.destination}")
        missing += [f"proxy {p} on {record.uplink}" for p in record.proxies if (record.uplink, p) not in proxies]
        allowed = guarded.get(record.vif)
        if allowed is None:
            missing.append("its anti-spoofing entry")
        else:
            missing += [f"allowed source {n}" for n in record.networks() if n not in allowed]
        found.append({"vif": record.vif, "key": record.key, "uplink": record.uplink, "guest": record.guest,
                     "routes": [r.as_json() for r in record.routes], "proxies": record.proxies,
                     "dom0_addresses": record.dom0_addresses, "kernel_matches": not missing,
                     "missing": missing})
    for broken in unusable:
        found.append({"vif": broken.salvaged.vif if broken.salvaged else None, "key": broken.key,
                      "unusable": broken.reason, "kernel_matches": None, "missing": []})
    return found
