"""Lab scaffolding the tests and the benchmarks share, kept out of the shipped package (the
demo's Lab stays in domunet.demo): a guest with many NICs and addresses, and dom0's state dump."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from domunet.demo import SYSCTL_DEFAULTS, Lab, package_root, run_batch, write_sysctls

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


class ScaleLab:
    """A guest with n NICs on one /24 (eth0 holds the default route), NIC i also holding m IPv6
    addresses in a /64 of its own with its gateway in it; the other ends in a peer namespace.
    For the reliability tests and the benchmarks: big plans, no pings."""

    def __init__(self, nics: int, addresses6: int, tag: str | None = None) -> None:
        tag = tag or uuid.uuid4().hex[:8]
        self.nics, self.addresses6 = nics, addresses6
        self.ns = {"guest": f"dn-{tag}-guest", "peer": f"dn-{tag}-peer"}
        self.workdir = Path(tempfile.mkdtemp(prefix=f"domunet-scale-{tag}-"))
        self.config = self.workdir / "domunet.conf"
        self.state_dir = self.workdir / "run"
        self.created: list[str] = []

    @staticmethod
    def nic(i: int) -> str:
        return f"eth{i}"

    @staticmethod
    def prefix6(i: int) -> str:
        return f"2001:db8:{0x100 + i:x}::"

    def create(self) -> ScaleLab:
        try:
            for name in self.ns.values():
                subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
                self.created.append(name)
            for role in self.ns:
                write_sysctls(self.ns[role], SYSCTL_DEFAULTS)
            lines = ["link set lo up"]
            config = ["rt_tables_file = \"\"", "[interfaces]"]
            for i in range(self.nics):
                nic = self.nic(i)
                lines += [f"link add {nic} type veth peer name p{i} netns {self.ns['peer']}",
                          f"addr add 10.0.0.{10 + i}/24 dev {nic}"]
                lines += [f"addr add {self.prefix6(i)}{j + 1:x}/64 dev {nic} nodad"
                          for j in range(self.addresses6)]
                lines.append(f"link set {nic} up")
                if self.addresses6:
                    config += [f"[[{nic}]]", f"gateway6 = {self.prefix6(i)}ffff"]
            lines.append("route add default via 10.0.0.1 dev eth0")
            run_batch(self.ns["guest"], lines)
            run_batch(self.ns["peer"], [f"link set p{i} up" for i in range(self.nics)])
            self.config.write_text("\n".join(config) + "\n")
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.created.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ScaleLab:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

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
