"""The command line: common options before and after every verb and dom0 action, --version,
one-line messages. Parsing only: nothing here reaches the kernel."""

import logging
import platform
import subprocess
import sys

import pytest

from domunet import __version__, cli

#: every verb and dom0 action, with the arguments it needs
VERBS = [
    ["setup"], ["setup", "eth0"], ["teardown"], ["teardown", "eth1"], ["plan"], ["plan", "eth0"], ["status"],
    ["status", "--json"], ["lab"], ["ifupdown"],
    ["dom0", "online", "--vif", "vif1.0", "--ip", "192.0.2.5"], ["dom0", "offline", "--vif", "vif1.0"],
    ["dom0", "reconcile"], ["dom0", "hotplug", "online"], ["doctor"], ["doctor", "192.0.2.5", "--json", "--probe"],
    ["dom0", "doctor"], ["dom0", "doctor", "vif1.0", "--json"],
]


def parse(argv):
    return cli._merge_common(cli._parser().parse_args(argv))


def with_options_after(verb, options):
    """options right after the verb, or after the dom0 action."""
    at = 2 if verb[0] == "dom0" else 1
    return verb[:at] + options + verb[at:]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_takes_the_common_options_before_and_after_it(verb, monkeypatch):
    monkeypatch.delenv("DOMUNET_CONFIG", raising=False)
    monkeypatch.delenv("DOMUNET_STATE_DIR", raising=False)
    options = ["--config", "/tmp/f.conf", "--state-dir", "/tmp/state", "-v", "-v"]
    before = parse(options + verb)
    after = parse(with_options_after(verb, options))
    for args in (before, after):
        assert (args.config, args.state_dir, args.verbose) == ("/tmp/f.conf", "/tmp/state", 2)
    short = parse(with_options_after(verb, ["-c", "/tmp/g.conf", "-vv"]))
    assert (short.config, short.state_dir, short.verbose) == ("/tmp/g.conf", "/run/domunet", 2)


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_the_value_after_the_verb_wins_and_verbosity_adds_up(verb, monkeypatch):
    monkeypatch.setenv("DOMUNET_CONFIG", "/env.conf")
    monkeypatch.setenv("DOMUNET_STATE_DIR", "/env-state")
    assert (parse(verb).config, parse(verb).state_dir) == ("/env.conf", "/env-state")
    args = parse(["-c", "/before.conf", "--state-dir", "/before", "-v"]
                 + with_options_after(verb, ["-c", "/after.conf", "--state-dir", "/after", "-v"]))
    assert (args.config, args.state_dir, args.verbose) == ("/after.conf", "/after", 2)


def test_dom0_options_between_dom0_and_the_action_and_after_the_action():
    args = parse(["-c", "/a", "dom0", "-c", "/b", "--state-dir", "/s", "online", "-c", "/c", "--vif", "v",
                  "--ip", "192.0.2.5", "-v"])
    assert (args.config, args.state_dir, args.verbose, args.vif) == ("/c", "/s", 1, "v")


def test_version_names_domunet_pyroute2_and_python():
    from importlib import metadata

    result = subprocess.run([sys.executable, "-m", "domunet", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"domunet {__version__} (pyroute2 {metadata.version('pyroute2')}, "
                             f"Python {platform.python_version()})\n")
    assert "unknown" not in result.stdout


def test_messages_are_one_printable_bounded_line():
    formatter = cli.OneLine("domunet: %(message)s")
    hostile = "eth0;\n reboot\x1b[2J\udcff" + "a" * 10_000

    record = logging.LogRecord("domunet", logging.ERROR, __file__, 1, "no such interface: %s", (hostile,), None)
    line = formatter.format(record)
    assert "\n" not in line and "\x1b" not in line and len(line) <= cli.MAX_MESSAGE
    assert line.startswith("domunet: no such interface: eth0; reboot\\x1b[2J\\udcff")
    assert line.encode("utf-8")  # no lone surrogate left: syslog and a UTF-8 terminal take it


def test_a_missing_python_module_names_its_debian_package(monkeypatch, capsys):
    def missing(args):
        raise ModuleNotFoundError("No module named 'pyroute2'", name="pyroute2")

    monkeypatch.setattr(cli, "_run", missing)
    assert cli.main(["status"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        "domunet: needs the Python module pyroute2, which is not installed: apt-get install python3-pyroute2\n")


def test_a_bug_is_one_line_and_the_traceback_only_with_vv(monkeypatch, capsys):
    def bug(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "_run", bug)
    assert cli.main(["status"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("domunet: internal error: ZeroDivisionError: division by zero (run again with -vv")
    assert "Traceback" not in err and err.count("\n") == 1
    assert cli.main(["status", "-vv"]) == cli.EXIT_FAILED
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["setup", "a" * 10_000], ["teardown", "eth0;reboot"], ["plan", "eth0/x"]])
def test_bad_interface_arguments_are_refused_before_anything_is_read(argv, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE  # no netlink here: the autouse fixture would fail the test
    err = capsys.readouterr().err
    assert err.startswith("domunet: IFACE argument: ") and err.count("\n") == 1 and len(err) <= cli.MAX_MESSAGE + 1


def test_version_is_answered_before_anything_heavy_is_imported():
    """`domunet --version` costs about what the interpreter costs (issue 17): the answer comes
    before argparse, logging, typing, pyroute2 or importlib.metadata are imported, and it is the
    same answer the full command line gives."""
    heavy = ("argparse", "logging", "typing", "pyroute2", "importlib.metadata", "platform", "domunet.cli")
    code = ("import sys\nfrom domunet.entry import main\nmain(['--version'])\n"
            f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))")
    fast = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert fast.returncode == 0, fast.stderr
    line, imported = fast.stdout.splitlines()
    assert imported == "[]"
    full = subprocess.run([sys.executable, "-m", "domunet", "-v", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert full.returncode == 0 and full.stdout == line + "\n"


def test_distribution_versions_are_read_from_the_first_metadata_directory(tmp_path, monkeypatch):
    from domunet.version import distribution_version

    first, second = tmp_path / "a", tmp_path / "b"
    (first / "pyroute2").mkdir(parents=True)
    (second / "pyroute2-0.9.7.dist-info").mkdir(parents=True)
    (first / "pyroute2_extras-1.0.dist-info").mkdir()
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(first), str(second)])
    assert distribution_version("pyroute2") == "0.9.7"
    (first / "pyroute2-0.7.2-py3.11.egg-info").mkdir()
    assert distribution_version("pyroute2") == "0.7.2"
    assert distribution_version("netifaces") is None
