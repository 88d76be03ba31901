"""The real Xen suite: one lab (Xen 4.17 and two Debian 12 PV guests under QEMU) for the session,
with the .debs under test installed in both images (DOMUNET_DEBS from scripts/test, or built
from this checkout). Skipped, with the reason, only where QEMU cannot run at all."""

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


@pytest.fixture(scope="session")
def xen():
    """A fresh lab for the session. DOMUNET_XEN_LAB_REUSE=1 (by hand, while working on these
    tests) takes a lab started with `scripts/xen-lab up` as it is and leaves it running."""
    if os.environ.get("DOMUNET_XEN_LAB_REUSE") == "1" and xenlab.running_pid():
        yield {role: Machine(role) for role in ("dom0", "guest", "guest2")}
        return
    debs = os.environ.get("DOMUNET_DEBS")
    if xenlab.running_pid():
        xenlab.down()
    xenlab.up(Path(debs) if debs else None)
    try:
        yield {role: Machine(role) for role in ("dom0", "guest", "guest2")}
    finally:
        xenlab.down()


@pytest.fixture
def dom0(xen):
    return xen["dom0"]


def _running(xen, name):
    """A guest, running: a test that destroyed it (or a reboot that failed) does not leave the
    tests after it without one, so they pass in any order."""
    dom0 = xen["dom0"]
    if dom0.run("xl", "domid", name, check=False)["rc"] != 0:
        dom0.run("xl", "create", f"/etc/xen/{name}.cfg", timeout=300)
        xenlab.wait_ready(name)
        ready = xen[name].until("systemctl is-active domunet.service", timeout=180)
        assert ready["rc"] == 0, f"{name} created again did not finish domunet.service"
    return xen[name]


@pytest.fixture
def guest(xen):
    return _running(xen, "guest")


@pytest.fixture
def guest2(xen):
    return _running(xen, "guest2")
