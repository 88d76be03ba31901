"""Changes as the equivalent `ip` commands (what `domunet plan` prints)."""

from __future__ import annotations

import shlex

from domunet.core.model import ADD, Route
from domunet.guest.diff import Change


def ip_command(change: Change) -> str:
    verb = "add" if change.action == ADD else "del"  # ip's words
    obj = change.obj
    kind = "route" if isinstance(obj, Route) else "rule"
    return " ".join([f"ip -{obj.version}", kind, verb, *obj.words(command=True, quote=shlex.quote)])
