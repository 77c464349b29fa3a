"""The node-local cluster DNS service: informers feed the records, servers answer from them.

Services and EndpointSlices come from informers (the whole cluster, one list + watch each)
and update a :class:`ClusterRecords` index as events arrive. The servers start once the
informers have synced, or after ``sync_timeout`` seconds if the API server is out of
reach, so a node that restarts without its server still forwards and answers what it
learns later. The resolv.conf is re-read when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from k3p.client import Client, InformerFactory
from k3p.client.resources import ENDPOINTSLICES, SERVICES
from k3p_plugins.coredns.forward import Forwarder, Upstream, read_resolv_conf
from k3p_plugins.coredns.records import DEFAULT_ZONE, ClusterRecords
from k3p_plugins.coredns.server import DNSServer, serve_dns

log = structlog.get_logger(__name__).bind(component="coredns")

DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
#: how often the resolv.conf is checked for changes (seconds)
RESOLV_CONF_CHECK = 5.0


def watch_cluster(client: Client, records: ClusterRecords) -> InformerFactory:
    """Informers on Services and EndpointSlices that keep ``records`` current (call ``start()`` on the result)."""
    factory = InformerFactory(client)
    factory.informer(SERVICES).add_listener(records.on_service)
    factory.informer(ENDPOINTSLICES).add_listener(records.on_endpoint_slice)
    return factory


def _mtime(path: str | Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


async def run_node_dns(client: Client, hosts: Sequence[str], port: int = 53, *, zone: str = DEFAULT_ZONE,
                       upstreams: Sequence[Upstream] | None = None,
                       resolv_conf: str | Path = DEFAULT_RESOLV_CONF,
                       ready: Callable[[], None] | None = None, sync_timeout: float = 5.0) -> None:
    """Serve the cluster's DNS on ``hosts`` (UDP and TCP ``port``) until cancelled.

    Upstream servers are ``upstreams`` when given, else the nameservers of ``resolv_conf``
    (followed as it changes). ``ready`` is called once every address is served.
    """
    records = ClusterRecords(zone, dns_ips=hosts)
    factory = watch_cluster(client, records)
    factory.start()
    servers: list[DNSServer] = []
    try:
        try:
            async with asyncio.timeout(sync_timeout):
                await factory.wait_synced()
        except TimeoutError:
            # usual at a first start (the API server or this plugin's RBAC is not there yet); the
            # informers say so themselves if it lasts
            log.debug("services not listed yet; serving what arrives later", timeout=sync_timeout)
        watched = upstreams is None
        mtime = _mtime(resolv_conf)
        forwarder = Forwarder(read_resolv_conf(resolv_conf) if watched else upstreams or (),
                              exclude=[(h, port) for h in hosts])
        for host in hosts:
            servers.append(await serve_dns(records, host, port, forwarder=forwarder))
        log.info("cluster dns ready", addresses=[f"{h}:{port}" for h in hosts], zone=records.zone,
                 upstreams=[f"{h}:{p}" for h, p in forwarder.upstreams])
        if ready is not None:
            ready()
        while True:
            await asyncio.sleep(RESOLV_CONF_CHECK)
            if watched and (now := _mtime(resolv_conf)) != mtime:
                mtime = now
                forwarder.set_upstreams(read_resolv_conf(resolv_conf))
                forwarder.clear_cache()
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                await server.close()
        await factory.stop()
