"""xenstore through the `xenstore-read` / `xenstore-write` commands, as Xen's own scripts do.

Values are returned raw: every caller validates them like any other untrusted input.
"""

from __future__ import annotations

import shutil
import subprocess

from domunet.core.errors import DomunetError

TIMEOUT = 10
MAX_VALUE = 4096

# What vif-domunet publishes under a vif's backend directory for the guest to read (and removes
# on offline): the one definition, read by the guest and written by dom0.
GATEWAY = "domunet-gateway"  # dom0's IPv4 address on the vif (the /32)
GATEWAY6 = "domunet-gateway6"  # dom0's IPv6 address on the vif (the /128): the guest's IPv6 gateway
ROUTED = "domunet-routed"  # "1": dom0 routes this vif (vif-domunet, not a bridge)
PUBLISHED_KEYS = (GATEWAY, GATEWAY6, ROUTED)
#: libxl's list of the guest's addresses on the vif, beside the published keys.
ADDRESSES = "ip"


class XenstoreError(DomunetError):
    pass


def available() -> bool:
    return shutil.which("xenstore-read") is not None


def read(path: str, timeout: float = TIMEOUT) -> str | None:
    """The value at path, or None when the key does not exist."""
    try:
        result = subprocess.run(["xenstore-read", path], capture_output=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise XenstoreError(f"xenstore-read {path}: {error}") from None
    if result.returncode != 0:
        return None
    value = result.stdout[: MAX_VALUE + 1].decode("utf-8", errors="replace")
    if len(value) > MAX_VALUE:
        raise XenstoreError(f"xenstore {path}: value longer than {MAX_VALUE} bytes")
    return value.rstrip("\n")


def read_many(paths: list[str], timeout: float = TIMEOUT) -> dict[str, str] | None:
    """Several keys with one `xenstore-read` (it prints one value per line); None when that does
    not work out (a key missing, a value holding a newline): then read them one by one."""
    try:
        result = subprocess.run(["xenstore-read", *paths], capture_output=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise XenstoreError(f"xenstore-read {' '.join(paths)}: {error}") from None
    values = result.stdout[: len(paths) * (MAX_VALUE + 1)].decode("utf-8", errors="replace").split("\n")
    if result.returncode != 0 or values[-1:] != [""] or len(values) != len(paths) + 1:
        return None
    return dict(zip(paths, values))


def write(path: str, value: str) -> None:
    write_many({path: value})


def write_many(values: dict[str, str]) -> None:
    """Several keys with one `xenstore-write` (in the order given; one process for all)."""
    argv = ["xenstore-write"]
    for path, value in values.items():
        argv += [path, value]
    what = f"xenstore-write {' '.join(values)}"
    try:
        result = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, text=True)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise XenstoreError(f"{what}: {error}") from None
    if result.returncode != 0:
        raise XenstoreError(f"{what}: {result.stderr.strip() or 'failed'}")


def directory(path: str, timeout: float = TIMEOUT) -> list[str]:
    """The children of path (`xenstore-list`); empty when it does not exist."""
    try:
        result = subprocess.run(["xenstore-list", path], capture_output=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, text=True)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise XenstoreError(f"xenstore-list {path}: {error}") from None
    return result.stdout.split() if result.returncode == 0 else []


def remove(*paths: str) -> None:
    """`xenstore-rm` of one or more keys (one process); a missing key is not an error."""
    try:
        subprocess.run(["xenstore-rm", *paths], capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise XenstoreError(f"xenstore-rm {' '.join(paths)}: {error}") from None
