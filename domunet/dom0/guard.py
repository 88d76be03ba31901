"""dom0's anti-spoofing: one nftables table of domunet's own, replaced atomically.

From a guarded vif, only its listed source addresses (and IPv6 link-local and `::`, which
neighbour discovery and DAD need, and a DHCP client's broadcast from 0.0.0.0 before it has a
lease, which a DHCP server in dom0 needs) enter; everything else is dropped before routing, and
its vif and source kept an hour in a dynamic set (spoofed4, spoofed6) for `dom0 doctor`. The sets
are rebuilt from domunet's records in one transaction, so the result never depends on the
order in which vifs came and went.

The table is loaded through domunet.core.nftables, the one driver of nftables.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Mapping, Sequence

from domunet.core.errors import KernelError
from domunet.core.model import IPNetwork
from domunet.core.nftables import run

log = logging.getLogger(__name__)

TABLE = "domunet"

_SKELETON = f"""\
table inet {TABLE} {{
    set guarded {{ type ifname; }}
    set allowed4 {{ type ifname . ipv4_addr; flags interval; }}
    set allowed6 {{ type ifname . ipv6_addr; flags interval; }}
    set spoofed4 {{ type ifname . ipv4_addr; flags dynamic,timeout; timeout 1h; size 4096; }}
    set spoofed6 {{ type ifname . ipv6_addr; flags dynamic,timeout; timeout 1h; size 4096; }}
    chain antispoof {{ type filter hook prerouting priority raw; policy accept; }}
    chain guestinput {{ type filter hook input priority filter; policy accept; }}
}}
flush set inet {TABLE} guarded
flush set inet {TABLE} allowed4
flush set inet {TABLE} allowed6
flush chain inet {TABLE} antispoof
flush chain inet {TABLE} guestinput
table inet {TABLE} {{
    chain antispoof {{
        iifname != @guarded accept
        icmp type redirect drop
        icmpv6 type {{ nd-router-advert, nd-redirect }} drop
        meta nfproto ipv4 iifname . ip saddr @allowed4 accept
        ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept
        ip6 saddr fe80::/10 accept
        ip6 saddr :: accept
        meta nfproto ipv6 iifname . ip6 saddr @allowed6 accept
        meta nfproto ipv4 update @spoofed4 {{ iifname . ip saddr }}
        meta nfproto ipv6 update @spoofed6 {{ iifname . ip6 saddr }}
        counter drop
    }}
}}
"""


#: What a guest may send to dom0 itself under the restricted input policy: replies, ICMP and
#: neighbour discovery, DHCP (v4 and v6). Everything else (ssh, dom0's other services) is dropped.
#: Protocols by number (1 ICMP, 58 ICMPv6): nftables 1.0.6 resolves names through /etc/protocols,
#: which a minimal Debian (no netbase) lacks; ports and ICMP types need no file.
_INPUT = f"""\
table inet {TABLE} {{
    chain guestinput {{
        iifname != @guarded accept
        ct state established,related accept
        meta l4proto {{ 1, 58 }} accept
        udp dport {{ 67, 547 }} accept
        counter drop
    }}
}}
"""


def ruleset(guarded: Mapping[str, Sequence[IPNetwork]], restrict_input: bool = True) -> str:
    """The whole table for these vifs and their allowed sources (pure; unit tested)."""
    text = _SKELETON + (_INPUT if restrict_input else "")
    if not guarded:
        return f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
    names = ", ".join(f'"{vif}"' for vif in sorted(guarded))
    text += f"add element inet {TABLE} guarded {{ {names} }}\n"
    for version in (4, 6):
        elements = []
        for vif in sorted(guarded):
            networks = [n for n in guarded[vif] if n.version == version]
            elements += [f'"{vif}" . {n}' for n in ipaddress.collapse_addresses(networks)]  # type: ignore[arg-type]
        if elements:
            text += f"add element inet {TABLE} allowed{version} {{ {', '.join(elements)} }}\n"
    return text


def _elements(vif: str, networks: Sequence[IPNetwork]) -> dict[int, list[str]]:
    """A vif's elements of allowed4 and allowed6, as ruleset() writes them."""
    return {version: [f'"{vif}" . {n}' for n in ipaddress.collapse_addresses(  # type: ignore[type-var]
        [n for n in networks if n.version == version])] for version in (4, 6)}


def changes(loaded: Mapping[str, Sequence[IPNetwork]], wanted: Mapping[str, Sequence[IPNetwork]]) -> str | None:
    """The transaction that turns the table as loaded into the one wanted, element by element
    (pure): its size is that of the change, not of the table. "" when nothing changes; None when
    the table itself comes or goes (ruleset() does that)."""
    if not loaded or not wanted:
        return "" if not loaded and not wanted else None
    lines = []
    for vif in sorted(set(loaded) | set(wanted)):
        if vif in loaded and vif in wanted and list(loaded[vif]) == list(wanted[vif]):
            continue
        before = _elements(vif, loaded.get(vif, [])) if vif in loaded else {4: [], 6: []}
        after = _elements(vif, wanted.get(vif, [])) if vif in wanted else {4: [], 6: []}
        for version in (4, 6):
            gone = [e for e in before[version] if e not in after[version]]
            new = [e for e in after[version] if e not in before[version]]
            if gone:
                lines.append(f"delete element inet {TABLE} allowed{version} {{ {', '.join(gone)} }}")
            if new:
                lines.append(f"add element inet {TABLE} allowed{version} {{ {', '.join(new)} }}")
        if vif in loaded and vif not in wanted:
            lines.append(f'delete element inet {TABLE} guarded {{ "{vif}" }}')
        elif vif in wanted and vif not in loaded:
            lines.insert(0, f'add element inet {TABLE} guarded {{ "{vif}" }}')
    return "".join(line + "\n" for line in lines)


_ELEMENT = re.compile(r'"([^"]{1,15})" \. ([0-9A-Fa-f:.]+(?:/\d{1,3})?)')
_NAME = re.compile(r'"([^"]{1,15})"')


def guarded_now() -> dict[str, list[IPNetwork]]:
    """What the kernel's table guards now: vif -> allowed sources (a vif with none is still
    guarded). Read only when a record is unusable, to keep its vif guarded as it is."""
    code, output, _ = run(f"list table inet {TABLE}\n", "dom0's anti-spoofing")
    if code != 0:
        return {}
    guarded: dict[str, list[IPNetwork]] = {}
    for block in re.split(r"\bset ", output)[1:]:
        name = block.split(None, 1)[0]
        elements = block.split("elements = {", 1)[1].split("}", 1)[0] if "elements = {" in block else ""
        if name == "guarded":
            for vif in _NAME.findall(elements):
                guarded.setdefault(vif, [])
        elif name in ("allowed4", "allowed6"):
            for vif, text in _ELEMENT.findall(elements):
                try:
                    guarded.setdefault(vif, []).append(ipaddress.ip_network(text))
                except ValueError:
                    continue
    return guarded


def spoofed_now() -> list[tuple[str, str]]:
    """(vif, source) of what the guard dropped in the last hour, as its dynamic sets hold them:
    a guest that sends from addresses it was not given (`domunet dom0 doctor` names them)."""
    found = []
    for name in ("spoofed4", "spoofed6"):
        code, output, _ = run(f"list set inet {TABLE} {name}\n", "dom0's anti-spoofing")
        if code == 0 and "elements = {" in output:
            elements = output.split("elements = {", 1)[1].split("}", 1)[0]
            found += [(vif, text) for vif, text in _ELEMENT.findall(elements)]
    return found


def load(text: str) -> None:
    """dom0's table in one atomic transaction: all of it applies, or none of it."""
    code, _, error = run(text, "dom0's anti-spoofing")
    if code != 0:
        raise KernelError(f"nft refused the anti-spoofing rules: {error.strip()}")
