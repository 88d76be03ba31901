"""The guest's own network stack in the lab, and dom0's DHCP and RA server.

systemd-networkd or NetworkManager runs in the guest namespace as it runs on a guest: its own
configuration files, its own /run and system bus (so `networkctl reload|reconfigure|renew` and
`nmcli connection up|down` work, and NetworkManager's dispatcher is started by the bus), /sys
read-only (networkd then takes the links as they are instead of waiting for a udev that does not
run here). dnsmasq runs
in dom0 and serves DHCPv4, DHCPv6 and router advertisements on one vif, as a provider's dom0 does
for guests that take their addresses dynamically. Both are stopped by stop(), always."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.labs import DOM0_UPLINK6, Lab, LabError, wait_until

#: The ifupdown lab's /etc/network/interfaces: every NIC static, as the lab's addresses.
INTERFACES = """\
auto lo
iface lo inet loopback

auto eth0
iface eth0 inet static
    address 192.168.0.200/24
    gateway 192.168.0.1

auto eth1
iface eth1 inet static
    address 192.168.0.201/24

auto eth2
iface eth2 inet static
    address 192.168.0.202/24

auto eth3
iface eth3 inet6 static
    address 2001:db8:4309:2388::50/64
    gateway 2001:db8:4309:2388::2
"""


NETWORKD = "/lib/systemd/systemd-networkd"
NETWORKMANAGER = "/usr/sbin/NetworkManager"

#: Inside the process's own mount namespace (`ip netns exec` makes one): a private /run for the
#: daemon's state and the bus, /sys read-only, a system bus, then the daemon itself.
_START = ("set -e; mount -t tmpfs -o mode=755 tmpfs /run; mkdir -p /run/systemd/netif /run/dbus; "
          "chown systemd-network: /run/systemd/netif 2>/dev/null || true; mount -o remount,ro /sys; "
          "dbus-daemon --system --fork --nopidfile; exec {daemon}")


class _Stack:
    """A network daemon in the guest namespace with a bus of its own, and its command-line tool."""

    daemon: str
    arguments = ""  # in the foreground: the test's own process
    names: tuple[str, ...]  # how the daemon's processes are called (/proc/PID/comm)
    tool: tuple[str, ...]
    etc: Path

    def _start(self, lab: Lab, env: dict[str, str]) -> None:
        self.lab = lab
        self.spawned: list[subprocess.Popen[bytes]] = []
        self.log_path = lab.workdir / f"{Path(self.daemon).name}.log"
        lab.run("guest", "ip", "link", "set", "lo", "up")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}
        start = _START.format(daemon=f"{self.daemon} {self.arguments}")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", lab.ns["guest"], "sh", "-c", start],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            wait_until(self._bus_answers, f"{self.daemon} up and answering on its bus", timeout=30)
        except AssertionError as error:
            said = self.ctl(check=False).stderr.strip()
            self.stop()
            raise LabError(f"{error}: {self.tool[0]}: {said}\n{self.log()[-3000:]}") from None
        except BaseException:
            self.stop()
            raise

    def _bus_answers(self) -> bool:
        if self.process.poll() is not None:
            raise LabError(f"{self.daemon} ended ({self.process.returncode}): {self.log()[-2000:]}")
        return self.ctl(check=False).returncode == 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The daemon's tool in its own mount namespace (its bus and /run) and network namespace, and
        its root (a chroot's, when the suite runs in one: entering a mount namespace resets the root)."""
        argv = ["nsenter", "-t", str(self.process.pid), "-m", "-n", "-r", "-w", *self.tool, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise LabError(f"{self.tool[0]} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def states(self) -> dict[str, str]:
        raise NotImplementedError

    def spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        """Another program beside the daemon (its /run, bus and network namespace), logged to
        the workdir and stopped with the daemon: networkd-dispatcher, say."""
        log = open(self.lab.workdir / f"{Path(argv[0]).name}.log", "w")  # noqa: SIM115 (closed by the child's end)
        process = subprocess.Popen(["nsenter", "-t", str(self.process.pid), "-m", "-n", "-r", "-w", *argv],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        log.close()
        self.spawned.append(process)
        return process

    def _wait_state(self, links: tuple[str, ...], state: str, timeout: float) -> None:
        """Until the daemon reports every link in `state`; on timeout, what it reports and logged."""
        try:
            wait_until(lambda: all(self.states().get(link) == state for link in links),
                       f"{Path(self.daemon).name}: {', '.join(links)} {state}", timeout=timeout)
        except AssertionError as error:
            raise AssertionError(f"{error} (states: {self.states()})\n{self.log()[-4000:]}") from None

    def stop(self) -> None:
        """The daemon and its bus (the bus forked away: found among the namespace's processes)."""
        for process in self.spawned:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        pids = subprocess.run(["ip", "netns", "pids", self.lab.ns["guest"]], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            if _command(pid) in ("dbus-daemon", *self.names):
                _kill(int(pid))
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        shutil.rmtree(self.etc, ignore_errors=True)


class Networkd(_Stack):
    """systemd-networkd configuring the guest namespace from .network files (a dict name -> text),
    with networkd.conf drop-ins (name -> text) beside them, as /etc/systemd/ holds them."""

    daemon, names, tool = NETWORKD, ("systemd-network",), ("networkctl", "--no-pager")

    def __init__(self, lab: Lab, networks: dict[str, str], dropins: dict[str, str] | None = None,
                 debug: bool = False) -> None:
        self.etc = lab.etc / "systemd"
        (self.etc / "network").mkdir(parents=True, exist_ok=True)
        for name, text in networks.items():
            (self.etc / "network" / name).write_text(text)
        if dropins:
            (self.etc / "networkd.conf.d").mkdir(exist_ok=True)
            for name, text in dropins.items():
                (self.etc / "networkd.conf.d" / name).write_text(text)
        self._start(lab, {"SYSTEMD_LOG_TIME": "1", "SYSTEMD_LOG_LEVEL": "debug" if debug else "info"})

    def networkctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ctl(*args, check=check)

    def states(self) -> dict[str, str]:
        """Each link's setup state as networkd reports it (configured, configuring, unmanaged ...)."""
        lines = self.networkctl("list", "--no-legend", check=False).stdout.splitlines()
        return {words[1]: words[-1] for words in (line.split() for line in lines) if len(words) >= 5}

    def wait_configured(self, *links: str, timeout: float = 30.0) -> None:
        self._wait_state(links, "configured", timeout)


#: NetworkManager.conf for the lab: keyfiles only, no automatic "Wired connection" for a NIC
#: without one, nothing handed to resolvconf.
NM_CONF = "[main]\nplugins=keyfile\nno-auto-default=*\ndns=none\n[logging]\nlevel=INFO\n"


class NetworkManager(_Stack):
    """NetworkManager configuring the guest namespace from keyfiles (name -> text) in
    /etc/NetworkManager/system-connections, with dispatcher scripts (name -> text)."""

    daemon, names, tool = NETWORKMANAGER, ("NetworkManager", "nm-dispatcher"), ("nmcli",)
    arguments = "--no-daemon"

    def __init__(self, lab: Lab, connections: dict[str, str], dispatchers: dict[str, str] | None = None) -> None:
        self.etc = lab.etc / "NetworkManager"
        for folder in ("system-connections", "dispatcher.d", "conf.d"):
            (self.etc / folder).mkdir(parents=True, exist_ok=True)
        (self.etc / "NetworkManager.conf").write_text(NM_CONF)
        for name, text in connections.items():
            path = self.etc / "system-connections" / f"{name}.nmconnection"
            path.write_text(text)
            path.chmod(0o600)  # NetworkManager ignores a keyfile others can read
        for name, text in (dispatchers or {}).items():
            path = self.etc / "dispatcher.d" / name
            path.write_text(text)
            path.chmod(0o755)
        self._start(lab, {})

    def nmcli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ctl(*args, check=check)

    def states(self) -> dict[str, str]:
        lines = self.nmcli("-t", "-f", "DEVICE,STATE", "device", check=False).stdout.splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def wait_activated(self, *devices: str, timeout: float = 30.0) -> None:
        self._wait_state(devices, "connected", timeout)


class Dnsmasq:
    """dnsmasq in dom0 for one vif: DHCPv4 (fixed hosts by MAC, the router option), and with
    `ipv6` router advertisements and DHCPv6 for a /64 routed to that vif. No DNS (port 0)."""

    def __init__(self, lab: Lab, vif: str, *options: str) -> None:
        self.lab = lab
        self.leases = lab.workdir / f"dnsmasq-{vif}.leases"
        self.log_path = lab.workdir / f"dnsmasq-{vif}.log"
        self.leases.write_text("")
        argv = ["ip", "netns", "exec", lab.ns["dom0"], "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                "--port=0", "--user=root", "--group=root", "--pid-file", "--bind-interfaces",
                f"--interface={vif}", "--except-interface=lo", f"--dhcp-leasefile={self.leases}",
                "--dhcp-authoritative", "--log-dhcp", "--log-facility=-", *options]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        time.sleep(0.2)
        if self.process.poll() is not None:
            raise LabError(f"dnsmasq ended ({self.process.returncode}): {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


#: What dom0's DHCP server leases to the guest's eth1 (dom0 routes each to vif1.1).
LEASED = ("192.168.0.211", "192.168.0.212")


def dhcp4(lab: Lab, address: str, mac: str) -> Dnsmasq:
    """dom0's DHCP server for vif1.1: this guest NIC (by MAC) gets `address`, gateway the router.
    Renewal after 4 s, rebinding after 8 s (the shortest lease dnsmasq grants is 2 min)."""
    return Dnsmasq(lab, "vif1.1", "--dhcp-range=192.168.0.210,192.168.0.219,255.255.255.0,2m",
                   f"--dhcp-host={mac},{address}", "--dhcp-option=option:router,192.168.0.1",
                   "--dhcp-option=option:T1,4", "--dhcp-option=option:T2,8")


def route_leases(lab: Lab) -> None:
    """dom0 routes every address it may lease to eth1 to vif1.1, as vif-domunet does from the vif's `ip`."""
    for address in LEASED:
        lab.run("dom0", "ip", "route", "add", f"{address}/32", "dev", "vif1.1", "src", "192.168.0.100")


#: The /64 dom0 routes to vif1.3 and advertises there: SLAAC and DHCPv6 addresses for eth3.
ROUTED64 = "2001:db8:4309:23a0::"


def route_the_advertised_prefix(lab: Lab) -> None:
    lab.run("dom0", "ip", "addr", "add", f"{ROUTED64}1/64", "dev", "vif1.3")
    lab.run("rtr", "ip", "route", "add", f"{ROUTED64}/64", "via", DOM0_UPLINK6)


def ra_and_dhcp6(lab: Lab, first: str) -> Dnsmasq:
    """Router advertisements for ROUTED64/64 on vif1.3 (autonomous: SLAAC) with the managed flag,
    and DHCPv6 addresses from `first` on."""
    last = first.rsplit(":", 1)[0] + ":" + f"{int(first.rsplit(':', 1)[1], 16) + 0xff:x}"
    return Dnsmasq(lab, "vif1.3", "--enable-ra", f"--dhcp-range={first},{last},slaac,64,2m")


def dynamic6(lab: Lab) -> tuple[str | None, str | None]:
    """eth3's addresses in ROUTED64: (the SLAAC /64 one, the DHCPv6 /128 one), None while missing."""
    found: dict[str, str | None] = {"64": None, "128": None}
    shown = lab.run("guest", "ip", "-6", "-o", "addr", "show", "dev", "eth3", "scope", "global").stdout
    for line in shown.splitlines():
        address, prefixlen = line.split()[3].split("/")
        if ipaddress.ip_address(address) in ipaddress.ip_network(f"{ROUTED64}/64"):
            found[prefixlen] = address
    return found["64"], found["128"]


def follow_slaac_and_dhcpv6(lab: Lab, until: Callable[..., None], server: Dnsmasq,
                            renew: Callable[[], None]) -> Dnsmasq:
    """The checks every stack passes on eth3 with `server` advertising: a SLAAC and a DHCPv6
    address come, each gets its rule (watch's `until`) and answers from outside, with eth3's
    static address; then the server leases from another range, `renew` makes the stack ask
    again, and the new lease has its rule with nothing left for the old one. Returns the
    server that runs now (the caller stops it)."""
    static6 = "2001:db8:4309:2388::50"
    wait_until(lambda: all(dynamic6(lab)), "a SLAAC and a DHCPv6 address on eth3", timeout=60)
    slaac, leased = dynamic6(lab)
    rules6 = lambda: lab.run("guest", "ip", "-6", "rule").stdout  # noqa: E731
    until(lambda: f"from {ROUTED64}/64 " in rules6() and f"from {leased} " in rules6(),
          "rules for the advertised prefix and the leased address")
    assert all(lab.ping(address) for address in (slaac, leased, static6))

    server.stop()
    server = ra_and_dhcp6(lab, f"{ROUTED64}200")
    renew()
    wait_until(lambda: dynamic6(lab)[1] not in (None, leased), "a new DHCPv6 address", timeout=60)
    moved = dynamic6(lab)[1]
    ours = lambda: "".join(line for line in lab.dump().splitlines() if " proto 213" in line)  # noqa: E731
    until(lambda: f"from {moved} " in rules6() and leased not in ours(),
          "the new lease's rule, nothing left of the old one")
    assert all(lab.ping(address) for address in (moved, static6, "192.168.0.201"))
    return server


def _command(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
