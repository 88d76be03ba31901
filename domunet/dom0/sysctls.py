"""dom0's sysctls for routed vifs: forwarding and proxying on the uplink, kept as they were before
the first vif and restored after the last; each vif's own, kept in its record."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from domunet.core import sysctl
from domunet.core.errors import KernelError
from domunet.core.state import Layout, read_saved_sysctls, write_json

if TYPE_CHECKING:
    from domunet.dom0.records import VifRecord

log = logging.getLogger(__name__)


class Dom0Sysctls:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def origin(self) -> dict[str, str]:
        """The values before the first vif; a corrupt file is set aside (nothing to restore)."""
        return read_saved_sysctls(self.layout.dom0_sysctl_origin)

    def set_dom0(self, uplink: str, ipv6: bool) -> None:
        """Forwarding, and proxy ARP/NDP on the uplink; the values before the first vif are kept."""
        wanted = {"net/ipv4/ip_forward": "1", f"net/ipv4/conf/{uplink}/proxy_arp": "1"}
        if ipv6:
            if sysctl.read(f"net/ipv6/conf/{uplink}/accept_ra") == "1":
                wanted[f"net/ipv6/conf/{uplink}/accept_ra"] = "2"  # keep taking RAs while forwarding
            wanted.update({
                "net/ipv6/conf/all/forwarding": "1",
                f"net/ipv6/conf/{uplink}/proxy_ndp": "1",
                "net/ipv6/conf/all/proxy_ndp": "1",  # unicast reachability probes check 'all'
            })
        saved = self.origin()
        fresh = {k: v for k in wanted if k not in saved and (v := sysctl.read(k)) is not None}
        if fresh:
            write_json(self.layout.dom0_sysctl_origin, {**saved, **fresh})
        for key, value in wanted.items():
            sysctl.write(key, value)

    def restore_dom0(self) -> None:
        """After the last vif: the values from before the first."""
        for key, value in self.origin().items():
            try:
                sysctl.write(key, value)
            except KernelError as error:
                log.warning("could not restore %s: %s", key, error)
        self.layout.dom0_sysctl_origin.unlink(missing_ok=True)

    @staticmethod
    def set_vif(record: VifRecord, ipv6: bool) -> None:
        """The vif: answer ARP for dom0's side; never take a router advertisement or a redirect
        from the guest (a guest's RA would otherwise install a default route in dom0). The values
        before go into the record, each before it is changed."""
        vif = record.vif
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
