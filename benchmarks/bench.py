"""domunet's benchmark: the seeds' way, `ip -batch`, and domunet, side by side in one run.

Run as root (`benchmarks/run`); everything happens in namespaces made and deleted here.
Each measurement alternates the contenders, repeats, and reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from domunet.version import versions  # noqa: E402
from tests.labs import ScaleLab, run_batch  # noqa: E402

SIZES = ((1, 1), (4, 16), (16, 16), (16, 256))
HOOK = ROOT / "hooks" / "ifupdown" / "domunet"


def timed_rss(argv: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS of a child, read with wait4 (`ip netns exec` execs, same pid)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {process.stderr.read().decode().strip()}")
    return elapsed, usage.ru_maxrss


def ip_commands(lab: ScaleLab) -> list[str]:
    """The changes of a setup from scratch, as `ip` commands (domunet's own plan)."""
    result = subprocess.run(lab.argv("plan"), capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def seeds_way(lab: ScaleLab, commands: list[str]) -> float:
    """One `ip` process per kernel change, as the hand-made scripts do."""
    started = time.perf_counter()
    for command in commands:
        words = command.split()
        subprocess.run(["ip", "-n", lab.ns["guest"], *words[1:]], check=True, capture_output=True)
    return time.perf_counter() - started


def batch_way(lab: ScaleLab, commands: list[str]) -> float:
    """The same changes through `ip -batch`, one process per family: the floor for the kernel work."""
    started = time.perf_counter()
    for family in ("-4", "-6"):
        lines = [" ".join(c.split()[2:]) for c in commands if c.split()[1] == family]
        if lines:
            result = subprocess.run(["ip", "-n", lab.ns["guest"], family, "-batch", "-"],
                                    input="\n".join(lines) + "\n", capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(result.stderr)
    return time.perf_counter() - started


#: How the installed `domunet` script starts (the console script that pip and Debian's pybuild
#: write): import the entry point, call it. `python3 -m domunet` would add runpy's import.
LAUNCH = "import sys; from domunet.entry import main; sys.exit(main())"


def launched(argv: list[str]) -> list[str]:
    """A lab command line (`... python3 -m domunet ARGS`) as the installed script runs it."""
    at = argv.index("-m")
    assert argv[at + 1] == "domunet"
    return [*argv[:at], "-c", LAUNCH, *argv[at + 2:]]


def compile_package() -> None:
    """Byte-compile domunet as an installation does (Debian's postinst runs py3compile, pip
    compiles on install): without it every run would pay ~40 ms compiling its own modules, which
    no installed domunet pays (and PYTHONDONTWRITEBYTECODE, set on some machines, forbids caching)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "domunet")], check=True,
                   stdout=subprocess.DEVNULL)


def teardown(lab: ScaleLab) -> None:
    subprocess.run(lab.argv("teardown"), check=True, capture_output=True)


#: (h): what a guest run imports before it does anything (pyroute2, netifaces, configobj and
#: domunet's modules), so that (d) - (h) is the run's own work.
IMPORTS = ("from domunet.core import pyroute2_diet; pyroute2_diet.switch_on(); "
           "import domunet.cli, domunet.guest.pipeline")


def bench_guest(nics: int, addresses6: int, repeats: int) -> dict[str, object]:
    samples: dict[str, list[float]] = {k: [] for k in "abcdefgh"}
    rss: list[int] = []
    with ScaleLab(nics, addresses6) as lab:
        commands = ip_commands(lab)
        pristine = lab.dump()
        for _ in range(repeats):
            samples["a"].append(seeds_way(lab, commands))
            reference = lab.dump()
            teardown(lab)
            samples["b"].append(batch_way(lab, commands))
            assert lab.dump() == reference, "ip -batch did not give the same state"
            teardown(lab)
            assert lab.dump() == pristine
            elapsed, peak = timed_rss(launched(lab.argv("setup")))
            assert lab.dump() == reference, "domunet did not give the same state"
            samples["c"].append(elapsed)
            rss.append(peak)
            samples["d"].append(timed_rss(launched(lab.argv("setup")))[0])
            samples["e"].append(timed_rss(launched(lab.argv("teardown")))[0])
            prefix = lab.argv()[:lab.argv().index("-m")]  # ip netns exec ... python3
            samples["f"].append(timed_rss([*prefix, "-c", LAUNCH, "--version"])[0])
            samples["g"].append(timed_rss([*prefix, "-c", "pass"])[0])
            samples["h"].append(timed_rss([*prefix, "-c", IMPORTS])[0])
    medians = {k: statistics.median(v) for k, v in samples.items()}
    return {"nics": nics, "addresses6": addresses6, "objects": len(commands), "repeats": repeats,
            "seconds": medians, "peak_rss_kib_setup": max(rss)}


DOM0_SEED = """#!/bin/sh
# The hand-made way (see the seed): per address one route and one proxy entry, each its own `ip`.
set -e
vif=$1; shift
ip -6 addr add 2001:db8:4309:2388::2/128 dev $vif nodad
ip link set $vif up
for addr in "$@"; do
    ip -6 route add $addr dev $vif src 2001:db8:4309:2388::2
    ip -6 neighbor add proxy $addr dev eth0
done
"""


def bench_dom0(addresses: int, repeats: int) -> dict[str, object]:
    """vif-domunet online with 64 IPv6 addresses against the seed's per-address script."""
    tag = os.urandom(4).hex()
    ns = f"dn-{tag}-dom0"
    workdir = Path(f"/tmp/domunet-bench-{tag}")
    workdir.mkdir()
    script = workdir / "seed-vif"
    script.write_text(DOM0_SEED)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run_batch(ns, ["link set lo up", "link add eth0 type veth peer name peer0", "link set eth0 up",
                    "link set peer0 up", "addr add 192.168.0.100/24 dev eth0",
                    "addr add 2001:db8:4309:2388::2/64 dev eth0 nodad", "route add default via 192.168.0.1",
                    "link add vif1.0 type veth peer name guest0"])
        guest = [f"2001:db8:4309:2388::{0x1000 + i:x}" for i in range(addresses)]
        ours = ["ip", "netns", "exec", ns, "env", f"PYTHONPATH={ROOT}", sys.executable, "-c", LAUNCH,
                "--state-dir", str(workdir / "run"), "dom0"]
        # the nftables table through libnftables in-process (python3-nftables), and through `nft -f -`
        command = [*ours[:5], "DOMUNET_NFT=command", *ours[5:]]
        times: dict[str, list[float]] = {"seed": [], "vif-domunet": [], "vif-domunet, nft -f -": []}
        for _ in range(repeats):
            times["seed"].append(timed_rss(["ip", "netns", "exec", ns, "sh", str(script), "vif1.0", *guest])[0])
            run_batch(ns, ["addr flush dev vif1.0 scope global", "link set vif1.0 down",
                        *(f"neigh del proxy {a} dev eth0" for a in guest)])
            for name, argv in (("vif-domunet", ours), ("vif-domunet, nft -f -", command)):
                times[name].append(timed_rss([*argv, "online", "--vif", "vif1.0", "--uplink", "eth0",
                                              "--ip", " ".join(guest)])[0])
                timed_rss([*argv, "offline", "--vif", "vif1.0"])
        return {"addresses": addresses, "repeats": repeats,
                "seconds": {name: statistics.median(values) for name, values in times.items()}}
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        subprocess.run(["rm", "-rf", str(workdir)])


#: A guest run's start-up, part by part, timed inside one fresh interpreter (each part after the
#: ones before it, so nothing is counted twice): what the interpreter brings is (g).
_STARTUP_PARTS = """
import json, sys, time
parts, last = {}, time.perf_counter()
def part(name):
    global last
    now = time.perf_counter()
    parts[name] = now - last
    last = now
import argparse, logging, json, re, typing, dataclasses, ipaddress, contextlib, fcntl, fnmatch, zlib, shutil
import subprocess, tempfile, errno, socket, stat
part("standard library (argparse, logging, typing, dataclasses, ipaddress, ...)")
import configobj, validate, netifaces
part("configobj, validate, netifaces")
import domunet.core.model
part("domunet.core.model (its dataclasses)")
from domunet.core import pyroute2_diet
pyroute2_diet.switch_on()  # as the command does
import domunet.core.kernel
part("pyroute2 (as domunet.core.kernel imports it)")
import domunet.cli, domunet.guest.pipeline
part("the rest of domunet's modules")
print(json.dumps(parts))
"""


def bench_startup(repeats: int) -> dict[str, float]:
    """Where a guest run's imports go: medians of each part (see _STARTUP_PARTS)."""
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        result = subprocess.run([sys.executable, "-c", _STARTUP_PARTS], capture_output=True, text=True,
                                check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        for name, seconds in json.loads(result.stdout).items():
            samples.setdefault(name, []).append(seconds)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_hook(repeats: int) -> dict[str, float]:
    """The ifupdown hook for loopback and IFACE=--all: it must not start Python."""
    result = {}
    for iface, method in (("lo", "loopback"), ("--all", "")):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "IFACE": iface, "MODE": "start", "METHOD": method}
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run(["sh", str(HOOK)], env=env, check=True)
            times.append(time.perf_counter() - started)
        result[iface] = statistics.median(times)
    return result


def _proc(pid: int) -> dict[str, int]:
    """CPU ticks, wake-ups (voluntary context switches) and peak RSS of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"ticks": int(fields[11]) + int(fields[12]),
            "wakeups": int(status["voluntary_ctxt_switches"]) + int(status["nonvoluntary_ctxt_switches"]),
            "hwm_kib": int(status["VmHWM"].split()[0])}


def bench_watch(changes: int, idle: float) -> dict[str, object]:
    """`domunet watch` in the lab's guest: latency from one address change to converged, what an
    idle watch costs, peak RSS, and a storm of 1,000 address changes in under a second."""
    import queue
    import re
    import threading

    from tests.labs import Lab

    converged = re.compile(r"converged: .* \(run (\d+)\)")
    with Lab() as lab:
        lab.route_dom0_statically()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        argv = ["ip", "netns", "exec", lab.ns["guest"], sys.executable, "-m", "domunet", "-v", "--config",
                str(lab.workdir / "domunet.conf"), "--state-dir", str(lab.state_dir), "watch"]
        process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        runs: queue.Queue[float] = queue.Queue()

        def read() -> None:
            for line in process.stderr:  # type: ignore[union-attr]
                if converged.search(line):
                    runs.put(time.perf_counter())

        threading.Thread(target=read, daemon=True).start()
        try:
            runs.get(timeout=30)
            latencies = []
            for n in range(changes):
                verb = "add" if n % 2 == 0 else "del"
                started = time.perf_counter()
                lab.batch("guest", [f"addr {verb} 192.168.0.240/24 dev eth1"])
                latencies.append(runs.get(timeout=10) - started)
                time.sleep(0.1)
            time.sleep(1)
            before = _proc(process.pid)
            time.sleep(idle)
            after = _proc(process.pid)
            lines = []
            for n in range(500):
                address = f"192.168.{100 + n // 250}.{n % 250 + 1}/24"
                lines += [f"addr add {address} dev eth1", f"addr del {address} dev eth1"]
            while not runs.empty():
                runs.get()
            started = time.perf_counter()
            lab.batch("guest", lines)
            storm_runs, last = 0, started
            while True:
                try:
                    last = runs.get(timeout=2.0)
                    storm_runs += 1
                except queue.Empty:
                    break
        finally:
            process.terminate()
            process.wait(10)
    latencies.sort()
    return {
        "latency_p50_s": latencies[len(latencies) // 2],
        "latency_p95_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))],
        "idle_seconds": idle,
        "idle_cpu_ticks": after["ticks"] - before["ticks"],
        "idle_wakeups": after["wakeups"] - before["wakeups"],
        "peak_rss_mb": after["hwm_kib"] / 1024,
        "storm_runs": storm_runs,
        "storm_seconds": last - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "last.json"))
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmarks: run as root (namespaces)", file=sys.stderr)
        return 2
    sizes = SIZES[:2] if args.quick else SIZES
    compile_package()
    guest = []
    for nics, addresses6 in sizes:
        repeats = max(3, args.repeats // 2) if nics * addresses6 > 1000 else args.repeats
        guest.append(bench_guest(nics, addresses6, repeats))
        print(f"measured {nics}x{addresses6}", file=sys.stderr)
    dom0 = bench_dom0(64, args.repeats)
    from hotplug import bench_hotplug  # benchmarks/hotplug.py: vif-route, the service, in-process

    dom0["hotplug"] = bench_hotplug(30 if args.quick else 500, 8, 5 if args.quick else 15)
    hook = bench_hook(20)
    startup = bench_startup(max(5, args.repeats))
    watch = bench_watch(20 if args.quick else 40, 5.0 if args.quick else 30.0)
    from stacks import bench_stacks  # benchmarks/stacks.py: each network stack's change to converged

    stacks = bench_stacks(3 if args.quick else 10)
    found = versions()
    report = {"versions": found, "python": found["python"], "pyroute2": found["pyroute2"],
              "machine": platform.machine(), "cpus": os.cpu_count(), "guest": guest, "dom0": dom0,
              "hook_seconds": hook, "startup_seconds": startup, "watch": watch, "stacks": stacks,
              "ratios": ratios(guest, dom0)}
    print(render(report))
    from stacks import render as render_stacks

    print(render_stacks(stacks))
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


def ratios(guest: list[dict], dom0: dict) -> dict[str, float]:
    by_size = {(g["nics"], g["addresses6"]): g for g in guest}
    out = {}
    if (16, 16) in by_size:
        s = by_size[(16, 16)]["seconds"]
        out["c/a at 16x16 (target <= 0.35)"] = s["c"] / s["a"]
        out["(c-f)/b at 16x16 (moonshot <= 3)"] = (s["c"] - s["f"]) / s["b"]
    for key, g in by_size.items():
        s = g["seconds"]
        out[f"d/f at {key[0]}x{key[1]} (target <= 2)"] = s["d"] / s["f"]
    for key, g in by_size.items():
        s = g["seconds"]
        out[f"  d/h at {key[0]}x{key[1]} (the run's own work on top of its imports)"] = s["d"] / s["h"]
    for key, g in by_size.items():
        s = g["seconds"]
        out[f"f/g at {key[0]}x{key[1]} (target <= 1.5)"] = s["f"] / s["g"]
    if (16, 256) in by_size and (4, 16) in by_size:
        def per_object(g: dict) -> float:
            return (g["seconds"]["c"] - g["seconds"]["f"]) / g["objects"]
        out["per-object (c-f) 16x256 / 4x16 (target <= 1.5)"] = per_object(by_size[(16, 256)]) / per_object(
            by_size[(4, 16)])
        out["peak RSS of (c) at 16x256, MB (target < 60)"] = by_size[(16, 256)]["peak_rss_kib_setup"] / 1024
    out["dom0 online 64 addresses vif-domunet/seed (target <= 0.35)"] = (
        dom0["seconds"]["vif-domunet"] / dom0["seconds"]["seed"])
    return out


def render(report: dict) -> str:
    found = report.get("versions") or {"domunet": "?", **report}
    lines = [f"domunet {found['domunet']}, pyroute2 {found['pyroute2']}, Python {found['python']}, "
             f"{report['cpus']} cpus", "",
             f"{'size':>7} {'objects':>7} {'(a) seeds':>10} {'(b) batch':>10} {'(c) setup':>10} "
             f"{'(d) again':>10} {'(e) teardown':>12} {'(f) version':>11} {'(g) python':>10} "
             f"{'(h) imports':>11} {'RSS(c) MB':>9}"]
    for g in report["guest"]:
        s = g["seconds"]
        lines.append(f"{g['nics']:>3}x{g['addresses6']:<3} {g['objects']:>7} {s['a']:>10.3f} {s['b']:>10.3f} "
                     f"{s['c']:>10.3f} {s['d']:>10.3f} {s['e']:>12.3f} {s['f']:>11.3f} {s.get('g', 0):>10.3f} "
                     f"{s.get('h', 0):>11.3f} {g['peak_rss_kib_setup'] / 1024:>9.1f}")
    d = report["dom0"]["seconds"]
    lines += ["", f"dom0 online, 64 IPv6 addresses: seed script {d['seed']:.3f} s, "
                  f"vif-domunet {d['vif-domunet']:.3f} s"
                  + (f" (with `nft -f -` instead of libnftables in-process: {d['vif-domunet, nft -f -']:.3f} s)"
                     if "vif-domunet, nft -f -" in d else ""),
              "ifupdown hook: " + ", ".join(f"IFACE={k} {v * 1000:.1f} ms" for k, v in report["hook_seconds"].items()),
              ""]
    if report.get("startup_seconds"):
        lines += ["a guest run's imports, after the interpreter's own start-up (g):"]
        lines += [f"  {seconds * 1000:6.1f} ms  {name}" for name, seconds in report["startup_seconds"].items()]
        lines += [""]
    w = report.get("watch")
    if w:
        lines += [f"watch: one address change to converged p50 {w['latency_p50_s'] * 1000:.0f} ms, "
                  f"p95 {w['latency_p95_s'] * 1000:.0f} ms (goal p95 < 300); idle {w['idle_seconds']:.0f} s: "
                  f"{w['idle_cpu_ticks']} CPU ticks, {w['idle_wakeups']} wake-ups (goal 0); peak RSS "
                  f"{w['peak_rss_mb']:.1f} MB (goal < 40); storm of 1,000 changes: {w['storm_runs']} runs, "
                  f"converged {w['storm_seconds']:.2f} s after it began", ""]
    lines += ["ratios:"]
    lines += [f"  {name}: {value:.2f}" for name, value in report["ratios"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
