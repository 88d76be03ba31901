"""The pure modules stay pure: importing them loads no kernel library."""

import json
import os
import subprocess
import sys

from domunet.lab import package_root

PURE = ["domunet.model", "domunet.plan", "domunet.diff", "domunet.render", "domunet.status", "domunet.config",
        "domunet.watch", "domunet.state"]


def test_importing_the_pure_modules_loads_no_pyroute2_nor_netifaces():
    code = ("import sys\n" + "".join(f"import {name}\n" for name in PURE)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'netifaces')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_importing_the_netlink_layer_starts_no_process():
    """pyroute2 0.7's config runs `uname -p` and `file` on import, and its IPRoute's base class
    imports unittest.mock; domunet.kernel spares both (issue 17): no process is started,
    platform is left as it was, and on 0.7 unittest.mock is not loaded (0.9 loads it itself)."""
    code = """
import json, platform, subprocess, sys
started = []
class Recorded(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        started.append(args)
        super().__init__(args, *rest, **kwargs)
subprocess.Popen = Recorded
architecture = platform.architecture
import domunet.kernel
print(json.dumps({"started": started, "platform restored": platform.architecture is architecture,
                  "mock": "unittest.mock" in sys.modules, "0.9": "pyroute2.netlink.core" in sys.modules}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": package_root()})
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["started"] == [] and found["platform restored"]
    assert found["mock"] == found["0.9"]
