"""`domunet watch`: follow the kernel's changes and converge with the same engine as `setup`.

It listens to rtnetlink's link, address, route and rule groups, coalesces a burst into one run,
and ignores the echo of its own changes (no feedback loop), so an idle guest costs nothing: the
process sleeps in select() with no timeout. Someone deleting domunet's rule, a DHCP renewal,
SLAAC, a hot-plugged vif, a bridge or a CNI veth: each is an event, and one run converges.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from domunet.core.decode import route_from, rule_from
from domunet.core.errors import ConfigError, DomunetError
from domunet.core.events import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTM_NEWRULE,
)
from domunet.core.model import ADD, REMOVE, TABLE_LOCAL, TABLE_MAIN, Action, Route, Rule
from domunet.core.systemd import notify
from domunet.guest.diff import Change
from domunet.guest.owned import carries_protocol, temporary

log = logging.getLogger(__name__)

#: A burst is over after this much quiet...
SETTLE = 0.05
#: ...or this long after its first event, whichever comes first (a storm still converges).
MAX_DELAY = 0.5
#: After a failed run: retry after this, doubling up to RETRY_MAX, until a run succeeds.
RETRY_FIRST, RETRY_MAX = 2.0, 60.0
#: Runs in a row that each found domunet's nftables table changed again; then one run RETRY_FIRST later.
MAX_RECHECKS = 5

Echoes = Counter  # (action, Route | Rule) -> how many of our own changes still to hear about


@dataclass(frozen=True)
class Event:
    """One kernel notification, reduced to what decides whether to converge."""

    kind: str  # "link", "address", "route", "rule"
    action: Action  # ADD (a NEW message) or REMOVE (a DEL message)
    obj: Route | Rule | None = None


def matters(event: Event, echoes: Echoes) -> bool:
    """Does this event call for a run? Pure. The echo of a change domunet just made is consumed
    and ignored; a route or rule of domunet's that someone else removed (or added) matters."""
    obj = event.obj
    if event.kind in ("link", "address"):
        return True
    if obj is None:
        return False
    if temporary(obj):
        return False  # made and removed within one run of ours
    if carries_protocol(obj):
        key = (event.action, obj)
        if echoes[key] > 0:
            echoes[key] -= 1
            return False
        return True
    if isinstance(obj, Route):  # foreign routes: main's feed coexistence and the default gateways
        return obj.table == TABLE_MAIN
    return False  # foreign rules do not change the plan


def echoes_of(changes: Iterable[Change]) -> Echoes:
    return Counter((change.action, change.obj) for change in changes)


def event_from(message: Any, kernel: Any) -> Event | None:
    """A pyroute2 message as an Event (None for kinds domunet does not follow)."""
    kind = message["header"]["type"]
    action: Action = ADD if kind in (RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWRULE) else REMOVE
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        return Event("link", action)
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        return Event("address", action)
    if kind in (RTM_NEWROUTE, RTM_DELROUTE):
        route = route_from(message, kernel.name_of)
        if route is None or route.table == TABLE_LOCAL:
            return None
        return Event("route", action, route)
    if kind in (RTM_NEWRULE, RTM_DELRULE):
        rule = rule_from(message)
        return None if rule is None else Event("rule", action, rule)
    return None


class Watch:
    """The loop. `converge` runs the engine once and returns the changes it made; `reload`
    re-reads the config (a bad one raises ConfigError, and the last good one stays)."""

    def __init__(self, events: Any, kernel: Any, converge: Callable[[], list[Change]],
                 reload: Callable[[], None], nft_events: Any = None, tables: frozenset[str] = frozenset()) -> None:
        self.events = events
        self.kernel = kernel
        self.converge = converge
        self.reload = reload
        #: nf_tables notifications (core.events.NftEvents), and the tables of domunet's they are about.
        self.nft_events = nft_events
        self.tables = tables
        self.echoes: Echoes = Counter()
        self.runs = 0
        self.stopping = False
        self.reloading = False
        #: After a failed run: the next delay, and no run before `not_before` (only a success or a
        #: SIGHUP ends that: the echo of a rolled-back run is just another event).
        self.retry_in: float | None = None
        self.not_before: float | None = None
        #: A run saw one of domunet's nftables tables change: its own change and someone else's (a
        #: `flush ruleset` meanwhile) look alike, so one more run tells them apart. That run, if it
        #: changes nothing, is heard of by nobody; if it has to put the table back (another flush
        #: came), it rechecks in turn: a flush during a recheck is never lost (round 3).
        self.recheck = False
        self.rechecks = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _on_signal(self, number: int, _frame: Any) -> None:
        if number == signal.SIGHUP:
            self.reloading = True
        else:
            self.stopping = True

    def install_signals(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, self._on_signal)
        signal.set_wakeup_fd(self._wake_w)

    def _run_called_for(self) -> bool:
        """Read what is queued; True if any of it calls for a run."""
        try:
            messages = self.events.read()
        except DomunetError as error:  # ENOBUFS: a burst overflowed, state unknown
            log.info("%s: converging from scratch", error)
            self.echoes.clear()
            return True
        wanted = self._nft_touched()
        for message in messages:
            event = event_from(message, self.kernel)
            if event is not None and matters(event, self.echoes):
                log.debug("change: %s %s %s", event.action, event.kind, event.obj.describe() if event.obj else "")
                wanted = True
        return wanted

    def _nft_touched(self) -> bool:
        """Did someone remove (part of) one of domunet's nftables tables (`nft flush ruleset`)?"""
        if self.nft_events is None:
            return False
        try:
            touched = self.nft_events.read()
        except DomunetError as error:
            log.info("%s: converging from scratch", error)
            return True
        if touched & self.tables or "*" in touched:
            log.debug("change: nftables table %s removed or changed", ", ".join(sorted(touched & self.tables)))
            return True
        return False

    def _wait(self, timeout: float | None) -> bool:
        """Sleep until an event, a signal or the timeout; True when an event socket is readable."""
        sockets = [self.events, self._wake_r] + ([self.nft_events] if self.nft_events is not None else [])
        readable, _, _ = select.select(sockets, [], [], timeout)
        if self._wake_r in readable:
            while True:
                try:
                    if not os.read(self._wake_r, 64):
                        break
                except BlockingIOError:
                    break
        return self.events in readable or (self.nft_events is not None and self.nft_events in readable)

    def _backing_off(self) -> bool:
        return self.not_before is not None and time.monotonic() < self.not_before

    def _run_once(self) -> None:
        self._run_called_for()  # echoes of the last run still queued are consumed, not run for
        started = time.monotonic()
        try:
            changes = self.converge()
        except Exception as error:  # noqa: BLE001 (watch outlives any one run: a full /run, a bug)
            self.retry_in = min(RETRY_MAX, self.retry_in * 2) if self.retry_in else RETRY_FIRST
            self.not_before = time.monotonic() + self.retry_in
            message = str(error)
            if not isinstance(error, DomunetError):
                log.debug("internal error", exc_info=True)
                message = f"internal error: {type(error).__name__}: {error}"
            log.error("%s (trying again in %.0f s)", message, self.retry_in)
            self.echoes.clear()
            self._nft_touched()  # its own nftables changes (and their undoing) are no news
            return
        self.recheck = self._nft_touched()
        self.retry_in = self.not_before = None
        self.runs += 1
        self.echoes = echoes_of(changes)
        log.info("converged: %d change(s) in %.1f ms (run %d)", len(changes),
                 (time.monotonic() - started) * 1000, self.runs)
        self.rechecks = self.rechecks + 1 if self.recheck else 0
        if self.rechecks > MAX_RECHECKS:  # someone rewrites it as fast as domunet does: no loop of runs
            log.warning("nftables table %s keeps changing under domunet: checking again in %.0f s",
                        ", ".join(sorted(self.tables)), RETRY_FIRST)
            self.recheck, self.rechecks = False, 0
            self.not_before = time.monotonic() + RETRY_FIRST

    def _do_reload(self) -> None:
        self.reloading = False
        notify("RELOADING=1")
        try:
            self.reload()
            log.info("configuration re-read")
        except ConfigError as error:
            log.error("configuration not re-read, the last good one stays: %s", error)
        notify("READY=1")

    def loop(self) -> None:
        self._run_once()
        notify("READY=1")
        while not self.stopping:
            if self.reloading:
                self._do_reload()
                self._run_once()
                continue
            if self.recheck:
                self._run_once()
                continue
            timeout = None if self.not_before is None else max(0.0, self.not_before - time.monotonic())
            if not self._wait(timeout):
                if self.not_before is not None and not self._backing_off() and not self.stopping \
                        and not self.reloading:
                    self._run_once()
                continue
            if not self._run_called_for() or self._backing_off():
                continue  # while backing off, the retry converges whatever came meanwhile
            first = time.monotonic()
            while time.monotonic() - first < MAX_DELAY and not self.stopping:
                if not self._wait(SETTLE):
                    break
                self._run_called_for()
            if not self.stopping:
                self._run_once()
        notify("STOPPING=1")
        log.info("stopping after %d run(s); the converged state stays in place", self.runs)


def run(config_path: str | None, state_dir: str) -> None:
    """`domunet watch`: a bad config at start is an error (exit 2); later, SIGHUP re-reads it."""
    from domunet.core import config as configuration
    from domunet.core.events import Events, NftEvents
    from domunet.core.kernel import Kernel
    from domunet.core.lock import watching
    from domunet.guest import pipeline

    current = {"config": configuration.load(config_path)}

    def reload() -> None:
        current["config"] = configuration.load(config_path)

    from domunet.guest.connmark import TABLE as MARKS_TABLE

    with watching(state_dir), Kernel() as kernel:
        events = Events()
        try:
            nft_events = NftEvents()
        except OSError as error:  # no nf_tables in this kernel: no connection marks to follow either
            log.debug("not following nftables (%s)", error)
            nft_events = None

        def converge() -> list[Change]:
            config = pipeline.with_current_hints(current["config"], state_dir)
            return pipeline.run("setup", config, state_dir, kernel=kernel).changes

        watch = Watch(events, kernel, converge, reload, nft_events, frozenset({MARKS_TABLE}))
        watch.install_signals()
        try:
            watch.loop()
        finally:
            events.close()
            if nft_events is not None:
                nft_events.close()
