import ipaddress
import logging

import pytest

from domunet.core import config
from domunet.core.model import PublishedVif
from domunet.guest.plan import plan
from domunet.guest.published import Published, read_published
from tests.unit.factories import lab_guest, nic

STORE = {
    "device/vif/0/backend": "/local/domain/0/backend/vif/5/0",
    "device/vif/0/mac": "02:00:00:00:01:03",
    "/local/domain/0/backend/vif/5/0/ip": "2001:db8:1::50",
    "/local/domain/0/backend/vif/5/0/domunet-gateway6": "2001:db8:1::2",
    "/local/domain/0/backend/vif/5/0/domunet-gateway": "192.0.2.1",
    "/local/domain/0/backend/vif/5/0/domunet-routed": "1",
}


def listing(path):
    return ["0"] if path == "device/vif" else []


def test_vif_found_by_mac_when_sysfs_has_no_node():
    facts = read_published([nic("eth3", 3, "2001:db8:1::50/64")], STORE.get, listing).vifs
    assert facts == {"eth3": PublishedVif("/local/domain/0/backend/vif/5/0", ipaddress.ip_address("192.0.2.1"),
                                      ipaddress.ip_address("2001:db8:1::2"), True,
                                      (ipaddress.ip_network("2001:db8:1::50/128"),))}


def test_vif_found_by_its_xen_device_id():
    store = {**STORE, "device/vif/0/mac": "something else"}
    facts = read_published([nic("eth0", 3, "2001:db8:1::50/64", xen_devid=0)], store.get, listing).vifs
    assert facts["eth0"].gateway6 == ipaddress.ip_address("2001:db8:1::2")


def test_malformed_values_are_named_and_ignored(caplog):
    store = {**STORE, "/local/domain/0/backend/vif/5/0/domunet-gateway6": "zz",
             "/local/domain/0/backend/vif/5/0/ip": "1.2.3.4; reboot"}
    with caplog.at_level(logging.WARNING):
        facts = read_published([nic("eth3", 3, "2001:db8:1::50/64")], store.get, listing).vifs
    assert facts["eth3"].gateway6 is None and facts["eth3"].addresses == ()
    assert "domunet-gateway6" in caplog.text and "/ip" in caplog.text


def test_no_xenstore_means_no_facts(monkeypatch):
    """Without xenstore's tools (not a Xen guest) nothing is read: a complete, empty answer."""
    from domunet.core import xenstore

    monkeypatch.setattr(xenstore, "available", lambda: False)
    monkeypatch.setattr(xenstore, "read", lambda *args, **kwargs: pytest.fail("xenstore read without its tools"))
    assert read_published([nic("eth3", 3, "2001:db8:1::50/64")]) == Published({}, complete=True)


def test_a_vif_whose_backend_is_not_published_has_no_facts():
    found = read_published([nic("eth3", 3, "2001:db8:1::50/64")], lambda path: None, lambda path: [])
    assert found == Published({}, complete=True)


def test_xenstore_that_runs_out_of_time_gives_an_incomplete_answer(monkeypatch):
    from domunet.core import xenstore

    monkeypatch.setattr(xenstore, "available", lambda: True)
    monkeypatch.setattr(xenstore, "directory", lambda path, timeout=None: ["0"] if path == "device/vif" else [])
    monkeypatch.setattr(xenstore, "read", lambda path, timeout=None: STORE.get(path))
    assert read_published([nic("eth3", 3, "2001:db8:1::50/64")]).complete
    assert not read_published([nic("eth3", 3, "2001:db8:1::50/64")], deadline=0).complete


def test_gateway_precedence_config_then_kernel_then_xenstore():
    published = PublishedVif("/b", ipaddress.ip_address("192.168.0.100"), ipaddress.ip_address("2001:db8:4309:2388::2"),
                         True)
    facts = lab_guest(published={"eth1": published, "eth3": published})
    managed = {m.name: m for m in plan(config.parse(b""), facts).managed}
    assert (managed["eth1"].gateway, managed["eth1"].gateway_source) == (ipaddress.ip_address("192.168.0.1"),
                                                                         "kernel")
    assert (str(managed["eth3"].gateway6), managed["eth3"].gateway6_source) == ("2001:db8:4309:2388::2", "xenstore")
    settings = config.parse(b"[interfaces]\n[[eth3]]\ngateway6 = 2001:db8:4309:2388::7\n")
    managed = {m.name: m for m in plan(settings, facts).managed}
    assert (str(managed["eth3"].gateway6), managed["eth3"].gateway6_source) == ("2001:db8:4309:2388::7", "config")
    facts = lab_guest(published={"eth1": published}, main_defaults=())
    managed = {m.name: m for m in plan(config.parse(b""), facts).managed}
    assert managed["eth1"].gateway_source == "xenstore"
