"""The doctors' pure parts: which rule takes a reply first, argument checks, the table."""

import ipaddress

import pytest

from domunet.core.diagnosis import Step, Verdict, render
from domunet.core.errors import UsageError
from domunet.dom0.doctor import parse_targets
from domunet.guest import doctor


def rule(priority=100, table=200, src=None, iif=None, oif=None, fwmark=None, invert=False, dst=None):
    return {"priority": priority, "table": table, "src": ipaddress.ip_network(src) if src else None,
            "dst": ipaddress.ip_network(dst) if dst else None, "iif": iif, "oif": oif, "fwmark": fwmark,
            "fwmask": 0xFFFFFFFF if fwmark is not None else None, "invert": invert, "proto": 0, "text": "t"}


class Covers:
    """Evidence as far as _catches looks at it: which tables hold a route for the reply."""

    def __init__(self, *tables):
        self.covers = {(4, t): True for t in tables}


ADDRESS = ipaddress.ip_address("192.168.0.201")


@pytest.mark.parametrize(("candidate", "catches"), [
    (rule(src="192.168.0.201/32"), True),
    (rule(src="192.168.0.0/24"), True),
    (rule(src="10.0.0.0/8"), False),
    (rule(), True),  # from all
    (rule(table=201), False),  # a table without a route for the reply: the lookup goes on
    (rule(iif="eth0"), False),  # only what comes in there
    (rule(iif="lo"), True),  # what this host sends
    (rule(oif="wg0"), False),  # only sockets bound to wg0
    (rule(fwmark=0xCA6C), False),  # marked traffic only
    (rule(fwmark=0xCA6C, invert=True), True),  # wg-quick's `not fwmark 51820 lookup 51820`: all unmarked traffic
    (rule(dst="192.0.2.0/24"), True),  # the probe destination
    (rule(table=None), True),  # unreachable, prohibit, blackhole: taken, and dropped
])
def test_which_rule_takes_a_reply_from_the_address(candidate, catches):
    assert doctor._catches(candidate, ADDRESS, Covers(200)) is catches  # type: ignore[arg-type]


def test_arguments_are_checked_before_anything_is_read():
    assert doctor.parse_addresses(["192.0.2.1", "2001:db8::1"]) == ["192.0.2.1", "2001:db8::1"]
    with pytest.raises(UsageError, match="ADDRESS argument 'eth0' is not an IP address"):
        doctor.parse_addresses(["eth0"])
    assert doctor.parse_addresses(["192.0.2.1", "192.0.2.1", "2001:DB8::1", "2001:db8::1"]) == [
        "192.0.2.1", "2001:db8::1"]  # each address once, however it is written
    for zoned in ("fe80::1%lo", "fe80::1%eth0", "fe80::1", "2001:db8::1%eth0"):
        with pytest.raises(UsageError, match="link-local"):
            doctor.parse_addresses([zoned])
    assert parse_targets(["vif1.0", "192.0.2.5"]) == ({"vif1.0"}, {"192.0.2.5"})
    with pytest.raises(UsageError, match="neither a vif name nor an IP address"):
        parse_targets(["vif1.0;reboot"])


def test_the_table_names_the_first_failing_step_and_its_fix():
    good = Verdict("192.0.2.5", "eth0", (Step("address", True, "usable"),))
    bad = Verdict("192.0.2.6", "eth1", (Step("address", True, "usable"),
                                         Step("rule", False, "missing", "rule-missing", "domunet setup"),
                                         Step("table", False, "also missing", "table-default-missing", "x")))
    text = render([good, bad])
    assert "192.0.2.5" in text and " ok " in text
    assert "PROBLEM  rule-missing: missing" in text and "fix: domunet setup" in text
    assert "table-default-missing" not in text  # only the first cause
    assert bad.as_dict()["cause"] == "rule-missing" and len(bad.as_dict()["steps"]) == 3
    assert good.as_dict()["ok"] is True and good.failed is None
