import ipaddress
import os

import pytest

from domunet.core import config
from domunet.core.errors import ConfigError


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


INTERFACE_ERRORS = [
    (b"[interfaces]\n[[eth3]]\ngateway6 = 2001:db8::zz\n", "[interfaces] [[eth3]] key 'gateway6'"),
    (b"[interfaces]\n[[eth3]]\ngateway6 = 192.168.0.1\n", "[interfaces] [[eth3]] key 'gateway6'"),
    (b"[interfaces]\n[[eth0]]\ngateway = 2001:db8::1\n", "[interfaces] [[eth0]] key 'gateway'"),
    (b"[interfaces]\n[[eth0]]\ngatway = 10.0.0.1\n", "[interfaces] [[eth0]] key 'gatway'"),
    (b"[interfaces]\n[[eth0]]\ntable = 17\n", "[interfaces] [[eth0]] key 'table'"),
    (b"[interfaces]\n[[eth0]]\nmanage = maybe\n", "[interfaces] [[eth0]] key 'manage'"),
    (b"[interfaces]\n[[eth0]]\ntable = 2999\n", "[interfaces] [[eth0]] key 'table'"),
]


@pytest.mark.parametrize("text, where", INTERFACE_ERRORS)
def test_a_bad_value_for_one_interface_costs_that_interface_only(text, where):
    """Issue 21 (cause 2): the NIC is left as it is, named with file, section and key; the rest loads."""
    parsed = config.parse(text + b"[[eth9]]\nmanage = no\n", "/etc/domunet.conf")
    name = where.split("[[")[1].split("]]")[0]
    message = parsed.broken[name]
    assert message.startswith("/etc/domunet.conf: ") and where in message and "\n" not in message
    assert name not in parsed.interfaces and parsed.interfaces["eth9"].manage == "no"


@pytest.mark.parametrize("text, where", [
    (b"[interfaces]\n[[eth0]]\ntable = 1500\n[[eth1]]\ntable = 1500\n", "[interfaces]"),
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


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"a = 1\x00\n"])
def test_undecodable_input_is_a_config_error(raw):
    with pytest.raises(ConfigError):
        config.parse(raw, "/x.conf")


def test_the_size_limit_is_one_mib_exactly(tmp_path):
    at_limit = b"#" * ((1 << 20) - 1) + b"\n"
    assert config.parse(at_limit, "/x.conf").interfaces == {}
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        config.parse(at_limit + b"\n", "/x.conf")
    path = tmp_path / "big.conf"
    path.write_bytes(at_limit + b"#" * 10)
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        config.load(str(path))


def test_a_fifo_as_config_is_refused_at_once(tmp_path):
    path = tmp_path / "fifo.conf"
    os.mkfifo(path)
    with pytest.raises(ConfigError, match="not a regular file"):
        config.load(str(path))


@pytest.mark.parametrize("value", ["etc/iproute2/rt_tables.d/x.conf", "/etc/iproute2/rt_tables",
                                   "/etc/passwd", "/etc/iproute2/rt_tables.d/../rt_tables.conf",
                                   "/etc/iproute2/rt_tables.d/x", "'''/etc/iproute2/rt_tables.d/a\nb.conf'''"])
def test_rt_tables_file_must_be_a_drop_in(value):
    with pytest.raises(ConfigError, match="key 'rt_tables_file'"):
        config.parse(f"rt_tables_file = {value}\n".encode())


def test_zone_ids_are_refused_in_prefixes():
    with pytest.raises(ConfigError, match="main_prefixes"):
        config.parse(b"main_prefixes = fd00::%eth0/8\n")


def test_a_stanza_table_outside_the_range_or_taken_is_refused():
    from domunet.guest.ifupdown import HookCall

    base = config.parse(b"[interfaces]\n[[eth0]]\ntable = 1005\n")
    hints = [HookCall("eth1", "inet", "start", table=4294967295), HookCall("eth2", "inet", "start", table=1005),
             HookCall("eth3", "inet", "start", table=1007), HookCall("eth4", "inet", "start", table=1007)]
    merged = config.with_hints(base, hints)
    assert [name for name, _ in merged.refused] == ["eth1", "eth2", "eth4"]
    assert "outside domunet's tables 1000..1999" in merged.refused[0][1]
    assert "already eth0's" in merged.refused[1][1] and "already eth3's" in merged.refused[2][1]
    assert merged.for_interface("eth3").table == 1007 and merged.for_interface("eth1").table is None


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


def test_an_empty_file_means_exactly_the_dataclass_defaults():
    assert config.parse(b"", "/x.conf") == config.Config(path="/x.conf")
