"""`domunet lab`: the README's demo. The namespace lab (domunet.lab) with dom0 routed by
vif-domunet; who answers the outside host before and after `domunet setup` in the guest."""

from __future__ import annotations

import sys

from domunet.lab import NICS, Lab, LabError, check_can_run


def demo(out: object = sys.stdout) -> bool:
    """`domunet lab`: build the scenario, show who answers before and after setup, clean up."""

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)  # type: ignore[arg-type]

    check_can_run()
    with Lab() as lab:
        say(f"domunet lab: namespaces {', '.join(lab.ns.values())}")
        lab.route_dom0_with_vif_domunet()
        say("dom0: vif1.0..vif1.3 set up by vif-domunet (hotplug-status connected); "
            "it published its gateways in xenstore")
        before = lab.answers(tries=1)
        empty = lab.workdir / "empty.conf"
        empty.write_text("")  # no configuration in the guest: what it needs comes from xenstore
        env = {**lab.xen_env(1), "DOMUNET_STATE_DIR": str(lab.state_dir)}
        setup = lab.run("guest", str(lab.bin / "domunet"), "--config", str(empty), "setup", check=False, env=env)
        if setup.returncode != 0:
            say(setup.stderr)
            raise LabError(f"domunet setup failed in the guest (exit {setup.returncode})")
        after = lab.answers()
        say()
        say(f"{'address':<26} {'NIC':<5} {'before setup':<13} after setup")
        for nic in NICS:
            say(f"{nic.address:<26} {nic.guest:<5} {_yes(before[nic.address]):<13} {_yes(after[nic.address])}")
        say()
        say("guest's rules after setup:")
        say(lab.run("guest", "ip", "rule").stdout + lab.run("guest", "ip", "-6", "rule").stdout)
        teardown = lab.run("guest", str(lab.bin / "domunet"), "--config", str(empty), "teardown", check=False,
                           env=env)
        say(f"domunet teardown: exit {teardown.returncode}")
    say("lab namespaces removed")
    ok = all(after.values())
    say("all four addresses answer: " + ("yes" if ok else "NO"))
    return ok


def _yes(value: bool) -> str:
    return "answers" if value else "no answer"
