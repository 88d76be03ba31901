"""The real-Xen lab's choice of releases (tests/xen/xenlab.py): what `scripts/xen-lab up --dom0
--guests` and DOMUNET_XEN_DOM0/DOMUNET_XEN_GUESTS ask for, checked before anything is built."""

import pytest

from tests.xen import xenlab


def test_the_default_lab_is_a_trixie_dom0_with_a_trixie_and_a_bookworm_guest():
    lab = xenlab.Lab.parse(None, None)
    assert (lab.dom0, lab.guests) == ("trixie", {"guest": "trixie", "guest2": "bookworm"})
    assert lab.releases == ["bookworm", "trixie"]
    assert lab.describe().startswith("dom0: Debian 13 (trixie), Xen 4.20; guest: Debian 13")


def test_one_guest_release_is_both_guests():
    lab = xenlab.Lab.parse("bookworm", "bookworm")
    assert lab.guests == {"guest": "bookworm", "guest2": "bookworm"}
    assert "Xen 4.17" in lab.describe()


def test_the_environment_picks_the_lab(monkeypatch):
    monkeypatch.setenv("DOMUNET_XEN_DOM0", "bookworm")
    monkeypatch.setenv("DOMUNET_XEN_GUESTS", "bookworm,trixie")
    lab = xenlab.Lab.from_environment()
    assert (lab.dom0, lab.guests) == ("bookworm", {"guest": "bookworm", "guest2": "trixie"})


@pytest.mark.parametrize(("dom0", "guests", "said"), [
    ("sid", None, "no such release 'sid'"),
    (None, "trixie,buster", "no such release 'buster'"),
    (None, "trixie,trixie,bookworm", "one release, or one for each of the 2 guests"),
])
def test_a_release_the_lab_cannot_build_is_refused_by_name(dom0, guests, said):
    with pytest.raises(xenlab.XenLabError, match=said):
        xenlab.Lab.parse(dom0, guests)


def test_a_release_is_built_with_its_updates_and_security_archives():
    assert xenlab.sources("trixie", "http://deb.debian.org/debian") == [
        "deb http://deb.debian.org/debian trixie main",
        "deb http://deb.debian.org/debian trixie-updates main",
        "deb http://deb.debian.org/debian-security trixie-security main"]


def test_dom0_gets_its_releases_xen_and_the_guest_no_xen():
    assert "xen-hypervisor-4.20-amd64 xen-utils-4.20" in xenlab.packages("dom0", "trixie")
    assert "xen-hypervisor-4.17-amd64 xen-utils-4.17" in xenlab.packages("dom0", "bookworm")
    assert "xen-hypervisor" not in xenlab.packages("guest", "trixie")


def test_each_guest_may_name_the_stack_that_configures_its_nics():
    lab = xenlab.Lab.parse(None, "trixie:netplan,bookworm:networkmanager")
    assert lab.guests == {"guest": "trixie", "guest2": "bookworm"}
    assert lab.stacks == {"guest": "netplan", "guest2": "networkmanager"}
    assert lab.templates == [("bookworm", "networkmanager"), ("trixie", "netplan")]
    assert "guest: Debian 13 (trixie) with netplan" in lab.describe()
    assert "network-manager" in xenlab.packages("guest", "bookworm", "networkmanager")
    with pytest.raises(xenlab.XenLabError, match="no such network stack 'wicked'"):
        xenlab.Lab.parse(None, "trixie:wicked")


def test_todays_labs_keep_their_description_and_cache_key():
    lab = xenlab.Lab.parse(None, None)
    assert lab.stacks == {"guest": "ifupdown", "guest2": "ifupdown"}
    assert lab.as_dict() == {"dom0": "trixie", "guests": {"guest": "trixie", "guest2": "bookworm"}}
    assert xenlab.packages("guest", "trixie") == f"{xenlab.PACKAGES_BOTH} isc-dhcp-client"


INTERFACES = (xenlab.FILES / "guest" / "etc/network/interfaces").read_text()


def test_netplan_and_networkmanager_get_the_guests_interfaces_file_rendered():
    nics = xenlab.parse_interfaces(INTERFACES)
    assert nics["enX0"] == {"family": "inet", "address": "192.168.0.200/24", "gateway": "192.168.0.1"}
    assert nics["enX3"] == {"family": "inet6", "address": "2001:db8:4309:2388::50/64"}
    assert nics["enX5"] == {"family": "inet", "dhcp": "yes"}
    assert set(nics) == {"enX0", "enX1", "enX2", "enX3", "enX4", "enX5"}
    assert xenlab.stack_files("ifupdown", INTERFACES) == {"/etc/network/interfaces": INTERFACES}
    netplan = xenlab.stack_files("netplan", INTERFACES)
    assert netplan["/etc/network/interfaces"] == "auto lo\niface lo inet loopback\n"
    assert 'routes: [{to: default, via: "192.168.0.1"}]' in netplan["/etc/netplan/50-xenlab.yaml"]
    assert "    enX5:\n      dhcp4: true\n" in netplan["/etc/netplan/50-xenlab.yaml"]
    keyfiles = xenlab.stack_files("networkmanager", INTERFACES)
    assert "address1=2001:db8:4309:2388::50/64" in keyfiles["/etc/NetworkManager/system-connections/enX3.nmconnection"]
    assert "[ipv4]\nmethod=disabled" in keyfiles["/etc/NetworkManager/system-connections/enX3.nmconnection"]
    assert "[ipv4]\nmethod=auto" in keyfiles["/etc/NetworkManager/system-connections/enX5.nmconnection"]
