"""The `domunet` command's entry point: `--version` answered before anything heavy is imported.

`domunet --version` is how an admin (and a bug report, and the benchmark) asks what is
installed; it should cost about what the interpreter costs. Everything else goes to
domunet.cli, which parses the whole command line (and answers `--version` among other options
the same way).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """(No typing import here: it alone costs more than the rest of `--version`.) vif-domunet's
    hotplug call is first handed to the dom0 service without argparse (domunet.dom0.client, all
    a vif costs then); when the service does not take it, the one hotplug path (domunet.cli's)
    does it in-process."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        from domunet.version import version_line

        print(version_line())
        return 0
    handed = None
    if len(args) >= 3 and args[:2] == ["dom0", "hotplug"] and not any(a.startswith("-") for a in args):
        import os

        from domunet.dom0 import client

        answer = client.hand_over(args[2], args[3:], dict(os.environ))
        if not isinstance(answer, str):
            return answer
        handed = answer
    from domunet.core import pyroute2_diet

    pyroute2_diet.switch_on()  # the command owns its process (a library user's import is untouched)
    from domunet.cli import main as full

    return full(argv, handed)
