"""Namespace tests: each builds its own lab (unique names) and always deletes it."""

import os
import shutil
import signal
import sys

import pytest

from tests.dom0service import Service
from tests.labs import NICS, Lab
from tests.shipped import shipped

if os.geteuid() != 0 or shutil.which("ip") is None:
    pytest.skip("namespace tests need root and iproute2", allow_module_level=True)


@pytest.fixture
def lab():
    with Lab(vif_hook=shipped("hooks/xen/vif-domunet")) as built:
        yield built


@pytest.fixture
def routed_lab(lab):
    """The scenario of the guest-side issue: dom0 routes and proxies each guest address."""
    lab.route_dom0_statically()
    return lab


@pytest.fixture
def domunet(lab):
    """Run domunet in the guest with the interpreter running the tests (0.7.2 or 0.9.x)."""

    def run(*args, config=None):
        return lab.domunet(*args, config=config, python=sys.executable)

    return run


@pytest.fixture
def service(lab):
    """Start `domunet dom0 serve` in the lab's dom0 (any number of times); each is killed at the end."""
    lab.sysctl("dom0", [f"net/ipv4/conf/{dev}/rp_filter=0"
                        for dev in ("all", "default", "eth0", *(n.vif for n in NICS))])
    started = []

    def start():
        started.append(Service(lab))
        return started[-1]

    yield start
    for running in started:
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGCONT)  # a test that left it stopped
        running.stop(signal.SIGKILL)
