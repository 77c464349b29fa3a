"""The node's service proxy: keeps the nftables table in step with Services and EndpointSlices.

Changes are coalesced: a sync runs as soon as one is due but no more often than every
``min_interval`` (100 ms), so an EndpointSlice change reaches the data plane well within
a second while a burst of changes costs few ``nft`` runs. A sync that renders the same
text as the last one applied runs no ``nft`` at all. A failed ``nft`` is retried with
back-off. Cancelling the proxy leaves its rules in place: services keep working while
the agent restarts, and the next run takes over the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from k3p.client import Client, Informer, InformerFactory
from k3p.client.resources import ENDPOINTSLICES, SERVICES
from k3p.supervisor import Component, Ready, TaskComponent
from k3p_plugins.kube_proxy.nft import NftCommand, NftError, apply_ruleset, table_exists
from k3p_plugins.kube_proxy.rules import build_ruleset, parse_cluster_cidr

log = structlog.get_logger(__name__)

COMPONENT = "kube-proxy"
_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


async def enable_ip_forwarding(nft_command: NftCommand = ("nft",)) -> None:
    """Turn on ``net.ipv4.ip_forward`` where ``nft_command`` runs (DNATed traffic is forwarded).

    The words before ``nft`` in the command (e.g. ``ip netns exec NS``) also prefix
    ``sysctl``, so the setting lands in the same network namespace as the rules.
    """
    prefix = list(nft_command[:-1])
    if not prefix:
        if _IP_FORWARD.read_text().strip() != "1":
            _IP_FORWARD.write_text("1\n")
            log.info("enabled IPv4 forwarding", component=COMPONENT)
        return
    proc = await asyncio.create_subprocess_exec(
        *prefix, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"cannot enable IPv4 forwarding: {err.decode(errors='replace').strip()}")


class ServiceProxy:
    """Renders and applies the ruleset whenever the informers' objects change."""

    def __init__(self, services: Informer, slices: Informer, *, node_name: str, cluster_cidr: str,
                 node_ips: Callable[[], list[str]] | Sequence[str] = (), nft_command: NftCommand = ("nft",),
                 min_interval: float = 0.1, check_interval: float = 60.0, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0) -> None:
        self.services = services
        self.slices = slices
        self.node_name = node_name
        self.cluster_cidr = cluster_cidr
        self.node_ips = node_ips
        self.nft_command = tuple(nft_command)
        self.min_interval = min_interval
        self.check_interval = check_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.applied: str | None = None
        self._changed = asyncio.Event()
        self._last_sync = float("-inf")
        self._failures = 0
        services.add_listener(self._on_change)
        slices.add_listener(self._on_change)

    def _on_change(self, type_: str, obj: object, old: object) -> None:
        self._changed.set()

    def _node_ips(self) -> list[str]:
        return list(self.node_ips() if callable(self.node_ips) else self.node_ips)

    async def sync(self) -> bool:
        """Render the ruleset and apply it if it changed; True if nft ran."""
        started = time.monotonic()
        self._last_sync = started
        ruleset = build_ruleset(self.services.items(), self.slices.items(), node_name=self.node_name,
                                cluster_cidr=self.cluster_cidr)
        if ruleset.text == self.applied:
            return False
        await apply_ruleset(ruleset, self.nft_command)
        self.applied = ruleset.text
        log.info("proxy rules synced", component=COMPONENT, node=self.node_name, service_ports=ruleset.service_ports,
                 endpoints=ruleset.endpoints, chains=len(ruleset.chains), rules=ruleset.rules,
                 map_elements=ruleset.elements, affinity_sets=len(ruleset.sets),
                 elapsed_ms=round((time.monotonic() - started) * 1000, 1))
        return True

    async def _restore_if_gone(self) -> None:
        # Someone may have flushed the whole ruleset (a firewall reload): put the table back.
        if self.applied is not None and not await table_exists(self.nft_command):
            log.warning("proxy table vanished; restoring it", component=COMPONENT, node=self.node_name)
            self.applied = None

    async def run(self, ready: Ready) -> None:
        """Sync until cancelled; ``ready()`` after the first successful sync."""
        await asyncio.gather(self.services.wait_synced(), self.slices.wait_synced())
        try:
            await enable_ip_forwarding(self.nft_command)
        except OSError as e:  # e.g. a read-only /proc/sys: the host may have it on already
            log.warning("IPv4 forwarding not enabled", component=COMPONENT, node=self.node_name, error=str(e))
        log.info("service proxy starting", component=COMPONENT, node=self.node_name,
                 cluster_cidr=",".join(parse_cluster_cidr(self.cluster_cidr)), node_ips=self._node_ips(),
                 nodeports="every local address but loopback")
        is_ready = False
        checked = time.monotonic()
        while True:
            self._changed.clear()
            try:
                if time.monotonic() - checked >= self.check_interval:
                    checked = time.monotonic()
                    await self._restore_if_gone()
                await self.sync()
            except NftError as e:
                self._failures += 1
                retry_in = min(self.backoff_max, self.backoff_initial * 2 ** (self._failures - 1))
                log.error("proxy rules not applied; retrying", component=COMPONENT, node=self.node_name,
                          error=str(e).splitlines()[0], stderr=e.stderr[-2000:], retry_in=f"{retry_in:.1f}s",
                          failures=self._failures)
                await asyncio.sleep(retry_in)
                continue
            self._failures = 0
            if not is_ready:
                is_ready = True
                ready()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.check_interval)
            # Coalesce: a change soon after a sync waits for min_interval to pass, and
            # whatever else changes meanwhile goes into the same transaction.
            wait = self._last_sync + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)


def proxy_component(client_factory: Callable[[str], Client], node_name: str, cluster_cidr: str,
                    node_ips: Callable[[], list[str]] | list[str], *, nft_command: Sequence[str] = ("nft",),
                    name: str | None = None) -> Component:
    """The service proxy of ``node_name`` as a supervisor component (``kube-proxy-<node>``).

    ``client_factory(user_agent)`` gives an API client allowed to list and watch Services
    and EndpointSlices (``system:kube-proxy``); ``cluster_cidr`` is the pod network
    (traffic to services from outside it is masqueraded); ``node_ips`` (a list, or a
    function returning the current one) are this node's addresses, reported in the log:
    NodePorts answer on every local address but loopback. ``nft_command`` runs nft (and,
    with the words before ``nft``, sysctl), e.g. inside a network namespace.
    """

    async def run(ready: Ready) -> None:
        client = client_factory(f"k3p-proxy/{node_name}")
        factory = InformerFactory(client)
        proxy = ServiceProxy(factory.informer(SERVICES), factory.informer(ENDPOINTSLICES), node_name=node_name,
                             cluster_cidr=cluster_cidr, node_ips=node_ips, nft_command=nft_command)
        factory.start()
        try:
            await proxy.run(ready)
        finally:
            await factory.stop()
            await client.close()

    return TaskComponent(name or f"kube-proxy-{node_name}", run)
