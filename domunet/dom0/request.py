"""dom0's input, validated before anything changes: a vif's name, libxl's backend path, the
guest's addresses (libxl never checks them) and whether they may be routed to this vif at all."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Sequence

from domunet.core.errors import UsageError
from domunet.core.model import IFNAME_CHARS, IPInterface, IPNetwork, parse_network, valid_ifname

MAX_ADDRESSES = 256
XENBUS_PATH_PATTERN = re.compile(r"backend/vif/(\d{1,5})/(\d{1,5})")
#: A vif's record key: libxl's backend path as xen-DOMID-DEVID, else an interface name (a vif that
#: is not Xen's). Checked with fullmatch everywhere: `$` would let a trailing newline through.
RECORD_KEY_XEN = re.compile(r"xen-(\d{1,5})-(\d{1,5})")
RECORD_KEY = re.compile(rf"xen-\d{{1,5}}-\d{{1,5}}|{IFNAME_CHARS}{{1,15}}")


def check_ifname(value: str | None, what: str) -> str:
    if not valid_ifname(value):
        raise UsageError(f"{what}: {value!r} is not a valid interface name")
    return value


def check_xenbus_path(value: str) -> str:
    if not XENBUS_PATH_PATTERN.fullmatch(value):
        raise UsageError(f"XENBUS_PATH: {value!r} is not backend/vif/DOMID/DEVID")
    return value


def parse_addresses(text: str | None, what: str) -> tuple[IPNetwork, ...]:
    """Guest addresses or prefixes, space separated (libxl never validates them: we do)."""
    if text is None or not text.strip():
        raise UsageError(f"{what}: no guest address given; a routed vif needs its guest's addresses")
    if len(text) > 16 * MAX_ADDRESSES:
        raise UsageError(f"{what}: value is too long")
    networks: list[IPNetwork] = []
    for token in text.split():
        if "%" in token:
            raise UsageError(f"{what}: {token!r} has a %zone id; give the address without it")
        try:
            network = parse_network(token)
        except ValueError:
            raise UsageError(f"{what}: {token!r} is not an IPv4/IPv6 address or prefix") from None
        if network.is_multicast or network.is_loopback or network.is_link_local or network.is_unspecified \
                or network.prefixlen == 0:
            raise UsageError(f"{what}: {token!r} cannot be a guest address")
        if network not in networks:
            networks.append(network)
    if len(networks) > MAX_ADDRESSES:
        raise UsageError(f"{what}: more than {MAX_ADDRESSES} addresses")
    return tuple(networks)


_VIF_NAME = re.compile(r"vif(\d{1,5})\.(\d{1,5})(-emu)?")


def vif_key(vif: str) -> str:
    """One key per vif, whichever entry point brings it online: Xen's vifD.N is keyed xen-D-N, as
    libxl's own calls are (its backend path), so that libxl's offline finds what `domunet dom0
    online --vif vifD.N` made. Any other name (vifD.N-emu included) is its own key."""
    match = _VIF_NAME.fullmatch(vif)
    return f"xen-{match.group(1)}-{match.group(2)}" if match and not match.group(3) else vif


def keys_for(key: str) -> set[str]:
    """The record keys one vif may have been saved under: its key, and for a vif of Xen's the
    other form (an offline by the name vifD.N; a record that 0.3's command line keyed vifD.N)."""
    match = RECORD_KEY_XEN.fullmatch(key)
    return {key, vif_key(key), *([f"vif{match.group(1)}.{match.group(2)}"] if match else [])}


@functools.lru_cache(maxsize=4096)  # asked for every vif online, per request (the service)
def domain_of(key: str, vif: str) -> int | None:
    """The guest domain a vif belongs to (from libxl's backend path, else its vifD.N name): one
    domain's PV vif and emulated NIC may carry the same address, two domains may not."""
    match = RECORD_KEY_XEN.fullmatch(key) or _VIF_NAME.fullmatch(vif)
    return int(match.group(1)) if match else None


#: Narrowest prefix length given to a guest without [dom0] allow_prefixes: wider ones are deliberate.
WIDEST = {4: 24, 6: 48}
_LIMITED_BROADCAST = ipaddress.ip_network("255.255.255.255/32")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_MAPPED4 = ipaddress.ip_network("::ffff:0:0/96")


def check_guest_networks(vif: str, guest: tuple[IPNetwork, ...], uplink_addresses: list[IPInterface],
                         gateways: list[Any], others: dict[str, list[IPNetwork]],
                         allow: tuple[IPNetwork, ...] = (), dom0_addresses: Sequence[IPInterface] = ()) -> None:
    """Pure: refuse what would let a guest capture traffic that is not its own: dom0's own
    addresses (on any device) or gateway, a slice or the whole of an uplink subnet (a single
    address in it is what proxy ARP/NDP is for), broadcast, reserved and IPv4-mapped ranges,
    prefixes wider than /24 or /48 (unless listed in [dom0] allow_prefixes), an address already
    routed to another vif."""
    for network in guest:
        allowed = any(network.version == a.version and network.subnet_of(a) for a in allow)  # type: ignore[arg-type]

        def refuse(why: str, network: IPNetwork = network) -> None:
            raise UsageError(f"{vif}: guest address {network} {why}")

        if network.version == 6 and network.overlaps(_MAPPED4):
            refuse("is an IPv4-mapped IPv6 range (give the IPv4 address)")
        if network.is_reserved or (network.version == 4 and (network.overlaps(_LIMITED_BROADCAST)
                                                             or network.overlaps(_THIS_NETWORK))):
            refuse("is a broadcast or reserved range")
        for own in (a for a in [*uplink_addresses, *dom0_addresses]
                    if a.version == network.version and not a.ip.is_link_local and not a.ip.is_loopback):
            if own.ip in network:
                refuse(f"holds dom0's own address {own.ip}")
        for own in (a for a in uplink_addresses if a.version == network.version and not a.ip.is_link_local):
            subnet = own.network
            if allowed or subnet.prefixlen == subnet.max_prefixlen or not network.overlaps(subnet):
                continue
            if network.prefixlen <= subnet.prefixlen:
                refuse(f"covers dom0's whole uplink subnet {subnet} (list it in [dom0] allow_prefixes if deliberate)")
            if network.prefixlen < network.max_prefixlen:
                refuse(f"is a slice of dom0's uplink subnet {subnet}: proxy ARP/NDP would claim its neighbours' "
                       "addresses (give single addresses, or list it in [dom0] allow_prefixes if deliberate)")
            if network.version == 4 and subnet.prefixlen < 31 and (
                    subnet.broadcast_address in network or subnet.network_address in network):
                refuse(f"holds the network or broadcast address of {subnet}")
        for gateway in gateways:
            if gateway.version == network.version and gateway in network:
                refuse(f"holds dom0's gateway {gateway}")
        if not allowed and network.prefixlen < WIDEST[network.version]:
            refuse(f"is wider than /{WIDEST[network.version]} (list it in [dom0] allow_prefixes if deliberate)")
        for other, networks in sorted(others.items()):
            clash = next((n for n in networks if n.version == network.version and n.overlaps(network)), None)
            if clash is not None:
                refuse(f"overlaps {clash}, which is routed to {other} already")


@dataclass(frozen=True)
class VifRequest:
    """Validated input for one vif: from xenstore (hotplug) or the command line."""

    key: str
    vif: str
    guest: tuple[IPNetwork, ...]
    uplink: str | None = None
    rename: str | None = None
    xenbus_path: str | None = None
