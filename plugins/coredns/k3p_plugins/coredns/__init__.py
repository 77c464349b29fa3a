"""Cluster DNS for k3p: every node answers ``*.svc.<cluster domain>`` itself.

In the spirit of NodeLocal DNSCache, each real node puts the cluster DNS address
(``clusterDNS``, 10.43.0.10 by default) on its own interface ``k3p-dns`` and serves DNS
there on UDP and TCP port 53. Pods reach it through their default route to the node, so
no Service proxy and no DNS pod are involved. Names follow the Kubernetes DNS
specification as CoreDNS's kubernetes plugin answers them, from informers on Services and
EndpointSlices; other names go to the nameservers of the node's resolv.conf
(``--resolv-conf``). ``--disable coredns`` turns it off, as in K3s.

Modules: ``records`` (the name index), ``server`` (UDP/TCP), ``forward`` (upstreams and
cache), ``link`` (the interface), ``node`` (informers + servers as one service).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from k3p.hookspecs import hookimpl
from k3p_plugins.coredns.forward import Forwarder, parse_resolv_conf, read_resolv_conf
from k3p_plugins.coredns.records import Answer, ClusterRecords
from k3p_plugins.coredns.server import DNSServer, serve_dns

if TYPE_CHECKING:
    from k3p.checks import CheckReport
    from k3p.config import Config
    from k3p.context import PluginContext
    from k3p.supervisor import Component, Ready

__all__ = [
    "Answer",
    "ClusterRecords",
    "DNSServer",
    "Forwarder",
    "manifests",
    "parse_resolv_conf",
    "read_resolv_conf",
    "serve_dns",
]

#: the component's user (``ctx.component_client("coredns", ...)``) and its ClusterRole
USER = "system:k3p:coredns"
DEFAULT_CLUSTER_DNS = "10.43.0.10"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"


def manifests() -> list[dict[str, Any]]:
    """The RBAC the DNS component needs: read Services, Endpoints(lices), Namespaces and Pods."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": USER},
        "rules": [
            {"apiGroups": [""], "resources": ["services", "endpoints", "namespaces", "pods"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": USER},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    }
    return [role, binding]


@hookimpl
def k3p_manifests(config: Config) -> list[dict[str, Any]]:
    """ClusterRole and ClusterRoleBinding ``system:k3p:coredns``."""
    return manifests()


def _cluster_dns_ips(ctx: PluginContext) -> list[str]:
    value = (ctx.cluster or {}).get("clusterDNS") or ctx.config.get("cluster_dns") or DEFAULT_CLUSTER_DNS
    return [ip.strip() for ip in str(value).split(",") if ip.strip()]


@hookimpl
def k3p_agent_components(ctx: PluginContext) -> list[Component]:
    """``coredns-<node>``: the interface with the cluster DNS address and the server on it (real nodes only)."""
    if not ctx.runs_workloads:
        return []
    from k3p.supervisor import TaskComponent

    addresses = _cluster_dns_ips(ctx)
    zone = (ctx.cluster or {}).get("clusterDomain") or ctx.config.get("cluster_domain") or DEFAULT_CLUSTER_DOMAIN
    resolv_conf = ctx.config.get("resolv_conf") or DEFAULT_RESOLV_CONF

    async def run(ready: Ready) -> None:
        import asyncio

        from k3p_plugins.coredns.link import ensure_dns_link
        from k3p_plugins.coredns.node import run_node_dns

        # pyroute2's synchronous API runs its own event loop: keep it off this one.
        await asyncio.to_thread(ensure_dns_link, addresses)
        if ctx.component_client is None:
            raise RuntimeError("no API client for the cluster DNS component")
        client = ctx.component_client("coredns", "k3p-coredns")
        try:
            # The interface is kept on the way out: pods keep resolving across a restart.
            await run_node_dns(client, addresses, 53, zone=str(zone), resolv_conf=resolv_conf, ready=ready)
        finally:
            await client.close()

    return [TaskComponent(f"coredns-{ctx.node_name}", run)]


@hookimpl
def k3p_check_config(config: Config, report: CheckReport, runs_node: bool) -> None:
    """Upstream nameservers for forwarded names; root for the interface and port 53 (nodes only)."""
    if not runs_node:
        return
    path = config.get("resolv_conf") or DEFAULT_RESOLV_CONF
    servers = read_resolv_conf(path)
    if servers:
        report.ok("dns-upstreams", f"{path}: {', '.join(host for host, _ in servers)}")
    else:
        report.warn("dns-upstreams", f"no nameserver in {path}: pods will resolve cluster names only "
                                     "(set --resolv-conf)")
    if os.geteuid() != 0:
        report.warn("cluster-dns", "not root: the node cannot add the cluster DNS address nor serve port 53")
