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

log = logging.getLogger(__name__)


@contextmanager
def locked(state_dir: str, shared: bool = False) -> Iterator[None]:
    """Exclusive for changes; shared for read-only verbs (plan, status) so they see no half state."""
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        handle = open(os.path.join(state_dir, "lock"), "a")  # noqa: SIM115 (closed by the with below)
    except OSError as error:
        if shared:  # a reader without write access (plan or status as a user) goes on unlocked
            if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                log.warning("state directory %s: cannot open its lock (%s); reading without it",
                            state_dir, error.strerror)
            yield
            return
        raise UsageError(f"state directory {state_dir}: cannot open its lock: {error.strerror} "
                         "(see --state-dir, $DOMUNET_STATE_DIR)") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


WATCH_LOCK = "watch.lock"


@contextmanager
def watching(state_dir: str) -> Iterator[None]:
    """Held by `domunet watch` for its lifetime: one watch at a time, and others can tell it runs."""
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    with open(os.path.join(state_dir, WATCH_LOCK), "a") as handle:
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
