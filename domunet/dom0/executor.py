"""dom0's executor: route, proxy and guard each guest address of a vif (vif-domunet's work).

Its input is validated (domunet.dom0.request), what it did is recorded (domunet.dom0.records).

online:  validate everything first; then, in this order: a record under /run (so that a
         crash still leaves something for offline to undo), the vif's rename, anti-spoofing
         (before the vif is up), sysctls, dom0's addresses on the vif, link up, a host route
         per guest address, proxy NDP entries on the uplink. A failure undoes it all.
offline: undoes exactly what the record says, tolerating what is already gone (a destroyed
         guest's vif), then drops the anti-spoofing entries (after the vif is down).
Proxy entries are shared: one is removed only when no other vif's record still lists it.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from domunet.core import nftables, sysctl
from domunet.core.errors import ConfigError, KernelError, ObjectExists, ObjectMissing, UsageError
from domunet.core.kernel import Kernel
from domunet.core.lock import locked
from domunet.core.model import DEFAULT_STATE_DIR, PROTO_DOM0, TABLE_MAIN, IPNetwork, Route
from domunet.core.state import Layout, check_dir, read_saved_sysctls, set_aside, write_json
from domunet.dom0 import guard
from domunet.dom0.records import (
    HostRoute,
    Unusable,
    VifRecord,
    plan_online,
    read_records,
    save_record,
)
from domunet.dom0.request import VifRequest, check_guest_networks, domain_of, keys_for

if TYPE_CHECKING:
    from domunet.dom0.view import KernelView

log = logging.getLogger(__name__)

METRIC_TRIES = 8


class Dom0:
    """Applies and undoes vif records; all state lives in the kernel and in state_dir."""

    def __init__(self, kernel: Kernel, state_dir: str = DEFAULT_STATE_DIR,
                 allow_prefixes: tuple[IPNetwork, ...] = (), input_policy: str = "restricted") -> None:
        self.kernel = kernel
        self.layout = Layout(state_dir)
        self.dir = self.layout.dom0
        self.allow_prefixes = allow_prefixes
        self.input_policy = input_policy
        #: Records that cannot be used, as last read: their vifs stay guarded (fail closed).
        self.unusable: list[Unusable] = []
        #: vifs whose unusable record an offline released during this run (no longer kept guarded).
        self.released: set[str] = set()
        #: Records as last read, by file (a long-lived service reads only what changed since).
        self._records_cache: dict[str, Any] = {}
        #: The records after this engine's last change, and the folder's mark then (a service's).
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

    def _path(self, key: str) -> Path:
        return self.layout.vif_record(key)

    def records(self) -> list[VifRecord]:
        """The usable records. One that is not (a newer domunet's, a truncated file) stays where it
        is and keeps its vif guarded (see `unusable`); the rest go on."""
        return self._read()[0]

    def _read(self) -> tuple[list[VifRecord], list[Unusable]]:
        if self.view is not None and self._known is not None and self._mark() == self._known[2]:
            self.unusable = list(self._known[1])
            return list(self._known[0]), self.unusable
        # the records are not (or no longer) as this engine left them: another run changed them
        # (vif-domunet in-process, beside this service), and the anti-spoofing table with them;
        # what this engine loaded last is not the kernel's table: the next load is whole
        self._known, self._loaded = None, None
        records, self.unusable = read_records(self.layout, self._records_cache)
        return records, self.unusable

    def _mark(self) -> tuple[int, int, int, bytes]:
        """The records folder as it is now: its times and size, and the last run's token."""
        info = os.stat(self.dir)
        try:
            token = self.layout.dom0_generation.read_bytes()[:64]
        except OSError:
            token = b""
        return info.st_mtime_ns, info.st_ctime_ns, info.st_size, token

    def _changed(self, records: list[VifRecord]) -> None:
        """The records changed (under the lock): a new token for whoever reads them next; a service
        keeps them in memory, so its next request reads no record at all (500 vifs: 500 stats)."""
        self._known = None
        write_json(self.layout.dom0_generation, os.urandom(8).hex())
        if self.view is not None:
            self._known = (list(records), list(self.unusable), self._mark())

    def _save(self, record: VifRecord) -> None:
        save_record(self.layout, record)

    def _guarded(self, records: list[VifRecord]) -> dict[str, list[IPNetwork]]:
        """The vifs to guard and their allowed sources: every usable record's, and fail closed for
        every unusable one: what could be read of it, else what the kernel's table allows it now,
        else nothing at all (its vif still guarded)."""
        guarded = {r.vif: list(r.networks()) for r in records}
        held = [u for u in self.unusable if u.key not in {r.key for r in records}]
        if not held:
            return guarded
        now = guard.guarded_now()
        for unusable in held:
            if unusable.salvaged is not None:
                vif = unusable.salvaged.vif
                guarded.setdefault(vif, [])
                guarded[vif] += [n for n in [*unusable.salvaged.networks(), *now.get(vif, [])]
                                 if n not in guarded[vif]]
        if any(u.salvaged is None for u in held):  # whose vif it was is unknown: keep every unnamed one
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
            planned: dict[int, VifRecord] = {}
            accepted = list(records)
            context = self._online_context(records)
            for index, request in enumerate(requests):
                try:
                    if any(r.key == request.key for r in accepted[len(records):]):
                        raise UsageError(f"{request.vif}: online twice at once")
                    planned[index] = self._plan(request, accepted, context)
                    accepted.append(planned[index])
                except Exception as error:  # noqa: BLE001 (this vif fails; the others go on)
                    outcomes[index] = error
            undo: dict[int, list[Callable[[], None]]] = {index: [] for index in planned}
            try:
                for index in list(planned):
                    try:
                        self._begin(requests[index], planned[index], undo[index])
                    except Exception as error:  # noqa: BLE001
                        outcomes[index] = self._undo(planned.pop(index), undo.pop(index), error)
                if planned:
                    self._guard(records + list(planned.values()))
                for index in list(planned):
                    others = records + [r for i, r in planned.items() if i != index]
                    try:
                        self._finish(planned[index], others, context["ipv6"], undo[index])
                        outcomes[index] = planned[index]
                    except Exception as error:  # noqa: BLE001
                        outcomes[index] = self._undo(planned.pop(index), undo.pop(index), error)
                        self._guard_quietly(records + list(planned.values()))
                if planned:
                    self._changed(records + list(planned.values()))  # part of the online: it fails with it
            except BaseException as error:  # the guard or the token failed, or an interrupt: the batch as before
                for index in list(planned):
                    failed = error if isinstance(error, Exception) else KernelError("interrupted")
                    outcomes[index] = self._undo(planned.pop(index), undo.pop(index), failed)
                self._guard_quietly(records)
                if not isinstance(error, Exception):
                    raise
            if not records and not planned:
                self._restore_sysctls()
            return [outcomes[index] for index in range(len(requests))]

    def _online_context(self, records: list[VifRecord]) -> dict[str, Any]:
        """What every vif of a batch is checked against, read from the kernel once."""
        if self.view:
            defaults, addresses = self.view.now()
        else:
            defaults, addresses = self.kernel.main_defaults(), self.kernel.addresses()
        return {"defaults": defaults, "ipv6": sysctl.ipv6_enabled(),
                "gateways": [route.gateway for route in defaults if route.gateway is not None],
                "dom0": addresses}

    def _plan(self, request: VifRequest, records: list[VifRecord], context: dict[str, Any]) -> VifRecord:
        """Check one vif's request against the kernel and the other vifs; what online will do."""
        if self.kernel.link(request.vif) is None:
            raise UsageError(f"vif {request.vif} does not exist")
        if request.rename and request.rename != request.vif and self.kernel.link(request.rename) is not None:
            raise UsageError(f"vifname {request.rename}: an interface of that name exists already")
        uplink = request.uplink or next((route.dev for route in context["defaults"] if route.dev), None)
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
        check_guest_networks(request.rename or request.vif, request.guest, uplink_addresses, context["gateways"],
                             other_domains, self.allow_prefixes, context["dom0"])
        return plan_online(request, uplink, uplink_addresses, context["ipv6"])

    def _undo(self, record: VifRecord, undo: list[Callable[[], None]], error: Exception) -> Exception:
        """Undo one vif's steps, newest first; the error it failed with."""
        for step in reversed(undo):
            try:
                step()
            except ObjectMissing:
                pass  # e.g. IPv6 addresses go with the link
            except Exception as failed:  # noqa: BLE001 (undo the rest, say what stayed)
                log.error("%s: undo failed: %s", record.vif, failed)
        return error

    def _guard_quietly(self, records: list[VifRecord]) -> None:
        try:
            self._guard(records)
        except Exception as error:  # noqa: BLE001 (while undoing: say it, undo the rest)
            log.error("cannot update the anti-spoofing table: %s", error)

    def _begin(self, request: VifRequest, record: VifRecord, undo: list[Callable[[], None]]) -> None:
        """Before the guard: the record (a crash leaves something for offline), the rename."""
        self._save(record)
        undo.append(lambda: self._path(record.key).unlink(missing_ok=True))
        if request.rename and request.rename != request.vif:
            self.kernel.set_link(request.vif, up=False, rename=request.rename)
            undo.append(lambda: self.kernel.set_link(record.vif, rename=request.vif))

    def _finish(self, record: VifRecord, others: list[VifRecord], ipv6: bool,
                undo: list[Callable[[], None]]) -> None:
        """After the guard: sysctls, dom0's addresses, link up, routes, proxy entries, the record."""
        kernel, vif = self.kernel, record.vif
        self._set_sysctls(record, others, ipv6, undo)
        added: list[str] = []
        for text in record.dom0_addresses:
            address = ipaddress.ip_interface(text)
            try:
                kernel.add_address(vif, address)
            except ObjectExists:
                continue  # already there: not ours to remove later
            added.append(text)
            undo.append(lambda a=address: kernel.remove_address(vif, a))
        record.dom0_addresses = added
        kernel.set_link(vif, up=True)
        undo.append(lambda: kernel.set_link(vif, up=False))
        placed = []
        for entry in record.routes:
            route = self._add_route(vif, entry)
            undo.append(lambda r=route: kernel.remove_route(r))
            placed.append(entry.placed(route))
        record.routes = placed
        shared = {p for r in others for p in r.proxies}
        for text in record.proxies:
            kernel.add_proxy(record.uplink, ipaddress.ip_address(text))
            if text not in shared:
                undo.append(lambda t=text: kernel.remove_proxy(record.uplink, ipaddress.ip_address(t)))
        self._save(record)
        log.info("%s: online: %s routed via uplink %s", vif, " ".join(record.guest), record.uplink)

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

    def _set_sysctls(self, record: VifRecord, others: list[VifRecord], ipv6: bool,
                     undo: list[Callable[[], None]]) -> None:
        """Global ones keep their values from before the first vif; restored after the last."""
        uplink, vif = record.uplink, record.vif
        wanted = {"net/ipv4/ip_forward": "1", f"net/ipv4/conf/{uplink}/proxy_arp": "1"}
        if ipv6:
            if sysctl.read(f"net/ipv6/conf/{uplink}/accept_ra") == "1":
                wanted[f"net/ipv6/conf/{uplink}/accept_ra"] = "2"  # keep taking RAs while forwarding
            wanted.update({
                "net/ipv6/conf/all/forwarding": "1",
                f"net/ipv6/conf/{uplink}/proxy_ndp": "1",
                "net/ipv6/conf/all/proxy_ndp": "1",  # unicast reachability probes check 'all'
            })
        saved = self._sysctl_origin()
        fresh = {k: v for k in wanted if k not in saved and (v := sysctl.read(k)) is not None}
        if fresh:
            write_json(self.layout.dom0_sysctl_origin, {**saved, **fresh})
        if not others:
            undo.append(self._restore_sysctls)
        for key, value in wanted.items():
            sysctl.write(key, value)
        # the vif: answer ARP for dom0's side; never take a router advertisement or a redirect
        # from the guest (a guest's RA would otherwise install a default route in dom0)
        per_vif = {f"net/ipv4/conf/{vif}/proxy_arp": "1", f"net/ipv4/conf/{vif}/accept_redirects": "0"}
        if ipv6:
            per_vif.update({f"net/ipv6/conf/{vif}/accept_ra": "0", f"net/ipv6/conf/{vif}/accept_redirects": "0"})
        record.vif_sysctls = {}
        for key, value in per_vif.items():
            before = sysctl.read(key)
            if before is None:
                continue
            record.vif_sysctls[key] = before
            sysctl.write(key, value)

    def _sysctl_origin(self) -> dict[str, str]:
        """The sysctls' values before the first vif; a corrupt file is set aside (nothing to restore)."""
        return read_saved_sysctls(self.layout.dom0_sysctl_origin)

    def _restore_sysctls(self) -> None:
        for key, value in self._sysctl_origin().items():
            try:
                sysctl.write(key, value)
            except KernelError as error:
                log.warning("could not restore %s: %s", key, error)
        self.layout.dom0_sysctl_origin.unlink(missing_ok=True)

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
            held = next((u for u in unusable if u.key in keys or (u.salvaged and u.salvaged.vif == key)), None)
            if record is None and held is not None:
                key = held.key
            elif record is not None:
                key = record.key
            if held is not None:
                # the vif itself goes offline: undo what could be read of its record, release its guard
                log.warning("%s: offline of a vif whose record is unusable: undoing what could be read of it",
                            key)
                self.released |= {name for name in (vif_name, held.salvaged and held.salvaged.vif) if name}
                unusable = self.unusable = [u for u in unusable if u is not held]
                set_aside(held.path, held.reason)
                record = held.salvaged
            leaving.append(key)
            if record is None:
                log.info("%s: offline: nothing recorded, nothing to undo", key)
                found.append(held is not None)
                continue
            self._undo_vif(record, [r for r in records if r.key not in leaving])
            found.append(True)
        others = [r for r in records if r.key not in leaving]
        if any(found):
            try:
                self._guard(others)
            except Exception as error:  # noqa: BLE001 (offline undoes all it can)
                log.error("%s: offline: anti-spoofing: %s", " ".join(leaving), error)
        for key in leaving:
            self._path(key).unlink(missing_ok=True)
        if any(found) and not others:
            self._restore_sysctls()
        if any(found):
            try:
                self._changed(others)
            except Exception as error:  # noqa: BLE001 (offline undoes all it can; the folder's times still tell)
                log.error("%s: offline: %s", " ".join(leaving), error)
        return found

    def _undo_vif(self, record: VifRecord, others: list[VifRecord]) -> None:
        """One vif's kernel state as its record says, tolerating what is already gone (a destroyed
        guest's vif); the anti-spoofing entries are dropped after, for all vifs of the batch."""
        kernel, vif = self.kernel, record.vif
        exists = kernel.link(vif) is not None

        def attempt(what: str, step: Callable[[], None]) -> None:
            try:
                step()
            except ObjectMissing:
                log.debug("%s: %s: already gone", vif, what)
            except Exception as error:  # noqa: BLE001 (offline undoes all it can, whatever one step does)
                log.error("%s: offline: %s: %s", vif, what, error)

        if exists:
            attempt("link down", lambda: kernel.set_link(vif, up=False))
        shared = {p for r in others for p in r.proxies}
        for text in record.proxies:
            if text not in shared:
                attempt(f"proxy {text}",
                        lambda t=text: kernel.remove_proxy(record.uplink, ipaddress.ip_address(t)))
        if exists:
            for entry in record.routes:
                attempt(f"route {entry.destination}", lambda e=entry: kernel.remove_route(e.route(vif)))
            for text in record.dom0_addresses:
                attempt(f"address {text}",
                        lambda t=text: kernel.remove_address(vif, ipaddress.ip_interface(t)))
            for name, value in record.vif_sysctls.items():
                attempt(name, lambda n=name, v=value: sysctl.write(n, v))
            if record.original_name:
                attempt("rename back", lambda: kernel.set_link(vif, rename=record.original_name))
        log.info("%s: offline: done", vif)

    def status(self) -> list[dict[str, Any]]:
        """Every vif recorded (what a service knows: it records each vif it serves), what it was
        given and made, and whether the kernel still has all of it; unusable records with why.
        Read-only: no lock, nothing changed."""
        records, unusable = self._read()
        links = self.kernel.links(refresh=True)
        routes = {(r.dev, r.dst, r.metric) for version in (4, 6)
                  for r in self.kernel.routes(version, TABLE_MAIN) if r.proto == PROTO_DOM0}
        proxies = {(name, str(address)) for version in (4, 6) for name, address in self.kernel.proxies(version)}
        guarded = guard.guarded_now()
        rows: list[dict[str, Any]] = []
        for record in records:
            missing = [] if record.vif in links else [f"the vif {record.vif}"]
            for entry in record.routes:
                route = entry.route(record.vif)
                if (route.dev, route.dst, route.metric) not in routes:
                    missing.append(f"route {entry.destination}")
            missing += [f"proxy {p} on {record.uplink}" for p in record.proxies if (record.uplink, p) not in proxies]
            allowed = guarded.get(record.vif)
            if allowed is None:
                missing.append("its anti-spoofing entry")
            else:
                missing += [f"allowed source {n}" for n in record.networks() if n not in allowed]
            rows.append({"vif": record.vif, "key": record.key, "uplink": record.uplink, "guest": record.guest,
                         "routes": [r.as_json() for r in record.routes], "proxies": record.proxies,
                         "dom0_addresses": record.dom0_addresses, "kernel_matches": not missing,
                         "missing": missing})
        for held in unusable:
            rows.append({"vif": held.salvaged.vif if held.salvaged else None, "key": held.key, "unusable": held.reason,
                         "kernel_matches": None, "missing": []})
        return rows

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
