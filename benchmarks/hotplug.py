"""vif hotplug on dom0, side by side in one run: Xen's own vif-route (from Debian's
xen-utils-common, unpacked here), vif-domunet with `domunet dom0 serve` running, and vif-domunet
in-process (no service). Issue 23's measures:

- online and offline per vif, the three alternating vif by vif (`--sample` each), medians;
- `--vifs` vifs online one after another through the service: the first ten's median against the
  last ten's (does a vif cost more when many are online already?), then offline;
- the same vifs online `--concurrency` at a time (a boot storm), then offline the same way: total
  time, failures, every hotplug-status `connected`, and nothing of them left in the kernel;
- the service's peak RSS after all that.

Everything runs in two network namespaces made and deleted here (dom0 with an uplink and the
vifs, veth pairs whose other ends sit in a guest namespace), with a stand-in xenstore (a folder;
domunet.lab.xenstore_tools) for both scripts. The driver runs inside dom0's namespace, so each call
costs what libxl's would: the script and what it starts, nothing else.

    ./benchmarks/run                            (everything, Debian's python3)
    python3 benchmarks/hotplug.py --vifs 500    (this part alone; any python with domunet's deps)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
XEN_CACHE = Path("/var/tmp/domunet-bench-xen")
VIF_ROUTE = XEN_CACHE / "root/etc/xen/scripts/vif-route"
SHIM = ROOT / "hooks/xen/vif-domunet"


def xen_vif_route() -> Path:
    """Xen's vif-route as Debian ships it (apt-get download xen-utils-common, unpacked once)."""
    if not VIF_ROUTE.exists():
        XEN_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "xen-utils-common"], cwd=XEN_CACHE, check=True,
                       capture_output=True)
        package = next(XEN_CACHE.glob("xen-utils-common_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(package), str(XEN_CACHE / "root")], check=True)
    os.makedirs("/var/log/xen", exist_ok=True)  # where xen-hotplug-common.sh sends its stderr
    if shutil.which("ifconfig") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "net-tools"], check=True, capture_output=True)
    return VIF_ROUTE


def xen_version() -> str:
    package = next(XEN_CACHE.glob("xen-utils-common_*.deb"), None)
    return package.name.split("_")[1] if package else "?"


# --- the driver, inside dom0's namespace -------------------------------------------------------

def _call(spec: dict, way: str, command: str, i: int) -> float:
    """One hotplug call as libxl makes it; its wall time. RuntimeError unless it worked."""
    domid, devid = 1 + i // 1000, i % 1000
    store = Path(spec["store"])
    path = store / f"local/domain/0/backend/vif/{domid}/{devid}"
    if command == "online":
        path.mkdir(parents=True, exist_ok=True)
        (path / "ip").write_text(f"198.18.{i // 250}.{i % 250 + 1}")
        (path / "hotplug-status").unlink(missing_ok=True)
    env = {**spec["env"], "vif": f"vif{domid}.{devid}", "XENBUS_PATH": f"backend/vif/{domid}/{devid}",
           "netdev": "", "DOMUNET_STATE_DIR": spec["state"][way]}
    script = [spec["vif_route"]] if way == "vif-route" else ["/bin/sh", str(SHIM)]
    started = time.perf_counter()
    result = subprocess.run([*script, command, "type_if=vif"], env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    status = (path / "hotplug-status").read_text() if command == "online" else "connected"
    if result.returncode != 0 or status != "connected":
        raise RuntimeError(f"{way} {command} vif{domid}.{devid}: {status}: {result.stderr.strip()[-400:]}")
    return took


def _leftovers(spec: dict) -> list[str]:
    """What of the vifs is still in dom0's kernel and state after offline."""
    left = []
    for family in ("-4", "-6"):
        routes = subprocess.run(["ip", family, "route", "show", "table", "main"], capture_output=True, text=True)
        left += [line for line in routes.stdout.splitlines() if " dev vif" in line]
        proxies = subprocess.run(["ip", family, "neigh", "show", "proxy"], capture_output=True, text=True)
        left += [line for line in proxies.stdout.splitlines() if line.strip()]
    table = subprocess.run(["nft", "list", "table", "inet", "domunet"], capture_output=True, text=True)
    if table.returncode == 0 and "vif" in table.stdout:
        left.append("nft table inet domunet still names vifs")
    for state in spec["state"].values():
        left += [str(p) for p in Path(state, "dom0").glob("vif-*.json")]
    return left


def _storm(spec: dict, way: str, command: str, indices: list[int], concurrency: int) -> dict:
    failures: list[str] = []
    started = time.perf_counter()

    def one(i: int) -> None:
        try:
            _call(spec, way, command, i)
        except RuntimeError as error:
            failures.append(str(error))

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, indices))
    return {"seconds": time.perf_counter() - started, "failures": len(failures), "first_failures": failures[:3]}


def drive(spec: dict) -> dict:
    sample, vifs, concurrency = spec["sample"], spec["vifs"], spec["concurrency"]
    ways = ["vif-route", "service", "in-process"]
    per_vif: dict[str, list[float]] = {f"{command}, {way}": [] for command in ("online", "offline") for way in ways}
    base = vifs  # the sample's vifs come after the big run's
    for command in ("online", "offline"):
        for n in range(sample):  # the three alternate, each on vifs of its own
            for k, way in enumerate(ways):
                per_vif[f"{command}, {way}"].append(_call(spec, way, command, base + 3 * n + k))
    report: dict = {"per_vif_median_s": {name: statistics.median(values) for name, values in per_vif.items()}}
    online = [_call(spec, "service", "online", i) for i in range(vifs)]
    offline = [_call(spec, "service", "offline", i) for i in range(vifs)]
    report["one_after_another"] = {
        "online_first_ten_s": statistics.median(online[:10]), "online_last_ten_s": statistics.median(online[-10:]),
        "online_median_s": statistics.median(online), "offline_median_s": statistics.median(offline),
        "offline_first_ten_s": statistics.median(offline[:10]), "offline_last_ten_s": statistics.median(offline[-10:])}
    report["left_after_one_after_another"] = _leftovers(spec)
    for way in ("service", "vif-route"):
        storm = {"online": _storm(spec, way, "online", list(range(vifs)), concurrency)}
        store = Path(spec["store"])
        storm["connected"] = sum((store / f"local/domain/0/backend/vif/{1 + i // 1000}/{i % 1000}/hotplug-status")
                                 .read_text() == "connected" for i in range(vifs))
        storm["offline"] = _storm(spec, way, "offline", list(range(vifs)), concurrency)
        storm["left"] = _leftovers(spec) if way == "service" else []
        report[f"storm, {way}"] = storm
        if way == "vif-route":  # vif-route leaves its dom0 address on each vif: not domunet's to judge
            break
    return report


# --- the outside: namespaces, the service, the report ------------------------------------------

def bench_hotplug(vifs: int = 500, concurrency: int = 8, sample: int = 15, system_nftables: bool = False) -> dict:
    """`system_nftables`: Debian's python3-nftables for an interpreter that lacks it (a PyPI venv),
    as a venv made with --system-site-packages has it (README: installing from source)."""
    sys.path.insert(0, str(ROOT))
    from tests.labs import run_batch, xenstore_tools

    vif_route = xen_vif_route()
    tag = os.urandom(4).hex()
    ns, peer = f"dn-{tag}-dom0", f"dn-{tag}-guest"
    workdir = Path(f"/tmp/domunet-bench-{tag}")
    xenstore_tools(workdir / "bin")
    paths = [str(ROOT)]
    if system_nftables:
        (workdir / "nft").mkdir()
        (workdir / "nft" / "nftables").symlink_to("/usr/lib/python3/dist-packages/nftables")
        paths.append(str(workdir / "nft"))
    # as the installed console script starts (byte-compiled, no `-m`)
    (workdir / "bin" / "domunet").write_text(
        f"#!{sys.executable}\nimport sys\nsys.path[:0] = {paths!r}\n"
        "from domunet.entry import main\nsys.exit(main())\n")
    (workdir / "bin" / "domunet").chmod(0o755)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "domunet")], check=True)
    (workdir / "empty.conf").write_text("")
    total = vifs + 3 * sample
    env = {"PATH": f"{workdir / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "XENSTORE_DIR": str(workdir / "xenstore"),
           "XENSTORE_HOME": "local/domain/0", "DOMUNET_CONFIG": str(workdir / "empty.conf")}
    state = {way: str(workdir / way) for way in ("service", "in-process", "vif-route")}
    for folder in state.values():
        os.makedirs(folder, mode=0o755)
    for name in (ns, peer):
        subprocess.run(["ip", "netns", "add", name], check=True)
    service = None
    try:
        run_batch(ns, ["link set lo up", "link add eth0 type veth peer name up0", "link set eth0 up",
                       "addr add 192.168.0.100/24 dev eth0", "route add default via 192.168.0.1",
                       *(f"link add vif{1 + i // 1000}.{i % 1000} type veth peer name g{i} netns {peer}"
                         for i in range(total))])
        service = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "domunet", "--config",
                                    str(workdir / "empty.conf"), "--state-dir", state["service"], "dom0", "serve"],
                                   env={**env, "PYTHONPATH": ":".join(paths)}, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not Path(state["service"], "dom0.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        spec = {"sample": sample, "vifs": vifs, "concurrency": concurrency, "store": env["XENSTORE_DIR"],
                "env": env, "state": state, "vif_route": str(vif_route)}
        driven = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--drive", json.dumps(spec)],
                                capture_output=True, text=True)
        if driven.returncode != 0:
            raise RuntimeError(f"the driver failed: {driven.stderr.strip()[-2000:]}")
        report = json.loads(driven.stdout)
        status = Path(f"/proc/{service.pid}/status").read_text()
        report["service_peak_rss_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
        report.update({"vifs": vifs, "concurrency": concurrency, "sample": sample, "xen": xen_version(),
                       "system_nftables": system_nftables})
        return report
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)
        for name in (ns, peer):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        subprocess.run(["rm", "-rf", str(workdir)])


def render(report: dict) -> str:
    m = report["per_vif_median_s"]
    peer = m["online, vif-route"]
    one = report["one_after_another"]
    lines = [f"vif hotplug: Xen {report['xen']}'s vif-route, vif-domunet with the service and in-process "
             f"({report['sample']} vifs each, alternating), medians per vif:"]
    lines += [f"  {name:<24} {seconds * 1000:7.1f} ms  ({seconds / peer:.2f}x vif-route's online)"
              for name, seconds in m.items()]
    lines += [f"{report['vifs']} vifs one after another through the service: online first ten "
              f"{one['online_first_ten_s'] * 1000:.1f} ms, last ten {one['online_last_ten_s'] * 1000:.1f} ms "
              f"({one['online_last_ten_s'] / one['online_first_ten_s']:.2f}x, target <= 1.2); offline "
              f"{one['offline_first_ten_s'] * 1000:.1f} -> {one['offline_last_ten_s'] * 1000:.1f} ms; left in the "
              f"kernel: {len(report['left_after_one_after_another'])}"]
    for way in ("service", "vif-route"):
        storm = report.get(f"storm, {way}")
        if storm:
            lines.append(f"{report['vifs']} vifs {report['concurrency']} at a time, {way}: online "
                         f"{storm['online']['seconds']:.1f} s ({storm['online']['failures']} failures, "
                         f"{storm['connected']} connected), offline {storm['offline']['seconds']:.1f} s "
                         f"({storm['offline']['failures']} failures), left: {len(storm['left'])}")
    budget = report["vifs"] * peer
    lines.append(f"  target: each at most {report['vifs']} x vif-route's per-vif median = {budget:.1f} s")
    lines.append(f"service peak RSS: {report['service_peak_rss_mb']:.1f} MB (target < 80)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vifs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sample", type=int, default=15)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "hotplug-last.json"))
    parser.add_argument("--system-nftables", action="store_true",
                        help="give an interpreter without nftables' bindings Debian's python3-nftables")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        print(json.dumps(drive(json.loads(args.drive))))
        return 0
    if os.geteuid() != 0:
        print("benchmarks: run as root (namespaces)", file=sys.stderr)
        return 2
    report = bench_hotplug(args.vifs, args.concurrency, args.sample, args.system_nftables)
    from domunet.version import versions

    report["versions"] = versions()
    print(render(report))
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
