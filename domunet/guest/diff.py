"""diff(desired, owned) -> ordered changes. Pure set arithmetic on frozen objects.

The order is what keeps the kernel happy and the guest reachable: on removal rules go
first (traffic stops using a table before the table empties), then gateway routes, then
link routes; on addition link routes first (they make gateways reachable), then gateway
routes, rules last (a rule never points at a half-built table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Union

from domunet.core.model import ADD, REMOVE, TABLE_MAIN, Action, Route, Rule, State

Object = Union[Route, Rule]


@dataclass(frozen=True)
class Change:
    action: Action
    obj: Object

    def describe(self) -> str:
        kind = "route" if isinstance(self.obj, Route) else "rule"
        return f"{self.action} {kind} {self.obj.describe()}"

    def inverse(self) -> Change:
        """The change that takes this one back (the rollback journal's step)."""
        return Change(REMOVE if self.action == ADD else ADD, self.obj)


def after(objects: Collection[Object], changes: Iterable[Change]) -> set[Object]:
    """The objects there are once the changes are made."""
    result = set(objects)
    for change in changes:
        (result.add if change.action == ADD else result.discard)(change.obj)
    return result


@dataclass(frozen=True)
class Scope:
    """Which interfaces a run is about; objects of other interfaces are left alone."""

    names: frozenset[str]
    tables: frozenset[int]

    def covers(self, obj: Object) -> bool:
        if isinstance(obj, Route):
            return obj.dev in self.names or obj.table in self.tables
        return obj.oif in self.names or obj.table in self.tables


def scope_for(names: Collection[str], desired: State, owned: State) -> Scope:
    """Tables of the named interfaces: from the plan, and from owned `oif` rules (gone NICs too)."""
    wanted = frozenset(names)
    tables = {m.table for m in desired.managed if m.name in wanted}
    tables |= {r.table for r in owned.rules if r.oif in wanted}
    tables.discard(TABLE_MAIN)
    return Scope(wanted, frozenset(tables))


def _sort_key(obj: Object) -> tuple[int, str]:
    return (obj.version, repr(obj))


def diff(desired: State, owned: State, scope: Scope | None = None) -> list[Change]:
    """Changes that turn owned into desired, limited to scope when one is given."""
    want_routes, have_routes = set(desired.routes), set(owned.routes)
    want_rules, have_rules = set(desired.rules), set(owned.rules)
    if scope is not None:
        want_routes = {o for o in want_routes if scope.covers(o)}
        have_routes = {o for o in have_routes if scope.covers(o)}
        want_rules = {o for o in want_rules if scope.covers(o)}
        have_rules = {o for o in have_rules if scope.covers(o)}

    def ordered(action: Action, objects: set[Object]) -> list[Change]:
        return [Change(action, o) for o in sorted(objects, key=_sort_key)]

    stale_routes = have_routes - want_routes
    new_routes = want_routes - have_routes
    return (
        ordered(REMOVE, have_rules - want_rules)
        + ordered(REMOVE, {r for r in stale_routes if not r.is_link})
        + ordered(REMOVE, {r for r in stale_routes if r.is_link})
        + ordered(ADD, {r for r in new_routes if r.is_link})
        + ordered(ADD, {r for r in new_routes if not r.is_link})
        + ordered(ADD, want_rules - have_rules)
    )
