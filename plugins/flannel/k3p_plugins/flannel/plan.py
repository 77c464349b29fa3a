"""The kernel entries that reach the peers, as plain values, and the difference between two sets.

Per vxlan peer (flannel's scheme, no L2/L3 miss handling needed): a permanent neighbour
(peer VTEP IP → VTEP MAC on flannel.1), an FDB entry (VTEP MAC → peer public IP) and an
onlink route (peer podCIDR via the peer VTEP IP, dev flannel.1). Per host-gw peer: a
route (peer podCIDR via the peer's public IP on the underlay interface). Keeping these as
values lets a full resync compare what the kernel holds with what the peers need.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from k3p_plugins.flannel.annotations import Peer


@dataclass(frozen=True, order=True)
class RouteEntry:
    """``dst via gateway dev <oif> [onlink]``."""

    dst: str
    gateway: str
    oif: int
    onlink: bool = False


@dataclass(frozen=True, order=True)
class NeighEntry:
    """A permanent neighbour (ARP) entry on the VXLAN device."""

    ip: str
    mac: str


@dataclass(frozen=True, order=True)
class FdbEntry:
    """A forwarding-database entry on the VXLAN device: frames for ``mac`` go to ``dst`` over UDP."""

    mac: str
    dst: str


@dataclass(frozen=True)
class DataPlane:
    """A set of routes, neighbours and FDB entries."""

    routes: frozenset[RouteEntry] = field(default_factory=frozenset)
    neighbours: frozenset[NeighEntry] = field(default_factory=frozenset)
    fdb: frozenset[FdbEntry] = field(default_factory=frozenset)

    def __or__(self, other: DataPlane) -> DataPlane:
        return DataPlane(self.routes | other.routes, self.neighbours | other.neighbours, self.fdb | other.fdb)

    def __sub__(self, other: DataPlane) -> DataPlane:
        return DataPlane(self.routes - other.routes, self.neighbours - other.neighbours, self.fdb - other.fdb)

    def __bool__(self) -> bool:
        return bool(self.routes or self.neighbours or self.fdb)

    def __len__(self) -> int:
        return len(self.routes) + len(self.neighbours) + len(self.fdb)


EMPTY = DataPlane()


@dataclass(frozen=True)
class Plan:
    """What to delete, then what to add. Deleting first lets an entry be replaced under the same key."""

    remove: DataPlane = EMPTY
    add: DataPlane = EMPTY

    def __bool__(self) -> bool:
        return bool(self.remove or self.add)


def diff(current: DataPlane, desired: DataPlane) -> Plan:
    """The plan that turns ``current`` into ``desired``."""
    return Plan(remove=current - desired, add=desired - current)


def vxlan_entries(peer: Peer, vxlan_index: int) -> DataPlane:
    """The three entries that send ``peer``'s pod subnet over the VXLAN device."""
    return DataPlane(
        routes=frozenset({RouteEntry(str(peer.subnet), peer.vtep_ip, vxlan_index, onlink=True)}),
        neighbours=frozenset({NeighEntry(peer.vtep_ip, peer.vtep_mac)}),
        fdb=frozenset({FdbEntry(peer.vtep_mac, peer.public_ip)}),
    )


def host_gw_entries(peer: Peer, underlay_index: int) -> DataPlane:
    """The route that sends ``peer``'s pod subnet straight to the peer over the underlay."""
    return DataPlane(routes=frozenset({RouteEntry(str(peer.subnet), peer.public_ip, underlay_index)}))


def union(planes: Iterable[DataPlane]) -> DataPlane:
    out = EMPTY
    for plane in planes:
        out = out | plane
    return out
