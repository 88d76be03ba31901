"""The `domunet` command's entry point: `--version` answered before anything heavy is imported.

`domunet --version` is how an admin (and a bug report, and the benchmark) asks what is
installed; it should cost about what the interpreter costs. Everything else goes to
domunet.cli, which parses the whole command line (and answers `--version` among other options
the same way).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """(No typing import here: it alone costs more than the rest of `--version`.)"""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        from domunet.version import version_line

        print(version_line())
        return 0
    from domunet.core import pyroute2_diet

    pyroute2_diet.switch_on()  # the command owns its process (a library user's import is untouched)
    from domunet.cli import main as full

    return full(argv)
