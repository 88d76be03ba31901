"""Exceptions that carry a message an administrator can act on.

They are turned into exit codes in one place only: domunet.cli.exit_code, the command's edge
(domunet.entry's hotplug fallback goes through it too).
"""

from __future__ import annotations


class DomunetError(Exception):
    """Base class: str(error) is the whole message shown to the admin."""


class UsageError(DomunetError):
    """Bad command line or environment; nothing was changed (exit 2)."""


class MissingTool(DomunetError):
    """A program or Python module domunet needs is not installed; nothing was changed (exit 2)."""


class ConfigError(DomunetError):
    """The config file is unreadable or invalid; nothing was changed (exit 2)."""

    def __init__(self, path: str, where: str, message: str) -> None:
        self.path = path
        self.where = where
        super().__init__(f"{path}: {where}: {message}" if where else f"{path}: {message}")


class KernelError(DomunetError):
    """A netlink request failed; errno is kept so callers can tell cases apart."""

    def __init__(self, message: str, errno: int = 0) -> None:
        self.errno = errno
        super().__init__(message)


class ObjectExists(KernelError):
    """The kernel already holds an object with the same identity (EEXIST)."""


class ObjectMissing(KernelError):
    """The object to delete is already gone (ENOENT, ESRCH)."""


class GatewayRefused(KernelError):
    """The kernel will not accept the gateway yet: older kernels check it through the main table."""


class ApplyError(DomunetError):
    """Applying failed part-way; what this run added was rolled back (exit 1)."""
