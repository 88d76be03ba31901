"""The one driver of nftables, for dom0's anti-spoofing table and the guest's connection marks.

Every nft script goes through libnftables in-process (Debian's python3-nftables: domunet-dom0
depends on it, domunet recommends it), so a run starts no `nft` process (15-20 ms each). Where
that binding is missing (a venv, another distribution) `nft -f -` takes the same text.
"""

from __future__ import annotations

import logging
import os
import subprocess
from typing import Any

from domunet.core import tools
from domunet.core.errors import KernelError

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether nftables can be driven at all: the `nft` program (looked for first: loading the
    binding costs ~5 ms that a run without marks to make should not pay), or in-process."""
    return tools.find("nft") is not None or _library() is not None


def require(who: str) -> None:
    """Raise MissingTool (naming the package) before anything changes when nftables cannot be
    driven at all: neither the in-process binding nor the `nft` program is there."""
    if _library() is None:
        tools.require(who, "nft")


def run(text: str, who: str) -> tuple[int, str, str]:
    """One nft script, as `nft -f` reads it (one transaction; `list` commands print): exit
    code, output, error text. The one place domunet drives nftables (dom0's table, the guest's
    connection marks)."""
    library = _library()
    if library is not None:
        code, output, error = library.cmd(text)
        return code, output or "", error or ""
    program = tools.require(who, "nft")["nft"]
    try:
        result = subprocess.run([program, "-f", "-"], input=text, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise KernelError(f"cannot run nft: {error}") from None
    return result.returncode, result.stdout, result.stderr


_LIBRARY: list[Any] = []  # [the binding's Nftables context, or None], made when first needed


def _library() -> Any:
    """libnftables through python3-nftables, or None when it cannot be had (then `nft -f -`).
    DOMUNET_NFT=command asks for the program (to compare both ways)."""
    if not _LIBRARY:
        context = None
        if os.environ.get("DOMUNET_NFT") != "command":
            try:
                from nftables import Nftables

                context = Nftables()
            except (ImportError, OSError) as error:  # no binding, or no libnftables.so.1
                log.debug("no in-process libnftables (%s): using nft -f -", error)
        _LIBRARY.append(context)
    return _LIBRARY[0]
