"""Lab scaffolding the tests and the benchmarks share, kept out of the shipped package: the demo's
scenario (domunet.lab) with what only tests need (a guest config, ifupdown, dumps, a statically routed
dom0), a guest with many NICs and addresses, and dom0's state dump."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from domunet import lab as scenario
from domunet.lab import (  # noqa: F401 (the tests' one place to import the lab's facts from)
    DOM0_UPLINK4,
    DOM0_UPLINK6,
    NICS,
    OUTSIDE4,
    OUTSIDE6,
    ROUTER_LAN6,
    SYSCTL_DEFAULTS,
    LabError,
    Namespaces,
    package_root,
    run_batch,
    write_sysctls,
    xenstore_tools,
)

#: The guest's config: the one fact domunet cannot discover, dom0's /128 as eth3's gateway.
GUEST_CONFIG = f"""\
# domunet lab: the guest's /etc/domunet.conf
[interfaces]
[[eth3]]
gateway6 = {DOM0_UPLINK6}
"""


class Lab(scenario.Lab):
    """The demo's scenario (domunet.lab), with the guest's config written and what the tests look at."""

    def _create(self) -> None:
        super()._create()
        (self.workdir / "domunet.conf").write_text(GUEST_CONFIG)

    def destroy(self) -> None:
        """What the tests started in the namespaces (a DHCP client, a daemon) ends with them."""
        for name in self.created:
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        super().destroy()

    def route_dom0_statically(self) -> None:
        """dom0 as admins configure it by hand today: /32 and /128 host routes, proxy ARP and NDP."""
        lines = [f"link set {nic.vif} up" for nic in NICS]
        lines += [f"addr add {DOM0_UPLINK4}/32 dev {nic.vif}" for nic in NICS if nic.version == 4]
        lines += [f"addr add {DOM0_UPLINK6}/128 dev {nic.vif} nodad" for nic in NICS if nic.version == 6]
        for nic in NICS:
            if nic.version == 4:
                lines.append(f"route add {nic.address}/32 dev {nic.vif} src {DOM0_UPLINK4}")
            else:
                lines.append(f"route add {nic.address}/128 dev {nic.vif}")
                lines.append(f"neigh add proxy {nic.address} dev eth0")
        self.batch("dom0", lines)
        proxies = [f"net/ipv4/conf/{dev}/proxy_arp=1" for dev in ("eth0", *(n.vif for n in NICS))]
        self.sysctl("dom0", proxies + ["net/ipv6/conf/eth0/proxy_ndp=1", "net/ipv6/conf/all/proxy_ndp=1"])

    # --- the guest's network configured by ifupdown, with domunet's hook --------------------

    def install_ifupdown(self, interfaces: str, hook: Path, config: str | None = None,
                         path: str | None = None, dhclient: str | None = None) -> None:
        """A private /etc/network for the guest (bound by `ip netns exec`), hook in place.

        ifupdown gives hooks a fresh environment, so the hook is wrapped in one line that
        points it at the lab's domunet, config and state; the hook itself runs unchanged.

        With `dhclient` (its dhclient.conf), the guest takes leases as a Debian guest does,
        from ifupdown's dhclient, with a private /etc/dhcp, /etc/resolv.conf, /run and
        /var/lib/dhcp (the pid files and leases of two labs on one machine stay apart, and
        nothing of the machine's own is written).
        """
        etc = self.etc / "network"
        for directory in ("if-pre-up.d", "if-up.d", "if-down.d", "if-post-down.d", "interfaces.d"):
            (etc / directory).mkdir(parents=True, exist_ok=True)
        (etc / "interfaces").write_text(interfaces)
        exports = " ".join(f"{key}='{value}'" for key, value in self.hook_env(config, path).items())
        for directory in ("if-up.d", "if-post-down.d"):
            wrapper = etc / directory / "domunet"
            wrapper.write_text(f"#!/bin/sh\nexport {exports}\nexec sh '{hook}' \"$@\"\n")
            wrapper.chmod(0o755)
        (self.workdir / "ifstate").mkdir(exist_ok=True)
        if dhclient is not None:
            for directory in ("dhclient-enter-hooks.d", "dhclient-exit-hooks.d"):
                (self.etc / "dhcp" / directory).mkdir(parents=True, exist_ok=True)
            (self.etc / "dhcp" / "dhclient.conf").write_text(dhclient)
            (self.etc / "resolv.conf").write_text("")
            for directory in ("guest-run", "guest-var-lib-dhcp"):
                (self.workdir / directory).mkdir(exist_ok=True)

    def hook_env(self, config: str | None = None, path: str | None = None) -> dict[str, str]:
        """What the hooks see: the lab's domunet first on PATH (unless path says otherwise), the
        lab's config and state."""
        return {
            "PATH": path or f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "DOMUNET_CONFIG": config or str(self.workdir / "domunet.conf"),
            "DOMUNET_STATE_DIR": str(self.state_dir),
        }

    def ifupdown(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [command, f"--state-dir={self.workdir / 'ifstate'}", *args]
        if (self.workdir / "guest-run").is_dir():  # the guest's own /run and /var/lib/dhcp (see install_ifupdown)
            argv = ["sh", "-c", 'mount --bind "$0" /run && mount --bind "$1" /var/lib/dhcp && shift && exec "$@"',
                    str(self.workdir / "guest-run"), str(self.workdir / "guest-var-lib-dhcp"), *argv]
        return self.run("guest", *argv, check=False, env=self.hook_env())

    def add_guest_nic(self, guest: str, vif: str, *addresses: str) -> None:
        """One more vif pair, e.g. for a /32 address whose gateway lies outside it."""
        self.batch("dom0", [f"link add {vif} type veth peer name {guest} netns {self.ns['guest']}",
                            f"link set {vif} up"])
        self.batch("guest", [*(f"addr add {a} dev {guest}" for a in addresses), f"link set {guest} up"])

    def domunet(self, *args: str, config: str | None = None, check: bool = False,
                python: str | None = None, role: str = "guest") -> subprocess.CompletedProcess[str]:
        """Run domunet inside a namespace, as the guest's admin would."""
        config = config or str(self.workdir / "domunet.conf")
        env = dict(os.environ, PYTHONPATH=package_root())
        command = [python or sys.executable, "-m", "domunet", "--config", config, "--state-dir", str(self.state_dir),
                   *args]
        return self.run(role, *command, check=check, env=env)

    def answers(self, tries: int = 5, patience: float = 30.0) -> dict[str, bool]:
        """The demo's probe. An address that does not answer is traced (what each hop knows of it,
        to stderr: pytest shows it with a failure) and, when the caller expects answers (five tries),
        probed again until `patience` runs out: CI has seen an IPv6 address silent for over ten
        seconds on a loaded machine; whether it answers later, the trace and this say."""
        answered = super().answers(tries)
        late = [address for address, ok in answered.items() if not ok]
        if late and tries >= 5:  # fewer tries: the caller expects silence from some
            for address in late:
                print(self.trace(address), file=sys.stderr)
            started = time.monotonic()
            while late and time.monotonic() - started < patience:
                late = [address for address in late if not self.ping(address, tries=1)]
            for address in answered:
                answered[address] = answered[address] or address not in late
            print(f"--- after {time.monotonic() - started:.1f} s more: still silent: {late or 'none'}",
                  file=sys.stderr)
        return answered

    def trace(self, address: str) -> str:
        family = "-6" if ":" in address else "-4"
        lines = [f"--- {address} did not answer: what each hop knows"]
        probe = self.run("out", "ping", "-n", "-c", "1", "-W", "2", address, check=False)
        lines.append(f"out: ping: {probe.returncode} {probe.stdout.strip()} {probe.stderr.strip()}")
        for role, command in (("out", ["addr", "show"]), ("out", ["route", "show"]), ("out", ["neigh", "show"]),
                              ("rtr", ["route", "get", address]), ("rtr", ["neigh", "show"]),
                              ("dom0", ["neigh", "show"]),
                              ("dom0", ["neigh", "show", "proxy"]), ("dom0", ["route", "get", address]),
                              ("guest", ["neigh", "show"]), ("guest", ["route", "get", OUTSIDE6 if family == "-6"
                                                                        else OUTSIDE4, "from", address]),
                              ("guest", ["addr", "show"]), ("guest", ["rule", "show"])):
            result = self.run(role, "ip", family, *command, check=False)
            lines.append(f"{role}: ip {family} {' '.join(command)}: {result.stdout.strip()} {result.stderr.strip()}")
        return "\n".join(lines)

    def dump(self, role: str = "guest") -> str:
        """The routing state the tests compare: rules and routes of every table, both families,
        tables and protocols as numbers."""
        parts = []
        for family in ("-4", "-6"):
            for what in (["rule", "show"], ["route", "show", "table", "all"]):
                parts.append(self.run(role, "ip", "-N", family, *what).stdout)  # numbers: no names files
        return "".join(parts)


DOM0_SYSCTLS = (
    "net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/eth0/proxy_arp",
    "net/ipv6/conf/eth0/proxy_ndp", "net/ipv6/conf/all/proxy_ndp", "net/ipv6/conf/eth0/accept_ra",
)


def dom0_dump(lab: Lab, skip: str | None = None) -> str:
    """dom0's state as the dom0 tests compare it; lines about `skip` (a deleted vif) left out."""
    parts = [lab.dump("dom0")]
    for command in (["ip", "-o", "addr"], ["ip", "-br", "link"], ["ip", "-4", "neigh", "show", "proxy"],
                    ["ip", "-6", "neigh", "show", "proxy"], ["nft", "list", "ruleset"]):
        parts.append(lab.run("dom0", *command).stdout)
    script = "".join(f'echo "{key}=$(cat /proc/sys/{key})"\n' for key in DOM0_SYSCTLS)
    parts.append(lab.run("dom0", "sh", "-c", script).stdout)
    lines = "".join(parts).splitlines()
    return "\n".join(line for line in lines if not (skip and skip in line)) + "\n"


class ScaleLab(Namespaces):
    """A guest with n NICs on one /24 (eth0 holds the default route), NIC i also holding m IPv6
    addresses in a /64 of its own with its gateway in it; the other ends in a peer namespace.
    For the reliability tests and the benchmarks: big plans, no pings."""

    def __init__(self, nics: int, addresses6: int, tag: str | None = None) -> None:
        super().__init__(("guest", "peer"), tag, prefix="domunet-scale")
        self.nics, self.addresses6 = nics, addresses6
        self.config = self.workdir / "domunet.conf"

    @staticmethod
    def nic(i: int) -> str:
        return f"eth{i}"

    @staticmethod
    def prefix6(i: int) -> str:
        return f"2001:db8:{0x100 + i:x}::"

    def _create(self) -> None:
        lines = ["link set lo up"]
        config = ["rt_tables_file = \"\"", "[interfaces]"]
        for i in range(self.nics):
            nic = self.nic(i)
            lines += [f"link add {nic} type veth peer name p{i} netns {self.ns['peer']}",
                      f"addr add 10.0.0.{10 + i}/24 dev {nic}"]
            lines += [f"addr add {self.prefix6(i)}{j + 1:x}/64 dev {nic} nodad" for j in range(self.addresses6)]
            lines.append(f"link set {nic} up")
            if self.addresses6:
                config += [f"[[{nic}]]", f"gateway6 = {self.prefix6(i)}ffff"]
        lines.append("route add default via 10.0.0.1 dev eth0")
        self.batch("guest", lines)
        self.batch("peer", [f"link set p{i} up" for i in range(self.nics)])
        self.config.write_text("\n".join(config) + "\n")

    def argv(self, *args: str, python: str | None = None) -> list[str]:
        """The command line that runs domunet in the guest namespace."""
        return ["ip", "netns", "exec", self.ns["guest"], "env", f"PYTHONPATH={package_root()}",
                python or sys.executable, "-m", "domunet", "--config", str(self.config),
                "--state-dir", str(self.state_dir), *args]

    def domunet(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=300)

    def dump(self) -> str:
        parts = []
        for family in ("-4", "-6"):
            for what in (["rule", "show"], ["route", "show", "table", "all"]):
                parts.append(subprocess.run(["ip", "-N", "-n", self.ns["guest"], family, *what],
                                            capture_output=True, text=True, check=True).stdout)
        return "".join(parts)


def wait_until(condition: object, what: str, timeout: float = 30.0, every: float = 0.05,
               explain: object = None) -> None:
    """Wait for a condition with a deadline (never assert a duration: CI machines are busy).
    `explain`: what to say besides, when the deadline passes (the logs that tell why)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            said = f"\n{explain()}" if explain else ""  # type: ignore[operator]
            raise AssertionError(f"not within {timeout} s: {what}{said}")
        time.sleep(every)


class Monitor:
    """`ip monitor` in a namespace, listening before the constructor returns.

    A fixed sleep for it to start missed events on a busy machine; instead a marker route (in table
    97, which nothing else uses) is added and deleted, and its events are read: everything after
    that is seen. stop() does the same again, so everything before it has been read too. The
    marker's own events are left out of what is returned."""

    MARKER = "198.51.100.254"

    def __init__(self, namespace: str, *objects: str, deadline: float = 30.0) -> None:
        self.namespace, self.deadline = namespace, deadline
        self.process = subprocess.Popen(["ip", "-n", namespace, "monitor", *objects], stdout=subprocess.PIPE,
                                        text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self._mark()
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _mark(self) -> list[str]:
        """Add and delete the marker; the lines read until its deletion shows, without its own."""
        for verb in ("add", "del"):
            subprocess.run(["ip", "-n", self.namespace, "route", verb, "unreachable", f"{self.MARKER}/32",
                            "table", "97"], check=True, capture_output=True)
        seen = []
        while True:
            line = self.next_line(self.deadline)
            if line is None:
                raise AssertionError(f"ip monitor in {self.namespace} did not show its marker: {seen[-5:]}")
            if self.MARKER in line:
                if line.startswith("Deleted"):
                    return seen
                continue
            seen.append(line)

    def next_line(self, timeout: float) -> str | None:
        """The next event's line, or None when none came within timeout (or the monitor ended)."""
        try:
            return self._lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def wait_for(self, condition: object, timeout: float = 30.0) -> list[str]:
        """Lines until one for which condition(line) is true (that one last); AssertionError if none
        comes within timeout."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            line = self.next_line(deadline - time.monotonic())
            if line is None:
                raise AssertionError(f"no such event within {timeout} s; saw {seen[-5:]}")
            seen.append(line)
            if condition(line):  # type: ignore[operator]
                return seen

    def stop(self) -> str:
        """Every event since the last line read, up to now."""
        try:
            return "".join(line + "\n" for line in self._mark())
        finally:
            self.process.terminate()
            self.process.wait()


def assert_ok(result):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def write_config(lab, text):
    path = lab.workdir / "custom.conf"
    path.write_text(text)
    return str(path)


def status(lab, devid):
    """A vif's hotplug-status, as vif-domunet wrote it into the stand-in xenstore."""
    return lab.xenstore_read(f"backend/vif/1/{devid}/hotplug-status")


def owned(lab):
    """domunet's rules and routes, both families (its protocol names them)."""
    return sorted(line for line in lab.dump().splitlines() if " proto 213" in line or " proto domunet" in line)


def foreign(lab):
    """Everything else: what networkd and the kernel made."""
    return sorted(line for line in lab.dump().splitlines() if " proto 213" not in line)


def rules(lab):
    return lab.run("guest", "ip", "rule").stdout


CONVERGED = re.compile(r"converged: (\d+) change\(s\) in [\d.]+ ms \(run (\d+)\)")


class Watcher:
    """`domunet watch` in the guest namespace; its stderr is collected as it comes."""

    def __init__(self, lab, config=None, extra=(), env=None, first_run=True):
        """first_run: wait for the first run to converge (False: for a watch whose runs fail)."""
        self.lab = lab
        self.config = config or str(lab.workdir / "domunet.conf")
        env = dict(os.environ, PYTHONPATH=package_root(), **(env or {}))
        argv = ["ip", "netns", "exec", lab.ns["guest"], sys.executable, "-m", "domunet", "-v", *extra,
                "--config", self.config, "--state-dir", str(lab.state_dir), "watch"]
        self.process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True,
                                        stdin=subprocess.DEVNULL)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if first_run:
            self.until(lambda: self.runs() >= 1, "the first run")

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def runs(self):
        return sum(1 for line in self.lines if CONVERGED.search(line))

    def until(self, condition, what, timeout=30.0):
        """Wait for a condition with a deadline. How fast watch converges is measured by
        benchmarks/bench.py (bench_watch), not asserted here: CI machines are busy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            assert self.process.poll() is None, "watch ended: " + "\n".join(self.lines)
            time.sleep(0.02)
        raise AssertionError(f"not within {timeout} s: {what}\n" + "\n".join(self.lines[-30:]))

    def settle(self, quiet=0.5):
        """Wait until no run has started for `quiet` seconds."""
        runs, since = self.runs(), time.monotonic()
        while time.monotonic() - since < quiet:
            time.sleep(0.05)
            if self.runs() != runs:
                runs, since = self.runs(), time.monotonic()

    def stop(self, sig=signal.SIGTERM):
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        return self.process.returncode
