"""The one answer to "is this domunet's?" in a guest. Pure: data and predicates, no kernel.

Ownership is read from the kernel's own objects, never remembered: a route or rule is domunet's
when it carries domunet's protocol (PROTO, PROTO_TEMP) *and* has a shape domunet's plan could
have made within one of its blocks of tables and rule priorities. Anything else with those
numbers (made by hand, by another tool) is left alone. discover, plan, pipeline, doctor and watch
all ask here (systemd-networkd keeps one `source` per object and asks at one point, likewise).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Iterable

from domunet.core.config import TABLE_SLOTS, Config
from domunet.core.model import PROTO, PROTO_TEMP, TABLE_DEFAULT, TABLE_LOCAL, TABLE_MAIN, Route, Rule, State

log = logging.getLogger(__name__)

#: The protocols domunet's guest side puts on what it makes: its own, and its temporary host routes.
PROTOCOLS = frozenset({PROTO, PROTO_TEMP})
#: Rule priorities: priority_base holds the main-table exemptions, interfaces start here after it...
FIRST_INTERFACE_PRIORITY = 10
#: ...and priority_base + 1 the connection-mark rules (after the exemptions, before every NIC's own).
MARK_PRIORITY = 1
#: Tables that are never anyone's in particular (the kernel's own).
SPECIAL_TABLES = frozenset({TABLE_DEFAULT, TABLE_MAIN, TABLE_LOCAL})

#: A block of tables and rule priorities: (table_base, priority_base).
Block = tuple[int, int]


def carries_protocol(obj: Route | Rule) -> bool:
    """Made by domunet, as far as its protocol says (its shape decides the rest: within_reach)."""
    return obj.proto in PROTOCOLS


def temporary(obj: Route | Rule) -> bool:
    """One of the host routes a run makes and removes again (past "Network is unreachable")."""
    return obj.proto == PROTO_TEMP


def main_route_of_ours(route: Route) -> bool:
    """Could domunet have made this main-table route? Only by shape: its temporary host routes,
    and the IPv6 default and /128 via dom0. Anything else in main that carries its protocol (an
    IPv4 default made by hand with `proto 213`) is the admin's, and counts as main's own."""
    if route.multipath:  # never made by domunet; another program's next hop merged into its own
        return False
    host = route.dst.prefixlen == route.dst.max_prefixlen
    if route.proto == PROTO_TEMP:
        return host
    return route.proto == PROTO and route.version == 6 and (host or route.dst.prefixlen == 0)


def owned_state(routes: Iterable[Route], rules: Iterable[Rule]) -> State:
    """Every route and rule with domunet's protocols (multipath routes are never its own)."""
    return State(routes=frozenset(r for r in routes if carries_protocol(r) and not r.multipath),
                 rules=frozenset(r for r in rules if carries_protocol(r)))


def foreign_tables(routes: Iterable[Route]) -> frozenset[int]:
    """Tables other programs hold routes in (a table domunet holds already stays its own)."""
    routes = list(routes)
    return frozenset(r.table for r in routes if not carries_protocol(r) and r.table not in SPECIAL_TABLES) \
        - {r.table for r in routes if carries_protocol(r)}


def foreign_rule(rule: dict) -> bool:
    """A rule as Kernel.rule_details reads it (any action) that is not domunet's."""
    return rule["proto"] not in PROTOCOLS


def block_of(config: Config) -> Block:
    return (config.table_base, config.priority_base)


def _as_block(config: Config, block: Block) -> Config:
    return config if block == block_of(config) else replace(config, table_base=block[0], priority_base=block[1])


def blocks_in_use(objects: Iterable[Route | Rule], config: Config, earlier: Iterable[Block]) -> list[Block]:
    """The blocks to remember after a run: this config's, and every earlier one that still holds
    objects of domunet's shapes (a NIC left as it is, a teardown of some NICs only)."""
    objects = list(objects)
    kept = [block_of(config)]
    for block in earlier:
        if block in kept:
            continue
        shaped = _as_block(config, block)
        if any(_in_reach(obj, shaped) and not _in_reach(obj, config) for obj in objects):
            kept.append(block)
    return kept


def within_reach(owned: State, config: Config, earlier: Iterable[Block] = ()) -> State:
    """Of the objects that carry domunet's protocols, those its plan could have made, by shape:
    routes in its tables; in main only the temporary host routes and the IPv6 default and /128
    via dom0 (never an IPv4 default: main's default route is never removed); rules in its priority
    block that look like its own (`to PREFIX lookup main` at priority_base, `fwmark` at +1, `from`
    or `oif` rules into its tables). `earlier`: blocks an earlier config used (priority_base or
    table_base changed since): what is left there is domunet's too, and goes."""
    configs = [config, *(_as_block(config, block) for block in earlier if block != block_of(config))]
    routes = frozenset(r for r in owned.routes if any(_route_in_reach(r, c) for c in configs))
    rules = frozenset(r for r in owned.rules if any(_rule_in_reach(r, c) for c in configs))
    left = len(owned.routes) - len(routes) + len(owned.rules) - len(rules)
    if left:
        log.info("leaving alone %d route(s) or rule(s) with domunet's protocol that it would not make", left)
    return State(routes=routes, rules=rules)


def in_table_block(table: int, config: Config) -> bool:
    return config.table_base <= table < config.table_base + TABLE_SLOTS


def _in_reach(obj: Route | Rule, config: Config) -> bool:
    return _route_in_reach(obj, config) if isinstance(obj, Route) else _rule_in_reach(obj, config)


def _route_in_reach(route: Route, config: Config) -> bool:
    if in_table_block(route.table, config):
        return True
    return route.table == TABLE_MAIN and main_route_of_ours(route)


def _rule_in_reach(rule: Rule, config: Config) -> bool:
    base = config.priority_base
    if rule.table == TABLE_MAIN:
        return rule.priority == base and rule.dst is not None and not (rule.src or rule.oif or rule.fwmark)
    if not in_table_block(rule.table, config):
        return False
    if rule.fwmark is not None:
        return rule.priority == base + MARK_PRIORITY and not (rule.src or rule.dst or rule.oif)
    last = base + FIRST_INTERFACE_PRIORITY + 2 * TABLE_SLOTS
    return base + FIRST_INTERFACE_PRIORITY <= rule.priority < last and rule.dst is None \
        and (rule.src is None) != (rule.oif is None)
