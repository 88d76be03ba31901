"""domunet's, pyroute2's and Python's versions: what a bug report and a benchmark need.

Read without importing pyroute2, importlib.metadata or platform (together ~50 ms, where the
interpreter itself starts in ~10): the version is in the name of the distribution's metadata
directory, which pip and Debian's packages (python3-pyroute2's dist-info) both install.
"""

from __future__ import annotations

import os
import sys

from domunet import __version__


def distribution_version(name: str) -> str | None:
    """The version of the first `NAME-VERSION.dist-info` (or `.egg-info`) on sys.path, the one
    importlib.metadata would find; None when there is none."""
    prefix = name + "-"
    for entry in sys.path:
        try:
            found = sorted(item for item in os.listdir(entry or ".")
                           if item.startswith(prefix) and item.endswith((".dist-info", ".egg-info")))
        except OSError:
            continue
        if found:
            return found[0][len(prefix):].rsplit(".", 1)[0].split("-", 1)[0]
    return None


def versions() -> dict[str, str]:
    pyroute2 = distribution_version("pyroute2")
    if pyroute2 is None:  # an unusual layout (an egg, a zip): ask the slow, thorough way
        from importlib import metadata

        try:
            pyroute2 = metadata.version("pyroute2")
        except metadata.PackageNotFoundError:
            pyroute2 = "not installed"
    return {"domunet": __version__, "pyroute2": pyroute2, "python": sys.version.split()[0]}


def version_line() -> str:
    found = versions()
    return f"domunet {found['domunet']} (pyroute2 {found['pyroute2']}, Python {found['python']})"
