"""What a doctor found, on either side (`domunet doctor`, `domunet dom0 doctor`): one Step per
check in the order a packet takes, one Verdict per address, and the short table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Step:
    """One check: what it found, and when it failed, the cause (a code) and the command that fixes it."""

    check: str
    ok: bool
    found: str
    cause: str | None = None
    fix: str | None = None


@dataclass(frozen=True)
class Verdict:
    """One address, its steps; the first failing step is its cause."""

    address: str
    interface: str | None
    steps: tuple[Step, ...]

    @property
    def failed(self) -> Step | None:
        return next((step for step in self.steps if not step.ok), None)

    def as_dict(self) -> dict[str, Any]:
        failed = self.failed
        return {"address": self.address, "interface": self.interface, "ok": failed is None,
                "cause": failed.cause if failed else None, "found": failed.found if failed else None,
                "fix": failed.fix if failed else None, "steps": [asdict(step) for step in self.steps]}


def render(verdicts: Sequence[Verdict]) -> str:
    """The short table: address, verdict, cause; the fix under each problem."""
    lines = [f"{'ADDRESS':<40} {'INTERFACE':<12} {'VERDICT':<8} CAUSE"]
    for verdict in verdicts:
        failed = verdict.failed
        lines.append(f"{verdict.address:<40} {verdict.interface or '-':<12} {'ok' if failed is None else 'PROBLEM':<8} "
                     f"{'' if failed is None else f'{failed.cause}: {failed.found}'}")
        if failed is not None and failed.fix:
            lines.append(f"{'':<40} fix: {failed.fix}")
    return "\n".join(lines)
