"""The namespace lab: an outside host, a provider router, a dom0 and a guest, in network namespaces.

Namespaces is the life cycle (unique names, always deleted, also on failure or Ctrl-C: nothing
here touches the network of the machine it runs on); Lab is the scenario on it, dom0 routed by
vif-domunet over a stand-in xenstore. `domunet lab` (domunet.demo) runs it; the tests extend it
in tests/labs.py with what only they need, and build their other labs on Namespaces.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

from domunet.core import tools
from domunet.core.errors import DomunetError, UsageError
from domunet.guest.names import rt_protos_text

log = logging.getLogger(__name__)

ROLES = ("out", "rtr", "dom0", "guest")
OUTSIDE4 = "203.0.113.10"
OUTSIDE6 = "2001:db8:ffff::10"
DOM0_UPLINK4 = "192.168.0.100"
DOM0_UPLINK6 = "2001:db8:4309:2388::2"
ROUTER_LAN6 = "2001:db8:4309:2389::1"


@dataclass(frozen=True)
class GuestNic:
    guest: str  # the guest's NIC
    vif: str  # its other end in dom0
    address: str
    prefixlen: int

    @property
    def version(self) -> int:
        return 6 if ":" in self.address else 4


NICS = (
    GuestNic("eth0", "vif1.0", "192.168.0.200", 24),
    GuestNic("eth1", "vif1.1", "192.168.0.201", 24),
    GuestNic("eth2", "vif1.2", "192.168.0.202", 24),
    GuestNic("eth3", "vif1.3", "2001:db8:4309:2388::50", 64),
)

SYSCTL_DEFAULTS = (
    "net/ipv6/conf/default/accept_dad=0",
    "net/ipv6/conf/all/accept_dad=0",
    "net/ipv6/conf/default/accept_ra=0",
    "net/ipv4/conf/all/rp_filter=1",
    "net/ipv4/conf/default/rp_filter=1",
)


_Self = TypeVar("_Self", bound="Namespaces")


class LabError(DomunetError):
    """The lab could not be built or driven; it has been removed again."""


#: What the lab runs: `ip` builds it, `nft` guards dom0's vifs (vif-domunet), `ping` probes it.
LAB_TOOLS = ("ip", "nft", "ping")


def check_can_run(who: str = "domunet lab") -> None:
    """Root and the lab's programs, checked before anything is built."""
    if os.geteuid() != 0:
        raise UsageError(f"{who}: run as root (the lab builds network namespaces)")
    tools.require(who, *LAB_TOOLS)


HOOK = Path(__file__).resolve().parent / "hooks" / "vif-domunet"

#: The stand-in for xenstore-read/-write/-list/-rm (its first argument names the tool).
XENSTORE_STANDIN = Path(__file__).resolve().parent / "demo_xenstore.sh"


def package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


class Namespaces:
    """Network namespaces for some roles, with unique names and a work directory; build with
    create() (or `with ... as lab`), always destroy(). Subclasses build in _create."""

    def __init__(self, roles: Sequence[str], tag: str | None = None, prefix: str = "domunet-lab") -> None:
        tag = tag or uuid.uuid4().hex[:8]
        self.ns = {role: f"dn-{tag}-{role}" for role in roles}
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-{tag}-"))
        self.etc: Path | None = None  # /etc/netns/NAME, when a subclass gives a namespace files of its own
        self.created: list[str] = []
        self.state_dir = self.workdir / "run"

    def run(self, role: str, *command: str, check: bool = True, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside one namespace (`ip netns exec`, so /etc/netns applies)."""
        argv = ["ip", "netns", "exec", self.ns[role], *command]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise LabError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def batch(self, role: str, lines: Sequence[str]) -> None:
        """Many `ip` commands in one process (the lab is built fast)."""
        run_batch(self.ns[role], lines)

    def sysctl(self, role: str, settings: Sequence[str]) -> None:
        """Write sysctls through /proc/sys inside the namespace (vif names contain dots)."""
        write_sysctls(self.ns[role], settings)

    def create(self: _Self) -> _Self:
        try:
            for name in self.ns.values():
                subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
                self.created.append(name)
                write_sysctls(name, SYSCTL_DEFAULTS)
            self._create()
        except BaseException as error:
            self.destroy()
            if isinstance(error, (subprocess.CalledProcessError, OSError)):
                raise LabError(f"building the lab failed: {_failure(error)}") from None
            raise
        return self

    def _create(self) -> None:
        """What the namespaces hold (they exist, with SYSCTL_DEFAULTS)."""

    def destroy(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.created.clear()
        if self.etc is not None:
            shutil.rmtree(self.etc, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.etc.parent.rmdir()  # /etc/netns, when nothing else is in it
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self: _Self) -> _Self:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class Lab(Namespaces):
    """The scenario: out, rtr, dom0 and guest; NICS between dom0's vifs and the guest."""

    def __init__(self, tag: str | None = None, guest_addresses: bool = True,
                 command: str | None = None, vif_hook: Path | None = None) -> None:
        """command: the shell words that start domunet (default: this interpreter, this package);
        vif_hook: the vif script dom0 runs. The package tests point both at an unpacked .deb."""
        super().__init__(ROLES, tag)
        self.guest_addresses = guest_addresses
        self.command = command or f'PYTHONPATH="{package_root()}" exec "{sys.executable}" -m domunet'
        self.vif_hook = vif_hook or HOOK
        self.etc = Path("/etc/netns") / self.ns["guest"]
        self.bin = self.workdir / "bin"
        self.xenstore = self.workdir / "xenstore"
    def _create(self) -> None:
        self._private_iproute2()
        ns = self.ns
        self.batch("out", [
            "link set lo up",
            f"link add eth0 type veth peer name wan netns {ns['rtr']}",
            "addr add 203.0.113.10/24 dev eth0",
            "addr add 2001:db8:ffff::10/64 dev eth0 nodad",
            "link set eth0 up",
            "route add default via 203.0.113.1",
            "route add default via 2001:db8:ffff::1",
        ])
        self.batch("rtr", [
            "link set lo up",
            f"link add lan type veth peer name eth0 netns {ns['dom0']}",
            "addr add 203.0.113.1/24 dev wan",
            "addr add 2001:db8:ffff::1/64 dev wan nodad",
            "addr add 192.168.0.1/24 dev lan",
            f"addr add {ROUTER_LAN6}/59 dev lan nodad",
            "link set wan up",
            "link set lan up",
        ])
        self.sysctl("rtr", ["net/ipv4/ip_forward=1", "net/ipv6/conf/all/forwarding=1"])
        dom0 = ["link set lo up"]
        for nic in NICS:
            dom0.append(f"link add {nic.vif} type veth peer name {nic.guest} netns {ns['guest']}")
        dom0 += [
            f"addr add {DOM0_UPLINK4}/24 dev eth0",
            f"addr add {DOM0_UPLINK6}/64 dev eth0 nodad",
            "link set eth0 up",
            "route add default via 192.168.0.1",
            f"route add {ROUTER_LAN6} dev eth0",
            f"route add default via {ROUTER_LAN6} dev eth0",
        ]
        self.batch("dom0", dom0)
        self.sysctl("dom0", ["net/ipv4/ip_forward=1", "net/ipv6/conf/all/forwarding=1"]
                    + [f"net/ipv4/conf/{dev}/rp_filter=1" for dev in ("eth0", *(n.vif for n in NICS))])
        if self.guest_addresses:
            guest = ["link set lo up"]
            for nic in NICS:
                flags = " nodad" if nic.version == 6 else ""
                guest += [f"addr add {nic.address}/{nic.prefixlen} dev {nic.guest}{flags}",
                          f"link set {nic.guest} up"]
            guest.append("route add default via 192.168.0.1 dev eth0")
            self.batch("guest", guest)
        self.sysctl("guest", [f"net/ipv4/conf/{nic.guest}/rp_filter=1" for nic in NICS])
        self._tools()

    def _tools(self) -> None:
        """Stand-ins for xenstore-read/-write over a directory, and a `domunet` command."""
        self.xenstore.mkdir()
        xenstore_tools(self.bin, {"domunet": self.command})

    def _private_iproute2(self) -> None:
        """The guest's own /etc/iproute2 (bound by `ip netns exec`), with domunet's names."""
        target = self.etc / "iproute2"
        if Path("/etc/iproute2").is_dir():
            shutil.copytree("/etc/iproute2", target, symlinks=True)
        (target / "rt_protos.d").mkdir(parents=True, exist_ok=True)
        (target / "rt_tables.d").mkdir(parents=True, exist_ok=True)
        (target / "rt_protos.d" / "domunet.conf").write_text(rt_protos_text())
        for stale in (target / "rt_tables.d").glob("domunet*"):
            stale.unlink()

    # --- dom0 through vif-domunet, with a stand-in xenstore --------------------------------

    def xenstore_write(self, key: str, value: str, domain: int = 0) -> None:
        """Write a key as the toolstack does; relative keys are relative to the domain's home."""
        path = self.xenstore / (key.lstrip("/") if key.startswith("/") else f"local/domain/{domain}/{key}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)

    def xenstore_read(self, key: str, domain: int = 0) -> str | None:
        path = self.xenstore / (key.lstrip("/") if key.startswith("/") else f"local/domain/{domain}/{key}")
        return path.read_text() if path.is_file() else None

    def xen_env(self, domain: int) -> dict[str, str]:
        """PATH with the stand-ins first, and the store seen from one domain."""
        return {"PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin", "XENSTORE_DIR": str(self.xenstore),
                "XENSTORE_HOME": f"local/domain/{domain}"}

    def vif_hotplug(self, command: str, vif: str, devid: int, *settings: str, domid: int = 1,
                    netdev: str = "") -> subprocess.CompletedProcess[str]:
        """Call hooks/xen/vif-domunet inside dom0 the way libxl does."""
        env = {
            **self.xen_env(0),
            "vif": vif, "XENBUS_PATH": f"backend/vif/{domid}/{devid}", "netdev": netdev,
            "DOMUNET_STATE_DIR": str(self.state_dir),
        }
        return self.run("dom0", "sh", str(self.vif_hook), command, *settings, check=False, env=env)

    def route_dom0_with_vif_domunet(self, ips: dict[str, str] | None = None) -> None:
        """dom0 configured only by vif-domunet, one vif at a time as xl brings them online; each
        vif's `ip` is its NIC's address, or what `ips` gives for that vif."""
        self.sysctl("dom0", [f"net/ipv4/conf/{dev}/rp_filter=0"
                             for dev in ("all", "default", "eth0", *(n.vif for n in NICS))])
        macs = {nic.guest: self.run("guest", "cat", f"/sys/class/net/{nic.guest}/address").stdout.strip()
                for nic in NICS}
        for devid, nic in enumerate(NICS):
            # what libxl writes: the backend's `ip`, the frontend's `backend` and `mac`
            self.xenstore_write(f"backend/vif/1/{devid}/ip", (ips or {}).get(nic.vif, nic.address))
            self.xenstore_write(f"device/vif/{devid}/backend", f"/local/domain/0/backend/vif/1/{devid}", domain=1)
            self.xenstore_write(f"device/vif/{devid}/mac", macs[nic.guest], domain=1)
            result = self.vif_hotplug("online", nic.vif, devid, "type_if=vif")
            status = self.xenstore_read(f"backend/vif/1/{devid}/hotplug-status")
            if result.returncode != 0 or status != "connected":
                raise LabError(f"vif-domunet online {nic.vif} failed ({status}): {result.stderr.strip()}")

    # --- what the tests and the demo look at -----------------------------------------------

    def ping(self, address: str, tries: int = 3, wait: float = 2.0, role: str = "out") -> bool:
        """Does address answer? Proxied neighbours answer late (proxy_delay), so allow tries."""
        for _ in range(tries):
            result = self.run(role, "ping", "-n", "-q", "-c", "1", "-W", str(wait), address, check=False)
            if result.returncode == 0:
                return True
        return False

    def answers(self, tries: int = 5) -> dict[str, bool]:
        """Which guest addresses answer the outside host, probed in parallel (a proxied IPv6
        neighbour answers its first solicitation late on a busy machine)."""
        with ThreadPoolExecutor(len(NICS)) as pool:
            results = pool.map(lambda nic: self.ping(nic.address, tries), NICS)
            return {nic.address: ok for nic, ok in zip(NICS, results)}



def xenstore_tools(directory: Path, more: dict[str, str] | None = None) -> None:
    """xenstore-read/-write/-list/-rm in directory: stand-ins over XENSTORE_DIR (and more
    commands: name -> the shell words it runs)."""
    directory.mkdir(parents=True, exist_ok=True)
    tools = {name: f'exec sh "{XENSTORE_STANDIN}" {name}'
             for name in ("xenstore-read", "xenstore-write", "xenstore-list", "xenstore-rm")}
    for name, words in {**tools, **(more or {})}.items():
        (directory / name).write_text(f'#!/bin/sh\n{words} "$@"\n')
        (directory / name).chmod(0o755)


def _failure(error: BaseException) -> str:
    """What a failed command said, in one line."""
    if isinstance(error, subprocess.CalledProcessError):
        said = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr or ""
        return f"{' '.join(map(str, error.cmd))} exited {error.returncode}: {said.strip()}"
    return str(error)


def run_batch(namespace: str, lines: Sequence[str]) -> None:
    result = subprocess.run(["ip", "-n", namespace, "-batch", "-"], input="\n".join(lines) + "\n",
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"ip -n {namespace} -batch failed: {result.stderr.strip()}")


def write_sysctls(namespace: str, settings: Sequence[str]) -> None:
    script = "".join(f"echo {value} > /proc/sys/{key}\n" for key, value in
                     (setting.split("=", 1) for setting in settings))
    subprocess.run(["ip", "netns", "exec", namespace, "sh", "-ec", script], check=True, capture_output=True)
