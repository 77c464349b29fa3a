"""The per-node pod network component: from the Node's podCIDR to a working overlay.

Run as ``flannel-<node>``, with the node's own API identity:

1. wait until the node IPAM controller has set ``spec.podCIDR`` on this node's Node;
2. set up the backend's device (vxlan: ``flannel.1``; host-gw: none);
3. write the CNI conflist for the podCIDR;
4. install the masquerade/forward nftables table and turn on IP forwarding;
5. announce the node in flannel's Node annotations (and again if someone changes them);
6. keep one set of kernel entries per peer Node, following Nodes as they come, change and go
   (a full resync at start and every few minutes removes what no Node needs any more).

``ready()`` is called once the conflist is written and the device is up. Cancelling the
component leaves the data plane in place: pods keep their network while k3p restarts.
Netlink calls block, so they run, in order, on one thread of their own.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from k3p.client import Client, InformerFactory, Obj
from k3p.client.resources import NODES
from k3p_plugins.flannel import masq
from k3p_plugins.flannel.annotations import (
    PREFIX,
    VXLAN,
    Peer,
    node_pod_cidr,
    peers_from_nodes,
    public_ip_override,
    stored_vtep_mac,
)
from k3p_plugins.flannel.backends import ApplyError, Backend, LocalNode, find_underlay, make_backend
from k3p_plugins.flannel.cni import write_conflist

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: the longest wait between retries of a failing update (an unreachable host-gw peer, say)
MAX_RETRY_SECONDS = 60.0


def _network_facts(node: Obj | None) -> tuple[Any, ...] | None:
    """The parts of a Node the pod network reads: its pod ranges and flannel's annotations."""
    if node is None:
        return None
    spec = node.get("spec") or {}
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    return (spec.get("podCIDR"), tuple(spec.get("podCIDRs") or ()),
            tuple(sorted((k, v) for k, v in annotations.items() if k.startswith(PREFIX))))


@dataclass
class FlannelSettings:
    """Everything one node's component needs besides an API client."""

    node_name: str
    agent_dir: Path
    backend: str = VXLAN
    cluster_cidr: str = "10.42.0.0/16"
    #: the underlay interface (--flannel-iface); default: the one holding the first node IP
    iface: str = ""
    node_ips: Sequence[str] = ()
    #: run the data plane in this network namespace instead of the host's (tests)
    netns: str | None = None
    #: what runs nft and sysctl elsewhere; defaults to ``ip netns exec <netns>`` with a netns
    command_prefix: Sequence[str] | None = None
    resync_seconds: float = 300.0
    retry_seconds: float = 5.0
    progress_seconds: float = 15.0

    @property
    def prefix(self) -> tuple[str, ...]:
        if self.command_prefix is not None:
            return tuple(self.command_prefix)
        return ("ip", "netns", "exec", self.netns) if self.netns else ()


class _NetlinkThread:
    """One worker thread for blocking pyroute2 calls, so they never run on the event loop or overlap."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _default_ipr_factory(netns: str | None) -> Callable[[], Any]:
    def make() -> Any:
        from pyroute2 import IPRoute

        return IPRoute(netns=netns) if netns else IPRoute()

    return make


class FlannelAgent:
    """The ``flannel-<node>`` component; ``run(ready)`` is its TaskComponent function.

    ``new_client(user_agent)`` returns an API client that may list/watch Nodes and patch this
    node's Node; ``ipr_factory()`` opens the IPRoute to program (default: the host's, or
    ``settings.netns``'s).
    """

    def __init__(self, new_client: Callable[[str], Client], settings: FlannelSettings,
                 ipr_factory: Callable[[], Any] | None = None) -> None:
        self.new_client = new_client
        self.settings = settings
        self.ipr_factory = ipr_factory or _default_ipr_factory(settings.netns)
        self.log = log.bind(node=settings.node_name, backend=settings.backend)
        #: the peers whose entries are in the kernel now, by node name
        self.programmed: dict[str, Peer] = {}
        self.backend: Backend | None = None
        self.pod_cidr = ""

    async def run(self, ready: Callable[[], None]) -> None:
        s = self.settings
        client = self.new_client(f"k3p-flannel/{s.node_name}")
        factory = InformerFactory(client)
        nodes = factory.informer(NODES)
        changed = asyncio.Event()

        def on_node(type_: str, obj: Obj, old: Obj | None) -> None:
            # Status heartbeats of every node would wake this loop all the time: only what
            # the pod network depends on counts.
            if type_ != "MODIFIED" or _network_facts(obj) != _network_facts(old):
                changed.set()

        nodes.add_listener(on_node)
        factory.start()
        worker = _NetlinkThread(f"flannel-{s.node_name}")
        ipr = None
        self.programmed = {}
        self.pod_cidr = ""
        try:
            await nodes.wait_synced()
            await self._wait_pod_cidr(nodes, changed)
            ipr = await worker.call(self.ipr_factory)
            underlay = await worker.call(find_underlay, ipr, s.iface, list(s.node_ips))
            self.log.info("pod network underlay", iface=underlay.name, ip=underlay.ip, mtu=underlay.mtu)
            self.backend = backend = make_backend(s.backend, ipr, underlay)
            await self._ensure_local(client, worker, backend, nodes.get(s.node_name) or {}, force=True)
            retry = False
            try:
                await self._sync_peers(worker, backend, nodes.items(), full=True)
            except ApplyError as e:  # one unreachable peer must not keep this node's pods off the network
                self.log.warning("some peers could not be programmed; retrying", error=str(e))
                retry = True
            ready()
            self.log.info("pod network ready", pod_cidr=self.pod_cidr, peers=sorted(self.programmed))
            await self._follow(client, worker, backend, nodes, changed, retry)
        finally:
            await factory.stop()
            await client.close()
            if ipr is not None:
                try:
                    await worker.call(ipr.close)
                except Exception as e:  # closing must not hide why we stopped
                    self.log.debug("closing netlink failed", error=str(e))
            worker.close()

    async def _wait_pod_cidr(self, nodes: Any, changed: asyncio.Event) -> None:
        s = self.settings
        started = time.monotonic()
        last_report = 0.0
        while True:
            changed.clear()
            if node_pod_cidr(nodes.get(s.node_name)) is not None:
                return
            waited = time.monotonic() - started
            if not last_report or waited - last_report >= s.progress_seconds:
                last_report = waited or 1e-9
                exists = nodes.get(s.node_name) is not None
                self.log.info("waiting for the node's podCIDR", node_exists=exists, waited=round(waited, 1))
            try:
                await asyncio.wait_for(changed.wait(), timeout=s.progress_seconds)
            except TimeoutError:
                pass

    async def _follow(self, client: Client, worker: _NetlinkThread, backend: Backend, nodes: Any,
                      changed: asyncio.Event, retry: bool = False) -> None:
        """Apply every change of the Nodes; a full resync now and then; retries after errors."""
        s = self.settings
        next_full = time.monotonic() + s.resync_seconds
        delay = s.retry_seconds
        while True:
            timeout = delay if retry else max(0.0, next_full - time.monotonic())
            try:
                await asyncio.wait_for(changed.wait(), timeout=timeout)
            except TimeoutError:
                pass
            changed.clear()
            full = retry or time.monotonic() >= next_full
            try:
                own = nodes.get(s.node_name)
                if own is not None:
                    await self._ensure_local(client, worker, backend, own, force=full)
                await self._sync_peers(worker, backend, nodes.items(), full=full)
                retry = False
                delay = s.retry_seconds
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log.warning("pod network update failed; retrying", error=str(e), retry_in=delay)
                if retry:
                    delay = min(delay * 2, MAX_RETRY_SECONDS)
                retry = True
            if full and not retry:
                next_full = time.monotonic() + s.resync_seconds

    async def _ensure_local(self, client: Client, worker: _NetlinkThread, backend: Backend, own: Obj,
                            force: bool) -> None:
        """This node's side: device, annotations, conflist, nftables (again when the podCIDR changed)."""
        s = self.settings
        subnet = node_pod_cidr(own)
        if subnet is None:
            return  # the Node was re-created and awaits a new podCIDR: keep the data plane as it is
        public_ip = public_ip_override(own) or backend.underlay.ip
        if force or str(subnet) != self.pod_cidr:
            if self.pod_cidr and str(subnet) != self.pod_cidr:
                self.log.info("node podCIDR changed", old=self.pod_cidr, new=str(subnet))
            await worker.call(backend.setup, LocalNode(subnet, public_ip, stored_vtep_mac(own)))
            if write_conflist(s.agent_dir, str(subnet), mtu=backend.mtu):
                self.log.info("CNI config written", pod_cidr=str(subnet), mtu=backend.mtu)
            await masq.apply_rules(s.cluster_cidr, str(subnet), s.prefix)
            await masq.enable_ip_forward(s.prefix)
            self.pod_cidr = str(subnet)
        wanted = backend.annotations(public_ip)
        have = (own.get("metadata") or {}).get("annotations") or {}
        if any(have.get(k) != v for k, v in wanted.items()):
            await client.patch(NODES, s.node_name, {"metadata": {"annotations": wanted}})
            self.log.info("node annotations written", public_ip=public_ip,
                          backend_data=wanted.get("flannel.alpha.coreos.com/backend-data"))

    async def _sync_peers(self, worker: _NetlinkThread, backend: Backend, nodes: Any, full: bool) -> None:
        s = self.settings
        own_subnet = node_pod_cidr({"spec": {"podCIDR": self.pod_cidr}}) if self.pod_cidr else None
        desired = peers_from_nodes(nodes, s.node_name, backend.name, own_subnet)
        if full:
            plan = await worker.call(backend.sync, list(desired.values()))
            if plan:
                self.log.info("pod network resynced", added=len(plan.add), removed=len(plan.remove))
            self.programmed = dict(desired)
            return
        for name in sorted(set(self.programmed) - set(desired)):
            peer = self.programmed[name]
            await worker.call(backend.remove_peer, peer)
            del self.programmed[name]
            self.log.info("peer removed", peer=name, subnet=str(peer.subnet))
        for name, peer in sorted(desired.items()):
            old = self.programmed.get(name)
            if old == peer:
                continue
            if old is None:
                await worker.call(backend.add_peer, peer)
                self.log.info("peer added", peer=name, subnet=str(peer.subnet), public_ip=peer.public_ip)
            else:
                await worker.call(backend.update_peer, old, peer)
                self.log.info("peer changed", peer=name, subnet=str(peer.subnet), public_ip=peer.public_ip)
            self.programmed[name] = peer
