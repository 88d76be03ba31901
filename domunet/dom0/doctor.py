"""`domunet dom0 doctor`: why does a guest address not answer, seen from dom0.

For every guest address of every vif domunet recorded (or those named), the checks in the
order a packet from outside takes: the vif online (domunet's record, the link, libxl's
hotplug-status), the route to the address by that vif, the proxy ARP/NDP entry on the uplink,
the sysctls that forwarding and proxying need, the anti-spoofing sets, no other vif claiming
the address; and what the guard dropped: a guest that sends from an address it was not given
is named with that address. Read-only: no lock, nothing changed. Steps and verdicts:
domunet.core.diagnosis, as for the guest's doctor.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from domunet.core import sysctl
from domunet.core.diagnosis import Step, Verdict
from domunet.core.errors import UsageError
from domunet.core.model import IPNetwork, valid_ifname
from domunet.dom0 import guard
from domunet.dom0.records import VifRecord

RECONCILE = "domunet dom0 reconcile"


@dataclass(frozen=True)
class Evidence:
    records: Sequence[VifRecord]
    links: frozenset[str]
    #: address -> the interface dom0's kernel routes it by
    routes: Mapping[str, str]
    proxies: frozenset[tuple[str, str]]
    guarded: Mapping[str, Sequence[IPNetwork]]
    #: sysctl key -> value
    sysctls: Mapping[str, str | None]
    #: vif -> libxl's hotplug-status for it (None: not a Xen vif, or no xenstore)
    hotplug: Mapping[str, str | None]
    #: (vif, source) the guard dropped in the last hour
    spoofed: Sequence[tuple[str, str]]


def wanted_sysctls(record: VifRecord) -> dict[str, str]:
    keys = {"net/ipv4/ip_forward": "1", f"net/ipv4/conf/{record.uplink}/proxy_arp": "1",
            f"net/ipv4/conf/{record.vif}/proxy_arp": "1"}
    if any(n.version == 6 for n in record.networks()):
        keys.update({"net/ipv6/conf/all/forwarding": "1", f"net/ipv6/conf/{record.uplink}/proxy_ndp": "1"})
    return keys


def gather(engine: object, read: Callable[[str], str | None] | None) -> Evidence:
    """engine: domunet.dom0.executor.Dom0 (its records and kernel); read: xenstore-read, or None."""
    records = engine.records()  # type: ignore[attr-defined]
    kernel = engine.kernel  # type: ignore[attr-defined]
    routes = {}
    for record in records:
        for network in record.networks():
            routes[str(network.network_address)] = kernel.route_get(network.network_address)
    proxies = frozenset((name, str(address)) for version in (4, 6) for name, address in kernel.proxies(version))
    keys = {key for record in records for key in wanted_sysctls(record)}
    hotplug = {}
    for record in records:
        status = None
        if read is not None and record.xenbus_path:
            try:
                status = read(f"{record.xenbus_path}/hotplug-status")
            except Exception:  # noqa: BLE001 (a hung or missing xenstore is reported as unknown)
                status = None
        hotplug[record.vif] = status
    return Evidence(records, frozenset(kernel.links(refresh=True)), routes, proxies, guard.guarded_now(),
                    {key: sysctl.read(key) for key in sorted(keys)}, hotplug, guard.spoofed_now())


def parse_targets(texts: Sequence[str]) -> tuple[set[str], set[str]]:
    """VIF and ADDRESS arguments, checked before anything is read."""
    vifs, addresses = set(), set()
    for text in texts:
        try:
            addresses.add(str(ipaddress.ip_address(text)))
        except ValueError:
            if not valid_ifname(text):
                raise UsageError(f"argument {text[:80]!r} is neither a vif name nor an IP address") from None
            vifs.add(text)
    return vifs, addresses


def walk_all(evidence: Evidence, vifs: set[str] = frozenset(), addresses: set[str] = frozenset()) -> list[Verdict]:
    """Every guest address of every recorded vif (or of those named), then every source the guard
    dropped (of those vifs)."""
    verdicts = [Verdict(vif, vif, (Step("vif", False, f"domunet has no record of {vif}: vif-domunet did not bring "
                                         "it online, or took it offline", "not-online",
                                         "xl network-detach and network-attach it with script=vif-domunet"),))
                for vif in sorted(vifs - {r.vif for r in evidence.records})]
    for record in evidence.records:
        for network in record.networks():
            address = str(network.network_address)
            if (vifs or addresses) and record.vif not in vifs and address not in addresses:
                continue
            verdicts.append(walk(evidence, record, network))
    for vif, source in evidence.spoofed:
        if (vifs or addresses) and vif not in vifs and source not in addresses:
            continue
        given = next((r for r in evidence.records if r.vif == vif), None)
        listed = " ".join(given.guest) if given else "nothing (no record)"
        verdicts.append(Verdict(source, vif, (Step(
            "guard", False, f"the guest on {vif} sent from {source}, which it was not given ({vif} was given "
            f"{listed}): dropped", "source-not-given",
            f"in the guest, use only the addresses given, or give {vif} {source} (its `ip` in the domain's "
            "config, then xl network-detach/attach)"),)))
    return verdicts


def walk(evidence: Evidence, record: VifRecord, network: IPNetwork) -> Verdict:
    address = str(network.network_address)
    single = network.prefixlen == network.max_prefixlen
    steps = []
    status = evidence.hotplug.get(record.vif)
    if record.vif not in evidence.links:
        steps.append(Step("vif", False, f"{record.vif} is gone, its record ({record.key}) stays", "vif-missing",
                          f"domunet dom0 offline --vif {record.vif}"))
    elif status not in (None, "connected"):
        steps.append(Step("vif", False, f"{record.vif}: libxl's hotplug-status is {status!r}", "not-connected",
                          "xl network-detach and network-attach the vif; its hotplug-error says why"))
    else:
        steps.append(Step("vif", True, f"{record.vif} online ({record.key}"
                          + (f", hotplug-status {status}" if status else "") + ")"))
    leaves = evidence.routes.get(address, "?")
    steps.append(Step("route", leaves == record.vif, f"{address} is routed by {leaves}",
                      None if leaves == record.vif else "route-missing",
                      None if leaves == record.vif else RECONCILE))
    if single:
        proxied = (record.uplink, address) in evidence.proxies
        what = "NDP" if network.version == 6 else "ARP"
        if network.version == 6:
            steps.append(Step("proxy", proxied, f"proxy {what} entry for {address} on {record.uplink}: "
                              f"{'present' if proxied else 'missing'}", None if proxied else "proxy-missing",
                              None if proxied else RECONCILE))
        else:
            steps.append(Step("proxy", True, f"proxy ARP on {record.uplink} answers for the routed {address}"))
    off = [key for key, value in wanted_sysctls(record).items()
           if key.startswith(f"net/ipv{network.version}/") and evidence.sysctls.get(key) != value]
    steps.append(Step("sysctl", not off, "off: " + ", ".join(f"{k}={evidence.sysctls.get(k)}" for k in off)
                      if off else "forwarding and proxying on", "sysctl-off" if off else None,
                      "sysctl -w " + " ".join(f"{k}=1" for k in off) if off else None))
    allowed = evidence.guarded.get(record.vif)
    covered = allowed is not None and any(network.subnet_of(n) for n in allowed if n.version == network.version)
    steps.append(Step("guard", covered, f"{record.vif} may send from {address}" if covered else
                      f"the anti-spoofing sets do not let {record.vif} send from {address}",
                      None if covered else "guard-missing", None if covered else RECONCILE))
    others = [r.vif for r in evidence.records if r.vif != record.vif
              and any(n.overlaps(network) for n in r.networks())]
    steps.append(Step("claims", not others, f"{', '.join(others)} also claim {address}" if others else
                      f"no other vif claims {address}", "claimed-twice" if others else None,
                      f"take it from the one that should not have it: domunet dom0 offline --vif {others[0]}"
                      if others else None))
    return Verdict(address, record.vif, tuple(steps))
