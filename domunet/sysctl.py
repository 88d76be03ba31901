"""Sysctls through /proc/sys, so interface names with dots (vif1.0) need no escaping."""

from __future__ import annotations

from pathlib import Path

from domunet.errors import KernelError

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
