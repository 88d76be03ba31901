"""The config file: configobj syntax, validated against a spec into a typed, frozen Config.

Every error names the file, the section and the key, and nothing is half-read: the
caller gets a complete Config or a ConfigError before anything touches the kernel.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import configobj
import validate

from domunet.core.errors import ConfigError
from domunet.core.model import (
    IFNAME,
    MANAGE_VALUES,
    STRATEGIES,
    STRATEGY_AUTO,
    IPAddress,
    IPNetwork,
    Manage,
    Strategy,
    parse_network,
)

log = logging.getLogger(__name__)

DEFAULT_PATH = "/etc/domunet.conf"
DEFAULT_RT_TABLES_FILE = "/etc/iproute2/rt_tables.d/domunet.conf"
#: Tables from table_base on; one slot per managed interface (see plan.allocate_tables).
TABLE_SLOTS = 1000
#: [dom0] input: what guests may send to dom0 itself.
DOM0_INPUTS = ("restricted", "open")
#: Bits 16..25: clear of Kubernetes' 0x4000/0x8000 and Cilium's 0x0f00 (Calico's 0xffff0000 is not: see README).
DEFAULT_FWMARK_MASK = 0x03FF0000

#: Interface names as admins write them (the kernel allows more, shells and tools do not).
_IFNAME_GLOB = re.compile(r"[A-Za-z0-9_.@+*?\[\]!-]{1,64}")



@dataclass(frozen=True)
class InterfaceConfig:
    """Settings for one interface; `manage`: auto (domunet decides), yes (always), no (never)."""

    name: str
    manage: Manage = "auto"
    gateway: ipaddress.IPv4Address | None = None
    gateway6: ipaddress.IPv6Address | None = None
    table: int | None = None
    #: Where a value came from when not from the config file (e.g. "ifupdown").
    sources: Mapping[str, str] = field(default_factory=dict)

    def source(self, key: str) -> str:
        return self.sources.get(key, "config")


@dataclass(frozen=True)
class Config:
    path: str = DEFAULT_PATH
    table_base: int = 1000
    priority_base: int = 10000
    gateway_strategy: Strategy = STRATEGY_AUTO
    main_prefixes: tuple[IPNetwork, ...] = ()
    #: Destinations main routes through devices domunet does not manage keep main's route.
    coexistence: bool = True
    #: Destinations coexistence leaves to the per-NIC tables (`0.0.0.0/0, ::/0`: all of them).
    main_exclude: tuple[IPNetwork, ...] = ()
    #: Forwarded connections (DNAT to a container) answer by the NIC they came in on (domunet.guest.connmark).
    connmark: bool = True
    #: The packet and connection mark bits domunet uses for that: 10 contiguous bits at least.
    fwmark_mask: int = DEFAULT_FWMARK_MASK
    ignore: tuple[str, ...] = ("lo",)
    default6_interface: str | None = None
    rt_tables_file: str = DEFAULT_RT_TABLES_FILE
    interfaces: Mapping[str, InterfaceConfig] = field(default_factory=lambda: MappingProxyType({}))
    #: dom0: guest prefixes given deliberately (wider than /24 or /48, or an uplink's whole subnet).
    dom0_allow_prefixes: tuple[IPNetwork, ...] = ()
    #: dom0: what guests may send to dom0 itself: restricted (ICMP, ND, DHCP) or open.
    dom0_input: str = DOM0_INPUTS[0]
    #: Stanza options refused (interface, why): `domunet status` shows them.
    refused: tuple[tuple[str, str], ...] = ()
    #: [[NAME]] sections with a bad value: NAME -> the error. That interface is left as it is.
    broken: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def for_interface(self, name: str) -> InterfaceConfig:
        return self.interfaces.get(name) or InterfaceConfig(name)


def _options(values: Iterable[str]) -> str:
    return ", ".join(repr(v) for v in values)


_DEFAULTS = Config()
#: The file's grammar; every default is the Config dataclass's own (written once, there).
SPEC = f"""
table_base = integer(min=256, max=4294960000, default={_DEFAULTS.table_base})
priority_base = integer(min=1, max=30000, default={_DEFAULTS.priority_base})
gateway_strategy = option({_options(STRATEGIES)}, default={_DEFAULTS.gateway_strategy!r})
main_prefixes = ip_prefix_list(default=list())
coexistence = boolean(default={_DEFAULTS.coexistence})
main_exclude = ip_prefix_list(default=list())
connmark = boolean(default={_DEFAULTS.connmark})
fwmark_mask = fwmark_mask(default='{_DEFAULTS.fwmark_mask:#010x}')
ignore = ifname_glob_list(default=list({_options(_DEFAULTS.ignore)}))
default6_interface = ifname(default=None)
rt_tables_file = rt_tables_file(default={_DEFAULTS.rt_tables_file!r})
[dom0]
allow_prefixes = ip_prefix_list(default=list())
input = option({_options(DOM0_INPUTS)}, default={_DEFAULTS.dom0_input!r})
[interfaces]
[[__many__]]
manage = option({_options(MANAGE_VALUES)}, default={InterfaceConfig("").manage!r})
gateway = ipv4(default=None)
gateway6 = ipv6(default=None)
table = integer(min=256, max=4294967295, default=None)
""".splitlines()


class _Invalid(validate.ValidateError):
    """A value that fails a check; its text is the whole message."""


def _check_none(value: Any) -> bool:
    return value is None or value == "None"


def _ip(value: Any, version: int) -> IPAddress | None:
    if _check_none(value):
        return None
    if not isinstance(value, str):
        raise validate.VdtTypeError(value)
    if "%" in value:
        raise _Invalid(f"{value!r}: give the address without a %scope (the interface is implied)")
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        raise _Invalid(f"{value!r} is not an IPv{version} address") from None
    if address.version != version:
        raise _Invalid(f"{value!r} is not an IPv{version} address")
    if address.is_multicast or address.is_unspecified or address.is_loopback:
        raise _Invalid(f"{value!r} cannot be a gateway")
    return address


def _ifname(value: Any, pattern: re.Pattern[str] = IFNAME) -> str | None:
    if _check_none(value):
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value) or value in (".", ".."):
        raise _Invalid(f"{value!r} is not an interface name")
    return value


def _fwmark_mask(value: Any) -> int:
    """A 32-bit mask whose lowest set bit starts a run of at least 10 bits (1000 tables' marks)."""
    if not isinstance(value, str):
        raise validate.VdtTypeError(value)
    try:
        mask = int(value.strip(), 0)
    except ValueError:
        raise _Invalid(f"{value!r} is not a number such as 0x03ff0000") from None
    if not 0 < mask <= 0xFFFFFFFF:
        raise _Invalid(f"{value!r} is not a 32-bit mask")
    shift = (mask & -mask).bit_length() - 1
    if (((1 << 10) - 1) << shift) & ~mask:
        raise _Invalid(f"{value!r}: needs 10 contiguous bits from its lowest one (marks for 1000 tables)")
    return mask


def _rt_tables_file(value: Any) -> str:
    """"" (no names), or a .conf file directly in an rt_tables.d directory: iproute2's drop-ins,
    never rt_tables itself nor anything else root could be made to overwrite."""
    if not isinstance(value, str):
        raise validate.VdtTypeError(value)
    if value == "":
        return ""
    path = os.path.normpath(value)
    if not value.isprintable() or not os.path.isabs(value) or os.path.basename(os.path.dirname(path)) != \
            "rt_tables.d" or not path.endswith(".conf") or path != value:
        raise _Invalid(f"{value!r}: give an absolute path NAME.conf in an rt_tables.d directory "
                       "(such as /etc/iproute2/rt_tables.d/domunet.conf), or \"\" for none")
    return path


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if not isinstance(value, list):
        raise validate.VdtTypeError(value)
    return value


def _prefix_list(value: Any) -> list[IPNetwork]:
    prefixes = []
    for item in _as_list(value):
        try:
            prefixes.append(parse_network(str(item)))
        except ValueError:
            raise _Invalid(f"{item!r} is not an IP prefix such as 172.16.0.0/12") from None
    return prefixes


def _ifname_glob_list(value: Any) -> list[str]:
    return [_ifname(item, _IFNAME_GLOB) for item in _as_list(value)]  # type: ignore[misc]


_VALIDATOR = validate.Validator(
    {
        "ipv4": lambda value: _ip(value, 4),
        "ipv6": lambda value: _ip(value, 6),
        "ifname": _ifname,
        "ip_prefix_list": _prefix_list,
        "ifname_glob_list": _ifname_glob_list,
        "fwmark_mask": _fwmark_mask,
        "rt_tables_file": _rt_tables_file,
    }
)


def check_value(check: str, value: str) -> object:
    """Validate one value from outside the file (stanza options) with the file's own checks."""
    checks = {"table": "integer(min=256, max=4294967295)",
              "manage": f"option({', '.join(repr(m) for m in MANAGE_VALUES)})"}
    return _VALIDATOR.check(checks.get(check, check), value)


def with_hints(config: Config, hints: Iterable[Any], source: str = "ifupdown") -> Config:
    """Fill what the config file leaves open from other sources (stanza options); the file wins.
    A hint that cannot be used with this config (a table outside table_base's range, or one
    already given to another interface) is refused: listed in Config.refused, never applied."""
    interfaces = dict(config.interfaces)
    refused = list(config.refused)
    for hint in hints:
        current = interfaces.get(hint.iface) or InterfaceConfig(hint.iface)
        updates: dict[str, Any] = {}
        problem = _table_problem(config, interfaces, hint.iface, hint.table) if hint.table is not None else None
        if problem:
            refused.append((hint.iface, f"domunet-table {hint.table} ({source}): {problem}"))
            log.warning("%s: domunet-table %s from %s is refused: %s", hint.iface, hint.table, source, problem)
            continue
        for key in ("gateway", "gateway6", "table"):
            value = getattr(hint, key)
            if value is None:
                continue
            value = ipaddress.ip_address(value) if key != "table" else value
            if getattr(current, key) is None:
                updates[key] = value
                updates["sources"] = {**current.sources, **updates.get("sources", {}), key: source}
            elif getattr(current, key) != value:
                log.warning("%s: %s %s from %s is overridden by %s in %s",
                            hint.iface, key, value, source, getattr(current, key), config.path)
        if hint.manage and current.manage == "auto":
            updates["manage"] = hint.manage
        if updates:
            interfaces[hint.iface] = replace(current, **updates)
    return replace(config, interfaces=MappingProxyType(interfaces), refused=tuple(refused))


def _table_problem(config: Config, interfaces: Mapping[str, InterfaceConfig], name: str, table: int) -> str | None:
    if not config.table_base <= table < config.table_base + TABLE_SLOTS:
        return (f"outside domunet's tables {config.table_base}..{config.table_base + TABLE_SLOTS - 1} "
                f"(table_base in {config.path})")
    other = next((i.name for i in interfaces.values() if i.table == table and i.name != name), None)
    if other:
        return f"table {table} is already {other}'s"
    return None


def _where(sections: list[str], key: str | None) -> str:
    names = [f"[{'[' * depth}{name}{']' * depth}]" for depth, name in enumerate(sections)]
    return " ".join(names + ([f"key '{key}'"] if key else []))


def load(path: str | None = None) -> Config:
    """Read and validate the config file; a missing *default* file means all defaults."""
    explicit = path is not None
    path = path or DEFAULT_PATH
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang the boot
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(path, "", "not a regular file")
            raw = handle.read((1 << 20) + 1)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(path, "", "no such file") from None
        raw = b""
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror}") from None
    return parse(raw, path)


def parse(raw: bytes, path: str = DEFAULT_PATH) -> Config:
    """Validate config text; pure, so the unit tests and the fuzzer call it directly."""
    if len(raw) > 1 << 20:
        raise ConfigError(path, "", "file is larger than 1 MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(path, "", f"not valid UTF-8 (byte {error.start})") from None
    if "\x00" in text:
        raise ConfigError(path, "", "contains a NUL byte")
    try:
        parsed = configobj.ConfigObj(
            text.splitlines(), configspec=SPEC, interpolation=False, list_values=True,
            raise_errors=True, file_error=False, default_encoding="utf-8",
        )
    except configobj.ConfigObjError as error:
        line = getattr(error, "line_number", None)
        where = f"line {line}" if line else ""
        message = str(error).split(" at line")[0].rstrip(".")
        raise ConfigError(path, where, message) from None
    _check_structure(parsed, path)
    result = parsed.validate(_VALIDATOR, preserve_errors=True)
    #: A bad value in one [[NAME]] section costs that interface only (plan leaves it as it is).
    broken: dict[str, str] = {}
    problems: list[tuple[list[str], str | None, str]] = []
    if result is not True:
        for sections, key, error in configobj.flatten_errors(parsed, result):
            problems.append((list(sections), key, str(error) if isinstance(error, Exception) else "missing section"))
    for sections, name in configobj.get_extra_values(parsed):
        if isinstance(_lookup(parsed, sections).get(name), dict):
            problems.append(([*sections, name], None, "unknown section"))
        else:
            problems.append((list(sections), name, "unknown key"))
    for sections, key, message in problems:
        if len(sections) == 2 and sections[0] == "interfaces":
            broken.setdefault(sections[1], str(ConfigError(path, _where(sections, key), message)))
            continue
        raise ConfigError(path, _where(sections, key), message)
    return _typed(parsed, path, broken)


def _check_structure(parsed: configobj.ConfigObj, path: str) -> None:
    """Sections only where the spec has them (configobj's validate crashes on `[table_base]`)."""
    for name in parsed.sections:
        if name not in ("interfaces", "dom0"):
            raise ConfigError(path, _where([name], None), "unknown section")
    dom0 = parsed.get("dom0")
    if isinstance(dom0, configobj.Section):
        for sub in dom0.sections:
            raise ConfigError(path, _where(["dom0", sub], None), "unknown section")
    interfaces = parsed.get("interfaces")
    if not isinstance(interfaces, configobj.Section):
        return
    for name in interfaces.scalars:
        raise ConfigError(path, _where(["interfaces"], name), "unknown key (interfaces are sections: [[NAME]])")
    for name in interfaces.sections:
        for sub in interfaces[name].sections:
            raise ConfigError(path, _where(["interfaces", name, sub], None), "unknown section")


def _lookup(section: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        section = section[name]
    return section


def _typed(parsed: configobj.ConfigObj, path: str, broken: dict[str, str]) -> Config:
    interfaces = {}
    for name, values in parsed["interfaces"].items():
        where = _where(["interfaces", name], None)
        try:
            _ifname(name)
        except _Invalid as error:
            raise ConfigError(path, where, str(error)) from None
        if name in broken:
            continue
        table = values["table"]
        base = parsed["table_base"]
        if table is not None and not base <= table < base + TABLE_SLOTS:
            broken[name] = str(ConfigError(
                path, _where(["interfaces", name], "table"),
                f"{table} is outside domunet's tables {base}..{base + TABLE_SLOTS - 1} (see table_base)",
            ))
            continue
        interfaces[name] = InterfaceConfig(
            name=name, manage=values["manage"], gateway=values["gateway"],
            gateway6=values["gateway6"], table=table,
        )
    tables = [i.table for i in interfaces.values() if i.table is not None]
    duplicate = next((t for t in tables if tables.count(t) > 1), None)
    if duplicate is not None:
        raise ConfigError(path, "[interfaces]", f"table {duplicate} is given to more than one interface")
    if parsed["table_base"] + TABLE_SLOTS > 4294967295:
        raise ConfigError(path, _where([], "table_base"), "leaves no room for 1000 tables")
    return Config(
        path=path,
        table_base=parsed["table_base"],
        priority_base=parsed["priority_base"],
        gateway_strategy=parsed["gateway_strategy"],
        main_prefixes=tuple(parsed["main_prefixes"]),
        coexistence=parsed["coexistence"],
        main_exclude=tuple(parsed["main_exclude"]),
        connmark=parsed["connmark"],
        dom0_allow_prefixes=tuple(parsed["dom0"]["allow_prefixes"]),
        dom0_input=parsed["dom0"]["input"],
        fwmark_mask=parsed["fwmark_mask"],
        ignore=tuple(parsed["ignore"]),
        default6_interface=parsed["default6_interface"],
        rt_tables_file=parsed["rt_tables_file"],
        interfaces=MappingProxyType(interfaces),
        broken=MappingProxyType(broken),
    )
