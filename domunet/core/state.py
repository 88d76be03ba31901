"""Everything domunet keeps under /run, in one place: the directory's checks, one atomic and
symlink-safe JSON write, one reader that tells a corrupt file from a missing one.

The state directory is root's: domunet refuses one that is a symlink, not a directory, not
owned by root or writable by others (a local user could otherwise plant a file root then
trusts, or a symlink root then writes through). Files are opened with O_NOFOLLOW, temporary
files with O_EXCL, and replaced with rename(2): a crash leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from domunet.core.errors import DomunetError, UsageError
from domunet.core.sysctl import saved_values

log = logging.getLogger(__name__)


T = TypeVar("T")


class Layout:
    """/run/domunet (or --state-dir): every file domunet keeps there, named once."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    #: The guest's run lock (see domunet.core.lock); dom0's is `lock` in dom0_dir.
    LOCK = "lock"
    #: Held by the one `domunet watch` of this state directory.
    WATCH_LOCK = "watch.lock"

    @property
    def watch_lock(self) -> Path:
        return self.root / self.WATCH_LOCK

    @property
    def blocks(self) -> Path:
        """The guest's remembered covering blocks (domunet.guest.plan.Block)."""
        return self.root / "blocks.json"

    @property
    def connmark_origin(self) -> Path:
        """Sysctl values from before the guest's connection marks set them."""
        return self.root / "connmark.json"

    @property
    def hints(self) -> Path:
        """ifupdown stanza options, one file per interface and family."""
        return self.root / "ifupdown"

    def hint(self, iface: str, addrfam: str) -> Path:
        return self.hints / f"{iface}.{addrfam}.json"

    @property
    def dom0(self) -> Path:
        """dom0's vif records and its own lock."""
        return self.root / "dom0"

    VIF_RECORDS = "vif-*.json"

    def vif_record(self, key: str) -> Path:
        return self.dom0 / f"vif-{key}.json"

    @staticmethod
    def vif_record_key(path: Path) -> str:
        return path.name[len("vif-"):-len(".json")]

    @property
    def dom0_socket(self) -> Path:
        """Where `domunet dom0 serve` listens (vif-domunet finds it here)."""
        return self.root / "dom0.sock"

    @property
    def dom0_serve_lock(self) -> Path:
        """Held by the one `domunet dom0 serve` of this state directory."""
        return self.dom0 / "serve.lock"

    @property
    def dom0_generation(self) -> Path:
        """A token every run that changed dom0's records writes last: the service's cached records
        are current while it holds its own token (and the folder's times and size are unchanged)."""
        return self.dom0 / "generation"

    @property
    def dom0_sysctl_origin(self) -> Path:
        """Global sysctl values from before dom0's first vif; restored after the last."""
        return self.dom0 / "sysctl-origin.json"


class StateError(DomunetError):
    """A state file cannot be written (a full or read-only /run): the run undoes its changes (exit 1)."""


class CorruptState(DomunetError):
    """A state file that cannot be used as it is: set aside, the run goes on from the kernel."""


def check_dir(path: str | Path, create: bool = True) -> Path:
    """The state directory (or a subdirectory), created if missing, checked as described above."""
    directory = Path(path)
    try:
        if create:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        info = os.lstat(directory)
    except FileExistsError:
        raise UsageError(f"state directory {directory}: exists and is not a directory "
                         "(see --state-dir, $DOMUNET_STATE_DIR)") from None
    except OSError as error:
        raise UsageError(f"state directory {directory}: {error.strerror} (see --state-dir, $DOMUNET_STATE_DIR)") \
            from None
    if stat.S_ISLNK(info.st_mode):
        raise UsageError(f"state directory {directory}: is a symlink; give the real directory")
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"state directory {directory}: exists and is not a directory")
    if os.geteuid() == 0 and (info.st_uid != 0 or info.st_mode & 0o022):
        raise UsageError(f"state directory {directory}: must be owned by root and writable by root only "
                         f"(owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})")
    return directory


def open_nofollow(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symlink as the last component (ELOOP becomes a clear error)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UsageError(f"{path}: is a symlink; domunet does not follow symlinks in its state") from None
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Atomically replace path with data as JSON, never through a symlink."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # a stale one, or a planted symlink: unlink removes the link itself
        fd = open_nofollow(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
        os.replace(temporary, path)
    except OSError as error:  # a full or read-only /run: the caller undoes what it changed
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise StateError(f"cannot write {path}: {error.strerror or error}") from None


def read_json(path: str | Path) -> Any:
    """The parsed file; None when it does not exist; CorruptState when it is not JSON or not a
    regular file."""
    try:
        fd = open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except UsageError as error:
        raise CorruptState(str(error)) from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise CorruptState(f"{path}: not a regular file")
        raw = handle.read(1 << 20)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CorruptState(f"{path}: not valid JSON ({error})") from None
    except RecursionError:  # valid JSON nested deeper than the decoder goes (round 3)
        raise CorruptState(f"{path}: not valid JSON (nested too deeply)") from None


def set_aside(path: str | Path, reason: str) -> None:
    """Move a corrupt file out of the way (kept as .corrupt for the admin) and say so."""
    path = Path(path)
    reason = reason.removeprefix(f"{path}: ")  # CorruptState's text names the file already
    log.warning("%s: %s; set aside as %s.corrupt, going on from the kernel's state", path, reason, path.name)
    try:
        os.replace(path, path.with_name(path.name + ".corrupt"))
    except OSError as error:
        log.warning("cannot set %s aside: %s", path, error.strerror)


@dataclass(frozen=True)
class Unreadable:
    """A state file that cannot be used, and why; `corrupt` is False when it merely could not be
    read now (an I/O error), `data` what JSON it held (for a caller that salvages parts)."""

    path: Path
    reason: str
    corrupt: bool = True
    data: Any = None


def read_folder(directory: Path, pattern: str, parse: Callable[[Any], T], what: str,
                cache: dict[str, tuple[tuple[int, int, int], T, Path]] | None = None,
                ) -> tuple[list[tuple[Path, T]], list[Unreadable]]:
    """Every file of a folder of JSON files, parsed by `parse` (ValueError, TypeError or UsageError
    when a file's content is not valid), in name order; and those that cannot be used. Whether a bad
    file is set aside or kept in place is the caller's decision. `cache` (a long-lived caller's):
    a file whose inode, size and mtime are unchanged is not read again (files are only ever
    replaced by rename, so a changed file has a new inode)."""
    good: list[tuple[Path, T]] = []
    bad: list[Unreadable] = []
    try:
        with os.scandir(directory) as entries:  # scandir, not glob: a service reads 500 records per vif
            found = sorted((entry.name, entry) for entry in entries if fnmatch.fnmatchcase(entry.name, pattern))
    except FileNotFoundError:
        found = []
    if cache is not None:
        for gone in set(cache) - {name for name, _ in found}:
            del cache[gone]
    for name, entry in found:
        data = None
        kept = cache.get(name) if cache is not None else None
        path = kept[2] if kept is not None else directory / name
        try:
            stamp = None
            if cache is not None:
                info = entry.stat(follow_symlinks=False)
                stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
                if kept is not None and kept[0] == stamp:
                    good.append((path, kept[1]))
                    continue
            data = read_json(path)
            parsed = parse(data)
            good.append((path, parsed))
            if cache is not None and stamp is not None:
                cache[name] = (stamp, parsed, path)
        except CorruptState as error:
            bad.append(Unreadable(path, str(error).removeprefix(f"{path}: ")))
        except (ValueError, TypeError, UsageError) as error:
            bad.append(Unreadable(path, f"not a valid {what} ({error})", data=data))
        except OSError as error:
            bad.append(Unreadable(path, f"unreadable ({error.strerror})", corrupt=False))
    return good, bad


def read_saved_sysctls(path: Path) -> dict[str, str]:
    """Sysctl values domunet saved before it changed them; a corrupt file is set aside (then there
    is nothing to put back)."""
    try:
        data = read_json(path)
        return {} if data is None else saved_values(data)
    except CorruptState as error:
        set_aside(path, str(error))
    except ValueError as error:
        set_aside(path, f"not a list of sysctl values ({error})")
    return {}
