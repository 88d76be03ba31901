"""One lock under /run serialises domunet's changes: hooks for several interfaces, the boot
unit, udev and the admin may all run at once, and the result must be that of one run."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from contextlib import contextmanager
from typing import Iterator

from domunet.core.errors import UsageError
from domunet.core.state import Layout, check_dir, open_nofollow

log = logging.getLogger(__name__)


@contextmanager
def locked(state_dir: str, shared: bool = False) -> Iterator[None]:
    """Exclusive for changes; shared for read-only verbs (plan, status) so they see no half state."""
    try:
        directory = check_dir(state_dir, create=not shared or os.geteuid() == 0)
        fd = open_nofollow(directory / Layout.LOCK, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except (OSError, UsageError) as error:
        if shared:  # a reader without access (plan or status as a user) goes on unlocked
            if not (isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)) \
                    and not (isinstance(error, UsageError) and os.geteuid() != 0):
                log.warning("%s; reading without the lock", _text(error, state_dir))
            yield
            return
        raise UsageError(_text(error, state_dir)) from None
    with os.fdopen(fd, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


def _text(error: Exception, state_dir: str) -> str:
    if isinstance(error, OSError):
        return (f"state directory {state_dir}: cannot open its lock: {error.strerror} "
                "(see --state-dir, $DOMUNET_STATE_DIR)")
    return str(error)


WATCH_LOCK = Layout.WATCH_LOCK
#: An abstract unix socket name: abstract names are per network namespace, so holding it means
#: one watch per namespace whatever its state directory or config (two would fight forever).
WATCH_NAME = b"\0domunet-watch"


def _claim_namespace() -> socket.socket | None:
    """The namespace's watch name, bound; None when another watch holds it."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        claim.bind(WATCH_NAME)
    except OSError as error:
        claim.close()
        if error.errno == errno.EADDRINUSE:
            return None
        raise
    return claim


@contextmanager
def watching(state_dir: str) -> Iterator[None]:
    """Held by `domunet watch` for its lifetime: one watch per network namespace, and others can
    tell it runs (the lock file in its state directory, and the namespace's name)."""
    claim = _claim_namespace()
    if claim is None:
        raise UsageError("another domunet watch is running in this network namespace (one converges it; "
                         "two with different configs would undo each other)")
    with claim:
        try:
            fd = open_nofollow(check_dir(state_dir) / WATCH_LOCK, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as error:
            raise UsageError(_text(error, state_dir).replace("its lock", "its watch lock")) from None
        with os.fdopen(fd, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"another domunet watch is running (it holds {state_dir}/{WATCH_LOCK})") from None
            yield


def watch_running(state_dir: str) -> bool:
    """A watch in this network namespace (whatever its state directory)."""
    claim = _claim_namespace()
    if claim is None:
        return True
    claim.close()
    try:
        with open(Layout(state_dir).watch_lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


@contextmanager
def held_alone(path: os.PathLike[str] | str, busy: str) -> Iterator[None]:
    """A lock file held for a service's lifetime; UsageError(busy) when another holds it."""
    try:
        fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as error:
        raise UsageError(f"{path}: {error.strerror}") from None
    with os.fdopen(fd, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(busy) from None
        yield
