import ipaddress

import pytest

from domunet import config
from domunet.errors import ConfigError


def test_empty_file_gives_defaults():
    parsed = config.parse(b"", "/etc/domunet.conf")
    assert parsed.table_base == 1000
    assert parsed.priority_base == 10000
    assert parsed.gateway_strategy == "auto"
    assert parsed.ignore == ("lo",)
    assert dict(parsed.interfaces) == {}


def test_full_file_is_typed():
    parsed = config.parse(b"""
table_base = 2000
priority_base = 5000
gateway_strategy = temporary-main-route
main_prefixes = 172.16.0.0/12, fd00::/8
ignore = docker*, lo
default6_interface = eth3
rt_tables_file = ""
[interfaces]
[[eth0]]
gateway = 192.168.0.1
table = 2005
[[eth3]]
gateway6 = 2001:db8:4309:2388::2
[[eth9]]
manage = no
""")
    assert parsed.table_base == 2000
    assert parsed.gateway_strategy == "temporary-main-route"
    assert parsed.main_prefixes == (ipaddress.ip_network("172.16.0.0/12"), ipaddress.ip_network("fd00::/8"))
    assert parsed.ignore == ("docker*", "lo")
    assert parsed.rt_tables_file == ""
    assert parsed.interfaces["eth0"].gateway == ipaddress.ip_address("192.168.0.1")
    assert parsed.interfaces["eth0"].table == 2005
    assert parsed.interfaces["eth3"].gateway6 == ipaddress.ip_address("2001:db8:4309:2388::2")
    assert parsed.interfaces["eth9"].manage == "no"
    assert parsed.for_interface("eth7").manage == "auto"


@pytest.mark.parametrize("text, where", [
    (b"[interfaces]\n[[eth3]]\ngateway6 = 2001:db8::zz\n", "[interfaces] [[eth3]] key 'gateway6'"),
    (b"[interfaces]\n[[eth3]]\ngateway6 = 192.168.0.1\n", "[interfaces] [[eth3]] key 'gateway6'"),
    (b"[interfaces]\n[[eth0]]\ngateway = 2001:db8::1\n", "[interfaces] [[eth0]] key 'gateway'"),
    (b"[interfaces]\n[[eth0]]\ngatway = 10.0.0.1\n", "[interfaces] [[eth0]] key 'gatway'"),
    (b"[interfaces]\n[[eth0]]\ntable = 17\n", "[interfaces] [[eth0]] key 'table'"),
    (b"[interfaces]\n[[eth0]]\ntable = 1500\n[[eth1]]\ntable = 1500\n", "[interfaces]"),
    (b"[interfaces]\n[[eth0]]\nmanage = maybe\n", "[interfaces] [[eth0]] key 'manage'"),
    (b"[interfaces]\n[[a/b]]\n", "[interfaces] [[a/b]]"),
    (b"priority_base = 40000\n", "key 'priority_base'"),
    (b"gateway_strategy = sometimes\n", "key 'gateway_strategy'"),
    (b"main_prefixes = 10.0.0.1/8\n", "key 'main_prefixes'"),
    (b"frobnicate = 1\n", "key 'frobnicate'"),
    (b"[nosuch]\n", "[nosuch]"),
    (b"[interfaces\n", "line 1"),
])
def test_errors_name_file_section_and_key(text, where):
    with pytest.raises(ConfigError) as caught:
        config.parse(text, "/etc/domunet.conf")
    message = str(caught.value)
    assert message.startswith("/etc/domunet.conf: ")
    assert where in message
    assert "\n" not in message


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"a = 1\x00\n", b"x" * (1 << 20 + 1)])
def test_undecodable_or_huge_input_is_a_config_error(raw):
    with pytest.raises(ConfigError):
        config.parse(raw, "/x.conf")


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "none.conf"))
    assert config.load().interfaces == {}


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load(str(tmp_path / "none.conf"))


def test_fwmark_mask_needs_room_for_a_thousand_marks():
    assert config.parse(b"fwmark_mask = 0x3ff\n").fwmark_mask == 0x3FF
    for bad in (b"0xff", b"0", b"banana", b"0x1ff00000", b"0x1ffffffff"):
        with pytest.raises(ConfigError, match="key 'fwmark_mask'"):
            config.parse(b"fwmark_mask = " + bad + b"\n")
