"""The guest side in the lab: real kernel, real pings through strict rp_filter."""

import json
import sys

from tests.labs import GUEST_CONFIG, NICS, Monitor, assert_ok, package_root, write_config

ALL = [nic.address for nic in NICS]


def test_every_address_answers_after_setup_and_not_before(routed_lab, domunet):
    before = routed_lab.answers(tries=1)
    assert before == {"192.168.0.200": True, "192.168.0.201": False, "192.168.0.202": False,
                      "2001:db8:4309:2388::50": False}
    assert_ok(domunet("setup"))
    assert routed_lab.answers() == dict.fromkeys(ALL, True)


def test_second_run_changes_nothing_and_teardown_restores_the_dump(routed_lab, domunet):
    pristine = routed_lab.dump()
    assert_ok(domunet("setup"))
    configured = routed_lab.dump()
    assert configured != pristine
    assert_ok(domunet("setup"))
    assert routed_lab.dump() == configured
    planned = domunet("plan")
    assert_ok(planned)
    assert planned.stdout == ""
    assert_ok(domunet("teardown"))
    assert routed_lab.dump() == pristine
    assert_ok(domunet("teardown"))
    assert routed_lab.dump() == pristine


def test_plan_prints_ip_commands_and_changes_nothing(routed_lab, domunet):
    pristine = routed_lab.dump()
    planned = domunet("plan")
    assert_ok(planned)
    lines = planned.stdout.splitlines()
    assert "ip -6 route add default via 2001:db8:4309:2388::2 dev eth3 table main proto 213 metric 1024" in lines
    assert any(line.startswith("ip -4 rule add") and "from 192.168.0.201/32" in line for line in lines)
    assert routed_lab.dump() == pristine


def test_status_reports_the_kernels_own_choice_of_nic(routed_lab, domunet):
    report = domunet("status", "--json")
    assert_ok(report)
    before = {row["interface"]: row for row in json.loads(report.stdout)}
    assert before["eth1"]["replies_leave_by"]["192.168.0.201"] == "eth0"
    assert_ok(domunet("setup"))
    rows = {row["interface"]: row for row in json.loads(domunet("status", "--json").stdout)}
    for nic in NICS:
        assert rows[nic.guest]["managed"]
        assert rows[nic.guest]["replies_leave_by"][nic.address] == nic.guest
    assert rows["eth3"]["gateway6"] == "2001:db8:4309:2388::2"
    text = domunet("status")
    assert_ok(text)
    assert "not its own NIC" not in text.stdout


def _monitor(lab):
    return Monitor(lab.ns["guest"], "route")


def test_gateway_outside_a_slash32_through_the_temporary_main_route(lab, domunet):
    """The older kernels' path, forced: it runs for real and main ends byte-identical."""
    lab.add_guest_nic("eth4", "vif1.4", "10.9.9.9/32")
    config = write_config(lab, "gateway_strategy = temporary-main-route\n"
                               "[interfaces]\n[[eth4]]\ngateway = 10.9.9.1\n")
    main_before = lab.run("guest", "ip", "route", "show", "table", "main").stdout
    monitor = _monitor(lab)
    assert_ok(domunet("-vv", "setup", config=config))
    events = monitor.stop()
    assert "10.9.9.1 dev eth4 proto domunet-temp" in events
    assert "Deleted 10.9.9.1 dev eth4 proto domunet-temp" in events
    assert lab.run("guest", "ip", "route", "show", "table", "main").stdout == main_before
    table = lab.run("guest", "ip", "route", "show", "table", "all", "dev", "eth4").stdout
    assert "default via 10.9.9.1" in table
    assert "10.9.9.1 table domunet-eth4 proto domunet scope link src 10.9.9.9" in table
    assert_ok(domunet("teardown", config=config))
    assert "domunet" not in lab.run("guest", "ip", "route", "show", "table", "all", "dev", "eth4").stdout


def test_gateway_outside_a_slash32_on_a_current_kernel_needs_no_temporary_route(lab, domunet):
    lab.add_guest_nic("eth4", "vif1.4", "10.9.9.9/32")
    config = write_config(lab, "[interfaces]\n[[eth4]]\ngateway = 10.9.9.1\n")
    monitor = _monitor(lab)
    assert_ok(domunet("setup", config=config))
    events = monitor.stop()
    assert "domunet-temp" not in events
    assert "default via 10.9.9.1 dev eth4" in events


def test_foreign_tables_rules_and_routes_survive_setup_and_teardown(routed_lab, domunet):
    lab = routed_lab
    lab.batch("guest", [
        "rule add priority 100 to 10.66.0.0/16 lookup 500",
        "rule add priority 10618 fwmark 0x1 lookup 500",
        "route add 10.66.0.0/16 dev eth1 table 500",
        "route add 10.55.0.0/16 dev eth2",
        "route add 2001:db8:77::/48 dev eth3 table 500",
    ])
    config = write_config(lab, GUEST_CONFIG + "[[eth1]]\ntable = 1500\n")
    lab.batch("guest", ["route add 10.44.0.0/16 dev eth1 table 1500"])
    pristine = lab.dump()
    assert_ok(domunet("setup", config=config))
    dump = lab.dump()
    for foreign in ("100:\tfrom all to 10.66.0.0/16 lookup 500", "10618:\tfrom all fwmark 0x1 lookup 500",
                    "10.66.0.0/16 dev eth1 table 500", "10.55.0.0/16 dev eth2",
                    "10.44.0.0/16 dev eth1 table 1500", "2001:db8:77::/48 dev eth3 table 500"):
        assert foreign in dump
    assert lab.answers() == dict.fromkeys(ALL, True)
    assert_ok(domunet("teardown", config=config))
    assert lab.dump() == pristine


def test_failure_part_way_rolls_back_to_the_state_before(routed_lab, domunet):
    """An admin's route sits where domunet's default for eth2 must go: exit 1, nothing changed."""
    lab = routed_lab
    config = write_config(lab, GUEST_CONFIG + "[[eth2]]\ntable = 1500\n")
    lab.batch("guest", ["route add default via 192.168.0.1 dev eth2 table 1500"])
    pristine = lab.dump()
    result = domunet("setup", config=config)
    assert result.returncode == 1
    assert "rolled back" in result.stderr and "table 1500" in result.stderr
    assert "Traceback" not in result.stderr
    assert lab.dump() == pristine


def test_a_bad_value_for_one_nic_names_the_key_and_the_others_are_served(routed_lab, domunet):
    """Issue 21: a bad [[NAME]] value costs that NIC only (it was exit 2 for every NIC)."""
    config = write_config(routed_lab, "[interfaces]\n[[eth3]]\ngateway6 = 2001:db8::zz\n")
    result = domunet("setup", config=config)
    assert result.returncode == 0
    assert "key 'gateway6'" in result.stderr and config in result.stderr
    assert "Traceback" not in result.stderr
    rules = routed_lab.run("guest", "ip", "rule").stdout
    assert "oif eth1" in rules and "oif eth3" not in routed_lab.run("guest", "ip", "-6", "rule").stdout


def test_a_bad_top_level_value_exits_2_and_changes_nothing(routed_lab, domunet):
    config = write_config(routed_lab, "priority_base = 40000\n")
    pristine = routed_lab.dump()
    result = domunet("setup", config=config)
    assert result.returncode == 2
    assert "key 'priority_base'" in result.stderr and config in result.stderr
    assert routed_lab.dump() == pristine


def test_unknown_interface_on_the_command_line_exits_2(routed_lab, domunet):
    pristine = routed_lab.dump()
    result = domunet("setup", "eth9")
    assert result.returncode == 2 and "eth9" in result.stderr
    assert routed_lab.dump() == pristine


def test_main_prefixes_keep_other_stacks_on_the_main_table(routed_lab, domunet):
    config = write_config(routed_lab, "main_prefixes = 172.16.0.0/12\n" + GUEST_CONFIG)
    assert_ok(domunet("setup", config=config))
    rules = routed_lab.run("guest", "ip", "rule").stdout
    assert "10000:\tfrom all to 172.16.0.0/12 lookup main proto domunet" in rules
    got = routed_lab.run("guest", "ip", "route", "get", "172.17.0.1", "from", "192.168.0.201").stdout
    assert "dev eth0" in got  # main's first connected route, not eth1's table
    assert_ok(domunet("teardown", config=config))
    assert "172.16.0.0/12" not in routed_lab.run("guest", "ip", "rule").stdout


def test_teardown_of_one_interface_leaves_the_others(routed_lab, domunet):
    lab = routed_lab
    assert_ok(domunet("setup"))
    assert_ok(domunet("teardown", "eth1"))
    rules = lab.run("guest", "ip", "rule").stdout
    assert "eth1" not in rules and "192.168.0.201" not in rules
    assert "oif eth0" in rules and "oif eth2" in rules
    assert "domunet-eth1" not in lab.run("guest", "ip", "route", "show", "table", "all").stdout
    answers = lab.answers(tries=2)
    assert answers["192.168.0.200"] and answers["192.168.0.202"] and answers["2001:db8:4309:2388::50"]
    assert not answers["192.168.0.201"]
    assert_ok(domunet("setup", "eth1"))
    assert lab.answers() == dict.fromkeys(ALL, True)


def test_ipv6_address_still_in_dad_does_not_break_setup(lab, domunet):
    """Hooks run right after ifup, while DAD may still hold the address as tentative."""
    lab.batch("dom0", [f"link add vif1.4 type veth peer name eth4 netns {lab.ns['guest']}", "link set vif1.4 up"])
    lab.sysctl("guest", ["net/ipv6/conf/eth4/accept_dad=1", "net/ipv6/conf/eth4/dad_transmits=5"])
    lab.batch("guest", ["link set eth4 up", "addr add 2001:db8:99::5/64 dev eth4"])
    assert "tentative" in lab.run("guest", "ip", "-6", "addr", "show", "dev", "eth4").stdout
    config = write_config(lab, "[interfaces]\n[[eth4]]\ngateway6 = 2001:db8:99::1\n")
    assert_ok(domunet("setup", config=config))
    assert "default via 2001:db8:99::1 dev eth4" in lab.run("guest", "ip", "-6", "route", "show", "table", "all").stdout


def test_the_plain_pyroute2_import_gives_the_same_state(routed_lab, domunet):
    """The command's import diet skips pyroute2's package __init__ for speed; the documented import is the
    fallback, and both must lead to the same kernel state."""
    lab = routed_lab
    assert_ok(domunet("setup"))
    fast = lab.dump()
    assert_ok(domunet("teardown"))
    env = {**lab.hook_env(), "DOMUNET_PLAIN_IMPORT": "1"}
    result = lab.run("guest", str(lab.bin / "domunet"), "setup", check=False, env=env)
    assert_ok(result)
    assert lab.dump() == fast
    # which way pyroute2 came in: its package __init__ (which defines IPRoute) runs only on the plain way
    code = ("import sys; from domunet.core import pyroute2_diet; pyroute2_diet.switch_on(); "
            "import domunet.core.kernel; "
            "print(hasattr(sys.modules['pyroute2'], 'IPRoute'))")
    probes = {plain: lab.run("guest", sys.executable, "-c", code, env={
        "PYTHONPATH": package_root(), **({"DOMUNET_PLAIN_IMPORT": "1"} if plain else {})}).stdout.strip()
        for plain in (True, False)}
    assert probes == {True: "True", False: "False"}


def test_the_readme_demo_shows_every_address_answering():
    import io

    from domunet.demo import demo

    out = io.StringIO()
    assert demo(out) is True
    text = out.getvalue()
    assert "all four addresses answer: yes" in text
    assert text.count("no answer") == 3  # before setup: only eth0's address answered


def test_a_multipath_default_in_main_is_seen_and_left_alone(routed_lab, domunet):
    """networkd merges a static IPv6 gateway and a router advertisement's into one multipath
    default; admins spread IPv4 over two NICs the same way. domunet took main for having no
    IPv6 default, added its own and failed (File exists): now it sees the default, takes each
    NIC's IPv4 gateway from its own next hop, leaves the routes as they are."""
    lab = routed_lab
    lab.batch("guest", [
        "route replace default nexthop via 192.168.0.1 dev eth0 nexthop via 192.168.0.1 dev eth1",
        "route add default nexthop via 2001:db8:4309:2388::2 dev eth3 nexthop via fe80::1 dev eth3",
    ])
    pristine = lab.dump()
    assert_ok(domunet("setup"))
    assert lab.answers() == dict.fromkeys(ALL, True)
    gateways = {row["interface"]: row["gateway"] for row in json.loads(domunet("status", "--json").stdout)
                if row["managed"]}
    assert gateways["eth0"] == gateways["eth1"] == "192.168.0.1"
    assert [line for line in lab.dump().splitlines() if "nexthop" in line] == \
        [line for line in pristine.splitlines() if "nexthop" in line]
    assert_ok(domunet("teardown"))
    assert lab.dump() == pristine


def test_a_table_holding_only_a_multipath_route_is_not_taken(routed_lab, domunet):
    lab = routed_lab
    config = write_config(lab, GUEST_CONFIG)
    assert_ok(domunet("setup", config=config))
    taken = _tables(domunet, config)
    assert_ok(domunet("teardown", config=config))
    lab.batch("guest", [f"route add 10.77.0.0/16 table {taken['eth1']} "
                        "nexthop via 192.168.0.1 dev eth0 nexthop via 192.168.0.1 dev eth2"])
    assert_ok(domunet("setup", config=config))
    assert _tables(domunet, config)["eth1"] != taken["eth1"]
    assert lab.answers() == dict.fromkeys(ALL, True)


def _tables(domunet, config):
    return {row["interface"]: row["table"] for row in json.loads(domunet("status", "--json", config=config).stdout)
            if row["managed"]}


def test_a_router_advertisements_default_merged_into_domunets_is_left_alone(routed_lab, domunet):
    """domunet's IPv6 default via dom0 came first; the kernel then merges an advertised router's
    default (same metric) into it as a second next hop. That route is no longer domunet's alone:
    setup and teardown leave it as it is, and setup adds no second default."""
    lab = routed_lab
    assert_ok(domunet("setup"))
    lab.run("guest", "ip", "-6", "route", "append", "default", "via", "fe80::1", "dev", "eth3", "metric", "1024",
            "proto", "ra")
    main_default6 = lambda: lab.run("guest", "ip", "-6", "route", "show", "default").stdout  # noqa: E731
    merged = main_default6()
    assert "nexthop via 2001:db8:4309:2388::2" in merged and "nexthop via fe80::1" in merged, merged
    assert_ok(domunet("setup"))
    assert main_default6() == merged
    assert lab.answers() == dict.fromkeys(ALL, True)
    assert_ok(domunet("teardown"))
    assert main_default6() == merged
