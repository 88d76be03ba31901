"""Connection marks in the guest: a forwarded connection answers by the NIC it came in on.

A port published with DNAT on a secondary address (192.168.0.201:8080 -> a container) gets its
reply routed while the source is still the container's (NAT is undone after routing), so no
`from` rule matches and it would leave by main's NIC, where dom0 drops it. One nftables table of
domunet's own marks each new connection with its arrival NIC and copies the connection's mark
onto its packets; a `fwmark` rule per NIC (made by the planner) routes them through that NIC's
table. Strict rp_filter checks the arriving packets with their mark only with src_valid_mark, so
that is set on the marked NICs and put back as it was when the marks go.

The table carries a digest of its text as its comment, so a run that would write the same table
knows it from the kernel and changes nothing.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Mapping, NamedTuple

from domunet.core import nftables, sysctl
from domunet.core.errors import KernelError
from domunet.core.state import Layout, read_saved_sysctls, write_json

if TYPE_CHECKING:
    from domunet.guest.apply import Journal

log = logging.getLogger(__name__)

TABLE = "domunet-guest"
_COMMENT = re.compile(r'comment "domunet:([0-9a-f]+)"')
#: Under the state dir: the src_valid_mark values before domunet set them, and that the table is ours.



def ruleset(marks: Mapping[str, int], mask: int) -> str:
    """The whole table for these NICs and marks (pure)."""
    keep = 0xFFFFFFFF & ~mask
    body = [
        "    chain prerouting {",
        "        type filter hook prerouting priority mangle; policy accept;",
        *(f'        iifname "{name}" ct state new ct mark set ct mark and {keep:#010x} or {mark:#010x}'
          for name, mark in sorted(marks.items())),
        f"        ct mark and {mask:#010x} != 0 meta mark 0 meta mark set ct mark and {mask:#010x}",
        "    }",
    ]
    import hashlib  # here: loading OpenSSL costs ~4 ms, and only forwarding guests get here

    digest = hashlib.sha256("\n".join(body).encode()).hexdigest()[:16]
    return "\n".join([f"table inet {TABLE} {{", f'    comment "domunet:{digest}"', *body, "}", ""])


def digest_of(text: str) -> str | None:
    match = _COMMENT.search(text)
    return match.group(1) if match else None


def current_table() -> str | None:
    """domunet's table in the kernel, as nft lists it (and can load it again); None when there is none."""
    code, output, _ = nftables.run(f"list table inet {TABLE}\n", "connection marks")
    return output if code == 0 else None


def _replace_table(text: str | None) -> None:
    """The table, atomically, as text says; None: no table."""
    script = f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n" + (text or "")
    code, _, error = nftables.run(script, "connection marks")
    if code != 0:
        raise KernelError(f"nft refused the connection-mark table: {error.strip()}")


class Marks:
    """What the table and the sysctls are now, and how to make them what the plan says."""

    def __init__(self, state_dir: str) -> None:
        self.origin = Layout(state_dir).connmark_origin

    def _saved(self) -> dict[str, str]:
        """The sysctl values before domunet set them; a corrupt file is set aside (nothing to put back)."""
        return read_saved_sysctls(self.origin)

    def _save(self, saved: dict[str, str]) -> None:
        write_json(self.origin, saved)

    def _difference(self, marks: Mapping[str, int], mask: int) -> _Difference:
        """What differs from the plan: read once, for `changes` to print and `converge` to do."""
        wanted = ruleset(marks, mask) if marks else None
        keys = {_key(name) for name in marks}
        turn_on = {}
        for key in sorted(keys):
            value = sysctl.read(key)
            if value is not None and value != "1":
                turn_on[key] = value
        saved = self._saved()
        current = current_table()
        differs = (digest_of(wanted) if wanted else None) != (digest_of(current) if current else None)
        return _Difference(wanted, current, differs, turn_on, saved, sorted(set(saved) - keys))

    def changes(self, marks: Mapping[str, int], mask: int) -> list[str]:
        """What `converge` would do, as commands (for `domunet plan`)."""
        if not marks and not self.origin.exists():
            return []
        difference = self._difference(marks, mask)
        out = []
        if difference.table_differs:
            out.append(f"nft -f - <<< 'table inet {TABLE} ...' # marks {_listed(marks)}" if marks
                       else f"nft delete table inet {TABLE}")
        out += [f"sysctl -w {key.replace('/', '.')}=1" for key in difference.turn_on]
        out += [f"sysctl -w {key.replace('/', '.')}={difference.saved[key]}" for key in difference.put_back]
        return out

    def converge(self, marks: Mapping[str, int], mask: int, journal: Journal) -> list[str]:
        """Make it so, each step into the run's journal (a later failure of the run takes them
        back with its routes and rules); returns what was done. Nothing at all (not even an nft
        run) when there are no marks and domunet never made any."""
        if not marks and not self.origin.exists():
            return []
        difference = self._difference(marks, mask)
        done = []
        if difference.table_differs:
            _replace_table(difference.wanted)
            journal.step("the connection-mark table", lambda: _replace_table(difference.current))
            done.append(f"connection marks: {_listed(marks)}" if marks else "connection marks removed")
        saved = dict(difference.saved)
        if self.origin.exists():
            journal.step(str(self.origin), lambda before=dict(difference.saved): self._save(before))
        else:
            journal.step(str(self.origin), lambda: self.origin.unlink(missing_ok=True))
        for key, value in difference.turn_on.items():
            saved.setdefault(key, value)
            self._save(saved)
            sysctl.write(key, "1")
            journal.step(key, lambda key=key, value=value: sysctl.write(key, value))
            done.append(f"{key.replace('/', '.')} = 1")
        for key in difference.put_back:
            before = sysctl.read(key)
            try:
                sysctl.write(key, saved[key])
                if before is not None:
                    journal.step(key, lambda key=key, value=before: sysctl.write(key, value))
                done.append(f"{key.replace('/', '.')} = {saved[key]} (as before)")
            except KernelError:
                log.info("%s: gone with its interface", key.replace("/", "."))
            del saved[key]
        if marks:
            self._save(saved)
        else:
            self.origin.unlink(missing_ok=True)
        for line in done:
            log.info("%s", line)
        return done


class _Difference(NamedTuple):
    wanted: str | None  # the table's text; None: no table
    current: str | None  # the kernel's table as listed; None: none
    table_differs: bool  # the kernel's table is not that one
    turn_on: dict[str, str]  # src_valid_mark keys to set to 1, with their values now
    saved: dict[str, str]  # values from before domunet set them (the state file)
    put_back: list[str]  # saved keys no longer wanted: their old values go back


def _key(name: str) -> str:
    return f"net/ipv4/conf/{name}/src_valid_mark"


def _listed(marks: Mapping[str, int]) -> str:
    return ", ".join(f"{name}={mark:#x}" for name, mark in sorted(marks.items()))
