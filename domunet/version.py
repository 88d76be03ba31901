"""domunet's, pyroute2's and Python's versions: what a bug report and a benchmark need.

importlib.metadata reads the installed distributions' metadata, which Debian's packages
(python3-pyroute2's dist-info) carry as well as pip's.
"""

from __future__ import annotations

import platform

from domunet import __version__


def versions() -> dict[str, str]:
    from importlib import metadata

    try:
        pyroute2 = metadata.version("pyroute2")
    except metadata.PackageNotFoundError:
        pyroute2 = "not installed"
    return {"domunet": __version__, "pyroute2": pyroute2, "python": platform.python_version()}


def version_line() -> str:
    found = versions()
    return f"domunet {found['domunet']} (pyroute2 {found['pyroute2']}, Python {found['python']})"
