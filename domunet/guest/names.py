"""Names for iproute2: domunet's protocol numbers and its tables (rt_protos.d, rt_tables.d).

Cosmetic only: domunet reads ownership from the kernel, never from these files, and
works when they are missing or unwritable.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from typing import Iterable, Mapping

from domunet.core.model import PROTO_NAMES, Rule, State
from domunet.guest.diff import Change, after

log = logging.getLogger(__name__)

HEADER = "# Written by domunet: one routing table per managed interface. Do not edit.\n"


def rt_protos_text() -> str:
    lines = "".join(f"{number}\t{name}\n" for number, name in sorted(PROTO_NAMES.items()))
    return "# Route and rule protocols of domunet (installed by its package).\n" + lines


def table_names_after(owned: State, changes: Iterable[Change]) -> dict[int, str]:
    """Table -> interface after the changes, read from the `oif` rules (one per managed NIC)."""
    rules = {o for o in after(owned.rules, changes) if isinstance(o, Rule)}
    return {r.table: r.oif for r in sorted(rules, key=lambda r: (r.table, r.version)) if r.oif}


def render_table_names(tables: Mapping[int, str]) -> str:
    return HEADER + "".join(f"{table}\tdomunet-{name}\n" for table, name in sorted(tables.items()))


def _ours(path: str) -> bool | None:
    """True: domunet's file; False: someone else's (never touched); None: no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    with os.fdopen(fd, "rb") as handle:
        return stat.S_ISREG(os.fstat(handle.fileno()).st_mode) and handle.read(len(HEADER)) == HEADER.encode()


def write_table_names(path: str, tables: Mapping[int, str]) -> None:
    """Replace the names file atomically; remove it when no table is left. Never fatal, and never
    a file domunet did not write (it starts with HEADER)."""
    if not path:
        return
    try:
        ours = _ours(path)
        if ours is False:
            log.warning("%s: not written by domunet; left alone (table names not updated; see rt_tables_file)",
                        path)
            return
        if not tables:
            if ours:
                os.unlink(path)
            return
        text = render_table_names(tables)
        if ours:
            with open(path, encoding="utf-8") as handle:
                if handle.read() == text:
                    return
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".domunet-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:
        log.warning("cannot update table names in %s: %s (routing is not affected)", path, error.strerror)
