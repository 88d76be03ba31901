"""The `domunet` command's pyroute2 import diet: switched on by the command's entry point only.

pyroute2's package __init__ imports all of pyroute2, and 0.7 (Debian 12) starts two processes
and imports unittest.mock on the way: together half of a hook call's start-up at boot. The
command (domunet.entry) switches the diet on; domunet.core.kernel then imports pyroute2 through
prepare(). A program that imports domunet as a library never switches it on, and its pyroute2
and platform are left exactly as they are (a test checks it on both pyroute2 versions).
DOMUNET_PLAIN_IMPORT=1 turns the diet off in the command too (the tested fallback).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

_SWITCHED_ON = False


def switch_on() -> None:
    """For the command only: it owns its process, so it may bend pyroute2's import."""
    global _SWITCHED_ON
    _SWITCHED_ON = True


def prepare() -> None:
    """Load IPRoute and NetlinkError without pyroute2's package __init__, when switched on.

    That __init__ imports all of pyroute2 (NDB, asyncio, unittest.mock, importlib.metadata):
    40 ms of a 115 ms import on 0.7.2, 70 of 170 on 0.9.x, paid by every hook call at boot.
    The modules domunet uses import what they need themselves. On 0.7, two more costs are
    spared (see _lean_0_7). Any surprise falls back to the ordinary import; both pyroute2
    versions are tested in both ways.
    """
    import importlib.util
    import sys
    import types

    if _SWITCHED_ON and "pyroute2" not in sys.modules and not os.environ.get("DOMUNET_PLAIN_IMPORT"):
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations:
            package = types.ModuleType("pyroute2")
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__ = spec
            package.__file__ = spec.origin
            sys.modules["pyroute2"] = package
            try:
                with _lean_0_7(package.__path__):
                    import pyroute2.iproute.linux  # noqa: F401 (what domunet.core.kernel imports)
                    import pyroute2.netlink.exceptions  # noqa: F401
                return
            except Exception:  # noqa: BLE001 (anything at all: take the documented way)
                for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
                    del sys.modules[name]


@contextlib.contextmanager
def _lean_0_7(path: list[str]) -> Iterator[None]:
    """pyroute2 0.7 (Debian 12) pays at import for two things domunet never uses; 0.9 does not.

    - pyroute2.config reads every field of platform.uname() and calls platform.architecture():
      `uname -p` and `file -b python3` in two subprocesses (15-25 ms). Both are answered here
      from the running interpreter: architecture() only while pyroute2 is imported; uname's
      processor field stays "" (what `uname -p`'s "unknown" becomes on Debian).
    - pyroute2.lab (IPRoute's base class LAB_API) imports unittest.mock (25-45 ms) for pyroute2's
      own test mode. A stand-in without that mode takes its place: IPRoute then initialises
      exactly as with use_mock False, the only way 0.7 runs outside pyroute2's test suite.
    0.9 has neither (no pyroute2/lab.py; its config reads uname's fields by name): untouched.
    """
    import platform
    import struct
    import sys
    import types

    if not os.path.exists(os.path.join(path[0], "lab.py")) or "pyroute2.lab" in sys.modules:
        yield
        return
    lab = types.ModuleType("pyroute2.lab")
    lab.__doc__ = "domunet's stand-in for pyroute2 0.7's test-mode mixin (see domunet.core.kernel)"
    lab.LAB_API = type("LAB_API", (), {"__module__": "pyroute2.lab"})  # type: ignore[attr-defined]
    lab.registry, lab.use_mock = [], False  # type: ignore[attr-defined]
    sys.modules["pyroute2.lab"] = lab
    uname = platform.uname()
    vars(uname).setdefault("processor", "")  # functools.cached_property: `uname -p` never runs
    architecture = platform.architecture
    bits = f"{struct.calcsize('P') * 8}bit"
    platform.architecture = lambda *args, **kwargs: (bits, "ELF")  # type: ignore[assignment]
    try:
        yield
    except BaseException:
        if sys.modules.get("pyroute2.lab") is lab:
            del sys.modules["pyroute2.lab"]
        raise
    finally:
        platform.architecture = architecture
