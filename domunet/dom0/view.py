"""What a long-lived dom0 service checks every vif against, kept current from change events."""

from __future__ import annotations

from typing import Any

from domunet.core.decode import address_of
from domunet.core.events import (
    RTM_DELADDR,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    Events,
    EventsLost,
)
from domunet.core.kernel import Kernel
from domunet.core.model import Route


class KernelView:
    """What a long-lived dom0 service checks every vif against, kept current from the kernel's
    change events instead of dumped per vif: every address dom0 holds (with 500 vifs, each holding
    dom0's address, that dump alone costs 20-40 ms), and the main table's default routes (their
    dump holds every vif's host route)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._events: Events | None = None
        self._addresses: set[tuple[int, Any]] | None = None  # (ifindex, address)
        self._count: dict[Any, int] = {}  # address -> on how many interfaces
        self._defaults: list[Route] | None = None

    def _update(self) -> None:
        if self._events is None:  # subscribed before the first dumps: nothing is missed
            self._events = Events(RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        try:
            messages = self._events.read()
        except EventsLost:
            self._addresses, self._defaults, messages = None, None, []
        if self._addresses is None:
            self._addresses, self._count = set(), {}
            for msg in self.kernel.address_messages():
                self._note(msg, True)
        for msg in messages:
            kind = msg["header"]["type"]
            if kind in (RTM_NEWROUTE, RTM_DELROUTE):
                if msg["dst_len"] == 0:
                    self._defaults = None  # read again when next asked
            elif kind in (RTM_NEWADDR, RTM_DELADDR):
                self._note(msg, kind == RTM_NEWADDR)

    def _note(self, msg: Any, present: bool) -> None:
        address = address_of(msg)
        if address is None or self._addresses is None:
            return
        entry = (msg["index"], address)
        if present and entry not in self._addresses:
            self._addresses.add(entry)
            self._count[address] = self._count.get(address, 0) + 1
        elif not present and entry in self._addresses:
            self._addresses.discard(entry)
            self._count[address] -= 1
            if not self._count[address]:
                del self._count[address]

    def now(self) -> tuple[list[Route], list[Any]]:
        """The main table's default routes and dom0's addresses (each once: dom0's own on 500 vifs
        is one), from one reading of the events."""
        self._update()
        if self._defaults is None:
            self._defaults = self.kernel.main_defaults()
        return list(self._defaults), list(self._count)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
