"""What vif-domunet's light client sends and the service reads (pure), and the anti-spoofing
table's changes element by element."""

import ipaddress

import pytest

from domunet.core.errors import UsageError
from domunet.dom0 import client, guard, wire


@pytest.mark.parametrize("vif", ["vif1.0", 'we"ird\\name', "tab\there\x01", "ünï"])
def test_the_light_clients_message_is_the_json_the_service_reads(vif):
    data = client.message("online", ["type_if=vif", "script=vif-domunet", "novalue"],
                         {"vif": vif, "XENBUS_PATH": "backend/vif/1/0", "PATH": "/bin"})
    message = wire.decode(data)
    assert message == {"op": "hotplug", "command": "online",
                       "settings": {"type_if": "vif", "script": "vif-domunet"},
                       "env": {"vif": vif, "XENBUS_PATH": "backend/vif/1/0", "netdev": ""},
                       "ack": True, "start_within": client.START_WITHIN}
    assert wire.parse_hotplug(message).env["vif"] == vif


def test_the_light_client_knows_the_services_ok_and_queued_answers():
    assert wire.encode({"ok": True}) == client.OK
    assert wire.encode({"queued": True}) == client.QUEUED


def test_a_request_nested_too_deeply_is_a_usage_error_not_a_crash():
    """Round 3's C4: 30,000 `[` (under the size limit) raised RecursionError past the decoder."""
    with pytest.raises(UsageError, match="nested too deeply"):
        wire.decode(b"[" * 30000 + b"1" + b"]" * 30000 + b"\n")


@pytest.mark.parametrize("key", ["xen-9-0\n", "vif1.0\n", "xen-1-0 ", "../x"])
def test_a_key_with_a_trailing_newline_or_anything_else_is_refused(key):
    """Round 3's C6: `$` let a trailing newline through (a record file with a newline in its name)."""
    with pytest.raises(UsageError, match="key"):
        wire.parse_offline({"op": "offline", "key": key, "vif": None})


@pytest.mark.parametrize("vif, key", [("vif3.1", "xen-3-1"), ("vif3.1-emu", "vif3.1-emu"), ("eth7", "eth7")])
def test_one_key_per_vif_whichever_entry_point_brings_it_online(vif, key):
    """Round 3's C5: the command line keyed vifD.N, libxl's offline looks for xen-D-N."""
    from domunet.dom0.request import keys_for, vif_key

    assert vif_key(vif) == key
    assert vif in keys_for(key) and key in keys_for(vif)


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
