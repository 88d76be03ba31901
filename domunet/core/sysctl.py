"""Sysctls through /proc/sys, so interface names with dots (vif1.0) need no escaping."""

from __future__ import annotations

import re
from pathlib import Path

from domunet.core.errors import KernelError
from domunet.core.model import IFNAME_CHARS

PROC = Path("/proc/sys")


def read(key: str) -> str | None:
    try:
        return (PROC / key).read_text().strip()
    except OSError:
        return None


def write(key: str, value: str) -> None:
    try:
        (PROC / key).write_text(f"{value}\n")
    except OSError as error:
        raise KernelError(f"cannot set sysctl {key.replace('/', '.')} = {value}: {error.strerror}",
                          error.errno or 0) from None


def ipv6_enabled() -> bool:
    return read("net/ipv6/conf/all/disable_ipv6") == "0"


_SAVED_KEY = re.compile(rf"net/ipv[46]/(ip_forward|conf/{IFNAME_CHARS}{{1,15}}/[a-z_]{{1,32}})")
_SAVED_VALUE = re.compile(r"-?\d{1,10}")


def saved_values(data: object) -> dict[str, str]:
    """Sysctl values domunet saved to restore later, read back and checked (ValueError if not):
    only net/ipv4|6 keys of the kind domunet sets, only numbers."""
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    for key, value in data.items():
        if not isinstance(key, str) or not _SAVED_KEY.fullmatch(key) or not isinstance(value, str) \
                or not _SAVED_VALUE.fullmatch(value):
            raise ValueError(f"{str(key)[:60]!r} = {str(value)[:20]!r}")
    return dict(data)
