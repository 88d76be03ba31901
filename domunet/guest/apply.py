"""apply(changes, kernel): carry out a diff in its order, into the run's one undo journal.

It never decides what to change: that is plan and diff. It only knows how: the temporary
main-table route for kernels that check a gateway through the main table, tolerance of
objects already gone on removal, and rolling back what this run did when a step fails.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from domunet.core.errors import ApplyError, GatewayRefused, KernelError, ObjectExists, ObjectMissing
from domunet.core.model import (
    ADD,
    PROTO_TEMP,
    STRATEGY_AUTO,
    STRATEGY_TEMPORARY,
    TABLE_MAIN,
    Route,
    Rule,
    Strategy,
    host_network,
)
from domunet.guest.diff import Change, Scope

log = logging.getLogger(__name__)



class Netlink(Protocol):
    """The four writes apply needs; domunet.core.kernel.Kernel, or a fake in unit tests."""

    def add_route(self, route: Route) -> None: ...
    def remove_route(self, route: Route) -> None: ...
    def add_rule(self, rule: Rule) -> None: ...
    def remove_rule(self, rule: Rule) -> None: ...


def temporary_route(route: Route) -> Route:
    """Main-table host route to the gateway, through the same NIC with the same source."""
    assert route.gateway is not None
    return Route(TABLE_MAIN, host_network(route.gateway), route.dev, src=route.src,
                 metric=route.metric, proto=PROTO_TEMP)


def add_gateway_route(kernel: Netlink, route: Route, strategy: Strategy = STRATEGY_AUTO) -> None:
    """Add a route with a gateway; where the kernel refuses it, retry with a temporary main route.

    The temporary route is removed in every case, also when the retry fails.
    """
    if strategy != STRATEGY_TEMPORARY or route.table == TABLE_MAIN:
        try:
            kernel.add_route(route)
            return
        except GatewayRefused as error:
            if route.table == TABLE_MAIN:
                raise
            log.info("%s: kernel refused gateway %s (%s); retrying with a temporary main-table route",
                     route.dev, route.gateway, error)
    temporary = temporary_route(route)
    added = False
    try:
        try:
            kernel.add_route(temporary)
            added = True
            log.debug("%s: added temporary route %s", route.dev, temporary.describe())
        except ObjectExists:
            log.debug("%s: main table already routes %s, no temporary route needed", route.dev, route.gateway)
        kernel.add_route(route)
    finally:
        if added:
            try:
                kernel.remove_route(temporary)
                log.debug("%s: removed temporary route %s", route.dev, temporary.describe())
            except KernelError as error:
                log.error("%s: could not remove temporary route %s (%s); the next run removes it",
                          route.dev, temporary.describe(), error)


def _do(kernel: Netlink, change: Change, strategy: str) -> bool:
    """Carry out one change; False when there was nothing to do (already gone)."""
    obj = change.obj
    if change.action == ADD:
        if isinstance(obj, Rule):
            kernel.add_rule(obj)
        elif obj.gateway is not None:
            add_gateway_route(kernel, obj, strategy)
        else:
            kernel.add_route(obj)
        return True
    try:
        if isinstance(obj, Rule):
            kernel.remove_rule(obj)
        else:
            kernel.remove_route(obj)
    except ObjectMissing:
        log.debug("already gone: %s", change.describe())
        return False
    return True


def _vanished(error: KernelError, change: Change) -> str | None:
    """The interface an add failed for because it no longer exists (hotplug, a deleted veth)."""
    if change.action == ADD and isinstance(change.obj, Route) and error.errno == errno.ENODEV:
        return change.obj.dev
    return None


def forget(journal: Journal, names: Sequence[str], scope: Scope | None = None) -> None:
    """The one way of a NIC that vanished during a run (found mid-apply, or after the run's
    changes): what this run made for it is taken back, the rest of the run stands."""
    if scope is None:
        made = journal.changes()
        scope = Scope(frozenset(names), frozenset().union(*(_scope_of(name, made).tables for name in names)))
    undone, _ = journal.rollback(scope)
    log.warning("%s: the interface vanished during this run; skipped it (%d change(s) undone)",
                ", ".join(names), undone)


def _scope_of(name: str, changes: Sequence[Change]) -> Scope:
    tables = {c.obj.table for c in changes
              if isinstance(c.obj, Route) and c.obj.dev == name and c.obj.table != TABLE_MAIN}
    return Scope(frozenset({name}), frozenset(tables))



@dataclass(frozen=True)
class Step:
    """A change of a run that is not a route or a rule (the connection-mark table, a sysctl, a
    state file), with how to take it back."""

    what: str
    undo: Callable[[], object]

    def describe(self) -> str:
        return self.what


class Journal:
    """One run's undo journal: its route and rule changes and its other steps, in the order they
    were made. Whatever fails later in the run takes back everything in it, newest first."""

    def __init__(self, kernel: Netlink, strategy: Strategy = STRATEGY_AUTO) -> None:
        self.kernel, self.strategy = kernel, strategy
        self.entries: list[Change | Step] = []

    def step(self, what: str, undo: Callable[[], object]) -> None:
        self.entries.append(Step(what, undo))

    def changes(self) -> list[Change]:
        return [entry for entry in self.entries if isinstance(entry, Change)]

    def rollback(self, scope: Scope | None = None) -> tuple[int, int]:
        """Undo the entries (only the route and rule changes of `scope`, when one is given),
        newest first; keep going past failures and say them. (undone, how many there were)."""
        chosen = [e for e in self.entries if scope is None or (isinstance(e, Change) and scope.covers(e.obj))]
        self.entries = [e for e in self.entries if e not in chosen] if scope is not None else []
        undone = 0
        for entry in reversed(chosen):
            try:
                if isinstance(entry, Change):
                    _do(self.kernel, entry.inverse(), self.strategy)
                else:
                    entry.undo()
                undone += 1
            except Exception as error:  # noqa: BLE001 (keep undoing the rest, and say what stayed)
                what = entry.inverse().describe() if isinstance(entry, Change) else f"undo {entry.describe()}"
                log.error("rollback: could not %s: %s", what, error)
        return undone, len(chosen)

    def failed(self, what: object = None) -> str:
        """Take the whole run back; the one line that says so (after what failed, when given)."""
        undone, count = self.rollback()
        rolled = f"rolled back {undone} of {count} change(s) made by this run"
        return rolled if what is None else f"{what}; {rolled}"


def apply(changes: Sequence[Change], kernel: Netlink, strategy: Strategy = STRATEGY_AUTO,
          journal: Journal | None = None) -> list[Change]:
    """Apply changes in order, each into the run's journal; on failure take the whole run back
    (the journal) and raise ApplyError. Returns the changes made by this call.

    An interface that vanishes while the run goes on is the one exception: what was made for
    it is undone, the rest of its changes skipped with a warning, and the others still done.
    """
    journal = journal if journal is not None else Journal(kernel, strategy)
    done: list[Change] = []
    gone: list[Scope] = []
    for change in changes:
        if any(scope.covers(change.obj) for scope in gone):
            continue
        try:
            if _do(kernel, change, strategy):
                journal.entries.append(change)
                done.append(change)
                log.info("%s", change.describe())
        except KernelError as error:
            name = _vanished(error, change)
            if name is not None:
                scope = _scope_of(name, changes)
                forget(journal, [name], scope)
                done = [c for c in done if not scope.covers(c.obj)]
                gone.append(scope)
                continue
            hint = ""
            if isinstance(error, ObjectExists):
                hint = " (an object domunet did not make is in the way, or another domunet run was busy)"
            raise ApplyError(journal.failed(f"{error}{hint}")) from None
        except BaseException as error:  # anything else: a bug, an interrupt, a socket gone bad
            if isinstance(error, OSError):
                raise ApplyError(journal.failed(f"cannot {change.describe()}: {error.strerror or error}")) from None
            log.error("%s failed (%s: %s); %s", change.describe(), type(error).__name__, error, journal.failed())
            raise
    return done
