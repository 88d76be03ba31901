"""What the kernel says: interfaces, their addresses, the main table's defaults, what domunet owns.

netifaces lists the addresses; pyroute2 (through domunet.core.kernel) gives links, routes and rules.
The result is plain data handed to the planner, which never calls back in here.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
from pathlib import Path

import netifaces

from domunet.core import nftables, sysctl, xenstore
from domunet.core.errors import KernelError
from domunet.core.kernel import Kernel
from domunet.core.model import TABLE_MAIN, Facts, Interface, IPInterface, State, valid_ifname
from domunet.guest.owned import foreign_tables, main_route_of_ours, owned_state
from domunet.guest.published import Published, read_published

log = logging.getLogger(__name__)

_NODENAME = re.compile(r"device/vif/(\d{1,5})")


def xen_devid(name: str, sysfs: Path = Path("/sys/class/net")) -> int | None:
    """The Xen vif device id from netfront's sysfs node (device/vif/N); None when not a vif."""
    try:
        nodename = (sysfs / name / "device" / "nodename").read_text().strip()
    except OSError:
        return None
    match = _NODENAME.fullmatch(nodename)
    return int(match.group(1)) if match else None


def parse_netifaces(entries: dict[int, list[dict[str, str]]]) -> tuple[IPInterface, ...]:
    """netifaces' address dicts -> ipaddress interfaces (IPv6 '%scope' and '/len' handled)."""
    addresses: list[IPInterface] = []
    for family in (netifaces.AF_INET, netifaces.AF_INET6):
        for entry in entries.get(family, []):
            address = entry.get("addr", "").split("%")[0]
            netmask = entry.get("netmask", "")
            if not address or not netmask:
                continue
            prefix = netmask.split("/")[1] if "/" in netmask else netmask
            try:
                if family == netifaces.AF_INET6 and prefix.isdigit() and int(prefix) <= 128:
                    # 4x faster than parsing the text: a guest may hold thousands of these
                    number = int.from_bytes(socket.inet_pton(socket.AF_INET6, address), "big")
                    addresses.append(ipaddress.IPv6Interface((number, int(prefix))))
                else:
                    addresses.append(ipaddress.ip_interface(f"{address}/{prefix}"))
            except (ValueError, OSError):
                log.debug("ignoring unparsable address %s/%s", address, netmask)
    return tuple(addresses)


def published_for(kernel: Kernel) -> Published:
    """What dom0 published, read on its own (before the lock is taken: xenstore may be slow);
    only the links' names, MACs and vif ids are needed for it, not their addresses. Without
    xenstore's tools there is nothing to read, and the links are not even dumped."""
    if not xenstore.available():
        return Published()
    links = [Interface(name=link.name, index=link.index, mac=link.mac, up=link.up,
                       xen_devid=xen_devid(link.name), loopback=link.loopback)
             for link in kernel.links(refresh=True).values()]
    return read_published(links)


def discover(kernel: Kernel, xen: Published | None = None) -> tuple[Facts, State]:
    """Read interfaces, addresses and routes once; return the facts and what domunet owns.
    `xen`: xenstore's facts read earlier (published_for), else read here."""
    interfaces = []
    links = kernel.links(refresh=True)
    labels = kernel.address_labels()
    for link in sorted(links.values(), key=lambda link: link.index):
        if not valid_ifname(link.name) and not link.loopback:
            # the same rule as for IFACE, vif and every name in the config: a name such as `a"b` or
            # `x;id` is served by no verb (nftables and the shells it reaches cannot quote it)
            log.warning("%s: not a name domunet serves (letters, digits and _.@+- only); left alone "
                        "(rename it to have domunet serve it)", link.name)
            continue
        try:
            entries = netifaces.ifaddresses(link.name)
            for label in labels.get(link.name, []):
                for family, values in netifaces.ifaddresses(label).items():
                    entries.setdefault(family, []).extend(values)
        except ValueError:  # vanished between the link dump and now
            log.info("%s: interface vanished during discovery", link.name)
            continue
        interfaces.append(Interface(
            name=link.name, index=link.index, mac=link.mac, up=link.up,
            addresses=parse_netifaces(entries), xen_devid=xen_devid(link.name),
            loopback=link.loopback,
        ))
    routes, rules = kernel.routes(4), kernel.rules(4)
    try:
        routes += kernel.routes(6)
        rules += kernel.rules(6)
    except KernelError as error:
        if error.errno != errno.EAFNOSUPPORT:
            raise
        log.warning("IPv6 is not available in this kernel (ipv6.disable=1?): IPv4 only")
    main = [r for r in routes if r.table == TABLE_MAIN and not main_route_of_ours(r)]
    main_defaults = tuple(r for r in main if r.dst.prefixlen == 0)
    main_routes = tuple(r for r in main if r.dst.prefixlen != 0 and not r.multipath)
    forwarding = frozenset(v for v, key in ((4, "net/ipv4/ip_forward"), (6, "net/ipv6/conf/all/forwarding"))
                           if sysctl.read(key) == "1")
    facts = Facts(interfaces=tuple(interfaces), main_defaults=main_defaults, main_routes=main_routes,
                  published=(read_published(interfaces) if xen is None else xen).vifs, forwarding=forwarding,
                  nft=bool(forwarding) and nftables.available(), foreign_tables=foreign_tables(routes))
    return facts, owned_state(routes, rules)
