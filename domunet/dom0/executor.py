"""dom0's executor: route, proxy and guard each guest address of a vif (vif-domunet's work).

Its input is validated (domunet.dom0.request), planned (records.plan_online, frozen) and what it
did is recorded (domunet.dom0.records). One list of steps per vif (Dom0._steps): a record under
/run (a crash still leaves offline what it needs), the rename, [anti-spoofing, before the vif is
up], sysctls, dom0's addresses, link up, host routes, proxy NDP entries. online runs it forward
(a failure runs back what it did), offline backward from the record, tolerating what is gone,
then drops the anti-spoofing entries. A proxy entry another vif's record lists stays.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from domunet.core import nftables, sysctl
from domunet.core.errors import ConfigError, KernelError, ObjectExists, ObjectMissing, UsageError
from domunet.core.kernel import Kernel
from domunet.core.lock import locked
from domunet.core.model import DEFAULT_STATE_DIR, TABLE_MAIN, IPNetwork, Route
from domunet.core.state import Layout, check_dir, set_aside, write_json
from domunet.dom0 import guard
from domunet.dom0.records import (
    HostRoute,
    Unusable,
    VifPlan,
    VifRecord,
    folder_stamp,
    plan_online,
    read_records,
    save_record,
)
from domunet.dom0.request import VifRequest, check_guest_networks, domain_of, keys_for
from domunet.dom0.sysctls import Dom0Sysctls

if TYPE_CHECKING:
    from domunet.dom0.view import KernelView

log = logging.getLogger(__name__)

METRIC_TRIES = 8
#: A vif's steps come in two stages: before the anti-spoofing update of the batch, and after it.
BEFORE_GUARD, AFTER_GUARD = 0, 1


@dataclass(frozen=True)
class Step:
    """One thing online does for a vif, and its opposite: online runs a vif's steps forward, a
    failed online and offline run them backward (one list: the two cannot drift apart)."""

    what: str
    forward: Callable[[list[VifRecord], bool], object]  # (the other vifs' records, IPv6 on)
    backward: Callable[[list[VifRecord]], object]
    needs_vif: bool = True  # backward only while the vif exists (what is on it went with it)

    def __str__(self) -> str:
        return self.what


@dataclass(frozen=True)
class _Context:
    """What every vif of a batch is checked against: main's defaults, IPv6 on, dom0's addresses."""

    defaults: list[Route]
    ipv6: bool
    gateways: list[Any]
    dom0: list[Any]


def _unshared(record: VifRecord, others: list[VifRecord]) -> list[str]:
    """Proxy entries are shared: one that another vif's record lists is theirs as well."""
    shared = {p for r in others for p in r.proxies}
    return [p for p in record.proxies if p not in shared]


class Dom0:
    """Applies and undoes vif records; all state lives in the kernel and in state_dir."""

    def __init__(self, kernel: Kernel, state_dir: str = DEFAULT_STATE_DIR,
                 allow_prefixes: tuple[IPNetwork, ...] = (), input_policy: str = "restricted") -> None:
        self.kernel = kernel
        self.layout = Layout(state_dir)
        self.sysctls = Dom0Sysctls(self.layout)
        self.dir = self.layout.dom0
        self.allow_prefixes = allow_prefixes
        self.input_policy = input_policy
        #: Records that cannot be used, as last read: their vifs stay guarded (fail closed).
        self.unusable: list[Unusable] = []
        #: vifs whose unusable record an offline released during this run (no longer kept guarded).
        self.released: set[str] = set()
        #: Records as last read, by file (a long-lived service reads only what changed since).
        self._records_cache: dict[str, Any] = {}
        #: The records after this engine's last change, and the folder's stamp then (a service's).
        self._known: tuple[list[VifRecord], list[Unusable], tuple[int, int, int, bytes]] | None = None
        #: The anti-spoofing table as this engine last loaded it (then only the changes are sent);
        #: None: unknown, load it whole.
        self._loaded: dict[str, list[IPNetwork]] | None = None
        #: dom0's own addresses and default routes kept current from change events (the service
        #: sets one); else dumped.
        self.view: KernelView | None = None

    @classmethod
    def from_config(cls, kernel: Kernel, config_path: str | None, state_dir: str, offline: bool = False) -> Dom0:
        """dom0's engine with the [dom0] settings of the config file. offline must work whatever the
        file says: a bad file there means the defaults (and an error line)."""
        from domunet.core import config as configuration

        try:
            settings = configuration.load(config_path)
        except ConfigError as error:
            if not offline:
                raise
            log.error("%s; going on with the defaults", error)
            settings = configuration.Config()
        return cls(kernel, state_dir, settings.dom0_allow_prefixes, settings.dom0_input)

    # --- records ---------------------------------------------------------------------------

    def locked(self) -> AbstractContextManager[None]:
        """Hotplug scripts for several vifs run at once: serialise them. The state directory
        itself must be root's too, not only the dom0/ folder made in it (dom0.sock lives there)."""
        check_dir(self.layout.root)
        return locked(str(self.dir))

    def records(self) -> list[VifRecord]:
        """The usable records. One that is not (a newer domunet's, a truncated file) stays where it
        is and keeps its vif guarded (see `unusable`); the rest go on."""
        return self._read()[0]

    def _read(self) -> tuple[list[VifRecord], list[Unusable]]:
        if self.view is not None and self._known is not None and folder_stamp(self.layout) == self._known[2]:
            self.unusable = list(self._known[1])
            return list(self._known[0]), self.unusable
        # the records are not (or no longer) as this engine left them: another run changed them
        # (vif-domunet in-process, beside this service), and the anti-spoofing table with them;
        # what this engine loaded last is not the kernel's table: the next load is whole
        self._known, self._loaded = None, None
        records, self.unusable = read_records(self.layout, self._records_cache)
        return records, self.unusable

    def _changed(self, records: list[VifRecord]) -> None:
        """The records changed (under the lock): a new token for whoever reads them next; a service
        keeps them in memory, so its next request reads no record at all (500 vifs: 500 stats)."""
        self._known = None
        write_json(self.layout.dom0_generation, os.urandom(8).hex())
        if self.view is not None:
            self._known = (list(records), list(self.unusable), folder_stamp(self.layout))

    def _guarded(self, records: list[VifRecord]) -> dict[str, list[IPNetwork]]:
        """The vifs to guard and their allowed sources: every usable record's, and fail closed for
        every unusable one: what could be read of it, else what the kernel's table allows it now,
        else nothing at all (its vif still guarded)."""
        guarded = {r.vif: list(r.networks()) for r in records}
        unread = [u for u in self.unusable if u.key not in {r.key for r in records}]
        if not unread:
            return guarded
        now = guard.guarded_now()
        for unusable in unread:
            if unusable.salvaged is not None:
                vif = unusable.salvaged.vif
                guarded.setdefault(vif, [])
                guarded[vif] += [n for n in [*unusable.salvaged.networks(), *now.get(vif, [])]
                                 if n not in guarded[vif]]
        if any(u.salvaged is None for u in unread):  # whose vif it was is unknown: keep every unnamed one
            for vif, networks in now.items():
                if vif not in guarded and vif not in self.released:
                    guarded[vif] = list(networks)
        return guarded

    def _guard(self, records: list[VifRecord]) -> None:
        """The table for these records: only the changes when this engine loaded it last (a
        long-lived service), else the whole table; the whole table too when the changes fail
        (someone flushed it or deleted an element meanwhile)."""
        wanted = self._guarded(records)
        loaded, self._loaded = self._loaded, None
        changes = guard.changes(loaded, wanted) if loaded is not None else None
        if changes == "":
            self._loaded = wanted
            return
        if changes is not None:
            try:
                guard.load(changes)
                self._loaded = wanted
                return
            except KernelError as error:
                log.info("anti-spoofing table changed behind domunet's back (%s): loading it whole", error)
        guard.load(guard.ruleset(wanted, restrict_input=self.input_policy == "restricted"))
        self._loaded = wanted

    # --- online ----------------------------------------------------------------------------

    def online(self, request: VifRequest) -> VifRecord:
        outcome = self.online_many([request])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def online_many(self, requests: list[VifRequest]) -> list[VifRecord | Exception]:
        """Vifs that came online together (the service's batch; in-process, one): each checked
        against dom0 and the others, one anti-spoofing update for all, then each vif's own steps.
        A vif that fails is undone alone; per vif: its record, or the error."""
        nftables.require(f"online of {' '.join(r.vif for r in requests)}")  # before anything changes
        outcomes: dict[int, VifRecord | Exception] = {}
        with self.locked():
            self.kernel.forget_links()
            records, unusable = self._read()
            known = {x.key for x in records} | {u.key for u in unusable}
            again = [r for r in requests if r.key in known]
            for request in again:
                log.info("%s: online again: undoing the earlier online first", request.vif)
                self._offline_many([(request.key, request.vif)])
            if again:
                records = self.records()  # read again only when the offline changed them
            plans: dict[int, VifPlan] = {}
            planned: dict[int, VifRecord] = {}  # what each vif's online did (its plan's intent at first)
            accepted = list(records)
            context = self._online_context(records)
            for index, request in enumerate(requests):
                try:
                    if any(r.key == request.key for r in accepted[len(records):]):
                        raise UsageError(f"{request.vif}: online twice at once")
                    plans[index] = self._plan(request, accepted, context)
                    planned[index] = plans[index].intent()
                    accepted.append(planned[index])
                except Exception as error:  # noqa: BLE001 (this vif fails; the others go on)
                    outcomes[index] = error
            steps = {index: self._steps(plans[index], planned[index]) for index in planned}
            done: dict[int, list[Step]] = {index: [] for index in planned}
            try:
                for stage in (BEFORE_GUARD, AFTER_GUARD):
                    if stage == AFTER_GUARD and planned:
                        self._guard(records + list(planned.values()))
                    for index in list(planned):
                        others = records + [r for i, r in planned.items() if i != index]
                        try:
                            self._forward(steps[index][stage], others, context.ipv6, done[index])
                        except Exception as error:  # noqa: BLE001 (this vif fails; the others go on)
                            outcomes[index] = self._backward(planned.pop(index), done.pop(index), others, error)
                            if stage == AFTER_GUARD:
                                self._guard_quietly(records + list(planned.values()))
                outcomes.update(planned)
                if planned:
                    self._changed(records + list(planned.values()))  # part of the online: it fails with it
            except BaseException as error:  # the guard or the token failed, or an interrupt: the batch as before
                for index in list(planned):
                    failed = error if isinstance(error, Exception) else KernelError("interrupted")
                    others = records + [r for i, r in planned.items() if i != index]
                    outcomes[index] = self._backward(planned.pop(index), done.pop(index), others, failed)
                self._guard_quietly(records)
                if not isinstance(error, Exception):
                    raise
            if not records and not planned:
                self.sysctls.restore_dom0()
            return [outcomes[index] for index in range(len(requests))]

    def _online_context(self, records: list[VifRecord]) -> _Context:
        """What every vif of a batch is checked against, read from the kernel once."""
        defaults, addresses = self.view.now() if self.view else (self.kernel.main_defaults(), self.kernel.addresses())
        return _Context(defaults, sysctl.ipv6_enabled(), [r.gateway for r in defaults if r.gateway is not None],
                        addresses)

    def _plan(self, request: VifRequest, records: list[VifRecord], context: _Context) -> VifPlan:
        """Check one vif's request against the kernel and the other vifs; what online will do."""
        if self.kernel.link(request.vif) is None:
            raise UsageError(f"vif {request.vif} does not exist")
        if request.rename and request.rename != request.vif and self.kernel.link(request.rename) is not None:
            raise UsageError(f"vifname {request.rename}: an interface of that name exists already")
        uplink = request.uplink or next((route.dev for route in context.defaults if route.dev), None)
        if not uplink:
            raise UsageError("no uplink: give gatewaydev/netdev, or give dom0 a default route")
        if self.kernel.link(uplink) is None:
            raise UsageError(f"uplink {uplink} does not exist")
        uplink_addresses = self.kernel.addresses(uplink)
        others = [r for r in records if r.key != request.key]
        domain = domain_of(request.key, request.vif)
        other_domains = {r.vif: r.networks() for r in others
                         if domain is None or domain_of(r.key, r.original_name or r.vif) != domain}
        # a vif whose record is unusable keeps its addresses: nobody claims them until an admin acts
        if self.unusable:
            other_domains.update({vif: networks for vif, networks in self._guarded(others).items()
                                  if vif not in {r.vif for r in others} and networks})
        check_guest_networks(request.rename or request.vif, request.guest, uplink_addresses, context.gateways,
                             other_domains, self.allow_prefixes, context.dom0)
        return plan_online(request, uplink, uplink_addresses, context.ipv6)

    # --- one vif's steps: online runs them forward, offline (and a failed online) backward ------

    def _steps(self, plan: VifPlan | None, record: VifRecord) -> tuple[list[Step], list[Step]]:
        """One vif's steps before and after the anti-spoofing update (the guard is in place before
        the vif is up). Forward reads the plan and narrows the record to what it did; backward
        undoes what the record says. `plan`: None for offline (backward only)."""
        kernel, vif, original = self.kernel, record.vif, record.original_name
        before = [Step("record", lambda others, ipv6: save_record(self.layout, record),
                       lambda others: self.layout.vif_record(record.key).unlink(missing_ok=True), needs_vif=False)]
        if original and original != vif:
            before.append(Step("rename", lambda others, ipv6: kernel.set_link(original, up=False, rename=vif),
                               lambda others: kernel.set_link(vif, rename=original)))
        after = [
            Step("forwarding", lambda others, ipv6: self.sysctls.set_dom0(record.uplink, ipv6),
                 lambda others: others or self.sysctls.restore_dom0(), needs_vif=False),
            Step("vif sysctls", lambda others, ipv6: self.sysctls.set_vif(record, ipv6),
                 lambda others: self._each(record, "", record.vif_sysctls,
                                           lambda key: sysctl.write(key, record.vif_sysctls[key]))),
            Step("addresses", lambda others, ipv6: self._add_addresses(plan, record),
                 lambda others: self._each(record, "address", record.dom0_addresses,
                                           lambda t: kernel.remove_address(vif, ipaddress.ip_interface(t)))),
            Step("link up", lambda others, ipv6: kernel.set_link(vif, up=True),
                 lambda others: kernel.set_link(vif, up=False)),
            Step("routes", lambda others, ipv6: self._add_routes(plan, record),
                 lambda others: self._each(record, "route", record.routes,
                                           lambda e: kernel.remove_route(e.route(vif)))),
            Step("proxies", lambda others, ipv6: self._add_proxies(plan, record),
                 lambda others: self._each(record, "proxy", _unshared(record, others),
                                           lambda t: kernel.remove_proxy(record.uplink, ipaddress.ip_address(t))),
                 needs_vif=False),
            Step("done", lambda others, ipv6: self._done(record), lambda others: None, needs_vif=False),
        ]
        return before, after

    @staticmethod
    def _forward(steps: list[Step], others: list[VifRecord], ipv6: bool, done: list[Step]) -> None:
        for step in steps:
            done.append(step)  # before it runs: a step that fails half-way is undone too
            step.forward(others, ipv6)

    def _backward(self, record: VifRecord, steps: list[Step], others: list[VifRecord],
                  error: Exception | None = None) -> Exception | None:
        """Undo steps, newest first, each tolerating what is gone; a step that needs the vif is
        skipped when the vif is gone (its addresses, routes and sysctls went with it). Returns
        the error a failed online failed with (None: offline)."""
        exists = self.kernel.link(record.vif) is not None
        for step in reversed(steps):
            if not step.needs_vif or exists:
                self._each(record, "", [step], lambda undone: undone.backward(others), error is not None)
        return error

    @staticmethod
    def _each(record: VifRecord, what: str, items: Iterable[Any], undo: Callable[[Any], object],
              online: bool = False) -> None:
        """Undo for each item; what is already gone is fine, any other failure is said and the
        rest still undone (offline undoes all it can, whatever one step does)."""
        for item in items:
            name = f"{what} {item}" if what else str(item)
            try:
                undo(item)
            except ObjectMissing:
                log.debug("%s: %s: already gone", record.vif, name)
            except Exception as failed:  # noqa: BLE001
                log.error("%s: %s: %s: %s", record.vif, "undo failed" if online else "offline", name, failed)

    def _guard_quietly(self, records: list[VifRecord]) -> None:
        try:
            self._guard(records)
        except Exception as error:  # noqa: BLE001 (while undoing: say it, undo the rest)
            log.error("cannot update the anti-spoofing table: %s", error)

    def _add_addresses(self, plan: VifPlan | None, record: VifRecord) -> None:
        """dom0's addresses on the vif; one that is there already is not ours to remove later."""
        assert plan is not None
        record.dom0_addresses = []
        for text in plan.dom0_addresses:
            try:
                self.kernel.add_address(record.vif, ipaddress.ip_interface(text))
            except ObjectExists:
                continue
            record.dom0_addresses.append(text)

    def _add_routes(self, plan: VifPlan | None, record: VifRecord) -> None:
        assert plan is not None
        record.routes = []
        for entry in plan.routes:
            record.routes.append(entry.placed(self._add_route(record.vif, entry)))

    def _add_proxies(self, plan: VifPlan | None, record: VifRecord) -> None:
        assert plan is not None
        record.proxies = []
        for text in plan.proxies:
            self.kernel.add_proxy(record.uplink, ipaddress.ip_address(text))
            record.proxies.append(text)

    def _done(self, record: VifRecord) -> None:
        save_record(self.layout, record)
        log.info("%s: online: %s routed via uplink %s", record.vif, " ".join(record.guest), record.uplink)

    def _add_route(self, vif: str, entry: HostRoute) -> Route:
        """A host route to a guest address; when another device routes it already (an HVM
        guest's emulated NIC, an overlapping restart), take the next metric and say so."""
        route = entry.route(vif)
        for _ in range(METRIC_TRIES):
            try:
                self.kernel.add_route(route)
                return route
            except ObjectExists:
                log.warning("%s: %s is routed already; adding ours with metric %d",
                            vif, route.dst, route.metric + 1)
                route = dataclasses.replace(route, metric=route.metric + 1)
        raise KernelError(f"{vif}: cannot route {route.dst}: {METRIC_TRIES} routes to it exist already")

    # --- offline ---------------------------------------------------------------------------

    def offline(self, key: str, vif: str | None = None) -> bool:
        """Undo what online recorded; False when there was nothing recorded. Never raises for
        what is already gone; other errors are logged and the rest is still undone. `vif`: the
        vif's name as libxl gives it (releases the guard of a vif whose record is unusable)."""
        return self.offline_many([(key, vif)])[0]

    def offline_many(self, vifs: list[tuple[str, str | None]]) -> list[bool]:
        """Vifs that went offline together (key, libxl's vif name): one anti-spoofing update."""
        with self.locked():
            self.kernel.forget_links()
            return self._offline_many(vifs)

    def _offline_many(self, vifs: list[tuple[str, str | None]]) -> list[bool]:
        records, unusable = self._read()
        found: list[bool] = []
        leaving: list[str] = []
        for key, vif_name in vifs:
            keys = keys_for(key)
            record = next((r for r in records if r.key in keys), None)
            broken = next((u for u in unusable if u.key in keys or (u.salvaged and u.salvaged.vif == key)), None)
            if record is None and broken is not None:
                key = broken.key
            elif record is not None:
                key = record.key
            if broken is not None:
                # the vif itself goes offline: undo what could be read of its record, release its guard
                log.warning("%s: offline of a vif whose record is unusable: undoing what could be read of it",
                            key)
                self.released |= {name for name in (vif_name, broken.salvaged and broken.salvaged.vif) if name}
                unusable = self.unusable = [u for u in unusable if u is not broken]
                set_aside(broken.path, broken.reason)
                record = broken.salvaged
            leaving.append(key)
            if record is None:
                log.info("%s: offline: nothing recorded, nothing to undo", key)
                found.append(broken is not None)
                continue
            before, after = self._steps(None, record)
            # the online steps backward; the record itself goes after the guard's update
            self._backward(record, before[1:] + after, [r for r in records if r.key not in leaving])
            log.info("%s: offline: done", record.vif)
            found.append(True)
        others = [r for r in records if r.key not in leaving]
        if any(found):
            try:
                self._guard(others)
            except Exception as error:  # noqa: BLE001 (offline undoes all it can)
                log.error("%s: offline: anti-spoofing: %s", " ".join(leaving), error)
        for key in leaving:
            self.layout.vif_record(key).unlink(missing_ok=True)
        if any(found) and not others:
            self.sysctls.restore_dom0()
        if any(found):
            try:
                self._changed(others)
            except Exception as error:  # noqa: BLE001 (offline undoes all it can; the folder's times still tell)
                log.error("%s: offline: %s", " ".join(leaving), error)
        return found

    def reconcile(self) -> int:
        """Re-add what the kernel drops behind our back (proxy entries when the uplink was down,
        a route someone deleted), as each vif's record says it."""
        nftables.require("reconcile")
        with self.locked():
            self.kernel.forget_links()
            self._loaded = None  # the whole table, whatever was loaded before
            records = self.records()
            links = self.kernel.links(refresh=True)
            present = {(r.dev, r.dst) for version in (4, 6) for r in self.kernel.routes(version, TABLE_MAIN)}
            for record in records:
                for entry in record.routes if record.vif in links else []:
                    route = entry.route(record.vif)
                    if (route.dev, route.dst) not in present:
                        try:
                            self.kernel.add_route(route)
                            log.info("%s: route %s was gone; added again", record.vif, entry.destination)
                        except KernelError as error:  # one vif's route costs that route, not the others
                            log.warning("%s: route %s was gone and cannot be added again: %s", record.vif,
                                        entry.destination, error)
                for text in record.proxies:
                    try:
                        self.kernel.add_proxy(record.uplink, ipaddress.ip_address(text))
                    except KernelError as error:
                        if error.errno != errno.ENODEV:
                            raise
                        log.warning("%s: uplink %s is missing; proxy %s not restored", record.vif, record.uplink, text)
            self._guard(records)
            return len(records)
