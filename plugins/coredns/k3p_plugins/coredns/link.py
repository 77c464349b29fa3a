"""The node's dummy interface that holds the cluster DNS address.

Every node owns the cluster DNS address (``clusterDNS``, 10.43.0.10 by default) as a /32
on a dummy interface (a port-less bridge on kernels built without the dummy driver), so a
pod's query leaves through its default route to the node and is answered there, without
any Service proxy in the way (the NodeLocal DNSCache idea). The interface stays when k3p
stops: pods keep their resolv.conf across a restart and the address must not vanish
under them.

pyroute2's synchronous API runs an event loop of its own: from a coroutine, call these
functions on a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = structlog.get_logger(__name__).bind(component="coredns")

DNS_LINK = "k3p-dns"
#: the kinds of device tried in turn: a dummy where the kernel has the driver, else a bridge
#: with no ports, which also stays up and holds local addresses
_KINDS = ("dummy", "bridge")
#: IFA_F_NODAD: an IPv6 address usable at once, without duplicate address detection
_IFA_F_NODAD = 0x02


def ensure_dns_link(addresses: Iterable[str], ifname: str = DNS_LINK) -> int:
    """Make ``ifname`` an interface that is up and holds exactly ``addresses`` (each a /32 or /128).

    Creates the interface if missing; removes addresses it held that are no longer wanted
    (the cluster DNS address changed). Returns the interface index.
    """
    wanted = {str(ipaddress.ip_address(a)) for a in addresses}
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            kind = _create(ipr, ifname)
            found = ipr.link_lookup(ifname=ifname)
            log.info("dns interface created", interface=ifname, kind=kind)
        index = found[0]
        ipr.link("set", index=index, state="up")
        held = {}
        for msg in ipr.get_addr(index=index):
            ip = msg.get_attr("IFA_ADDRESS")
            if ip:
                held[str(ipaddress.ip_address(ip.split("%")[0]))] = msg["prefixlen"]
        for ip, prefixlen in held.items():
            if ip not in wanted and not ip.startswith("fe80:"):
                ipr.addr("del", index=index, address=ip, prefixlen=prefixlen)
                log.info("dns address removed", interface=ifname, address=ip)
        for ip in sorted(wanted - set(held)):
            v6 = ":" in ip
            kwargs = {"family": socket.AF_INET6, "flags": _IFA_F_NODAD} if v6 else {}
            try:
                ipr.addr("add", index=index, address=ip, prefixlen=128 if v6 else 32, **kwargs)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
            log.info("dns address added", interface=ifname, address=ip)
        return index


def _create(ipr: IPRoute, ifname: str) -> str:
    for kind in _KINDS:
        try:
            ipr.link("add", ifname=ifname, kind=kind)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return "existing"
            if e.code == errno.EOPNOTSUPP and kind != _KINDS[-1]:
                continue  # a kernel built without this kind of device
            raise
        return kind
    raise AssertionError("unreachable")


def remove_dns_link(ifname: str = DNS_LINK) -> bool:
    """Delete the interface (and with it its addresses); False if there was none."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise
        log.info("dns interface removed", interface=ifname)
        return True


def dns_link_addresses(ifname: str = DNS_LINK) -> list[str] | None:
    """The addresses the interface holds (link-local ones left out), or None if it does not exist."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        out = []
        for msg in ipr.get_addr(index=found[0]):
            ip = msg.get_attr("IFA_ADDRESS")
            if ip and not ip.startswith("fe80:"):
                out.append(ip)
        return sorted(out)
