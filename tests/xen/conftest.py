"""The real Xen suite: one lab for the session (by default a Debian 13 dom0 with Xen 4.20, a Debian
13 guest and a Debian 12 guest, PV under QEMU; DOMUNET_XEN_DOM0 and DOMUNET_XEN_GUESTS pick
others), with the .debs under test installed in every image (DOMUNET_DEBS from scripts/test, or
built from this checkout). Skipped, with the reason, only where QEMU cannot run at all."""

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.xen import xenlab

if os.geteuid() != 0:
    pytest.skip("the Xen suite needs root (it builds images and runs QEMU)", allow_module_level=True)
if shutil.which("qemu-system-x86_64") is None:
    pytest.skip("QEMU is not installed (scripts/test installs qemu-system-x86)", allow_module_level=True)


class Machine:
    """dom0 or a guest, as the tests drive them."""

    def __init__(self, role):
        self.role = role
        self.name = xenlab.DOMAINS.get(role, role)  # a guest's Xen domain name

    def run(self, *argv, timeout=120, check=True):
        result = xenlab.execute(self.role, list(argv), timeout=timeout)
        if check and result["rc"] != 0:
            raise AssertionError(f"{self.role}: {' '.join(argv)} exited {result['rc']}: "
                                 f"{result['stdout']}{result['stderr']}")
        return result

    def sh(self, script, timeout=120, check=True):
        return self.run("sh", "-c", script, timeout=timeout, check=check)

    def until(self, script, timeout=90, every=2):
        """Run script until it succeeds; its last result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.sh(script, check=False)
            if result["rc"] == 0 or time.monotonic() > deadline:
                return result
            time.sleep(every)


SEEN: list[str] = []  # what the lab runs, as its machines say it: the session's last lines


@pytest.fixture(scope="session")
def xen():
    """A fresh lab for the session. DOMUNET_XEN_LAB_REUSE=1 (by hand, while working on these
    tests) takes a lab started with `scripts/xen-lab up` as it is and leaves it running."""
    machines = {role: Machine(role) for role in ("dom0", *xenlab.GUESTS)}
    if os.environ.get("DOMUNET_XEN_LAB_REUSE") == "1" and xenlab.running_pid():
        SEEN.append(_seen(machines))
        yield machines
        return
    debs = os.environ.get("DOMUNET_DEBS")
    if xenlab.running_pid():
        xenlab.down()
    xenlab.up(xenlab.Lab.from_environment(), Path(debs) if debs else None)
    try:
        SEEN.append(_seen(machines))
        yield machines
    finally:
        xenlab.down()


def _seen(machines):
    """The releases and versions as dom0 and each guest report them (not as the lab asked)."""
    dom0 = machines["dom0"]
    xen = dom0.sh("xl info | awk '$1 == \"xen_version\" {print $3}'")["stdout"].strip()
    parts = [f"dom0: {_release(dom0)}, Xen {xen}"]
    for name in xenlab.GUESTS:
        parts.append(f"{name}: {_release(machines[name])}")
    return "; ".join(parts)


def _release(machine):
    return machine.sh(". /etc/os-release; echo \"$PRETTY_NAME, kernel $(uname -r), python3-pyroute2 "
                      "$(dpkg-query -W -f='${Version}' python3-pyroute2)\"")["stdout"].strip()


def pytest_terminal_summary(terminalreporter):
    for line in SEEN:
        terminalreporter.write_line(f"real Xen lab: {line}")


@pytest.fixture
def dom0(xen):
    return xen["dom0"]


def _running(xen, name):
    """A guest, running: a test that destroyed it (or a reboot that failed) does not leave the
    tests after it without one, so they pass in any order."""
    dom0 = xen["dom0"]
    if dom0.run("xl", "domid", name, check=False)["rc"] != 0:
        dom0.run("xl", "create", f"/etc/xen/{name}.cfg", timeout=300)
        xenlab.wait_booted(name)
        ready = xen[name].until("systemctl is-active domunet.service", timeout=120)
        assert ready["rc"] == 0, f"{name} created again did not finish domunet.service"
    return xen[name]


@pytest.fixture
def guest(xen):
    return _running(xen, "guest")


@pytest.fixture
def guest2(xen):
    return _running(xen, "guest2")


@pytest.fixture(params=xenlab.GUESTS)
def each_guest(xen, request):
    """A test about a guest runs against each of the lab's guests (they run different releases)."""
    return _running(xen, request.param)


@pytest.fixture
def other_guest(xen, each_guest):
    """The lab's other guest, running."""
    return _running(xen, next(name for name in xenlab.GUESTS if name != each_guest.name))
