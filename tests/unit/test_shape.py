"""The pure modules stay pure: importing them loads no kernel library."""

import subprocess
import sys

PURE = ["domunet.model", "domunet.plan", "domunet.diff", "domunet.render", "domunet.status", "domunet.config",
        "domunet.watch", "domunet.state"]


def test_importing_the_pure_modules_loads_no_pyroute2_nor_netifaces():
    code = ("import sys\n" + "".join(f"import {name}\n" for name in PURE)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'netifaces')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
