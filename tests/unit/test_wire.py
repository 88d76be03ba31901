"""What vif-domunet's light client sends and the service reads (pure), and the anti-spoofing
table's changes element by element."""

import ipaddress

import pytest

from domunet.core.errors import UsageError
from domunet.dom0 import guard, light, wire


@pytest.mark.parametrize("vif", ["vif1.0", 'we"ird\\name', "tab\there\x01", "ünï"])
def test_the_light_clients_message_is_the_json_the_service_reads(vif):
    data = light.message("online", ["type_if=vif", "script=vif-domunet", "novalue"],
                         {"vif": vif, "XENBUS_PATH": "backend/vif/1/0", "PATH": "/bin"})
    message = wire.decode(data)
    assert message == {"op": "hotplug", "command": "online",
                       "settings": {"type_if": "vif", "script": "vif-domunet"},
                       "env": {"vif": vif, "XENBUS_PATH": "backend/vif/1/0", "netdev": ""}}
    assert wire.parse_hotplug(message).env["vif"] == vif


def test_the_light_client_knows_the_services_ok_answer():
    assert wire.encode({"ok": True}) == light.OK


@pytest.mark.parametrize("message, says", [
    ({"op": "hotplug", "command": "reboot", "settings": {}, "env": {}}, "unknown command"),
    ({"op": "hotplug", "command": "online", "settings": [], "env": {}}, "settings"),
    ({"op": "hotplug", "command": "online", "settings": {}, "env": {"PATH": "/tmp"}}, "env"),
    ({"op": "hotplug", "command": "online", "settings": {}, "env": {"vif": 5}}, "env"),
])
def test_a_hotplug_message_that_is_not_valid_is_refused(message, says):
    with pytest.raises(UsageError, match=says):
        wire.parse_hotplug(message)


def nets(*texts):
    return [ipaddress.ip_network(t) for t in texts]


def test_the_table_changes_by_the_elements_that_changed_only():
    loaded = {"vif1.0": nets("192.0.2.5/32"), "vif2.0": nets("192.0.2.6/32", "2001:db8::6/128")}
    wanted = {"vif1.0": nets("192.0.2.5/32"), "vif3.0": nets("192.0.2.7/32")}
    text = guard.changes(loaded, wanted)
    assert "vif1.0" not in text
    assert 'delete element inet domunet guarded { "vif2.0" }' in text
    assert 'delete element inet domunet allowed6 { "vif2.0" . 2001:db8::6/128 }' in text
    assert 'add element inet domunet guarded { "vif3.0" }' in text
    assert 'add element inet domunet allowed4 { "vif3.0" . 192.0.2.7/32 }' in text


def test_no_change_is_no_transaction_and_a_table_coming_or_going_is_a_whole_load():
    table = {"vif1.0": nets("192.0.2.5/32")}
    assert guard.changes(table, dict(table)) == ""
    assert guard.changes({}, {}) == ""
    assert guard.changes({}, table) is None
    assert guard.changes(table, {}) is None


def test_a_vif_whose_addresses_changed_swaps_exactly_those():
    text = guard.changes({"vif1.0": nets("192.0.2.5/32", "192.0.2.9/32")},
                         {"vif1.0": nets("192.0.2.5/32", "192.0.2.8/32")})
    assert text.splitlines() == ['delete element inet domunet allowed4 { "vif1.0" . 192.0.2.9/32 }',
                                 'add element inet domunet allowed4 { "vif1.0" . 192.0.2.8/32 }']
