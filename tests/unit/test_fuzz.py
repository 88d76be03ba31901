"""Property tests: no input makes domunet fail in any other way than a one-line, named error,
and the dom0 side never lets through or proxies an address it was not given.

The example counts are recorded in docs/reliability.md; change both together."""

import ipaddress
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domunet.core import config
from domunet.core.errors import ConfigError, UsageError
from domunet.core.model import valid_ifname
from domunet.dom0 import guard
from domunet.dom0.hotplug import request_from_hotplug
from domunet.dom0.records import plan_online
from domunet.dom0.request import VifRequest, parse_addresses
from domunet.guest.ifupdown import MODES, parse_env

CONFIG_EXAMPLES = 600
ENV_EXAMPLES = 400
XENSTORE_EXAMPLES = 600
FUZZ = settings(max_examples=CONFIG_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

KEYS = ["table_base", "priority_base", "gateway_strategy", "main_prefixes", "ignore", "default6_interface",
        "rt_tables_file", "gateway", "gateway6", "table", "manage", "interfaces", "eth0", "x"]
VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["192.168.0.1", "2001:db8::1", "2001:db8::zz", "10.0.0.0/8", "10.0.0.1/8", "1000", "-1",
                     "99999999999999999999", "yes", "no", "auto", "'unterminated", '"x"', "a, b, c", "None", "",
                     "temporary-main-route", "[x]", "$(reboot)", "\x00", "é", "\u202e"]),
)
LINES = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEYS) | st.text(max_size=12), VALUES),
    st.builds(lambda n, d: "[" * d + n + "]" * d, st.sampled_from(KEYS) | st.text(max_size=10),
              st.integers(1, 4)),
    st.text(max_size=60),
)
CONFIG_TEXT = st.one_of(
    st.lists(LINES, max_size=25).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    st.binary(max_size=400),
    st.lists(LINES, max_size=25).map(lambda lines: "\n".join(lines).encode("utf-16")),
)


def assert_one_line_named(message, prefix):
    assert message.startswith(prefix), message
    assert "\n" not in message and "Traceback" not in message


@FUZZ
@given(CONFIG_TEXT)
def test_any_config_text_is_a_config_or_one_named_config_error(raw):
    try:
        parsed = config.parse(raw, "/etc/domunet.conf")
    except ConfigError as error:
        assert_one_line_named(str(error), "/etc/domunet.conf: ")
    else:  # what parsing promises: every value within its documented range
        assert all(valid_ifname(name) for name in parsed.interfaces)
        assert parsed.table_base + config.TABLE_SLOTS - 1 <= 0xFFFFFFFF and 1 <= parsed.priority_base <= 30000
        assert all(i.table is None or parsed.table_base <= i.table < parsed.table_base + config.TABLE_SLOTS
                   for i in parsed.interfaces.values())
        assert all(i.manage in ("auto", "yes", "no") for i in parsed.interfaces.values())


ENV_VALUE = st.one_of(st.text(max_size=30), st.sampled_from(["eth1", "lo", "--all", "start", "stop", "inet",
                                                             "inet6", "2001:db8::1", "192.168.0.1", "1200", ""]))


@settings(max_examples=ENV_EXAMPLES, deadline=None)
@given(st.dictionaries(st.sampled_from(["IFACE", "MODE", "ADDRFAM", "METHOD", "IF_GATEWAY", "IF_DOMUNET_GATEWAY",
                                        "IF_DOMUNET_GATEWAY6", "IF_DOMUNET_TABLE", "IF_DOMUNET_MANAGE"]), ENV_VALUE))
def test_any_ifupdown_environment_is_a_call_nothing_or_one_usage_error(env):
    try:
        call = parse_env(env)
    except UsageError as error:
        message = str(error)
        assert "\n" not in message
        assert message.startswith("IFACE: ") or message.startswith(env["IFACE"] + ": "), message
    else:  # a call is about one valid interface, in a mode and family ifupdown gives
        assert call is None or (valid_ifname(call.iface) and call.iface == env["IFACE"] and call.mode in MODES)


ADDRESS_TOKENS = st.one_of(
    st.ip_addresses().map(str),
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(v=4).map(str), st.integers(0, 40)),
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(v=6).map(str), st.integers(0, 140)),
    st.text(max_size=20),
    st.sampled_from([";", "$(id)", "`id`", "&&", "|", "\n", "\x00", "-f", "192.168.0.1;x"]),
)
UPLINK = [ipaddress.ip_interface("192.168.0.100/24"), ipaddress.ip_interface("2001:db8:4309:2388::2/64")]


@settings(max_examples=XENSTORE_EXAMPLES, deadline=None)
@given(st.lists(ADDRESS_TOKENS, max_size=12).map(" ".join))
def test_dom0_only_routes_proxies_and_admits_what_it_was_given(text):
    try:
        given_networks = parse_addresses(text, "xenstore backend/vif/1/0/ip")
    except UsageError as error:
        assert_one_line_named(str(error), "xenstore backend/vif/1/0/ip: ")
        return
    tokens = {ipaddress.ip_network(t) for t in text.split()}
    assert set(given_networks) == tokens
    record = plan_online(VifRequest("vif1.0", "vif1.0", given_networks), "eth0", UPLINK, ipv6=True).intent()
    singles = {str(n.network_address) for n in given_networks if n.version == 6 and n.prefixlen == 128}
    assert set(record.proxies) == singles
    assert {ipaddress.ip_network(r.destination) for r in record.routes} == tokens
    ruleset = guard.ruleset({"vif1.0": record.networks()})
    admitted = {ipaddress.ip_network(m) for m in re.findall(r'"vif1\.0" \. ([0-9a-f:./]+)', ruleset)}
    for version in (4, 6):  # exactly the given addresses get in: the same set, however it is written
        assert list(ipaddress.collapse_addresses(n for n in admitted if n.version == version)) == list(
            ipaddress.collapse_addresses(t for t in tokens if t.version == version))


@settings(max_examples=XENSTORE_EXAMPLES, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=20))
def test_hostile_vifname_uplink_or_vif_is_rejected_before_anything(vifname, gatewaydev, vif):
    store = {"backend/vif/1/0/ip": "192.0.2.5", "backend/vif/1/0/vifname": vifname,
             "backend/vif/1/0/gatewaydev": gatewaydev}
    env = {"vif": vif, "XENBUS_PATH": "backend/vif/1/0", "netdev": ""}
    try:
        request = request_from_hotplug(env, store.get)
    except UsageError as error:
        assert "\n" not in str(error)
        return
    for name in (request.vif, request.rename, request.uplink):  # what a kernel name and a shell word can be
        assert name is None or (0 < len(name) <= 15 and name not in (".", "..") and name.isascii()
                                and not any(c.isspace() or c in "/:;$`'\"\\|&<>(){}*?!#%=~" for c in name))
