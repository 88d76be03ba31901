"""The kernel's change notifications: rtnetlink's (links, addresses, routes, rules) and
nf_tables' (which tables someone removed something from), each a socket to select() on and drain
without blocking. Importing this module loads no pyroute2 (the watch loop's pure parts use its
constants); an Events socket loads pyroute2's marshal when it is made.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any, Iterator

from domunet.core.errors import KernelError

#: rtnetlink message types.
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWRULE, RTM_DELRULE = 24, 25, 32, 33
#: rtnetlink multicast groups (1 << (RTNLGRP_x - 1)): links, addresses, routes, rules of both families.
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE = 0x1, 0x10, 0x40, 0x80
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_IPV6_RULE = 0x100, 0x400, 1 << 18
WATCHED_GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE
                  | RTMGRP_IPV6_ROUTE | RTMGRP_IPV4_RULE | RTMGRP_IPV6_RULE)
#: Kernel-side queue for a burst of events (1,000 address changes in a second fit many times).
_EVENT_BUFFER = 8 << 20


class EventsLost(KernelError):
    """The kernel dropped events (ENOBUFS): what changed is unknown, converge from scratch."""


class _Subscription:
    """A netlink socket subscribed to multicast groups, to select() on and drain without blocking."""

    what = "events"

    def __init__(self, protocol: int, groups: int, buffer: int | None = None) -> None:
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            if buffer:
                try:
                    self._socket.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), buffer)
                except OSError:
                    self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            self._socket.bind((0, groups))
        except OSError:
            self._socket.close()
            raise
        self._socket.setblocking(False)

    def fileno(self) -> int:
        return self._socket.fileno()

    def close(self) -> None:
        self._socket.close()

    def _datagrams(self) -> Iterator[bytes | None]:
        """Every datagram queued now; None where the kernel dropped some (ENOBUFS: a burst)."""
        while True:
            try:
                yield self._socket.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise KernelError(f"cannot read {self.what}: {error.strerror}", error.errno) from None
                yield None


class Events(_Subscription):
    """The kernel's change notifications: a plain netlink socket to select() on, messages decoded
    by pyroute2's own marshal (the same classes in 0.7 and 0.9)."""

    what = "change events"

    def __init__(self, groups: int = WATCHED_GROUPS) -> None:
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        self._marshal = MarshalRtnl()
        super().__init__(socket.NETLINK_ROUTE, groups, _EVENT_BUFFER)

    def read(self) -> list[Any]:
        """Every message queued now (never blocks)."""
        messages: list[Any] = []
        for data in self._datagrams():
            if data is None:
                raise EventsLost("the kernel dropped change events (a burst)", errno.ENOBUFS)
            messages.extend(self._marshal.parse(data))
        return messages


NETLINK_NETFILTER = 12
#: nf_tables' change notifications (NFNLGRP_NFTABLES), and the messages of that subsystem.
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
#: NFT_MSG_DELTABLE, DELCHAIN, DELRULE, DELSET, DELSETELEM: something of a table was removed.
NFT_DELETES = frozenset({2, 5, 8, 11, 14})
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_NFGENMSG_SIZE = 4


def nft_tables_deleted_from(data: bytes) -> set[str]:
    """Pure: the tables that nf_tables notifications in one datagram removed something from (a
    table, chain, rule, set or element: `nft flush ruleset`, a firewall reload). The table's
    name is the first attribute (NFTA_*_TABLE = 1) of each of these messages."""
    tables: set[str] = set()
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        end = min(offset + length, len(data))
        if kind >> 8 == NFNL_SUBSYS_NFTABLES and kind & 0xFF in NFT_DELETES:
            at = offset + _NLMSG.size + _NFGENMSG_SIZE
            while at + _NLA.size <= end:
                size, number = _NLA.unpack_from(data, at)
                if size < _NLA.size:
                    break
                if number & 0x3FFF == 1:
                    tables.add(data[at + _NLA.size:at + size].split(b"\0", 1)[0].decode("utf-8", "replace"))
                    break
                at += (size + 3) & ~3
        offset += (length + 3) & ~3
    return tables


class NftEvents(_Subscription):
    """nf_tables' notifications: which tables someone removed something from. None where the
    kernel has no nf_tables (then nothing is followed, as before)."""

    what = "nftables events"

    def __init__(self) -> None:
        super().__init__(NETLINK_NETFILTER, 1 << (NFNLGRP_NFTABLES - 1))

    def read(self) -> set[str]:
        """Tables touched by what is queued now (never blocks); a lost burst counts as all of them."""
        tables: set[str] = set()
        for data in self._datagrams():
            tables |= {"*"} if data is None else nft_tables_deleted_from(data)
        return tables


