"""watch's decisions, without a kernel: which events call for a run, and the echo of its own."""

import ipaddress

from domunet.core.model import PROTO, PROTO_TEMP, TABLE_MAIN, Route, Rule
from domunet.guest.diff import Change
from domunet.guest.watch import Event, echoes_of, matters

OURS = Rule(4, 10012, 1001, src=ipaddress.ip_network("192.168.0.201/32"))
TABLE_ROUTE = Route(1001, ipaddress.ip_network("0.0.0.0/0"), "eth1", gateway=ipaddress.ip_address("192.168.0.1"))


def test_the_echo_of_its_own_change_is_heard_once_and_ignored():
    echoes = echoes_of([Change("add", OURS), Change("add", TABLE_ROUTE)])
    assert not matters(Event("rule", "add", OURS), echoes)
    assert not matters(Event("route", "add", TABLE_ROUTE), echoes)
    assert matters(Event("rule", "add", OURS), echoes)  # a second add is not ours


def test_someone_removing_domunets_rule_matters():
    echoes = echoes_of([Change("add", OURS)])
    assert matters(Event("rule", "remove", OURS), echoes)


def test_links_and_addresses_always_matter():
    assert matters(Event("link", "add"), echoes_of([]))
    assert matters(Event("address", "remove"), echoes_of([]))


def test_foreign_routes_matter_in_main_only_and_temporary_routes_never():
    bridge = Route(TABLE_MAIN, ipaddress.ip_network("172.17.0.0/16"), "docker0", proto=2)
    elsewhere = Route(51820, ipaddress.ip_network("0.0.0.0/0"), "wg0", proto=3)
    temporary = Route(TABLE_MAIN, ipaddress.ip_network("192.168.0.1/32"), "eth1", proto=PROTO_TEMP)
    assert matters(Event("route", "add", bridge), echoes_of([]))
    assert not matters(Event("route", "add", elsewhere), echoes_of([]))
    assert not matters(Event("route", "remove", temporary), echoes_of([]))


def test_foreign_rules_do_not_matter():
    wg_quick = Rule(4, 32764, TABLE_MAIN, proto=0)
    assert not matters(Event("rule", "add", wg_quick), echoes_of([]))
    assert OURS.proto == PROTO


class _Quiet:
    """An event source that never has anything to say."""

    def __init__(self):
        import os

        self._r, self._w = os.pipe()

    def fileno(self):
        return self._r

    def read(self):
        return []


def test_a_run_that_fails_in_any_way_backs_off_and_the_watch_goes_on():
    """Issue 21 (N3, N5): an OSError (a full /run) or a bug in a run does not end watch; each
    failure doubles the wait, which only a success resets."""
    import errno

    from domunet.guest.watch import RETRY_FIRST, Watch

    failures = [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("a bug")]

    def converge():
        if failures:
            raise failures.pop(0)
        return []

    watch = Watch(_Quiet(), None, converge, lambda: None)
    watch._run_once()
    assert watch.retry_in == RETRY_FIRST and watch._backing_off()
    watch._run_once()
    assert watch.retry_in == 2 * RETRY_FIRST
    watch._run_once()
    assert watch.retry_in is None and watch.not_before is None and watch.runs == 1


def test_a_table_removed_while_a_run_changed_it_is_put_back_by_one_more_run():
    """A `flush ruleset` during a run that changed domunet's nftables table looks like the run's own
    change (found as a rare failure of the flush test on a busy machine): one more run follows. A
    run that changes nothing is heard of by nobody, so the rechecks end; a flush during a recheck
    (round 3: 20 flushes in a row) gets its own."""
    from domunet.guest.watch import Watch

    class Once:
        def __init__(self, touched):
            self.touched = list(touched)

        def read(self):
            return self.touched.pop(0) if self.touched else set()

    ours = {"domunet-guest"}
    # what each run reads before and after it converges: after run 1 its own change (or a flush);
    # after run 2 nothing, or a flush again
    for touched, expected in (([set(), ours, set(), set()], 2), ([set(), ours, set(), ours, set(), set()], 3)):
        runs = []
        watch = Watch(_Quiet(), None, lambda r=runs: r.append(1) or [], lambda: None, Once(touched),
                      frozenset(ours))
        watch._run_once()
        while watch.recheck:
            watch._run_once()
        assert len(runs) == expected


def test_a_table_that_keeps_changing_is_checked_again_later_not_in_a_loop():
    from domunet.guest.watch import MAX_RECHECKS, Watch

    class Touched:
        """nf_tables events: each run changes the table (or someone removes it meanwhile)."""

        def read(self):
            return {"domunet-guest"}

    runs = []
    watch = Watch(_Quiet(), None, lambda: runs.append(1) or [], lambda: None, Touched(), frozenset({"domunet-guest"}))
    watch._run_once()
    while watch.recheck:
        watch._run_once()
    assert len(runs) == MAX_RECHECKS + 1
    assert watch.not_before is not None  # one more run, a while later


def test_failed_runs_back_off_2_4_8_16_s_on_a_fake_clock_whatever_events_come(monkeypatch):
    """Issue 35: the backoff, without a wall clock (the real one is a benchmark's business). Every
    failed run is followed at once by an event (the echo of its rollback, as on a real kernel);
    still the next run waits its turn: runs at 0, 2, 6, 14 and 30 s, and none in between."""
    from domunet.core.errors import ApplyError
    from domunet.guest import watch as watching

    clock = {"now": 0.0}
    runs = []

    class Events:
        pending = False

        def fileno(self):
            return 0

        def read(self):
            messages, self.pending = ([{"header": {"type": 16}}] if self.pending else []), False
            return messages

    events = Events()

    class Clock:
        @staticmethod
        def monotonic():
            return clock["now"]

    class Select:
        @staticmethod
        def select(sockets, _w, _x, timeout):
            if events.pending:
                return [events], [], []
            assert timeout is not None, "watch waits forever: no retry planned"
            clock["now"] += timeout
            return [], [], []

    def converge():
        runs.append(clock["now"])
        events.pending = True  # the echo of the rollback
        if len(runs) == 5:
            loop.stopping = True
        raise ApplyError("the kernel refused a route (injected)")

    monkeypatch.setattr(watching, "time", Clock)
    monkeypatch.setattr(watching, "select", Select)
    loop = watching.Watch(events, kernel=None, converge=converge, reload=lambda: None)
    loop.loop()
    assert runs == [0.0, 2.0, 6.0, 14.0, 30.0]
