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
    without argparse: handed to the dom0 service when it runs (domunet.dom0.light, all a vif costs
    then), else done here."""
    import os

    from domunet.dom0 import light

    env = dict(os.environ)
    handed = light.hand_over(command, settings, env)
    if not isinstance(handed, str):
        return handed
    return in_process_hotplug(command, dict(s.split("=", 1) for s in settings if "=" in s), env,
                              env.get("DOMUNET_CONFIG") or None, env.get("DOMUNET_STATE_DIR") or None, handed)


def in_process_hotplug(command: str, settings: dict[str, str], env: dict[str, str], config: str | None,
                       state_dir: str | None, handed: str, verbosity: int = 0) -> int:
    """The hotplug call done in this process, its exit status (libxl's contract: 1 when online
    failed, after hotplug-status error; 2 for a call that is not valid)."""
    import logging

    from domunet.core import pyroute2_diet
    from domunet.core.errors import DomunetError, exit_status
    from domunet.core.model import DEFAULT_STATE_DIR
    from domunet.dom0 import client
    from domunet.logs import setup_logging

    setup_logging(verbosity, "vif-domunet", syslog=True)
    log = logging.getLogger("domunet")
    pyroute2_diet.switch_on()
    try:
        ok = client.run_hotplug(command, settings, env, config, state_dir or DEFAULT_STATE_DIR, handed)
    except DomunetError as error:
        log.error("%s", error)
        return exit_status(error)
    return 0 if ok else 1
