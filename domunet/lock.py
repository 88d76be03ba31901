"""One lock under /run serialises domunet's changes: hooks for several interfaces, the boot
unit, udev and the admin may all run at once, and the result must be that of one run."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from contextlib import contextmanager
from typing import Iterator

from domunet.errors import UsageError
from domunet.state import check_dir, open_nofollow

log = logging.getLogger(__name__)


@contextmanager
def locked(state_dir: str, shared: bool = False) -> Iterator[None]:
    """Exclusive for changes; shared for read-only verbs (plan, status) so they see no half state."""
    try:
        directory = check_dir(state_dir, create=not shared or os.geteuid() == 0)
        fd = open_nofollow(directory / "lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
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


WATCH_LOCK = "watch.lock"


@contextmanager
def watching(state_dir: str) -> Iterator[None]:
    """Held by `domunet watch` for its lifetime: one watch at a time, and others can tell it runs."""
    fd = open_nofollow(check_dir(state_dir) / WATCH_LOCK, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with os.fdopen(fd, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another domunet watch is running (it holds {state_dir}/{WATCH_LOCK})") from None
        yield


def watch_running(state_dir: str) -> bool:
    try:
        with open(os.path.join(state_dir, WATCH_LOCK)) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False
