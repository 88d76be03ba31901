"""The guest pipeline (domunet.guest.pipeline) and libxl's protocol (domunet.dom0.hotplug), without a kernel:
the kernel-facing steps are replaced, the decisions between them are the real ones."""

import contextlib
import json

import pytest

from domunet.core import config
from domunet.core.errors import UsageError
from domunet.core.model import State
from domunet.dom0 import hotplug
from domunet.guest import pipeline
from domunet.guest.ifupdown import HookCall
from domunet.guest.published import Published
from tests.unit.factories import lab_guest

LAB = b"[interfaces]\n[[eth3]]\ngateway6 = 2001:db8:4309:2388::2\n"


@pytest.fixture
def runner(monkeypatch, tmp_path):
    """pipeline.run with the lab's facts, an empty kernel, and apply recording what it was given."""
    applied = []
    owned = {"state": State()}
    monkeypatch.setattr(pipeline, "discover", lambda kernel, xen=None: (lab_guest(), owned["state"]))
    monkeypatch.setattr(pipeline, "published_for", lambda kernel: Published())
    monkeypatch.setattr(pipeline, "apply", lambda changes, kernel, strategy="auto", journal=None:
                        applied.extend(changes) or list(changes))
    monkeypatch.setattr(pipeline, "write_table_names", lambda path, tables: None)

    class Links:
        def links(self, refresh=False):
            return {i.name: i for i in lab_guest().interfaces}

    def run(verb, names=(), text=LAB, stanza=None):
        settings = config.with_hints(config.parse(text), [stanza] if stanza else [])
        return pipeline.run(verb, settings, str(tmp_path / "state"), names, stanza, kernel=Links())

    return run, applied, owned


def test_setup_applies_the_plan_and_plan_changes_nothing(runner):
    run, applied, _ = runner
    planned = run("plan")
    assert planned.changes and not applied
    done = run("setup")
    assert applied == planned.changes == done.changes
    assert {c.action for c in applied} == {"add"}


def test_teardown_of_one_nic_removes_only_its_objects(runner):
    run, applied, owned = runner
    desired = run("plan").desired
    owned["state"] = State(desired.routes, desired.rules)
    run("teardown", ["eth1"])
    assert applied and {c.action for c in applied} == {"remove"}
    table = next(m.table for m in desired.managed if m.name == "eth1")
    assert all(getattr(c.obj, "dev", None) == "eth1" or c.obj.table == table for c in applied)


def test_when_xenstore_ran_out_of_time_setup_adds_but_removes_nothing(runner, monkeypatch):
    from domunet.core.model import Rule
    from domunet.guest.published import Published

    run, applied, owned = runner
    late = Published({}, complete=False)
    monkeypatch.setattr(pipeline, "published_for", lambda kernel: late)
    stale = Rule(6, 10030, 1003, oif="eth9")
    owned["state"] = State(frozenset(), frozenset({stale}))
    run("setup")
    assert applied and all(c.action == "add" for c in applied)  # the plan went in; the stale rule stayed


def test_setup_of_a_missing_interface_is_a_usage_error_before_any_change(runner):
    run, applied, _ = runner
    with pytest.raises(UsageError, match="no such interface: eth9"):
        run("setup", ["eth9"])
    assert applied == []


def test_a_stanza_is_kept_only_when_its_plan_was_made(runner, tmp_path):
    run, _, _ = runner
    run("setup", stanza=HookCall("eth1", "inet", "start", manage="yes"))
    kept = json.loads((tmp_path / "state" / "ifupdown" / "eth1.inet.json").read_text())
    assert kept["manage"] == "yes"


def test_a_refused_stanza_is_a_usage_error_and_not_kept(tmp_path):
    state = tmp_path / "state"
    with pytest.raises(UsageError, match="domunet-table 77"):
        pipeline.load_config(None, str(state), HookCall("eth1", "inet", "start", table=77))
    assert not (state / "ifupdown").exists()


# --- libxl's protocol ------------------------------------------------------------------------

class FakeDom0:
    def __init__(self, fail=False):
        self.fail, self.calls = fail, []

    def online(self, request):
        self.calls.append(("online", request.vif, [str(n) for n in request.guest]))
        if self.fail:
            raise UsageError("vif1.0: no uplink")
        from domunet.dom0.records import HostRoute, VifRecord

        return VifRecord(key=request.key, vif=request.vif, uplink="eth0", guest=[str(n) for n in request.guest],
                         routes=[HostRoute("192.0.2.5/32", "192.0.2.1")])

    def offline(self, key, vif=None):
        self.calls.append(("offline", key))

    def online_many(self, requests):
        outcomes = []
        for request in requests:
            try:
                outcomes.append(self.online(request))
            except Exception as error:
                outcomes.append(error)
        return outcomes

    def offline_many(self, vifs):
        return [self.offline(key, vif) for key, vif in vifs]


@pytest.fixture
def store(monkeypatch):
    data = {"backend/vif/1/0/ip": "192.0.2.5"}
    monkeypatch.setattr(hotplug.xenstore, "read", data.get)
    monkeypatch.setattr(hotplug.xenstore, "write_many", data.update)
    monkeypatch.setattr(hotplug.xenstore, "remove", lambda *paths: [data.pop(path, None) for path in paths])
    return data


ENV = {"vif": "vif1.0", "XENBUS_PATH": "backend/vif/1/0", "netdev": ""}


def engine_of(dom0):
    return lambda: contextlib.nullcontext(dom0)


def test_online_reports_connected_and_publishes_the_gateway(store):
    dom0 = FakeDom0()
    assert hotplug.handle("online", {}, ENV, engine_of(dom0)) is True
    assert store["backend/vif/1/0/hotplug-status"] == "connected"
    assert store["backend/vif/1/0/domunet-gateway"] == "192.0.2.1"
    assert dom0.calls == [("online", "vif1.0", ["192.0.2.5/32"])]


def test_a_failed_online_reports_error_with_the_message(store):
    assert hotplug.handle("online", {}, ENV, engine_of(FakeDom0(fail=True))) is False
    assert store["backend/vif/1/0/hotplug-status"] == "error"
    assert store["backend/vif/1/0/hotplug-error"] == "vif1.0: no uplink"


@pytest.mark.parametrize("error, said", [
    (RuntimeError("boom"), "internal error: RuntimeError: boom"),
    (OSError(28, "No space left on device", "/run/domunet/dom0/vif-xen-1-0.json"),
     "/run/domunet/dom0/vif-xen-1-0.json: No space left on device"),
])
def test_any_failure_of_online_reports_error_to_libxl(store, error, said):
    """Issue 21 (N3): an exception domunet did not expect still ends in hotplug-status error."""

    class Failing(FakeDom0):
        def online(self, request):
            raise error

    assert hotplug.handle("online", {}, ENV, engine_of(Failing())) is False
    assert store["backend/vif/1/0/hotplug-status"] == "error"
    assert said in store["backend/vif/1/0/hotplug-error"]


def test_offline_undoes_and_removes_what_was_published(store):
    store["backend/vif/1/0/domunet-gateway"] = "192.0.2.1"
    dom0 = FakeDom0()
    assert hotplug.handle("offline", {}, ENV, engine_of(dom0)) is True
    assert dom0.calls == [("offline", "xen-1-0")]
    assert "backend/vif/1/0/domunet-gateway" not in store


def test_an_emulated_nic_is_not_domunets(store):
    dom0 = FakeDom0()
    assert hotplug.handle("online", {"type_if": "tap"}, ENV, engine_of(dom0)) is True
    assert hotplug.handle("add", {}, ENV, engine_of(dom0)) is True
    assert dom0.calls == [] and "backend/vif/1/0/hotplug-status" not in store
