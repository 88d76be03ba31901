"""The guest pipeline, once: merge hints, lock, discover, plan, diff, apply, forget vanished NICs,
write table names. `domunet setup/teardown/plan/status`, the ifupdown hook and `domunet watch`
all come through here; it returns what happened and never prints or exits."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from domunet.core import config as configuration
from domunet.core.errors import ApplyError, DomunetError, UsageError
from domunet.core.kernel import Kernel
from domunet.core.lock import locked, watch_running
from domunet.core.model import REMOVE, State
from domunet.core.state import CorruptState, Layout, read_json, set_aside, write_json
from domunet.guest.apply import Journal, apply, forget
from domunet.guest.connmark import Marks
from domunet.guest.diff import Change, Scope, after, diff, scope_for
from domunet.guest.discover import discover, published_for
from domunet.guest.ifupdown import HookCall, load_hints, save_hints
from domunet.guest.names import table_names_after, write_table_names
from domunet.guest.owned import Block, blocks_in_use, within_reach
from domunet.guest.plan import plan
from domunet.guest.published import Published

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Verb:
    """What a verb of the guest pipeline does, said once instead of tested for at every step."""

    name: str
    changes: bool  # applies changes to the kernel (else it only reads)
    plans: bool  # has a desired state (teardown desires nothing)
    reads_xenstore: bool
    #: Names given must be interfaces that exist (teardown may name one that went away).
    names_exist: bool
    #: Makes what is missing: a run that reads xenstore only in part keeps what it cannot judge.
    adds: bool
    #: Returns the status report instead of changes.
    reports: bool = False
    #: Undoes what a running watch would make again at its next change (it is worth a warning).
    undoes_watch: bool = False


SETUP = Verb("setup", changes=True, plans=True, reads_xenstore=True, names_exist=True, adds=True)
TEARDOWN = Verb("teardown", changes=True, plans=False, reads_xenstore=False, names_exist=False, adds=False,
                undoes_watch=True)
PLAN = Verb("plan", changes=False, plans=True, reads_xenstore=True, names_exist=True, adds=False)
STATUS = Verb("status", changes=False, plans=True, reads_xenstore=True, names_exist=False, adds=False, reports=True)
VERBS = {verb.name: verb for verb in (SETUP, TEARDOWN, PLAN, STATUS)}


@dataclass(frozen=True)
class Job:
    """One run's request: the verb, the loaded config, where state lives, which NICs (none: all),
    and the stanza of an interface ifupdown is bringing up (kept as a hint once it is planned)."""

    verb: Verb
    config: configuration.Config
    state_dir: str
    names: tuple[str, ...] = ()
    stanza: HookCall | None = None


@dataclass
class Outcome:
    """changes: applied (setup, teardown) or to apply (plan); rows: status."""

    desired: State
    changes: list[Change] = field(default_factory=list)
    rows: list[dict[str, Any]] | None = None
    #: Connection marks and their sysctls (domunet.guest.connmark): done, or to do for plan.
    marks: list[str] = field(default_factory=list)


def load_config(path: str | None, state_dir: str, stanza: HookCall | None = None) -> configuration.Config:
    """The config file with the kept ifupdown stanza options; `stanza` (an interface coming up)
    replaces its own earlier hint."""
    hints = [h for h in load_hints(state_dir)
             if not stanza or (h.iface, h.addrfam) != (stanza.iface, stanza.addrfam)]
    config = configuration.with_hints(configuration.load(path), hints)
    if stanza:
        merged = configuration.with_hints(config, [stanza])
        if len(merged.refused) > len(config.refused):
            raise UsageError(f"{stanza.iface}: stanza option {merged.refused[-1][1]}; not kept")
        config = merged
    return config


def with_current_hints(config: configuration.Config, state_dir: str) -> configuration.Config:
    """A config already loaded (watch keeps the last good one) with the hints kept right now."""
    return configuration.with_hints(config, load_hints(state_dir))


def remembered_blocks(state_dir: str) -> list[Block]:
    """The blocks of tables and priorities domunet has made objects in, so that a changed
    priority_base or table_base still finds (and removes) what the earlier one made."""
    path = Layout(state_dir).blocks
    try:
        data = read_json(path)
        blocks = [(int(t), int(p)) for t, p in data or [] if not isinstance(t, bool) and not isinstance(p, bool)]
        if any(not (256 <= t <= 4294960000 and 1 <= p <= 30000) for t, p in blocks):
            raise ValueError("a base out of range")
        return blocks
    except CorruptState as error:
        set_aside(path, str(error))
    except (TypeError, ValueError) as error:
        set_aside(path, f"not a list of [table_base, priority_base] ({error})")
    except OSError as error:  # an unusable state directory: plan and status go on without it
        log.debug("cannot read %s: %s", path, error.strerror)
    return []


def _remember_blocks(state_dir: str, config: configuration.Config, owned: State, done: list[Change],
                     before: list[Block]) -> None:
    """The blocks that hold domunet's objects after this run (none: no file); written only when
    that changes, so a run that changes nothing writes nothing."""
    objects = after(set(owned.routes) | set(owned.rules), done)
    blocks = blocks_in_use(objects, config, before) if objects else []
    if blocks == before:
        return
    path = Layout(state_dir).blocks
    if blocks:
        write_json(path, [list(block) for block in blocks])
    else:
        path.unlink(missing_ok=True)


def run(verb: str, config: configuration.Config, state_dir: str, names: Sequence[str] = (),
        stanza: HookCall | None = None, kernel: Kernel | None = None) -> Outcome:
    """One run of a verb. `stanza`: options of an interface coming up, kept for later runs only
    once a plan with them has been made (a conflict changes nothing). `kernel`: a socket to reuse
    (watch); else one is opened for this run."""
    job = Job(VERBS[verb], config, state_dir, tuple(names), stanza)
    if kernel is not None:
        return _locked(job, kernel)
    with Kernel() as own:
        return _locked(job, own)


def _locked(job: Job, kernel: Kernel) -> Outcome:
    """xenstore first (a hung one costs at most its deadline, and never while others wait for the
    lock; teardown needs none of it), then everything else under the lock."""
    xen = published_for(kernel) if job.verb.reads_xenstore else Published()
    with locked(job.state_dir, shared=not job.verb.changes):
        return _run(job, kernel, xen)


def _run(job: Job, kernel: Kernel, xen: Published, may_retry: bool = True) -> Outcome:
    verb, config = job.verb, job.config
    facts, owned = discover(kernel, xen)
    blocks = remembered_blocks(job.state_dir)
    owned = within_reach(owned, config, blocks)
    if verb.names_exist:
        missing = [n for n in job.names if facts.interface(n) is None]
        if missing:
            raise UsageError(f"no such interface: {', '.join(missing)}")
    desired = plan(config, facts) if verb.plans else State()
    if verb.reports:
        from domunet.guest.status import report

        held = tuple(desired.held.items())
        return Outcome(desired, rows=report(facts, desired, owned, kernel.route_get, config.refused + held))
    if job.stanza and job.stanza.iface not in desired.held:  # a stanza that cannot be used is not kept
        save_hints(job.state_dir, job.stanza)
    changes = _changes(job, desired, owned, xen)
    marks = Marks(job.state_dir)
    if not verb.changes:
        return Outcome(desired, changes, marks=marks.changes(desired.marks, desired.fwmask))
    if verb.undoes_watch and changes and watch_running(job.state_dir):
        log.warning("domunet watch is running and will set this up again at the next change: "
                    "systemctl stop domunet-watch first")
    journal = Journal(kernel, config.gateway_strategy)
    try:
        done = apply(changes, kernel, config.gateway_strategy, journal)
    except ApplyError as error:
        now = discover(kernel, xen)[0].interfaces if may_retry and verb.adds else facts.interfaces
        if now != facts.interfaces:
            # an address (or a NIC) came or went while this run applied: what was made is rolled
            # back; converge with what is there now, as for a NIC that vanishes
            gone = sorted({i.name for i in facts.interfaces} - {i.name for i in now})
            what = f"{', '.join(gone)} vanished" if gone else "the interfaces changed"
            log.warning("%s during this run (%s); converging with what is there now", what, error)
            return _run(dataclasses.replace(job, stanza=None), kernel, xen, may_retry=False)
        raise
    marked = _after_apply(job, kernel, desired, owned, done, blocks, marks, journal)
    write_table_names(config.rt_tables_file, table_names_after(owned, done))
    log.info("%s: %d change(s)", verb.name, len(done) + len(marked))
    return Outcome(desired, done, marks=marked)


def _changes(job: Job, desired: State, owned: State, xen: Published) -> list[Change]:
    """What to change: the diff for the NICs asked for, less what belongs to a held NIC (one bad
    fact costs its NIC: what it has stays as it is), and for setup less every removal when
    xenstore did not answer in time (the plan may lack what dom0 published)."""
    scope: Scope | None = scope_for(job.names, desired, owned) if job.names else None
    changes = diff(desired, owned, scope)
    if desired.held and job.verb.plans:
        held = scope_for(desired.held, desired, owned)
        changes = [c for c in changes if not held.covers(c.obj)]
    if job.verb.adds and not xen.complete:
        kept = [c for c in changes if c.action == REMOVE]
        if kept:
            log.warning("keeping %d object(s) this run: xenstore did not answer in time, so the plan may "
                        "lack what dom0 published", len(kept))
        changes = [c for c in changes if c.action != REMOVE]
    return changes


def _after_apply(job: Job, kernel: Kernel, desired: State, owned: State, done: list[Change],
                 blocks: list[Block], marks: Marks, journal: Journal) -> list[str]:
    """Connection marks, NICs that vanished meanwhile, the blocks file, into the run's journal:
    if any of it fails, the whole run goes back (marks, routes and rules)."""
    config, verb = job.config, job.verb
    marked: list[str] = []
    try:
        if verb.adds or not job.names:
            marked = marks.converge(desired.marks, desired.fwmask, journal)
        # a NIC that vanished while this run made something for it: what was made goes (a run that
        # made nothing leaves that to the next one, and to ifdown: it costs a link dump)
        gone = sorted({m.name for m in desired.managed} - set(kernel.links(refresh=True))) if done or marked else []
        if gone:
            forget(journal, gone)
            done[:] = journal.changes()
        _remember_blocks(job.state_dir, config, owned, done, blocks)
    except ApplyError:
        raise  # the journal is taken back already (apply did it, and says so)
    except BaseException as error:  # whatever failed after the routes and rules: they go back too
        if isinstance(error, (DomunetError, OSError)):
            what = error if isinstance(error, DomunetError) else f"{verb.name}: {error.strerror or error}"
            raise ApplyError(journal.failed(what)) from None
        log.error("%s: %s", verb.name, journal.failed())
        raise
    return marked
