"""What vif-domunet and `domunet dom0 serve` say to each other over dom0.sock (pure).

One request per connection, one JSON object on one line, at most MAX_REQUEST bytes; one answer
the same way. The service checks a request as strictly as the command line (domunet.dom0.request):
a malformed one gets an answer with kind "usage" and changes nothing.

    {"op": "online", "request": {"key", "vif", "guest": [...], "uplink", "rename", "xenbus_path"}}
    {"op": "offline", "key": KEY, "vif": VIF or null}
    {"op": "hotplug", "command": "online" | "offline" | "add" | "remove", "settings": {KEY: VALUE},
     "env": {"vif", "XENBUS_PATH", "netdev"}, "ack": true, "start_within": SECONDS}
    (vif-domunet's call as libxl made it: domunet.dom0.client; with "ack", the service first sends
    {"queued": true} once it has the request; a request it cannot start within start_within
    seconds of reading it is answered with kind "late" and not done)
    answers: {"ok": true, "record": {...}} (online), {"ok": true, "found": bool} (offline),
             {"ok": true} (hotplug: hotplug-status is connected),
             {"ok": false, "kind": "usage" | "failed" | "refused" | "late", "error": "one line"}
"""

from __future__ import annotations

import json
from typing import Any

from domunet.core.errors import UsageError
from domunet.dom0.client import ENVIRONMENT, FAILED, LATE, REFUSED, USAGE
from domunet.dom0.hotplug import Call
from domunet.dom0.request import RECORD_KEY, VifRequest, check_ifname, check_xenbus_path, parse_addresses

MAX_REQUEST = 64 * 1024

__all__ = ["FAILED", "LATE", "REFUSED", "USAGE", "decode", "encode"]  # the kinds are the client's (it imports nothing)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(data: bytes, limit: int = MAX_REQUEST) -> dict[str, Any]:
    """A message as sent (UsageError naming what is wrong with it)."""
    if len(data) > limit:
        raise UsageError(f"request longer than {limit} bytes")
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"request is not JSON ({error})") from None
    except RecursionError:  # 30,000 `[` are valid JSON the decoder cannot nest that deep
        raise UsageError("request is nested too deeply") from None
    if not isinstance(message, dict):
        raise UsageError("request is not a JSON object")
    return message


def _name(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{what}: not a string")
    return check_ifname(value, what)


def _key(value: Any) -> str:
    if not isinstance(value, str) or not RECORD_KEY.fullmatch(value):
        raise UsageError(f"key: {str(value)[:40]!r} is not a hotplug key or interface name")
    return value


def parse_online(message: dict[str, Any]) -> VifRequest:
    """The request of an online message, checked as the command line's is."""
    body = message.get("request")
    if not isinstance(body, dict) or set(body) - {"key", "vif", "guest", "uplink", "rename", "xenbus_path"}:
        raise UsageError("online: `request` is not a vif request")
    guest = body.get("guest")
    if not isinstance(guest, list) or not all(isinstance(item, str) for item in guest):
        raise UsageError("online: `guest` is not a list of addresses")
    path = body.get("xenbus_path")
    if path is not None and not isinstance(path, str):
        raise UsageError("online: `xenbus_path` is not a string")
    return VifRequest(
        key=_key(body.get("key")), vif=_name(body.get("vif"), "vif") or check_ifname(None, "vif"),
        guest=parse_addresses(" ".join(guest), "guest"), uplink=_name(body.get("uplink"), "uplink"),
        rename=_name(body.get("rename"), "vifname"), xenbus_path=check_xenbus_path(path) if path else None)


def parse_offline(message: dict[str, Any]) -> tuple[str, str | None]:
    return _key(message.get("key")), _name(message.get("vif"), "vif")


HOTPLUG_COMMANDS = ("online", "offline", "add", "remove")


def parse_hotplug(message: dict[str, Any]) -> Call:
    """A hotplug message as libxl's call; its values are checked where the work reads them
    (domunet.dom0.hotplug), as in-process."""
    command = message.get("command")
    if command not in HOTPLUG_COMMANDS:
        raise UsageError(f"hotplug: unknown command {str(command)[:20]!r} (online, offline, add or remove)")
    settings, env = message.get("settings"), message.get("env")
    if not isinstance(settings, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in settings.items()):
        raise UsageError("hotplug: `settings` is not a mapping of strings")
    if not isinstance(env, dict) or set(env) - set(ENVIRONMENT) or not all(isinstance(v, str) for v in env.values()):
        raise UsageError(f"hotplug: `env` holds more than {', '.join(ENVIRONMENT)}, or not strings")
    return Call(command, settings, env)
