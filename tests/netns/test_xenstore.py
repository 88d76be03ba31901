"""Zero configuration: dom0's vif-domunet publishes each vif's routing facts in xenstore, the
guest reads them. The lab's stand-in xenstore is one directory both domains see, each from its
own home (local/domain/0 for dom0, local/domain/1 for the guest), as in Xen."""

import json

import pytest

from tests.labs import GUEST_CONFIG, NICS

ALL = [nic.address for nic in NICS]


@pytest.fixture
def zero(lab):
    lab.route_dom0_with_vif_domunet()
    (lab.workdir / "empty.conf").write_text("")
    return lab


def guest(lab, *args, config="empty.conf", xenstore=True):
    env = {**(lab.xen_env(1) if xenstore else {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}),
           "DOMUNET_STATE_DIR": str(lab.state_dir)}
    return lab.run("guest", str(lab.bin / "domunet"), "--config", str(lab.workdir / config), *args,
                   check=False, env=env)


def test_dom0_publishes_the_gateways_and_removes_them_on_offline(zero):
    lab = zero
    assert lab.xenstore_read("backend/vif/1/3/domunet-gateway6") == "2001:db8:4309:2388::2"
    assert lab.xenstore_read("backend/vif/1/0/domunet-gateway") == "192.168.0.100"
    assert lab.xenstore_read("backend/vif/1/0/domunet-routed") == "1"
    assert lab.vif_hotplug("offline", "vif1.3", 3).returncode == 0
    for key in ("domunet-gateway6", "domunet-routed"):
        assert lab.xenstore_read(f"backend/vif/1/3/{key}") is None


def test_guest_with_no_configuration_answers_on_every_address(zero):
    lab = zero
    before = lab.answers(tries=1)
    assert not before["2001:db8:4309:2388::50"]
    result = guest(lab, "setup")
    assert result.returncode == 0, result.stderr
    assert lab.answers() == dict.fromkeys(ALL, True)
    rows = {row["interface"]: row for row in json.loads(guest(lab, "status", "--json").stdout)}
    assert rows["eth3"]["gateway6"] == "2001:db8:4309:2388::2"
    assert rows["eth3"]["gateway6_source"] == "xenstore"
    assert rows["eth3"]["xenstore"] == "/local/domain/0/backend/vif/1/3"
    assert rows["eth1"]["gateway_source"] == "kernel"  # main's default, in the subnet, comes first


def test_config_wins_over_xenstore(zero):
    lab = zero
    (lab.workdir / "other.conf").write_text("[interfaces]\n[[eth3]]\ngateway6 = 2001:db8:4309:2388::7\n")
    rows = {row["interface"]: row for row in json.loads(guest(lab, "status", "--json", config="other.conf").stdout)}
    assert rows["eth3"]["gateway6"] == "2001:db8:4309:2388::7"
    assert rows["eth3"]["gateway6_source"] == "config"


@pytest.mark.parametrize("key, value", [
    ("backend/vif/1/3/domunet-gateway6", "2001:db8::zz"),
    ("backend/vif/1/3/domunet-gateway6", "192.168.0.100"),
    ("backend/vif/1/3/domunet-gateway6", "$(reboot)"),
])
def test_malformed_published_value_is_named_and_ignored(zero, key, value):
    lab = zero
    lab.xenstore_write(key, value)
    result = guest(lab, "setup")
    assert result.returncode == 0, result.stderr
    assert key.split("/")[-1] in result.stderr and "ignored" in result.stderr
    answers = lab.answers(tries=2)
    assert not answers["2001:db8:4309:2388::50"]  # as it would be without the published value
    assert all(answers[nic.address] for nic in NICS if nic.version == 4)


def test_hostile_backend_path_is_ignored(zero):
    lab = zero
    lab.xenstore_write("device/vif/3/backend", "/local/domain/0/backend/vif/1/3/../../../../x", domain=1)
    result = guest(lab, "setup")
    assert result.returncode == 0
    assert "device/vif/3/backend" in result.stderr
    rows = {row["interface"]: row for row in json.loads(guest(lab, "status", "--json").stdout)}
    assert rows["eth3"]["xenstore"] is None and rows["eth3"]["gateway6"] is None  # the value went unused
    assert "backend/vif/1/3/domunet-gateway6" not in result.stderr  # nothing was read through it
    answers = lab.answers(tries=1)
    assert not answers["2001:db8:4309:2388::50"]
    assert all(answers[nic.address] for nic in NICS if nic.version == 4)


def test_without_xenstore_tools_setup_is_exactly_as_before(lab):
    lab.route_dom0_statically()
    (lab.workdir / "lab.conf").write_text(GUEST_CONFIG)
    without = guest(lab, "setup", config="lab.conf", xenstore=False)
    assert without.returncode == 0 and without.stderr == ""
    dump = lab.dump()
    assert guest(lab, "teardown", config="lab.conf", xenstore=False).returncode == 0
    with_empty_store = guest(lab, "setup", config="lab.conf")  # tools there, nothing published
    assert with_empty_store.returncode == 0 and with_empty_store.stderr == ""
    assert lab.dump() == dump
