"""Command line: verbs, output, and the one place where errors become exit codes.

Exit codes: 0 done; 1 failed to apply (what this run changed was rolled back);
2 bad usage or bad config (nothing was changed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from domunet import __version__
from domunet.errors import ApplyError, ConfigError, DomunetError, KernelError, UsageError

log = logging.getLogger("domunet")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="domunet",
        description="Per-interface policy routing for Xen guests: every address answers through its own NIC.",
    )
    parser.add_argument("--version", action="version", version=f"domunet {__version__}")
    parser.add_argument("-c", "--config", metavar="PATH",
                        help="config file (default /etc/domunet.conf; a missing default file means defaults)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail (-vv: debug)")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")
    verbs.required = True
    for name, text in (
        ("setup", "create or update the tables and rules (of the named interfaces, or all)"),
        ("teardown", "remove what domunet made (for the named interfaces, or all)"),
        ("plan", "print what setup would change, as ip commands; change nothing"),
    ):
        verb = verbs.add_parser(name, help=text, description=text)
        verb.add_argument("interfaces", nargs="*", metavar="IFACE")
    status = verbs.add_parser("status", help="show per interface what domunet does and what the kernel does")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    verbs.add_parser("lab", help="demo: build a Xen-like lab in network namespaces, run domunet, clean up")
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("domunet: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    if args.verb == "lab":
        from domunet.lab import demo

        return EXIT_OK if demo() else EXIT_FAILED

    from domunet import config as configuration
    from domunet.apply import apply
    from domunet.diff import Scope, diff, scope_for
    from domunet.discover import discover
    from domunet.kernel import Kernel
    from domunet.model import State
    from domunet.names import table_names_after, write_table_names
    from domunet.plan import plan
    from domunet.render import ip_command

    config = configuration.load(args.config)
    with Kernel() as kernel:
        facts, owned = discover(kernel)
        names = list(getattr(args, "interfaces", []) or [])
        if args.verb in ("setup", "plan"):
            missing = [n for n in names if facts.interface(n) is None]
            if missing:
                raise UsageError(f"no such interface: {', '.join(missing)}")
        if args.verb == "status":
            from domunet.status import render, report

            rows = report(facts, plan(config, facts), owned, kernel.route_get)
            print(json.dumps(rows, indent=2) if args.json else render(rows))
            return EXIT_OK
        desired = plan(config, facts) if args.verb != "teardown" else State()
        scope: Scope | None = scope_for(names, desired, owned) if names else None
        changes = diff(desired, owned, scope)
        if args.verb == "plan":
            for change in changes:
                print(ip_command(change))
            if not changes:
                log.info("nothing to do")
            return EXIT_OK
        apply(changes, kernel, config.gateway_strategy)
        write_table_names(config.rt_tables_file, table_names_after(owned, changes))
        log.info("%s: %d change(s)", args.verb, len(changes))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return _run(args)
    except (UsageError, ConfigError) as error:
        log.error("%s", error)
        return EXIT_USAGE
    except (ApplyError, KernelError) as error:
        log.error("%s", error)
        return EXIT_FAILED
    except DomunetError as error:
        log.error("%s", error)
        return EXIT_FAILED
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
