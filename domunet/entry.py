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
    hotplug call takes its own light way too (_hotplug)."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        from domunet.version import version_line

        print(version_line())
        return 0
    if len(args) >= 3 and args[:2] == ["dom0", "hotplug"] and not any(a.startswith("-") for a in args):
        return _hotplug(args[2], args[3:])
    from domunet.core import pyroute2_diet

    pyroute2_diet.switch_on()  # the command owns its process (a library user's import is untouched)
    from domunet.cli import main as full

    return full(argv)


def _hotplug(command: str, settings: list[str]) -> int:
    """vif-domunet's call (`domunet dom0 hotplug COMMAND KEY=VALUE...`, options from the environment)
    without argparse: when the dom0 service answers, this is all a vif's hotplug costs."""
    import logging
    import os

    from domunet.core.errors import DomunetError, UsageError
    from domunet.core.model import DEFAULT_STATE_DIR
    from domunet.dom0 import client
    from domunet.logs import setup_logging

    setup_logging(0, "vif-domunet", syslog=True)
    log = logging.getLogger("domunet")
    env = dict(os.environ)
    pairs = dict(s.split("=", 1) for s in settings if "=" in s)
    try:
        from domunet.core import pyroute2_diet

        pyroute2_diet.switch_on()  # for the in-process way, if it comes to that
        ok = client.run_hotplug(command, pairs, env, env.get("DOMUNET_CONFIG") or None,
                                env.get("DOMUNET_STATE_DIR") or DEFAULT_STATE_DIR)
    except UsageError as error:
        log.error("%s", error)
        return 2
    except DomunetError as error:
        log.error("%s", error)
        return 1
    return 0 if ok else 1
