"""ifupdown's hook environment -> what to do, and the stanza options it carries.

Stanza options of an interface (documented in the README):
  domunet-gateway ADDR      IPv4 gateway of the interface's table
  domunet-gateway6 ADDR     IPv6 gateway (e.g. dom0's /128); an inet6 stanza's own `gateway` counts too
  domunet-table N           the interface's table
  domunet-manage auto|yes|no
ifupdown hands them to the hook as IF_DOMUNET_*; the hook keeps them under /run (hints), so
that every later run (boot unit, udev, the admin) plans with them too.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import validate

from domunet.core import config as configuration
from domunet.core.errors import UsageError
from domunet.core.state import Layout, check_dir, read_folder, set_aside, write_json

log = logging.getLogger(__name__)

MODES = ("start", "stop")
FAMILIES = ("inet", "inet6")


@dataclass(frozen=True)
class HookCall:
    """One hook invocation for one interface stanza."""

    iface: str
    addrfam: str
    mode: str
    gateway: str | None = None
    gateway6: str | None = None
    table: int | None = None
    manage: str | None = None


def _checked(env: Mapping[str, str], variable: str, check: str, iface: str) -> object:
    value = env.get(variable, "").strip()
    if not value:
        return None
    option = variable[3:].lower().replace("_", "-")
    try:
        return configuration.check_value(check, value)
    except validate.ValidateError as error:
        raise UsageError(f"{iface}: stanza option '{option}' ({variable}): {error}") from None


def parse_env(env: Mapping[str, str]) -> HookCall | None:
    """None for calls that are not about one real interface (loopback, IFACE=--all)."""
    iface = env.get("IFACE", "")
    if not iface or iface == "--all" or iface == "lo" or env.get("METHOD") == "loopback":
        return None
    if ":" in iface:  # an alias stanza (eth0:1): its addresses belong to eth0, whose own call handles them
        return None
    try:
        configuration.check_value("ifname", iface)
    except validate.ValidateError as error:
        raise UsageError(f"IFACE: {error}") from None
    mode = env.get("MODE", "")
    if mode not in MODES:
        raise UsageError(f"{iface}: MODE={mode!r} is neither start nor stop (run from if-up.d or if-post-down.d)")
    addrfam = env.get("ADDRFAM", "inet")
    own_gateway = "gateway6" if addrfam == "inet6" else "gateway"
    values = {
        "gateway": _checked(env, "IF_DOMUNET_GATEWAY", "ipv4", iface),
        "gateway6": _checked(env, "IF_DOMUNET_GATEWAY6", "ipv6", iface),
        "table": _checked(env, "IF_DOMUNET_TABLE", "table", iface),
        "manage": _checked(env, "IF_DOMUNET_MANAGE", "manage", iface),
    }
    if addrfam in FAMILIES and not values[own_gateway]:
        values[own_gateway] = _checked(env, "IF_GATEWAY", "ipv6" if addrfam == "inet6" else "ipv4", iface)
    return HookCall(
        iface=iface, addrfam=addrfam, mode=mode,
        gateway=str(values["gateway"]) if values["gateway"] else None,
        gateway6=str(values["gateway6"]) if values["gateway6"] else None,
        table=values["table"],  # type: ignore[arg-type]
        manage=values["manage"],  # type: ignore[arg-type]
    )


def _directory(state_dir: str) -> Path:
    return Layout(state_dir).hints


def save_hints(state_dir: str, call: HookCall) -> None:
    check_dir(_directory(state_dir))  # created, and refused if it is not root's
    write_json(Layout(state_dir).hint(call.iface, call.addrfam), asdict(call))


def _is_symlink(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def remove_hints(state_dir: str, iface: str) -> None:
    if _is_symlink(_directory(state_dir)):
        return  # never written through (load_hints says so)
    for path in _directory(state_dir).glob(f"{iface}.*.json"):
        path.unlink(missing_ok=True)


def hint_from(data: object) -> HookCall:
    """A kept hint, checked as strictly as the stanza it came from (ValueError if it is not)."""
    if not isinstance(data, dict) or set(data) - set(HookCall.__dataclass_fields__) or "iface" not in data:
        raise ValueError("not a domunet hint")
    iface, addrfam, mode = data.get("iface"), data.get("addrfam"), data.get("mode")
    try:
        configuration.check_value("ifname", iface)
        for key, check in (("gateway", "ipv4"), ("gateway6", "ipv6"), ("manage", "manage")):
            if data.get(key) is not None:
                configuration.check_value(check, data[key])
        table = data.get("table")
        if table is not None and (isinstance(table, bool) or not isinstance(table, int)):
            raise ValueError(f"table {table!r} is not a number")
        if table is not None:
            configuration.check_value("table", str(table))
    except validate.ValidateError as error:
        raise ValueError(str(error)) from None
    if addrfam not in FAMILIES or mode not in MODES:
        raise ValueError(f"addrfam {addrfam!r} or mode {mode!r} is not one ifupdown gives")
    return HookCall(**data)


def load_hints(state_dir: str) -> list[HookCall]:
    """The stanza options of interfaces ifupdown has up; a corrupt file is set aside, loudly."""
    directory = _directory(state_dir)
    try:
        if _is_symlink(directory):
            log.warning("%s: is a symlink; its hints are not read (domunet does not follow symlinks in its "
                        "state: remove it)", directory)
            return []
        good, bad = read_folder(directory, "*.json", hint_from, "hint")
    except OSError as error:  # setup then names the state directory when it takes the lock
        log.debug("cannot read the ifupdown hints in %s: %s", directory, error.strerror)
        return []
    for failed in bad:
        if failed.corrupt:
            set_aside(failed.path, failed.reason)
        else:
            log.warning("ignoring %s: %s", failed.path, failed.reason)
    return [call for _, call in good]
