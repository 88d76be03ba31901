import ipaddress
import json

import pytest

from domunet.core.errors import UsageError
from domunet.dom0 import guard
from domunet.dom0.hotplug import hotplug_key, request_from_hotplug
from domunet.dom0.records import plan_online
from domunet.dom0.request import VifRequest, parse_addresses

UPLINK = [ipaddress.ip_interface("192.168.0.100/24"), ipaddress.ip_interface("2001:db8:4309:2388::2/64"),
          ipaddress.ip_interface("fe80::1/64")]


def net(text):
    return ipaddress.ip_network(text)


def test_addresses_and_prefixes_are_parsed_and_deduplicated():
    assert parse_addresses(" 192.0.2.5  2001:db8::5 192.0.2.5 10.1.0.0/16 ", "ip") == (
        net("192.0.2.5/32"), net("2001:db8::5/128"), net("10.1.0.0/16"))


@pytest.mark.parametrize("value, named", [
    *((value, repr(value)) for value in ("192.0.2.5;reboot", "$(id)", "192.0.2.5/33", "10.1.0.1/16",
                                         "2001:db8::zz", "224.0.0.5", "127.0.0.1", "fe80::1", "0.0.0.0/0", "::")),
    ("", "no guest address given"), ("   ", "no guest address given"),
    ("1.2.3.4\n5.6.7.8\x00", repr("5.6.7.8\x00")), ("x" * 5000, "value is too long"),
])
def test_hostile_or_malformed_addresses_are_rejected_naming_the_value(value, named):
    with pytest.raises(UsageError) as caught:
        parse_addresses(value, "xenstore backend/vif/1/0/ip")
    assert str(caught.value).startswith("xenstore backend/vif/1/0/ip: ")
    assert named in str(caught.value)


def test_online_plan_routes_every_address_and_proxies_only_single_ipv6_addresses():
    request = VifRequest("vif1.0", "vif1.0", (net("192.0.2.5/32"), net("2001:db8:4309:2388::50/128"),
                                              net("2001:db8:4309:2300::/64")))
    record = plan_online(request, "eth0", UPLINK, ipv6=True).intent()
    assert record.dom0_addresses == ["192.168.0.100/32", "2001:db8:4309:2388::2/128"]
    assert [r.as_json() for r in record.routes] == [
        ["192.0.2.5/32", "192.168.0.100"], ["2001:db8:4309:2388::50/128", "2001:db8:4309:2388::2"],
        ["2001:db8:4309:2300::/64", "2001:db8:4309:2388::2"]]
    assert record.proxies == ["2001:db8:4309:2388::50"]


def test_ipv6_disabled_in_dom0_skips_ipv6_with_a_warning(caplog):
    request = VifRequest("vif1.0", "vif1.0", (net("192.0.2.5/32"), net("2001:db8::5/128")))
    record = plan_online(request, "eth0", UPLINK, ipv6=False).intent()
    assert record.guest == ["192.0.2.5/32"] and record.proxies == []
    assert "IPv6 is disabled" in caplog.text


def test_uplink_without_an_address_of_the_family_is_an_error():
    request = VifRequest("vif1.0", "vif1.0", (net("2001:db8::5/128"),))
    with pytest.raises(UsageError, match="uplink eth0 has no IPv6 address"):
        plan_online(request, "eth0", UPLINK[:1], ipv6=True)


def test_hotplug_request_reads_xenstore_and_validates_it():
    store = {"backend/vif/7/1/ip": "192.0.2.5", "backend/vif/7/1/vifname": "web-eth1",
             "backend/vif/7/1/gatewaydev": "bond0"}
    env = {"vif": "vif7.1", "XENBUS_PATH": "backend/vif/7/1", "netdev": ""}
    request = request_from_hotplug(env, store.get)
    assert (request.key, request.vif, request.rename, request.uplink) == ("xen-7-1", "vif7.1", "web-eth1", "bond0")
    assert request_from_hotplug({**env, "netdev": "eth1"}, store.get).uplink == "eth1"
    with pytest.raises(UsageError, match="XENBUS_PATH"):
        request_from_hotplug({**env, "XENBUS_PATH": "backend/vif/7/1/../../x"}, store.get)
    with pytest.raises(UsageError, match="vifname"):
        request_from_hotplug(env, {**store, "backend/vif/7/1/vifname": "a b"}.get)


def test_records_are_keyed_by_the_backend_path_else_the_vif():
    assert hotplug_key({"XENBUS_PATH": "backend/vif/3/0", "vif": "vif3.0"}) == "xen-3-0"
    assert hotplug_key({"vif": "vif3.0"}) == "vif3.0"


def test_nft_ruleset_lists_each_vif_and_its_sources_collapsed():
    text = guard.ruleset({"vif1.0": [net("10.0.0.0/24"), net("10.0.0.5/32")],
                        "vif1.3": [net("2001:db8:4309:2388::50/128")]})
    assert 'add element inet domunet guarded { "vif1.0", "vif1.3" }' in text
    assert 'add element inet domunet allowed4 { "vif1.0" . 10.0.0.0/24 }' in text
    assert 'add element inet domunet allowed6 { "vif1.3" . 2001:db8:4309:2388::50/128 }' in text
    assert text.index("flush chain") < text.index("counter drop")


def test_nft_ruleset_without_vifs_removes_the_table():
    assert guard.ruleset({}) == "table inet domunet {}\ndelete table inet domunet\n"


GATEWAYS = [ipaddress.ip_address("192.168.0.1"), ipaddress.ip_address("2001:db8:4309:2389::1")]


@pytest.mark.parametrize("given, why", [
    ("192.168.0.100", "dom0's own address"),
    ("192.168.0.1", "dom0's gateway"),
    ("192.168.0.0/24", "dom0's own address"),
    ("2001:db8:4309:2388::/64", "dom0's own address"),
    ("0.0.0.0/1", "reserved"),
    ("128.0.0.0/1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.168.0.255", "broadcast address"),
    ("10.20.0.0/23", "wider than /24"),
    ("2001:db8:7700::/40", "wider than /48"),
    ("192.168.0.201", "routed to vif2.0 already"),
])
def test_a_guest_cannot_be_given_what_is_not_its_own(given, why):
    from domunet.dom0.request import check_guest_networks

    others = {"vif2.0": [net("192.168.0.201/32")]}
    with pytest.raises(UsageError, match=why.replace("/", ".")):
        check_guest_networks("vif1.0", (net(given),), UPLINK, GATEWAYS, others)


def test_deliberate_prefixes_and_ordinary_addresses_pass():
    from domunet.dom0.request import check_guest_networks

    for given in ("192.168.0.200", "2001:db8:4309:2388::50", "203.0.113.8/29", "2001:db8:4309:2300::/64"):
        check_guest_networks("vif1.0", (net(given),), UPLINK, GATEWAYS, {})
    check_guest_networks("vif1.0", (net("10.20.0.0/16"),), UPLINK, GATEWAYS, {}, allow=(net("10.0.0.0/8"),))


def test_one_domains_pv_vif_and_emulated_nic_are_one_domain():
    from domunet.dom0.request import domain_of

    assert domain_of("xen-7-0", "vif7.0") == domain_of("vif7.0-emu", "vif7.0-emu") == 7
    assert domain_of("web0", "web0") is None


def test_a_record_reads_back_as_it_was_written(tmp_path):
    """Records keep their on-disk form ([destination, source(, metric)] routes) across the typed
    HostRoute, so records written by an earlier domunet still go offline."""
    from domunet.core.state import Layout
    from domunet.dom0.records import HostRoute, read_records, save_record

    request = VifRequest("xen-1-0", "vif1.0", (net("192.0.2.5/32"),))
    record = plan_online(request, "eth0", UPLINK, ipv6=True).intent()
    record.routes = [HostRoute("192.0.2.5/32", "192.168.0.100", 3)]  # as online places it
    layout = Layout(tmp_path)
    layout.dom0.mkdir()
    save_record(layout, record)
    assert json.loads(layout.vif_record("xen-1-0").read_text())["routes"] == [["192.0.2.5/32", "192.168.0.100", "3"]]
    records, unusable = read_records(layout)
    assert records == [record] and unusable == []
    assert records[0].routes == [HostRoute("192.0.2.5/32", "192.168.0.100", 3)]


def test_a_long_lived_reader_parses_only_the_records_that_changed(tmp_path, monkeypatch):
    """The service's cache (issue 23): an unchanged record is not read again, a replaced one is,
    a removed one is forgotten."""
    from domunet.core import state
    from domunet.core.state import Layout
    from domunet.dom0.records import read_records, save_record

    layout = Layout(tmp_path)
    layout.dom0.mkdir()
    for devid in range(3):
        request = VifRequest(f"xen-1-{devid}", f"vif1.{devid}", (net(f"192.0.2.{5 + devid}/32"),))
        save_record(layout, plan_online(request, "eth0", UPLINK, ipv6=True).intent())
    reads = []
    real = state.read_json
    monkeypatch.setattr(state, "read_json", lambda path: reads.append(path.name) or real(path))
    cache = {}
    assert len(read_records(layout, cache)[0]) == 3 and len(reads) == 3
    assert len(read_records(layout, cache)[0]) == 3 and len(reads) == 3  # nothing read again
    changed = plan_online(VifRequest("xen-1-1", "vif1.1", (net("192.0.2.99/32"),)), "eth0", UPLINK, ipv6=True).intent()
    save_record(layout, changed)
    layout.vif_record("xen-1-2").unlink()
    found, _ = read_records(layout, cache)
    assert reads[3:] == ["vif-xen-1-1.json"]
    assert {r.key: r.guest for r in found} == {"xen-1-0": ["192.0.2.5/32"], "xen-1-1": ["192.0.2.99/32"]}
    assert len(cache) == 2
