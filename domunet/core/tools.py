"""The programs domunet runs, and the Debian packages that ship them.

A missing program is named, with its package, before anything changes. The hooks put the
usual sbin directories on PATH themselves (xl and ifupdown give them a minimal one).
"""

from __future__ import annotations

import shutil

from domunet.core.errors import MissingTool

#: program -> the Debian package that ships it
PACKAGES = {
    "ip": "iproute2",
    "nft": "nftables",
    "ping": "iputils-ping",
    "xenstore-read": "xenstore-utils",
    "xenstore-write": "xenstore-utils",
    "xenstore-list": "xenstore-utils",
    "xenstore-rm": "xenstore-utils",
}

def find(program: str) -> str | None:
    """The program's full path on $PATH."""
    return shutil.which(program)


def require(who: str, *programs: str) -> dict[str, str]:
    """Full paths of the programs, or MissingTool naming each missing one and its package."""
    found = {program: find(program) for program in programs}
    missing = [program for program, path in found.items() if path is None]
    if missing:
        packages = sorted({PACKAGES.get(program, program) for program in missing})
        raise MissingTool(
            f"{who} needs {', '.join(f'`{p}`' for p in missing)}, which is not installed: "
            f"apt-get install {' '.join(packages)}"
        )
    return {program: path for program, path in found.items() if path is not None}
