"""Run domunet's command line with a fault injected at one step (issue 21).

    FAULT_AT=N FAULT_KIND=bug|oserror python3 -m tests.faults ARGS...

Every step that changes or reads the kernel's routing, nftables, sysctls or domunet's state
files is counted; step N raises instead of running (a RuntimeError, as a bug would, or an
OSError ENOSPC, as a full /run would). FAULT_AT=0 injects nothing. The number of steps the run
reached is printed last on stderr as `fault-steps: K`, so a test can inject at every one.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Any, Callable

from domunet import cli  # noqa: F401 (patched)
from domunet.core import (  # noqa: F401 (patched)
    nftables,  # noqa: F401 (patched)
    state,
    sysctl,
)
from domunet.core.kernel import Kernel
from domunet.dom0 import executor, guard, hotplug  # noqa: F401 (patched)
from domunet.guest import connmark, ifupdown, pipeline  # noqa: F401 (patched)

KERNEL_STEPS = ("add_route", "remove_route", "add_rule", "remove_rule", "add_address", "remove_address",
                "add_proxy", "remove_proxy", "set_link")
steps = 0


def _fault(name: str) -> BaseException:
    if os.environ.get("FAULT_KIND") == "oserror":
        return OSError(errno.ENOSPC, "No space left on device (injected)", name)
    return RuntimeError(f"injected fault in {name}")


def _counted(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    at = int(os.environ.get("FAULT_AT", "0"))

    @functools.wraps(call)
    def step(*args: Any, **kwargs: Any) -> Any:
        global steps
        steps += 1
        if steps == at:
            raise _fault(name)
        return call(*args, **kwargs)

    return step


def _import_every_module() -> None:
    """Every module of domunet, now: a step imported by name (`from ... import write_json`) in a
    module that would otherwise be imported later, inside a function, is wrapped too."""
    import importlib
    import pkgutil

    import domunet

    for found in pkgutil.walk_packages(domunet.__path__, "domunet."):
        if not found.name.endswith("__main__"):
            importlib.import_module(found.name)


def install() -> None:
    """Wrap every step, wherever domunet's modules hold a reference to it."""
    _import_every_module()
    for name in KERNEL_STEPS:
        setattr(Kernel, name, _counted(f"Kernel.{name}", getattr(Kernel, name)))
    for module, name in ((nftables, "run"), (sysctl, "write"), (state, "write_json")):
        original = getattr(module, name)
        wrapped = _counted(f"{module.__name__}.{name}", original)
        for loaded in [m for key, m in sys.modules.items() if key.startswith("domunet")]:
            for attribute, value in list(vars(loaded).items()):
                if value is original:
                    setattr(loaded, attribute, wrapped)


def main() -> int:
    install()
    try:
        return cli.main(sys.argv[1:])
    finally:
        print(f"fault-steps: {steps}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
