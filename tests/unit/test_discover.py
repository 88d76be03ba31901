import ipaddress

import netifaces

from domunet.guest.discover import parse_netifaces, xen_devid


def test_netifaces_entries_become_interfaces_with_prefixes():
    entries = {
        netifaces.AF_INET: [{"addr": "192.168.0.201", "netmask": "255.255.255.0", "broadcast": "192.168.0.255"}],
        netifaces.AF_INET6: [
            {"addr": "2001:db8:4309:2388::50", "netmask": "ffff:ffff:ffff:ffff::/64"},
            {"addr": "fe80::1%eth1", "netmask": "ffff:ffff:ffff:ffff::/64"},
            {"addr": "2001:db8::7", "netmask": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"},
        ],
    }
    assert parse_netifaces(entries) == tuple(ipaddress.ip_interface(a) for a in (
        "192.168.0.201/24", "2001:db8:4309:2388::50/64", "fe80::1/64", "2001:db8::7/128"))


def test_entries_without_netmask_are_skipped():
    assert parse_netifaces({netifaces.AF_INET: [{"addr": "10.0.0.1"}]}) == ()


def test_xen_devid_from_netfront_sysfs_node(tmp_path):
    (tmp_path / "eth3" / "device").mkdir(parents=True)
    (tmp_path / "eth3" / "device" / "nodename").write_text("device/vif/3\n")
    (tmp_path / "eth9" / "device").mkdir(parents=True)
    (tmp_path / "eth9" / "device" / "nodename").write_text("device/vbd/51712\n")
    assert xen_devid("eth3", tmp_path) == 3
    assert xen_devid("eth9", tmp_path) is None
    assert xen_devid("veth0", tmp_path) is None
