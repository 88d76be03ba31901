"""The pure modules stay pure: importing them loads no kernel library."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import domunet
from tests.labs import package_root

PURE = ["domunet.core.model", "domunet.core.config", "domunet.core.state", "domunet.core.diagnosis",
        "domunet.guest.plan", "domunet.guest.diff", "domunet.guest.render", "domunet.guest.status",
        "domunet.guest.watch"]
PACKAGE = Path(domunet.__file__).resolve().parent  # the source tree's, or the unpacked package's


def _imports(path: Path) -> set[str]:
    """Every domunet module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "domunet"}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ("core", "guest", "dom0") else "top"


def test_the_two_programs_share_only_core():
    """No arrow between guest/ and dom0/, and core/ below both (issue 22): each half can be read,
    changed and packaged without the other."""
    allowed = {"core": {"core"}, "guest": {"core", "guest"}, "dom0": {"core", "dom0"}}
    crossings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        layer = _layer(module)
        if layer == "top":
            continue
        for imported in _imports(path):
            if imported in ("domunet.__version__", "domunet") or _layer(imported) not in allowed[layer]:
                crossings.append(f"{module} imports {imported}")
    assert crossings == []
    assert {_layer(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts))
            for p in PACKAGE.rglob("*.py")} == {"core", "guest", "dom0", "top"}


def test_importing_the_pure_modules_loads_no_pyroute2_nor_netifaces():
    code = ("import sys\n" + "".join(f"import {name}\n" for name in PURE)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'netifaces')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_importing_the_netlink_layer_starts_no_process():
    """pyroute2 0.7's config runs `uname -p` and `file` on import, and its IPRoute's base class
    imports unittest.mock; the command's import diet spares both (issue 17): no process is started,
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
from domunet.core import pyroute2_diet
pyroute2_diet.switch_on()  # as domunet.entry does
import domunet.core.kernel
print(json.dumps({"started": started, "platform restored": platform.architecture is architecture,
                  "mock": "unittest.mock" in sys.modules, "0.9": "pyroute2.netlink.core" in sys.modules}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": package_root()})
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["started"] == [] and found["platform restored"]
    assert found["mock"] == found["0.9"]


def test_importing_domunet_as_a_library_leaves_pyroute2_and_platform_alone():
    """The diet is the command's (issue 22): a program that imports domunet's kernel layer can still
    import pyroute2 the documented way, gets the real pyroute2.lab (0.7) and an untouched platform."""
    code = """
import json, platform, sys
architecture, uname = platform.architecture, platform.uname
import domunet.core.kernel, domunet.guest.pipeline, domunet.dom0.executor
from pyroute2 import IPRoute
import pyroute2.iproute.linux
lab = sys.modules.get("pyroute2.lab")
print(json.dumps({"documented import": IPRoute is pyroute2.iproute.linux.IPRoute,
                  "platform": platform.architecture is architecture and platform.uname is uname,
                  "stand-in lab": lab is not None and "stand-in" in (lab.__doc__ or ""),
                  "kernel uses it": domunet.core.kernel.IPRoute is IPRoute}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": package_root()})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"documented import": True, "platform": True, "stand-in lab": False,
                                         "kernel uses it": True}


def _modules() -> list[tuple[str, Path]]:
    return [(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts), p) for p in sorted(PACKAGE.rglob("*.py"))]


OWNERSHIP = {"carries_protocol", "temporary", "main_route_of_ours", "owned_state", "foreign_tables", "foreign_rule",
             "within_reach", "blocks_in_use", "block_of", "in_table_block"}


def test_ownership_is_decided_in_guest_owned_alone():
    """Issue 35: "is this domunet's?" has one home. No other module defines an ownership predicate
    or compares anything with the guest's protocols (making an object with proto=PROTO is fine)."""
    found = []
    for module, path in _modules():
        if module == "domunet.guest.owned":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in OWNERSHIP:
                found.append(f"{module} defines {node.name}")
            if isinstance(node, ast.Compare):
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                if names & {"PROTO", "PROTO_TEMP", "PROTOCOLS"}:
                    found.append(f"{module}:{node.lineno} compares with domunet's protocol")
    assert found == []
    from domunet.guest import owned

    assert set(vars(owned)) >= OWNERSHIP


def test_one_function_maps_exceptions_to_exit_codes():
    """Issue 35: cli.exit_code is the one place an exception becomes an exit code: no `except`
    clause anywhere in domunet/ returns an exit code of its own, and the 130 of an interrupt is
    said there alone."""
    found = []
    for module, path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        for handler in (n for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler)):
            for node in ast.walk(handler):
                value = node.value if isinstance(node, ast.Return) else None
                if (isinstance(value, ast.Constant) and type(value.value) is int) or \
                        (isinstance(value, ast.Name) and value.id.startswith("EXIT_")):
                    found.append(f"{module}:{node.lineno} returns {ast.unparse(value)} for an exception")
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == 130 and module != "domunet.cli":
                found.append(f"{module}:{node.lineno} says 130")
            if isinstance(node, ast.Name) and node.id == "exit_status":
                found.append(f"{module}:{node.lineno} uses exit_status")
    assert found == []
    from domunet import cli
    from domunet.core.errors import ConfigError, KernelError, UsageError

    errors = (UsageError("u"), ConfigError("f", "k", "m"), KernelError("k"), KeyboardInterrupt(), ZeroDivisionError())
    assert [cli.exit_code(e) for e in errors] == [2, 2, 1, 130, 1]


def test_no_module_of_domunet_is_over_500_lines():
    """Issue 35: a module that grows past this holds more than one job; split it by job."""
    assert {m: n for m, p in _modules() if (n := len(p.read_text().splitlines())) > 500} == {}


def test_no_test_imports_the_demos_lab():
    """Issue 35: the demo is the product's (domunet.demo: only the demo); the tests build on the
    namespace lab (domunet.lab) and their own scaffolding (tests/labs.py), never on the demo."""
    found = []
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "domunet.demo":
                found += [f"{path.relative_to(root)}: {a.name}" for a in node.names if a.name != "demo"]
            if isinstance(node, ast.ImportFrom) and node.module == "domunet" and \
                    any(a.name == "demo" for a in node.names):
                found.append(f"{path.relative_to(root)}: the module domunet.demo")
    assert found == []


def test_the_client_names_dom0_sock_as_layout_does(tmp_path):
    """The one path under /run that Layout does not build (the client imports nothing of domunet's)."""
    from domunet.core.state import Layout
    from domunet.dom0 import client

    assert client.socket_path({"DOMUNET_STATE_DIR": str(tmp_path)}) == str(Layout(tmp_path).dom0_socket)
    assert client.socket_path({}) == str(Layout("/run/domunet").dom0_socket)
