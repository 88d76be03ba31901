"""Round 3's surfaces that no test had reached (issue 34): what a guest can send at dom0's guard.
Frames are made by hand and sent from the guest's NIC (AF_PACKET, so no kernel in the guest fixes
them up); each test sends the same frame with a given source too, so that it can fail: what the
guard admits reaches the provider router, what it drops never does."""

import ipaddress
import json
import os
import struct
import subprocess
import sys

import pytest

from tests.labs import NICS, package_root

SENDER = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for line in sys.stdin:
    s.send(bytes.fromhex(line.strip()))
"""
TARGET4, TARGET6 = "203.0.113.77", "2001:db8:ffff::77"
GIVEN4, GIVEN6 = NICS[1].address, NICS[3].address  # vif1.1's and vif1.3's own


@pytest.fixture
def guarded(lab):
    lab.route_dom0_with_vif_domunet()
    return lab


def _checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _mac(text):
    return bytes.fromhex(text.replace(":", ""))


def ipv4_udp(src, dst, sport, dport, payload=b"round3"):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + udp


def ipv6_echo(src, dst, extension=None):
    """An ICMPv6 echo request, behind a destination options header, or in two fragments."""
    source, target = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    body = struct.pack("!BBHHH", 128, 0, 0, 0x7233, 1) + b"round3 payload!!"
    pseudo = source + target + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]

    def packet(next_header, payload):
        return struct.pack("!IHBB", 0x60000000, len(payload), next_header, 64) + source + target + payload

    if extension is None:
        return [packet(58, body)]
    if extension == "destination options":
        return [packet(60, struct.pack("!BBBB4x", 58, 0, 1, 4) + body)]
    first, rest = body[:16], body[16:]
    return [packet(44, struct.pack("!BBHI", 58, 0, 0 << 3 | 1, 0x7233) + first),
            packet(44, struct.pack("!BBHI", 58, 0, 2 << 3, 0x7233) + rest)]


def send(lab, nic, packets, dst_mac=None):
    guest_mac = _mac(lab.run("guest", "cat", f"/sys/class/net/{nic.guest}/address").stdout.strip())
    vif_mac = _mac(dst_mac or lab.run("dom0", "cat", f"/sys/class/net/{nic.vif}/address").stdout.strip())
    frames = []
    for data in packets:
        kind = b"\x08\x00" if data[0] >> 4 == 4 else b"\x86\xdd"
        frames.append((vif_mac + guest_mac + kind + data).hex())
    result = subprocess.run(["ip", "netns", "exec", lab.ns["guest"], sys.executable, "-c", SENDER, nic.guest],
                            input="\n".join(frames) + "\n", text=True, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr


def count(lab, role, table, rules):
    """A counting chain in a namespace (after dom0's guard: priority 0); returns a reader."""
    lines = "\n".join(f"        {rule} counter" for rule in rules)
    script = f"table inet {table} {{\n    chain in {{ type filter hook prerouting priority 0;\n{lines}\n    }}\n}}\n"
    subprocess.run(["ip", "netns", "exec", lab.ns[role], "nft", "-f", "-"], input=script, text=True, check=True)

    def read():
        listing = json.loads(lab.run(role, "nft", "-j", "list", "chain", "inet", table, "in").stdout)
        counters = [e["rule"]["expr"] for e in listing["nftables"] if "rule" in e]
        return [next(x["counter"]["packets"] for x in expr if "counter" in x) for expr in counters]
    return read


def _guard_drops(lab):
    listing = json.loads(lab.run("dom0", "nft", "-j", "list", "chain", "inet", "domunet", "antispoof").stdout)
    return sum(x["counter"]["packets"] for e in listing["nftables"] if "rule" in e
               for x in e["rule"]["expr"] if "counter" in x)


def _elements(lab, name):
    listing = json.loads(lab.run("dom0", "nft", "-j", "list", "set", "inet", "domunet", name).stdout)
    return len(next(e["set"] for e in listing["nftables"] if "set" in e).get("elem", []))


def test_a_flood_of_spoofed_sources_fills_the_dropped_set_to_its_bound_and_stays_dropped(guarded):
    """6,000 sources the guest was not given: the set of dropped sources (doctor's evidence) holds
    at most its 4,096; a full set does not let one packet through (the `update` fails and the
    packet falls to the drop), and the vif's own source still passes."""
    lab = guarded
    at_router = count(lab, "rtr", "round3", ["ip saddr 10.200.0.0/16", f"ip saddr {GIVEN4} ip daddr {TARGET4}"])
    spoofed = [ipv4_udp(f"10.200.{i >> 8}.{i & 255}", TARGET4, 40000, 9) for i in range(6000)]
    send(lab, NICS[1], spoofed)
    send(lab, NICS[1], [ipv4_udp(GIVEN4, TARGET4, 40000, 9)] * 3)
    dropped, given = at_router()
    assert given == 3  # the counting works: the vif's own source gets through, after the flood too
    assert dropped == 0
    assert _guard_drops(lab) >= 6000
    assert 1000 <= _elements(lab, "spoofed4") <= 4096
    doctor = lab.run("dom0", sys.executable, "-m", "domunet", "--state-dir", str(lab.state_dir), "dom0", "doctor",
                     "--json", check=False, env={**os.environ, **lab.xen_env(0), "PYTHONPATH": package_root()})
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor.stderr
    named = [a for a in json.loads(doctor.stdout)["addresses"] if a["cause"] == "source-not-given"]
    assert 1000 <= len(named) <= 4096  # every dropped source the set holds, each named


def test_the_dhcp_opening_takes_only_a_clients_first_broadcast(guarded):
    """The guard lets 0.0.0.0:68 -> 255.255.255.255:67 through (a DHCP client before its lease);
    nothing else from 0.0.0.0: not to another port, not from another port, not to the Internet."""
    lab = guarded
    in_dom0 = count(lab, "dom0", "round3", ["ip saddr 0.0.0.0 udp sport 68 udp dport 67 ip daddr 255.255.255.255",
                                            "ip saddr 0.0.0.0 udp sport 1234", "ip saddr 0.0.0.0 udp dport 53",
                                            f"ip saddr 0.0.0.0 ip daddr {TARGET4}"])
    at_router = count(lab, "rtr", "round3", ["ip saddr 0.0.0.0"])
    broadcast = "ff:ff:ff:ff:ff:ff"
    send(lab, NICS[1], [ipv4_udp("0.0.0.0", "255.255.255.255", 68, 67)] * 2, dst_mac=broadcast)
    send(lab, NICS[1], [ipv4_udp("0.0.0.0", "255.255.255.255", 1234, 67)] * 2, dst_mac=broadcast)
    send(lab, NICS[1], [ipv4_udp("0.0.0.0", "255.255.255.255", 68, 53)] * 2, dst_mac=broadcast)
    send(lab, NICS[1], [ipv4_udp("0.0.0.0", TARGET4, 68, 67)] * 2)
    assert in_dom0() == [2, 0, 0, 0]
    assert at_router() == [0]


@pytest.mark.parametrize("extension", ["destination options", "fragments"])
def test_a_spoofed_ipv6_source_behind_extension_headers_or_in_fragments_is_dropped(guarded, extension):
    lab = guarded
    at_router = count(lab, "rtr", "round3", [f"ip6 saddr 2001:db8:4309:2388::99 ip6 daddr {TARGET6}",
                                             f"ip6 saddr {GIVEN6} ip6 daddr {TARGET6}"])
    for _ in range(3):
        send(lab, NICS[3], ipv6_echo("2001:db8:4309:2388::99", TARGET6, extension))
        send(lab, NICS[3], ipv6_echo(GIVEN6, TARGET6, extension))
    spoofed, given = at_router()
    assert given >= 3  # the same packet from the vif's own address is forwarded whole
    assert spoofed == 0


def arp_claim(address, mac):
    """A gratuitous ARP reply: `address` is at `mac` (what a guest sends to take an address)."""
    ip = ipaddress.ip_address(address).packed
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac + ip + b"\xff" * 6 + ip


def na_claim(source, target, mac):
    """An unsolicited neighbour advertisement with the override flag: `target` is at `mac`."""
    src, dst = ipaddress.ip_address(source).packed, ipaddress.ip_address("ff02::1").packed
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + ipaddress.ip_address(target).packed + b"\x02\x01" + mac
    pseudo = src + dst + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    return struct.pack("!IHBB", 0x60000000, len(body), 58, 255) + src + dst + body


def test_arp_and_ndp_claims_for_another_vifs_and_dom0s_addresses_change_nothing(guarded, domunet):
    """A guest that claims, on its vif1.1, vif1.2's and vif1.3's addresses and dom0's own (gratuitous
    ARP, unsolicited NAs with override, from its link-local address, which the guard lets through as
    neighbour discovery must): dom0 still routes each address by its own vif, every address still
    answers from outside, and the provider router still resolves them to dom0."""
    lab = guarded
    assert domunet("setup").returncode == 0
    assert lab.answers() == dict.fromkeys([nic.address for nic in NICS], True)
    nic = NICS[1]
    mac = _mac(lab.run("guest", "cat", f"/sys/class/net/{nic.guest}/address").stdout.strip())
    link_local = json.loads(lab.run("guest", "ip", "-6", "-j", "addr", "show", "dev", nic.guest, "scope", "link")
                            .stdout)[0]["addr_info"][0]["local"]
    dom0_own = ["192.168.0.100", "2001:db8:4309:2388::2"]
    claims = [arp_claim(a, mac) for a in (NICS[2].address, "192.168.0.1", dom0_own[0])]
    claims += [na_claim(link_local, t, mac) for t in (NICS[3].address, dom0_own[1])]
    frames = []
    broadcast = {4: b"\xff" * 6, 6: bytes.fromhex("333300000001")}
    for claim in claims * 3:
        kind, dst = (b"\x08\x06", broadcast[4]) if claim[:2] == b"\x00\x01" else (b"\x86\xdd", broadcast[6])
        frames.append((dst + mac + kind + claim).hex())

    def received():
        return json.loads(lab.run("dom0", "ip", "-s", "-j", "link", "show", nic.vif).stdout)[0]["stats64"]["rx"]

    before = received()["packets"]
    result = subprocess.run(["ip", "netns", "exec", lab.ns["guest"], sys.executable, "-c", SENDER, nic.guest],
                            input="\n".join(frames) + "\n", text=True, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert received()["packets"] - before >= len(frames)  # every claim reached dom0's vif
    for other in (NICS[2], NICS[3]):
        via = lab.run("dom0", "ip", "route", "get", other.address).stdout
        assert f"dev {other.vif}" in via, via
    assert lab.answers() == dict.fromkeys([nic.address for nic in NICS], True)
    uplink = lab.run("dom0", "cat", "/sys/class/net/eth0/address").stdout.strip()
    for address in (NICS[2].address, NICS[3].address):
        known = lab.run("rtr", "ip", "neigh", "show", address).stdout
        assert uplink in known, (address, known)
