"""The netlink side of the pod network: the VXLAN device, and the routes, neighbours and FDB entries per peer.

Each backend works on one pyroute2 ``IPRoute`` (the host's, or one opened in a network
namespace). pyroute2's synchronous calls block: callers on an event loop run them on a
thread. Routes this plugin adds carry the route protocol number ``ROUTE_PROTO``, so a
resync can tell them from everyone else's and remove the ones no peer needs any more.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_SELF, NUD_PERMANENT

from k3p_plugins.flannel.annotations import DEFAULT_VNI, HOST_GW, VXLAN, Peer, node_annotations
from k3p_plugins.flannel.cni import BRIDGE, backend_mtu
from k3p_plugins.flannel.plan import (
    DataPlane,
    FdbEntry,
    NeighEntry,
    Plan,
    RouteEntry,
    diff,
    host_gw_entries,
    union,
    vxlan_entries,
)

log = structlog.get_logger(__name__)

VXLAN_DEVICE = f"flannel.{DEFAULT_VNI}"
#: Linux's (and flannel's) VXLAN port; the IANA one, 4789, is not what K3s clusters use
VXLAN_PORT = 8472


def has_link(name: str) -> bool:
    """Whether this network namespace has a link ``name`` (asked of the kernel, not of /sys,
    which may show another namespace's links after ``nsenter --net``)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


#: the route protocol of this plugin's routes (unassigned in iproute2's rt_protos)
ROUTE_PROTO = 107
MAIN_TABLE = 254
RTNH_F_ONLINK = 4
#: deleting what is already gone is success
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)


class UnderlayError(Exception):
    """The interface that carries traffic between nodes cannot be found."""


class ApplyError(Exception):
    """Some entries could not be programmed; the others were. ``failures`` says which and why."""

    def __init__(self, failures: Sequence[str]) -> None:
        super().__init__("; ".join(failures))
        self.failures = list(failures)


@dataclass(frozen=True)
class Underlay:
    """The node's interface toward the other nodes."""

    name: str
    index: int
    ip: str
    mtu: int


@dataclass(frozen=True)
class LocalNode:
    """What this node brings: its pod subnet, the address peers reach it at, a VTEP MAC to keep."""

    subnet: ipaddress.IPv4Network
    public_ip: str
    #: the MAC this node announced before: a recreated VXLAN device takes it again
    vtep_mac: str = ""


def _ipv4_addresses(ipr: Any) -> list[tuple[int, str]]:
    return [(int(a["index"]), str(a.get("address"))) for a in ipr.addr("dump", family=socket.AF_INET)]


def find_underlay(ipr: Any, iface: str = "", node_ips: Sequence[str] = ()) -> Underlay:
    """The underlay: ``iface`` if given, else the interface holding the first of ``node_ips``
    that is on this host, else the default route's interface."""
    addresses = _ipv4_addresses(ipr)
    index = 0
    ip = ""
    if iface:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            raise UnderlayError(f"interface {iface!r} (--flannel-iface) does not exist")
        index = int(found[0])
        own = [a for i, a in addresses if i == index]
        ip = next((a for a in node_ips if a in own), own[0] if own else "")
        if not ip:
            raise UnderlayError(f"interface {iface!r} (--flannel-iface) has no IPv4 address")
    else:
        for candidate in node_ips:
            index = next((i for i, a in addresses if a == candidate), 0)
            if index:
                ip = candidate
                break
        if not index:
            for route in ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE):
                if route["dst_len"] == 0 and route.get("oif"):
                    index = int(route.get("oif"))
                    ip = next((a for i, a in addresses if i == index), "")
                    if ip:
                        break
        if not ip:
            raise UnderlayError(f"no interface holds the node IPs {list(node_ips)} and there is no default "
                                "route: set --flannel-iface")
    link = ipr.link("get", index=index)[0]
    return Underlay(name=str(link.get("ifname")), index=index, ip=ip, mtu=int(link.get("mtu") or 1500))


def _ignore_gone(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except NetlinkError as e:
        if e.code not in _GONE:
            raise


def delete_link(ipr: Any, name: str) -> bool:
    """Delete interface ``name`` if it exists; returns whether it did."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        return False
    _ignore_gone(ipr.link, "del", index=found[0])
    return True


def own_routes(ipr: Any) -> list[RouteEntry]:
    """The IPv4 routes of the main table that carry this plugin's protocol number."""
    out = []
    for route in ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE, proto=ROUTE_PROTO):
        dst = route.get("dst")
        gateway = route.get("gateway")
        if not dst or not gateway:
            continue
        out.append(RouteEntry(f"{dst}/{route['dst_len']}", str(gateway), int(route.get("oif") or 0),
                              bool(route["flags"] & RTNH_F_ONLINK)))
    return out


class Backend:
    """Programs the entries that reach the peers; subclasses say which entries and set up devices.

    ``add_peer``/``remove_peer``/``update_peer`` touch exactly one peer's entries; ``sync``
    compares the kernel with what all peers need and fixes the difference (stale entries of
    nodes deleted while the agent was down included). All of them are idempotent.
    """

    name = ""

    def __init__(self, ipr: Any, underlay: Underlay) -> None:
        self.ipr = ipr
        self.underlay = underlay

    @property
    def mtu(self) -> int:
        """The MTU pods get on this backend."""
        return backend_mtu(self.name, self.underlay.mtu)

    def setup(self, local: LocalNode) -> None:
        """Create or adopt this node's devices for ``local``."""

    def annotations(self, public_ip: str) -> dict[str, str]:
        """The annotations this node announces (after ``setup``)."""
        return node_annotations(self.name, public_ip)

    def entries(self, peer: Peer) -> DataPlane:
        raise NotImplementedError

    def current(self) -> DataPlane:
        """What the kernel holds now of the kind of entries this plugin programs."""
        return DataPlane(routes=frozenset(own_routes(self.ipr)))

    def desired(self, peers: Iterable[Peer]) -> DataPlane:
        return union(self.entries(p) for p in peers)

    def add_peer(self, peer: Peer) -> None:
        self.apply(Plan(add=self.entries(peer)))

    def remove_peer(self, peer: Peer) -> None:
        self.apply(Plan(remove=self.entries(peer)))

    def update_peer(self, old: Peer, new: Peer) -> None:
        self.apply(diff(self.entries(old), self.entries(new)))

    def sync(self, peers: Iterable[Peer]) -> Plan:
        """Make the kernel hold exactly the entries ``peers`` need; returns what was changed."""
        plan = diff(self.current(), self.desired(peers))
        self.apply(plan)
        return plan

    def apply(self, plan: Plan) -> None:
        """Delete, then add: routes last on add (they need the neighbour), first on delete.

        Every entry is tried; ApplyError lists the ones that failed.
        """
        failures: list[str] = []

        def attempt(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except NetlinkError as e:
                failures.append(f"{what}: {e}")

        for r in sorted(plan.remove.routes):
            attempt(f"delete route {r.dst}", self._del_route, r)
        for n in sorted(plan.remove.neighbours):
            attempt(f"delete neighbour {n.ip}", self._del_neigh, n)
        for f in sorted(plan.remove.fdb):
            attempt(f"delete fdb {f.mac}", self._del_fdb, f)
        for f in sorted(plan.add.fdb):
            attempt(f"add fdb {f.mac} -> {f.dst}", self._set_fdb, f)
        for n in sorted(plan.add.neighbours):
            attempt(f"add neighbour {n.ip}", self._set_neigh, n)
        for r in sorted(plan.add.routes):
            attempt(f"add route {r.dst} via {r.gateway}", self._set_route, r)
        if failures:
            raise ApplyError(failures)

    # --- kernel verbs -------------------------------------------------------------------

    def _set_route(self, r: RouteEntry) -> None:
        self.ipr.route("replace", dst=r.dst, gateway=r.gateway, oif=r.oif, table=MAIN_TABLE, proto=ROUTE_PROTO,
                       flags=RTNH_F_ONLINK if r.onlink else 0)

    def _del_route(self, r: RouteEntry) -> None:
        _ignore_gone(self.ipr.route, "del", dst=r.dst, gateway=r.gateway, oif=r.oif, table=MAIN_TABLE,
                     proto=ROUTE_PROTO)

    def _set_neigh(self, n: NeighEntry) -> None:
        raise NotImplementedError

    def _del_neigh(self, n: NeighEntry) -> None:
        raise NotImplementedError

    def _set_fdb(self, f: FdbEntry) -> None:
        raise NotImplementedError

    def _del_fdb(self, f: FdbEntry) -> None:
        raise NotImplementedError


class HostGwBackend(Backend):
    """Peers on the same L2 network: a plain route per peer subnet via the peer's address."""

    name = HOST_GW

    def setup(self, local: LocalNode) -> None:
        # A VXLAN device left from a vxlan run would keep answering for this node's subnet.
        if delete_link(self.ipr, VXLAN_DEVICE):
            log.info("removed the VXLAN device of an earlier backend", device=VXLAN_DEVICE)

    def entries(self, peer: Peer) -> DataPlane:
        return host_gw_entries(peer, self.underlay.index)


class VxlanBackend(Backend):
    """Peers anywhere the underlay routes to: pod traffic in VXLAN (VNI 1, UDP 8472) over ``flannel.1``."""

    name = VXLAN

    def __init__(self, ipr: Any, underlay: Underlay, vni: int = DEFAULT_VNI, port: int = VXLAN_PORT) -> None:
        super().__init__(ipr, underlay)
        self.vni = vni
        self.port = port
        self.device = f"flannel.{vni}"
        self.index = 0
        self.vtep_mac = ""

    def annotations(self, public_ip: str) -> dict[str, str]:
        return node_annotations(self.name, public_ip, self.vtep_mac, self.vni)

    def entries(self, peer: Peer) -> DataPlane:
        return vxlan_entries(peer, self._require_index())

    def setup(self, local: LocalNode) -> None:
        """Create (or adopt a compatible) ``flannel.1``: MTU, ``<subnet network address>/32``, up.

        The /32 keeps the kernel from adding a subnet route for it; the address only serves
        as the source of traffic from this host to pods on other nodes.
        """
        index = self._ensure_device(local.vtep_mac)
        ipr = self.ipr
        ipr.link("set", index=index, mtu=self.mtu)
        wanted = str(local.subnet.network_address)
        have = [a for i, a in _ipv4_addresses(ipr) if i == index]
        for address in have:
            if address != wanted:
                _ignore_gone(ipr.addr, "del", index=index, address=address, prefixlen=32)
        if wanted not in have:
            ipr.addr("add", index=index, address=wanted, prefixlen=32)
        ipr.link("set", index=index, state="up")
        link = ipr.link("get", index=index)[0]
        self.index = index
        self.vtep_mac = str(link.get("address")).lower()

    def current(self) -> DataPlane:
        index = self._lookup()
        if not index:
            return super().current()
        neighbours = frozenset(
            NeighEntry(str(n.get("dst")), str(n.get("lladdr")).lower())
            for n in self.ipr.neigh("dump", ifindex=index, family=socket.AF_INET)
            if n["ifindex"] == index and n["state"] & NUD_PERMANENT and n.get("dst") and n.get("lladdr"))
        fdb = frozenset(
            FdbEntry(str(f.get("lladdr")).lower(), str(f.get("dst")))
            for f in self.ipr.fdb("dump", ifindex=index)
            if f["ifindex"] == index and f.get("dst") and f.get("lladdr"))
        return DataPlane(routes=frozenset(own_routes(self.ipr)), neighbours=neighbours, fdb=fdb)

    def _lookup(self) -> int:
        found = self.ipr.link_lookup(ifname=self.device)
        return int(found[0]) if found else 0

    def _require_index(self) -> int:
        if not self.index:
            self.index = self._lookup()
        if not self.index:
            raise UnderlayError(f"{self.device} does not exist: call setup() first")
        return self.index

    def _compatible(self, index: int) -> str:
        """Why the existing device cannot be kept ("" if it can)."""
        link = self.ipr.link("get", index=index)[0]
        info = link.get("IFLA_LINKINFO")
        if info is None or info.get("IFLA_INFO_KIND") != "vxlan":
            return "not a vxlan device"
        data = info.get("IFLA_INFO_DATA")
        checks = {"vni": (data.get("IFLA_VXLAN_ID"), self.vni),
                  "local": (data.get("IFLA_VXLAN_LOCAL"), self.underlay.ip),
                  "link": (data.get("IFLA_VXLAN_LINK"), self.underlay.index),
                  "port": (data.get("IFLA_VXLAN_PORT"), self.port),
                  "learning": (data.get("IFLA_VXLAN_LEARNING"), 0)}
        return ", ".join(f"{k} {have} (wanted {want})" for k, (have, want) in checks.items() if have != want)

    def _ensure_device(self, mac: str) -> int:
        index = self._lookup()
        if index:
            why = self._compatible(index)
            if not why:
                return index
            log.warning("recreating the VXLAN device", device=self.device, reason=why)
            _ignore_gone(self.ipr.link, "del", index=index)
        spec: dict[str, Any] = {"ifname": self.device, "kind": "vxlan", "vxlan_id": self.vni,
                                "vxlan_port": self.port, "vxlan_local": self.underlay.ip,
                                "vxlan_link": self.underlay.index, "vxlan_learning": 0, "mtu": self.mtu}
        if mac:
            spec["address"] = mac
        self.ipr.link("add", **spec)
        log.info("VXLAN device created", device=self.device, vni=self.vni, local=self.underlay.ip,
                 underlay=self.underlay.name)
        return self._lookup()

    def _set_neigh(self, n: NeighEntry) -> None:
        self.ipr.neigh("replace", dst=n.ip, lladdr=n.mac, ifindex=self._require_index(), state=NUD_PERMANENT)

    def _del_neigh(self, n: NeighEntry) -> None:
        index = self._lookup()
        if index:
            _ignore_gone(self.ipr.neigh, "del", dst=n.ip, lladdr=n.mac, ifindex=index)

    def _set_fdb(self, f: FdbEntry) -> None:
        self.ipr.fdb("replace", ifindex=self._require_index(), lladdr=f.mac, dst=f.dst, state=NUD_PERMANENT,
                     flags=NTF_SELF)

    def _del_fdb(self, f: FdbEntry) -> None:
        index = self._lookup()
        if index:
            _ignore_gone(self.ipr.fdb, "del", ifindex=index, lladdr=f.mac, dst=f.dst)


BACKEND_CLASSES: dict[str, type[Backend]] = {VXLAN: VxlanBackend, HOST_GW: HostGwBackend}


def make_backend(name: str, ipr: Any, underlay: Underlay) -> Backend:
    """The backend called ``name`` (``vxlan`` or ``host-gw``)."""
    try:
        cls = BACKEND_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown flannel backend {name!r}: expected one of {', '.join(BACKEND_CLASSES)}") from None
    return cls(ipr, underlay)


def teardown_links(ipr: Any, bridge: str = BRIDGE) -> None:
    """Remove ``flannel.1`` (with its neighbours, FDB and routes), this plugin's routes and the pod bridge."""
    delete_link(ipr, VXLAN_DEVICE)
    for r in own_routes(ipr):
        _ignore_gone(ipr.route, "del", dst=r.dst, gateway=r.gateway, oif=r.oif, table=MAIN_TABLE, proto=ROUTE_PROTO)
    delete_link(ipr, bridge)


__all__ = [
    "ROUTE_PROTO",
    "VXLAN_DEVICE",
    "VXLAN_PORT",
    "ApplyError",
    "Backend",
    "HostGwBackend",
    "LocalNode",
    "Underlay",
    "UnderlayError",
    "VxlanBackend",
    "find_underlay",
    "make_backend",
    "teardown_links",
]
