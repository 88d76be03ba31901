"""The built Debian packages: contents, dependencies, maintainer scripts, and the lab scenario
run by the unpacked /usr/bin/domunet and /etc/xen/scripts/vif-domunet on Debian's python3.

scripts/test builds the packages and sets DOMUNET_DEBS (the folder with the .debs) and
DOMUNET_UNPACKED (both unpacked into one root); without them these tests are skipped.
"""

import os
import subprocess
from pathlib import Path

import pytest

DEBS = os.environ.get("DOMUNET_DEBS")
ROOT = Path(os.environ.get("DOMUNET_UNPACKED", "/nonexistent"))
pytestmark = pytest.mark.skipif(not DEBS, reason="set by scripts/test after building the packages")


def deb(name):
    return next(Path(DEBS).glob(f"{name}_*_all.deb"))


def field(name, key):
    return subprocess.run(["dpkg-deb", "-f", str(deb(name)), key], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_dependencies_are_debians_own_packages():
    depends = field("domunet-common", "Depends")
    for package in ("python3-pyroute2", "python3-netifaces", "python3-configobj", "iproute2"):
        assert package in depends
    assert "domunet-common (= " in field("domunet", "Depends")
    dom0 = field("domunet-dom0", "Depends")
    assert "nftables" in dom0 and "python3-nftables" in dom0 and "domunet-common (= " in dom0
    assert "domunet (" not in dom0  # a dom0 gets none of the guest's units and udev rule (issue 13)


def contents(name):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb(name))], capture_output=True, text=True, check=True).stdout
    return {line.split(" -> ")[0].split()[-1].lstrip(".") for line in listing.splitlines()}


def test_each_package_holds_its_own_side():
    common, guest, dom0 = contents("domunet-common"), contents("domunet"), contents("domunet-dom0")
    assert "/usr/bin/domunet" in common and "/etc/iproute2/rt_protos.d/domunet.conf" in common
    assert {"/lib/systemd/system/domunet.service", "/lib/udev/rules.d/90-domunet.rules",
            "/etc/network/if-up.d/domunet", "/usr/lib/systemd/networkd.conf.d/domunet.conf",
            "/usr/lib/NetworkManager/dispatcher.d/90-domunet", "/etc/dhcp/dhclient-exit-hooks.d/domunet"} <= guest
    assert {f"/usr/lib/networkd-dispatcher/{state}.d/domunet"
            for state in ("routable", "degraded", "configured", "no-carrier", "off")} <= guest
    assert "/etc/xen/scripts/vif-domunet" in dom0
    # dom0's own service, and none of the guest's units, udev rule or network hooks
    assert "/lib/systemd/system/domunet-dom0.service" in dom0
    files = [path for path in dom0 if not path.endswith("/")]  # the folders they are in aside
    assert not [path for path in files if ("systemd" in path and "domunet-dom0.service" not in path)
                or "udev" in path or "network/" in path]


def test_files_are_in_place():
    for path in ("usr/bin/domunet", "etc/network/if-up.d/domunet", "etc/network/if-post-down.d/domunet",
                 "lib/systemd/system/domunet.service", "lib/systemd/system/domunet-iface@.service",
                 "lib/systemd/system/domunet-watch.service", "lib/systemd/system/domunet-dom0.service",
                 "lib/udev/rules.d/90-domunet.rules", "etc/iproute2/rt_protos.d/domunet.conf", "etc/domunet.conf",
                 "usr/share/man/man8/domunet.8.gz", "usr/share/man/man8/vif-domunet.8.gz",
                 "etc/xen/scripts/vif-domunet", "usr/lib/python3/dist-packages/domunet/cli.py"):
        assert (ROOT / path).exists(), path
    assert os.access(ROOT / "etc/xen/scripts/vif-domunet", os.X_OK)
    assert os.access(ROOT / "etc/network/if-up.d/domunet", os.X_OK)
    for hook in ("usr/lib/NetworkManager/dispatcher.d/90-domunet", "usr/lib/networkd-dispatcher/off.d/domunet"):
        assert os.access(ROOT / hook, os.X_OK), hook  # NetworkManager skips a script not executable


def test_removal_leaves_the_network_alone_and_purge_removes_what_domunet_wrote(tmp_path):
    subprocess.run(["dpkg-deb", "-e", str(deb("domunet")), str(tmp_path / "control")], check=True)
    scripts = "".join((tmp_path / "control" / name).read_text() for name in ("prerm", "postrm"))
    assert "domunet teardown" not in scripts and "ip rule" not in scripts and "ip route" not in scripts
    assert "rm -f /etc/iproute2/rt_tables.d/domunet.conf" in scripts
    conffiles = (tmp_path / "control" / "conffiles").read_text().split()
    assert "/etc/domunet.conf" in conffiles
    assert "/etc/dhcp/dhclient-exit-hooks.d/domunet" in conffiles  # the admin's to change; kept on removal
    subprocess.run(["dpkg-deb", "-e", str(deb("domunet-common")), str(tmp_path / "common")], check=True)
    assert "/etc/iproute2/rt_protos.d/domunet.conf" in (tmp_path / "common" / "conffiles").read_text().split()


def test_installed_domunet_on_debians_python_passes_the_lab_scenario():
    from tests.labs import NICS, Lab

    site = ROOT / "usr/lib/python3/dist-packages"
    command = f'PYTHONPATH="{site}" exec /usr/bin/python3 "{ROOT}/usr/bin/domunet"'
    with Lab(command=command, vif_hook=ROOT / "etc/xen/scripts/vif-domunet") as lab:
        version = lab.run("guest", str(lab.bin / "domunet"), "--version").stdout
        assert version.startswith("domunet ")
        lab.route_dom0_with_vif_domunet()
        result = lab.run("guest", str(lab.bin / "domunet"), "--config", str(lab.workdir / "domunet.conf"),
                         "--state-dir", str(lab.state_dir), "setup", check=False)
        assert result.returncode == 0, result.stderr
        assert lab.answers() == {nic.address: True for nic in NICS}
        pyroute2 = lab.run("guest", "/usr/bin/python3", "-c",
                           f"import sys; sys.path.insert(0, '{site}'); import domunet.core.kernel, pyroute2; "
                           "print(pyroute2.__file__)").stdout
        assert pyroute2.startswith("/usr/lib/python3/dist-packages/pyroute2")


def test_the_demo_runs_from_the_installed_package():
    site = ROOT / "usr/lib/python3/dist-packages"
    assert (site / "domunet/hooks/vif-domunet").exists()
    result = subprocess.run(["/usr/bin/python3", str(ROOT / "usr/bin/domunet"), "lab"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all four addresses answer: yes" in result.stdout


def test_the_package_ships_every_module_and_the_demos_files():
    """The .deb holds the whole source tree's package (core/, guest/, dom0/ included: a subpackage
    missing from pyproject.toml would be missing here) and what the demo runs."""
    site = ROOT / "usr/lib/python3/dist-packages/domunet"
    # the tree the .debs were built from (scripts/test builds in $DOMUNET_DEBS/domunet), else this checkout's
    built_from = Path(os.environ.get("DOMUNET_DEBS", "/nonexistent")) / "domunet" / "domunet"
    source = built_from if built_from.is_dir() else Path(__file__).resolve().parents[2] / "domunet"
    assert (source / "core").is_dir(), source

    def modules(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))

    assert modules(site) == modules(source)
    assert (site / "demo_xenstore.sh").is_file() and (site / "hooks/vif-domunet").is_file()


def test_the_installed_command_answers_version_as_cheaply_as_the_interpreter():
    """/usr/bin/domunet starts at domunet.entry (issue 17): `--version` imports neither argparse
    nor pyroute2, and prints the same line as the full command line."""
    site = ROOT / "usr/lib/python3/dist-packages"
    script = (ROOT / "usr/bin/domunet").read_text()
    assert "domunet.entry" in script
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    heavy = "m == 'domunet.cli' or m.split('.')[0] in ('argparse', 'pyroute2')"
    probe = (f"import runpy, sys; sys.argv = ['domunet', '--version']\n"
             f"try:\n    runpy.run_path({str(ROOT / 'usr/bin/domunet')!r}, run_name='__main__')\n"
             f"except SystemExit:\n    pass\n"
             f"print(sorted(m for m in sys.modules if {heavy}))")
    fast = subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert fast.returncode == 0, fast.stderr
    line, imported = fast.stdout.splitlines()
    assert line.startswith("domunet ") and imported == "[]"
    full = subprocess.run(["/usr/bin/python3", str(ROOT / "usr/bin/domunet"), "-v", "--version"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert full.stdout == line + "\n"
