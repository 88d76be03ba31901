"""Changes as the equivalent `ip` commands (what `domunet plan` prints)."""

from __future__ import annotations

import shlex

from domunet.core.model import ADD, TABLE_MAIN, Route, Rule
from domunet.guest.diff import Change


def _table(table: int) -> str:
    return "main" if table == TABLE_MAIN else str(table)


def route_args(route: Route) -> list[str]:
    words = ["default" if route.dst.prefixlen == 0 else str(route.dst)]
    if route.gateway is not None:
        words += ["via", str(route.gateway)]
    words += ["dev", shlex.quote(route.dev), "table", _table(route.table), "proto", str(route.proto)]
    if route.version == 4 and route.gateway is None:
        words += ["scope", "link"]
    if route.metric:
        words += ["metric", str(route.metric)]
    if route.src is not None:
        words += ["src", str(route.src)]
    return words


def rule_args(rule: Rule) -> list[str]:
    words = ["priority", str(rule.priority)]
    words += ["from", str(rule.src) if rule.src else "all"]
    if rule.dst is not None:
        words += ["to", str(rule.dst)]
    if rule.fwmark is not None:
        mask = rule.fwmask if rule.fwmask is not None else 0xFFFFFFFF
        words += ["fwmark", f"{rule.fwmark:#x}/{mask:#x}"]
    if rule.oif is not None:
        words += ["oif", shlex.quote(rule.oif)]
    return words + ["lookup", _table(rule.table), "proto", str(rule.proto)]


def ip_command(change: Change) -> str:
    verb = "add" if change.action == ADD else "del"  # ip's words
    obj = change.obj
    if isinstance(obj, Route):
        return " ".join([f"ip -{obj.version}", "route", verb, *route_args(obj)])
    return " ".join([f"ip -{obj.version}", "rule", verb, *rule_args(obj)])
