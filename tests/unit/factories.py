"""Facts as the lab's guest would report them, for planner and diff tests."""

from __future__ import annotations

import ipaddress

from domunet.core.model import Facts, Interface, Route

LAB_MACS = ("02:00:00:00:00:10", "02:00:00:00:00:11", "02:00:00:00:00:12", "02:00:00:00:00:13")


def nic(name: str, index: int, *addresses: str, mac: str | None = None, up: bool = True,
        xen_devid: int | None = None) -> Interface:
    return Interface(
        name=name, index=index, mac=mac or f"02:00:00:00:01:{index:02x}", up=up,
        addresses=tuple(ipaddress.ip_interface(a) for a in addresses), xen_devid=xen_devid,
    )


def lab_guest(**overrides: object) -> Facts:
    interfaces = (
        Interface("lo", 1, "00:00:00:00:00:00", True,
                  (ipaddress.ip_interface("127.0.0.1/8"), ipaddress.ip_interface("::1/128")), loopback=True),
        nic("eth0", 2, "192.168.0.200/24", "fe80::10/64", mac=LAB_MACS[0]),
        nic("eth1", 3, "192.168.0.201/24", "fe80::11/64", mac=LAB_MACS[1]),
        nic("eth2", 4, "192.168.0.202/24", "fe80::12/64", mac=LAB_MACS[2]),
        nic("eth3", 5, "2001:db8:4309:2388::50/64", "fe80::13/64", mac=LAB_MACS[3]),
    )
    defaults = (Route(254, ipaddress.ip_network("0.0.0.0/0"), "eth0",
                      gateway=ipaddress.ip_address("192.168.0.1"), proto=3),)
    values = {"interfaces": interfaces, "main_defaults": defaults, **overrides}
    return Facts(**values)  # type: ignore[arg-type]
