"""Node IPAM: each node gets its own pod range (``spec.podCIDR``/``podCIDRs``) cut from the cluster CIDR."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import structlog

from k3p.client import ApiError, Obj
from k3p.client.objects import name_of
from k3p.client.resources import NODES
from k3p_plugins.controller_manager.base import BaseController

log = structlog.get_logger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class CIDRExhausted(Exception):
    pass


class CIDRSet:
    """Blocks of one prefix length inside a cluster range; hands out the next free one in rotation."""

    def __init__(self, cluster: str | Network, mask: int) -> None:
        self.cluster = ipaddress.ip_network(cluster, strict=False) if isinstance(cluster, str) else cluster
        if mask < self.cluster.prefixlen:
            raise ValueError(f"node mask /{mask} is larger than the cluster range {self.cluster}")
        if mask - self.cluster.prefixlen > 24:
            raise ValueError(f"too many /{mask} blocks in {self.cluster}")
        self.mask = mask
        self.size = 1 << (mask - self.cluster.prefixlen)
        self._used: set[int] = set()
        self._next = 0

    @property
    def family(self) -> int:
        return self.cluster.version

    def _index(self, block: Network) -> int | None:
        if block.version != self.cluster.version or block.prefixlen != self.mask or not block.subnet_of(self.cluster):
            return None
        offset = int(block.network_address) - int(self.cluster.network_address)
        return offset >> (self.cluster.max_prefixlen - self.mask)

    def _block(self, index: int) -> Network:
        base = int(self.cluster.network_address) + (index << (self.cluster.max_prefixlen - self.mask))
        return ipaddress.ip_network((base, self.mask))

    def occupy(self, cidr: str) -> bool:
        """Mark a block in use (a node already has it); False if it is not one of ours."""
        try:
            index = self._index(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            return False
        if index is None:
            return False
        self._used.add(index)
        return True

    def release(self, cidr: str) -> None:
        try:
            index = self._index(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            return
        if index is not None:
            self._used.discard(index)

    def allocate(self) -> str:
        for step in range(self.size):
            index = (self._next + step) % self.size
            if index not in self._used:
                self._used.add(index)
                self._next = (index + 1) % self.size
                return str(self._block(index))
        raise CIDRExhausted(f"no free /{self.mask} left in {self.cluster}")

    @property
    def used(self) -> int:
        return len(self._used)


def cidr_sets(cluster_cidr: str, mask_v4: int = 24, mask_v6: int = 64) -> list[CIDRSet]:
    """One :class:`CIDRSet` per range in a comma-separated ``--cluster-cidr`` (dual-stack: one per family)."""
    sets = []
    for part in (p.strip() for p in cluster_cidr.split(",")):
        if not part:
            continue
        net = ipaddress.ip_network(part, strict=False)
        sets.append(CIDRSet(net, mask_v4 if net.version == 4 else mask_v6))
    return sets


class NodeIpamController(BaseController):
    name = "nodeipam"
    component = "cidrAllocator"
    workers = 1  # one allocator, one writer: no two nodes can race for a block

    def setup(self) -> None:
        self.sets = cidr_sets(self.options.cluster_cidr, self.options.node_cidr_mask_size_ipv4,
                              self.options.node_cidr_mask_size_ipv6)
        self.assigned: dict[str, list[str]] = {}
        #: nodes told that no range is left: they wait, without retries, until one is freed
        self.waiting: set[str] = set()
        self.nodes = self.informers.informer(NODES)
        self.nodes.add_listener(self._on_node)

    def _occupy(self, node: str, cidrs: Iterable[str]) -> None:
        cidrs = list(cidrs)
        for cidr in cidrs:
            for s in self.sets:
                s.occupy(cidr)
        self.assigned[node] = cidrs

    def _on_node(self, type_: str, node: Obj, _old: Obj | None) -> None:
        name = name_of(node)
        if type_ == "DELETED":
            self.waiting.discard(name)
            freed = self.assigned.pop(name, [])
            for cidr in freed:
                for s in self.sets:
                    s.release(cidr)
            if freed:
                for waiting in sorted(self.waiting):
                    self.queue.add(waiting)
            return
        cidrs = (node.get("spec") or {}).get("podCIDRs") or (
            [node["spec"]["podCIDR"]] if (node.get("spec") or {}).get("podCIDR") else [])
        if cidrs:
            self.waiting.discard(name)
            self._occupy(name, cidrs)
        elif name not in self.waiting:  # a waiting node's status updates change nothing
            self.queue.add(name)

    async def reconcile(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None or (node.get("spec") or {}).get("podCIDRs") or (node.get("spec") or {}).get("podCIDR"):
            return
        if key in self.assigned:
            # The cache has not caught up with our own patch yet (a status update queued the
            # node again in between): a second range would be refused, and must not be handed out.
            return
        allocated: list[str] = []
        try:
            for s in self.sets:
                allocated.append(s.allocate())
        except CIDRExhausted as e:
            # One event and one warning per node, then it waits for a freed range: retrying
            # with back-off would only repeat them (thousands a minute with many nodes).
            self._release(allocated)
            if key not in self.waiting:
                self.waiting.add(key)
                self.record(node, "Normal", "CIDRNotAvailable", f"Node {key} status is now: CIDRNotAvailable")
                log.warning("no pod range left for node; it waits until a node with one is deleted",
                            node=key, error=str(e), waiting=len(self.waiting))
            return
        self.waiting.discard(key)
        try:
            await self.client.patch(NODES, key, {"spec": {"podCIDR": allocated[0], "podCIDRs": allocated}})
        except ApiError as e:
            self._release(allocated)
            if e.not_found:
                return
            raise
        self.assigned[key] = allocated
        log.info("pod range assigned", node=key, cidrs=",".join(allocated))

    def _release(self, cidrs: list[str]) -> None:
        for cidr in cidrs:
            for s in self.sets:
                s.release(cidr)
