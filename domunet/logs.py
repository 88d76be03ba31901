"""domunet's log lines: one printable line each, to stderr and, for hook runs, to syslog.

Shared by the command line (domunet.cli) and vif-domunet's light way in (domunet.entry), which
must not import argparse."""

from __future__ import annotations

import logging
import os
import re
import sys

MAX_MESSAGE = 400  # characters: a message names what failed, it does not echo 10 kB back
_LONG_WORD = re.compile(r"\S{100,}")


def one_line(text: str) -> str:
    """One printable line of bounded length, whatever a hostile argument, environment or file
    put into the message (newlines, escapes, undecodable bytes, 10 kB)."""
    text = " ".join(part.strip() for part in text.splitlines())
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    line = _LONG_WORD.sub(lambda m: f"{m[0][:40]}...({len(m[0])} characters)...{m[0][-16:]}", line)
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 15] + "... (shortened)"


class OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.exc_info else one_line(text)  # a traceback (-vv only) keeps its lines


def setup_logging(verbose: int, prefix: str = "domunet", syslog: bool = False) -> None:
    """stderr always; hook runs also log to syslog (xl keeps stderr in xen-hotplug.log)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    formatter = OneLine(f"{prefix}: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handlers: list[logging.Handler] = [handler]
    if syslog and os.path.exists("/dev/log"):
        level = min(level, logging.INFO)
        try:
            from logging.handlers import SysLogHandler  # only hook runs log to syslog: 6 ms the rest need not pay

            handlers.append(SysLogHandler("/dev/log"))
            handlers[-1].setFormatter(formatter)
        except OSError:
            pass
    logging.raiseExceptions = False  # a log line that cannot be written is dropped, never a traceback
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
