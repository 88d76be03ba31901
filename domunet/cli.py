"""Command line: verbs, output, and the one place where errors become exit codes (exit_code).

Exit codes: 0 done; 1 failed to apply (what this run changed was rolled back);
2 bad usage or bad config (nothing was changed); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, NoReturn, Sequence

from domunet.core.errors import ConfigError, DomunetError, MissingTool, UsageError
from domunet.core.model import DEFAULT_STATE_DIR
from domunet.core.state import Layout
from domunet.logs import MAX_MESSAGE, OneLine, one_line, setup_logging  # noqa: F401 (MAX_MESSAGE: tests)

log = logging.getLogger("domunet")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error, and exit 2."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.split(" ", 1)[-1] + ": " if " " in self.prog else ""
        self.exit(EXIT_USAGE, one_line(f"domunet: {where}{message} (see domunet --help)") + "\n")


#: Options every verb and dom0 action takes, before or after it (`domunet -v setup`,
#: `domunet setup -c F -v`, `domunet dom0 online --state-dir D ...`): level 0 is before the
#: verb, 1 after it, 2 after a dom0 action. The value given last (deepest) wins; -v adds up.
_LEVELS = 3


def _common_options(parser: argparse.ArgumentParser, level: int) -> None:
    suffix = f"_{level}" if level else ""
    config_default = state_default = None  # after the verb: None means "not given here"
    if level == 0:
        config_default = os.environ.get("DOMUNET_CONFIG") or None
        state_default = os.environ.get("DOMUNET_STATE_DIR") or DEFAULT_STATE_DIR
    parser.add_argument("-c", "--config", metavar="PATH", dest=f"config{suffix}", default=config_default,
                        help="config file (default $DOMUNET_CONFIG or /etc/domunet.conf; a missing default "
                             "file means defaults)")
    parser.add_argument("--state-dir", metavar="DIR", dest=f"state_dir{suffix}", default=state_default,
                        help=f"lock, ifupdown hints and dom0 records (default $DOMUNET_STATE_DIR or "
                             f"{DEFAULT_STATE_DIR})")
    parser.add_argument("-v", "--verbose", action="count", dest=f"verbose{suffix}", default=0,
                        help="more detail (-vv: debug)")


def _merge_common(args: argparse.Namespace) -> argparse.Namespace:
    for name in ("config", "state_dir"):
        for level in range(_LEVELS - 1, 0, -1):
            value = getattr(args, f"{name}_{level}", None)
            if value is not None:
                setattr(args, name, value)
                break
    args.verbose = sum(getattr(args, f"verbose_{level}", 0) for level in range(1, _LEVELS)) + args.verbose
    return args


class _Version(argparse.Action):
    """--version: worked out only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        from domunet.version import version_line

        print(version_line())
        parser.exit(EXIT_OK)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="domunet",
        description="Per-interface policy routing for Xen guests: every address answers through its own NIC.",
    )
    parser.add_argument("--version", action=_Version, help="domunet's, pyroute2's and Python's versions")
    _common_options(parser, 0)
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    verbs.required = True

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=text, description=text)
        _common_options(sub, 1)
        return sub

    for name, text in (
        ("setup", "create or update the tables and rules (of the named interfaces, or all)"),
        ("teardown", "remove what domunet made (for the named interfaces, or all)"),
        ("plan", "print what setup would change, as ip commands; change nothing"),
    ):
        verb(name, text).add_argument("interfaces", nargs="*", metavar="IFACE")
    status = verb("status", "show per interface what domunet does and what the kernel does")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    doctor = verb("doctor", "why does an address not answer? each step a reply takes, checked; the cause and "
                            "its fix (read-only)")
    doctor.add_argument("addresses", nargs="*", metavar="ADDRESS", help="default: every managed address")
    doctor.add_argument("--json", action="store_true", help="every step, machine-readable")
    doctor.add_argument("--probe", action="store_true", help="also send one echo to each gateway")
    verb("watch", "follow the kernel's changes and converge after each (a long-running service)")
    verb("lab", "demo: build a Xen-like lab in network namespaces, run domunet, clean up")
    verb("ifupdown", "the ifupdown hook's entry point: reads IFACE, MODE, IF_* from the environment")
    changed = verb("changed", "a network stack's hook says IFACE changed (networkd-dispatcher, NetworkManager's "
                              "dispatcher): set up, unless domunet watch runs and has seen it already")
    changed.add_argument("iface", metavar="IFACE")
    changed.add_argument("what", nargs="?", default="", metavar="WHAT",
                         help="the stack's word for the change (routable, up, dhcp4-change ...), for the log")
    dom0 = verb("dom0", "dom0 side: route, proxy and guard a routed vif's guest addresses")
    actions = dom0.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True

    def action(name: str, text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=text, description=text)
        _common_options(sub, 2)
        return sub

    online = action("online", "set up a vif (as vif-domunet does, without xenstore)")
    online.add_argument("--vif", required=True)
    online.add_argument("--ip", required=True, help='guest addresses or prefixes, e.g. "192.0.2.5 2001:db8::5"')
    online.add_argument("--uplink", help="dom0's uplink (default: the interface of dom0's default route)")
    online.add_argument("--vifname", help="rename the vif to this")
    offline = action("offline", "undo what online did for a vif (also when it is gone)")
    offline.add_argument("--vif", required=True)
    action("reconcile", "re-add proxy entries and filters (run from the uplink's up hook)")
    dom0_status = action("status", "every vif dom0 routes: its addresses, routes, proxy entries, and whether "
                                   "the kernel still matches its record")
    dom0_status.add_argument("--json", action="store_true", help="machine-readable output")
    dom0_doctor = action("doctor", "why does a guest address not answer? each step from the uplink to the vif, "
                                   "checked; the cause and its fix (read-only)")
    dom0_doctor.add_argument("targets", nargs="*", metavar="VIF|ADDRESS",
                             help="default: every guest address of every online vif")
    dom0_doctor.add_argument("--json", action="store_true", help="every step, machine-readable")
    action("serve", "run dom0's service in the foreground (domunet-dom0.service runs it): vif-domunet "
                    "hands each vif to it over dom0.sock in the state directory")
    hotplug = action("hotplug", "the Xen hotplug entry point (hooks/xen/vif-domunet)")
    hotplug.add_argument("command", help="online, offline, add or remove (as libxl calls it)")
    hotplug.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="libxl's extra arguments")
    return parser


def _hotplug(args: argparse.Namespace) -> int:
    """libxl's contract (domunet.dom0.hotplug): exit 1 when online failed, after hotplug-status error.
    The dom0 service does the work when it runs (domunet.dom0.client); else it is done here.
    `args.handed`: domunet.entry asked the service already, and why it did not take the call."""
    from domunet.dom0 import client, inprocess

    env = {**os.environ, "DOMUNET_STATE_DIR": args.state_dir}
    handed = args.handed
    if handed is None:
        answer = client.hand_over(args.command, args.settings, env)
        if not isinstance(answer, str):
            return answer
        handed = answer
    ok = inprocess.run_hotplug(args.command, client.settings_of(args.settings), env, args.config, args.state_dir,
                               handed)
    return EXIT_OK if ok else EXIT_FAILED


def _dom0_engine(kernel: Any, args: argparse.Namespace) -> Any:
    from domunet.dom0.executor import Dom0

    return Dom0.from_config(kernel, args.config, args.state_dir, offline=args.action == "offline")


def _dom0(args: argparse.Namespace) -> int:
    from domunet.core.kernel import Kernel
    from domunet.dom0.request import VifRequest, check_ifname, parse_addresses, vif_key

    if args.action == "hotplug":
        return _hotplug(args)
    if args.action == "serve":
        from domunet.dom0 import service
        from domunet.dom0.view import KernelView

        with Kernel() as kernel:
            engine = _dom0_engine(kernel, args)
            engine.view = KernelView(kernel)
            try:
                service.serve(args.state_dir, engine)
            finally:
                engine.view.close()
        return EXIT_OK
    if args.action == "doctor":
        return _dom0_doctor(args)
    with Kernel() as kernel:
        dom0 = _dom0_engine(kernel, args)
        if args.action == "online":
            vif = check_ifname(args.vif, "--vif")
            request = VifRequest(
                key=vif_key(vif), vif=vif, guest=parse_addresses(args.ip, "--ip"),
                uplink=check_ifname(args.uplink, "--uplink") if args.uplink else None,
                rename=check_ifname(args.vifname, "--vifname") if args.vifname else None,
            )
            dom0.online(request)
        elif args.action == "offline":
            dom0.offline(check_ifname(args.vif, "--vif"))
        elif args.action == "status":
            from domunet.dom0 import service, status

            rows = status.rows(dom0)
            serving = service.running(Layout(args.state_dir))
            if args.json:
                print(json.dumps({"service": serving, "vifs": rows}, indent=2))
            else:
                print(_dom0_table(rows, serving))
        else:
            log.info("reconciled %d vif(s)", dom0.reconcile())
    return EXIT_OK


def _dom0_doctor(args: argparse.Namespace) -> int:
    from domunet.core import xenstore
    from domunet.core.kernel import Kernel
    from domunet.dom0 import doctor

    vifs, addresses = doctor.parse_targets(args.targets)
    with Kernel() as kernel:
        evidence = doctor.gather(_dom0_engine(kernel, args), xenstore.read if xenstore.available() else None)
    return _verdicts(doctor.walk_all(evidence, vifs, addresses), args.json,
                     "nothing to check: no vif is online through vif-domunet here")


def _verdicts(verdicts: list[Any], as_json: bool, nothing: str) -> int:
    """Either doctor's output; exit 0 when every address passes, 1 when a problem was found."""
    from domunet.core.diagnosis import render

    if as_json:
        print(json.dumps({"addresses": [v.as_dict() for v in verdicts]}, indent=2))
    else:
        print(render(verdicts) if verdicts else nothing)
    return EXIT_OK if all(v.failed is None for v in verdicts) else EXIT_FAILED


def _dom0_table(rows: list[dict[str, Any]], serving: bool) -> str:
    """`domunet dom0 status` for a terminal: one line per vif."""
    lines = [f"service: {'running' if serving else 'not running (vif-domunet works in-process)'}",
             f"{'VIF':<16} {'KEY':<14} {'GUEST ADDRESSES':<40} KERNEL"]
    for row in rows:
        if row.get("unusable"):
            lines.append(f"{row['vif'] or '?':<16} {row['key']:<14} {'':<40} UNUSABLE RECORD: {row['unusable']}")
            continue
        kernel = "matches" if row["kernel_matches"] else "MISSING " + ", ".join(row["missing"])
        lines.append(f"{row['vif']:<16} {row['key']:<14} {' '.join(row['guest']):<40} {kernel}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    if args.verb == "dom0":
        return _dom0(args)
    if args.verb == "lab":
        from domunet.demo import demo

        return EXIT_OK if demo() else EXIT_FAILED
    if args.verb == "ifupdown":
        return _ifupdown(args)
    if args.verb == "changed":
        return _changed(args)
    if args.verb == "doctor":
        return _doctor(args)
    if args.verb == "watch":
        from domunet.guest import watch

        watch.run(args.config, args.state_dir)
        return EXIT_OK
    return _guest(args, args.verb, _interface_names(getattr(args, "interfaces", None) or []))


def _interface_names(names: Sequence[str]) -> list[str]:
    """IFACE arguments are checked before anything is read or changed."""
    import validate

    from domunet.core.config import check_value

    for name in names:
        try:
            check_value("ifname", name)
        except validate.ValidateError as error:
            raise UsageError(f"IFACE argument: {error}") from None
    return list(names)


def _ifupdown(args: argparse.Namespace) -> int:
    """setup after an interface came up (all interfaces: its arrival may make others share a
    subnet), teardown of that interface after it went down."""
    from domunet.guest import ifupdown

    call = ifupdown.parse_env(os.environ)
    if call is None:
        return EXIT_OK
    for handler in logging.getLogger().handlers:
        handler.setFormatter(OneLine(f"domunet: {call.iface}: %(message)s"))
    if call.mode == "start":
        return _guest(args, "setup", [], stanza=call)
    ifupdown.remove_hints(args.state_dir, call.iface)
    return _guest(args, "teardown", [call.iface])


def _changed(args: argparse.Namespace) -> int:
    """All interfaces are set up, not only IFACE: its change may make others share a subnet."""
    from domunet.core.lock import watch_running

    _interface_names([args.iface])
    for handler in logging.getLogger().handlers:
        handler.setFormatter(OneLine(f"domunet: {args.iface}: %(message)s"))
    if watch_running(args.state_dir):
        log.info("%s: domunet watch runs and follows it: nothing to do", args.what or "changed")
        return EXIT_OK
    return _guest(args, "setup", [])


def _doctor(args: argparse.Namespace) -> int:
    """The guest's doctor (2, bad usage, is the edge's: a UsageError)."""
    from domunet.core.kernel import Kernel
    from domunet.guest import doctor
    from domunet.guest.pipeline import load_config

    addresses = doctor.parse_addresses(args.addresses)
    config = load_config(args.config, args.state_dir)
    with Kernel() as kernel:
        evidence = doctor.gather(kernel, config, args.state_dir, addresses, probe=args.probe)
    wanted = addresses or doctor.every_address(config, evidence.facts)
    return _verdicts([doctor.walk(evidence, address) for address in wanted], args.json,
                     "nothing to check: no interface here holds a routed address (name an address to check it)")


def _guest(args: argparse.Namespace, verb: str, names: list[str], stanza: Any = None) -> int:
    """setup, teardown, plan, status: the pipeline is domunet.guest.pipeline; here only the printing."""
    from domunet.guest import pipeline

    outcome = pipeline.run(verb, pipeline.load_config(args.config, args.state_dir, stanza), args.state_dir, names,
                           stanza)
    if verb == "status":
        from domunet.guest.status import render

        print(json.dumps(outcome.rows, indent=2) if args.json else render(outcome.rows or []))
    elif verb == "plan":
        from domunet.guest.render import ip_command

        for change in outcome.changes:
            source = outcome.desired.stands_for.get(change.obj)
            print(ip_command(change) + (f"  # for {source.describe()}" if source else ""))
        for line in outcome.marks:
            print(line)
        for route, why in outcome.desired.passed_over:
            log.info("left to the NICs' tables: %s: %s", route.describe(), why)
        if not outcome.changes and not outcome.marks:
            log.info("nothing to do")
    return EXIT_OK


#: Python modules domunet imports, and the Debian packages that ship them
_MODULES = {"pyroute2": "python3-pyroute2", "netifaces": "python3-netifaces", "configobj": "python3-configobj",
            "validate": "python3-configobj"}


def main(argv: Sequence[str] | None = None, handed: str | None = None) -> int:
    """The command. `handed`: vif-domunet's call came through domunet.entry, which asked the dom0
    service already (and why it did not take it)."""
    args = _merge_common(_parser().parse_args(argv))
    args.handed = handed
    hotplug = getattr(args, "action", None) == "hotplug"
    if getattr(args, "action", None) == "serve":
        args.verbose = max(args.verbose, 1)  # a service's journal says what it did for each vif
    hook = hotplug or args.verb in ("ifupdown", "changed")
    setup_logging(args.verbose, "vif-domunet" if hotplug else "domunet", syslog=hook)
    try:
        return _run(args)
    except (Exception, KeyboardInterrupt) as error:
        return exit_code(error)


def exit_code(error: BaseException) -> int:
    """The one place where an error becomes an exit code, said in one line first. 0 done; 1 the
    work failed (what this run changed was rolled back); 2 bad usage, config or environment
    (nothing was changed); 130 interrupted (Ctrl-C, SIGINT), as a shell reports it."""
    if isinstance(error, DomunetError):  # ApplyError, KernelError, ...: what this run changed is undone
        log.error("%s", error)
        return EXIT_USAGE if isinstance(error, (UsageError, MissingTool, ConfigError)) else EXIT_FAILED
    if isinstance(error, ImportError) and (package := _MODULES.get((error.name or "").split(".")[0])):
        log.error("needs the Python module %s, which is not installed: apt-get install %s", error.name, package)
        return EXIT_USAGE
    if isinstance(error, KeyboardInterrupt):
        log.error("interrupted")
        return EXIT_INTERRUPTED
    # a bug: one line for the admin, the traceback with -vv
    log.debug("internal error", exc_info=error)
    log.error("internal error: %s: %s (run again with -vv for the details, and please report it)",
              type(error).__name__, error)
    return EXIT_FAILED
