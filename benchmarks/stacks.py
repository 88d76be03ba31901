"""How long a guest's own network stack leaves domunet's state incomplete: from the moment the
stack (re)adds a NIC's address to the moment domunet's rules and routes for it are all back.

Read from the kernel's own event stream (`ip -ts monitor` in the guest namespace), so the time
is the kernel's and not the poller's: the stack's address event, then domunet's last route or
rule event (its protocol, 213) after it. Each stack as a guest runs it:
- ifupdown without watch: `ifdown eth1; ifup eth1`, the hook sets up;
- systemd-networkd with watch: `networkctl reconfigure eth1` (the kernel drops the routes that
  used the re-added address as source, watch puts them back);
- NetworkManager with watch: `nmcli connection down eth1; up eth1` (where it is installed);
- ifupdown's dhclient with watch: a lease bound again after `ifdown eth1; ifup eth1`.

Run as root: `python3 benchmarks/stacks.py` (or as part of benchmarks/run).
"""

from __future__ import annotations

import datetime
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Events:
    """`ip -ts monitor address route rule` in the guest namespace, from now on."""

    def __init__(self, namespace: str) -> None:
        self.process = subprocess.Popen(["ip", "-ts", "-n", namespace, "monitor", "address", "route", "rule"],
                                        stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)  # listening (the benchmark repeats: a late start costs a sample, not a result)

    def stop(self) -> list[tuple[float, str]]:
        time.sleep(0.3)
        self.process.terminate()
        output, _ = self.process.communicate(timeout=10)
        events = []
        for line in output.splitlines():
            if line.startswith("[") and "]" in line:
                stamp, text = line[1:].split("]", 1)
                events.append((datetime.datetime.fromisoformat(stamp).timestamp(), text.strip()))
        return events


def gap(events: list[tuple[float, str]], address: str, nic: str) -> float | None:
    """Seconds from the last add of `address` on `nic` to domunet's last add after it (None: the
    address did not come back, or domunet had nothing to put back)."""
    added = [t for t, text in events if not text.startswith("Deleted") and f"inet {address}/" in text
             and f" {nic} " in f" {text} "]
    if not added:
        return None
    ours = [t for t, text in events if t >= added[-1] and not text.startswith("Deleted")
            and (" proto 213" in text or " proto domunet" in text)]
    return (ours[-1] - added[-1]) if ours else None


def _summary(samples: list[float]) -> dict[str, float | int]:
    samples = sorted(samples)
    return {"samples": len(samples), "p50_ms": round(statistics.median(samples) * 1000, 1),
            "max_ms": round(samples[-1] * 1000, 1)}


def bench_stacks(repeats: int = 10) -> dict[str, dict[str, float | int]]:
    from tests.labs import Lab, Watcher, wait_until
    from tests.netns.test_networkd import NETWORKS, dropin
    from tests.shipped import shipped
    from tests.stacks import INTERFACES, LEASED, NETWORKD, NETWORKMANAGER, Networkd, NetworkManager, dhcp4, route_leases

    results: dict[str, dict[str, float | int]] = {}

    def measure(name: str, lab: Lab, change, address: str, settled) -> None:
        samples = []
        for _ in range(repeats):
            events = Events(lab.ns["guest"])
            change()
            wait_until(settled, f"{name}: converged", timeout=60)
            found = gap(events.stop(), address, "eth1")
            if found is not None:
                samples.append(found)
        if samples:
            results[name] = _summary(samples)

    def converged(lab: Lab, before: list[str]):
        return lambda: sorted(line for line in lab.dump().splitlines() if " proto 213" in line) == before

    def owned(lab: Lab) -> list[str]:
        return sorted(line for line in lab.dump().splitlines() if " proto 213" in line)

    def watched(name: str, lab: Lab, change, address: str) -> None:
        """The change, with domunet watch running (settled first) to put domunet's state back."""
        watcher = Watcher(lab)
        try:
            watcher.settle()
            measure(name, lab, change, address, converged(lab, owned(lab)))
        finally:
            watcher.stop()

    with Lab(guest_addresses=False) as lab:  # ifupdown, its hook, no watch
        lab.route_dom0_statically()
        (lab.workdir / "empty.conf").write_text("")
        lab.install_ifupdown(INTERFACES, shipped("hooks/ifupdown/domunet"), config=str(lab.workdir / "empty.conf"))
        lab.ifupdown("ifup", "-a")
        before = owned(lab)
        measure("ifupdown hook: ifdown/ifup eth1", lab,
                lambda: (lab.ifupdown("ifdown", "eth1"), lab.ifupdown("ifup", "eth1")), "192.168.0.201",
                converged(lab, before))
        lab.ifupdown("ifdown", "-a")

    if shutil.which("networkctl") and Path(NETWORKD).exists() and shutil.which("dbus-daemon"):
        with Lab(guest_addresses=False) as lab:
            lab.route_dom0_statically()
            networkd = Networkd(lab, NETWORKS, dropin())
            try:
                networkd.wait_configured("eth0", "eth1", "eth2", "eth3")
                watched("systemd-networkd + watch: networkctl reconfigure eth1", lab,
                        lambda: networkd.networkctl("reconfigure", "eth1"), "192.168.0.201")
            finally:
                networkd.stop()

    if shutil.which("nmcli") and Path(NETWORKMANAGER).exists():
        from tests.netns.test_networkmanager import CONNECTIONS

        with Lab(guest_addresses=False) as lab:
            lab.route_dom0_statically()
            manager = NetworkManager(lab, CONNECTIONS)
            try:
                manager.wait_activated("eth0", "eth1", "eth2", "eth3")
                watched("NetworkManager + watch: nmcli connection down/up eth1", lab,
                        lambda: [manager.nmcli("connection", verb, "eth1") for verb in ("down", "up")],
                        "192.168.0.201")
            finally:
                manager.stop()

    if shutil.which("dhclient"):
        from tests.netns.test_ifupdown_dhcp import DHCLIENT_CONF

        interfaces = INTERFACES.replace("iface eth1 inet static\n    address 192.168.0.201/24\n",
                                        "iface eth1 inet dhcp\n")
        with Lab(guest_addresses=False) as lab:
            lab.route_dom0_statically()
            route_leases(lab)
            lab.install_ifupdown(interfaces, shipped("hooks/ifupdown/domunet"), dhclient=DHCLIENT_CONF)
            server = dhcp4(lab, LEASED[0], lab.run("guest", "cat", "/sys/class/net/eth1/address").stdout.strip())
            try:
                lab.ifupdown("ifup", "-a")
                watched("ifupdown's dhclient + watch: a lease bound again", lab,
                        lambda: (lab.ifupdown("ifdown", "eth1"), lab.ifupdown("ifup", "eth1")), LEASED[0])
                lab.ifupdown("ifdown", "-a")
            finally:
                server.stop()
    return results


def render(results: dict[str, dict[str, float | int]]) -> str:
    lines = ["stack's address back -> domunet's rules and routes back (kernel event times):"]
    for name, row in results.items():
        lines.append(f"  {name}: p50 {row['p50_ms']} ms, max {row['max_ms']} ms ({row['samples']} samples)")
    return "\n".join(lines)


if __name__ == "__main__":
    measured = bench_stacks(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
    print(render(measured))
    print(json.dumps(measured, indent=1))
