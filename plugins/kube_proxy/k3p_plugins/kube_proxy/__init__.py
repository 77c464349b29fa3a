"""The node's service proxy (kube-proxy's job) on nftables, as the ``kube-proxy`` plugin.

Services and EndpointSlices become one nftables table, ``ip k3p-proxy``: ClusterIPs,
NodePorts (on every local address but loopback), externalIPs and load-balancer IPs are
DNATed to ready endpoints picked at random, with ClientIP session affinity,
``externalTrafficPolicy``/``internalTrafficPolicy: Local``, masquerading of traffic from
outside the pod network and of hairpin traffic, and a reject for services without
endpoints. ``render_ruleset`` is the pure rule generation, ``proxy_component`` the
supervised task that keeps the table current, ``remove_proxy_rules`` the clean-up.

``--disable kube-proxy`` (or K3s's ``--disable-kube-proxy``) leaves the proxy out; a node
where it is disabled removes the table an earlier run left, so Services stop answering
through that node instead of going to stale endpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k3p.hookspecs import hookimpl

if TYPE_CHECKING:
    from k3p.context import PluginContext
    from k3p.supervisor import Component

__all__ = ["proxy_component", "remove_proxy_rules", "render_ruleset"]

#: the user the proxy acts as (upstream's ``system:kube-proxy``, bound by the bootstrap policy)
COMPONENT = "kube-proxy"


def __getattr__(name: str) -> object:
    # the rule renderer and the nft driver load only on nodes that run the proxy
    import importlib

    where = {"proxy_component": "controller", "remove_proxy_rules": "nft", "render_ruleset": "rules"}.get(name)
    if where is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}.{where}"), name)


@hookimpl
def k3p_agent_components(ctx: PluginContext) -> list[Component]:
    """``kube-proxy-<node>`` on every node that runs workloads: keeps ``ip k3p-proxy`` current."""
    if not ctx.runs_workloads:
        return []
    from k3p_plugins.kube_proxy.controller import proxy_component

    client_for = ctx.component_client
    return [proxy_component(lambda user_agent: client_for(COMPONENT, user_agent), ctx.node_name,
                            ctx.cluster.get("clusterCIDR") or "10.42.0.0/16", ctx.node_ips)]


@hookimpl
def k3p_node_cleanup(ctx: PluginContext) -> None:
    """Disabled on this node: remove the ``ip k3p-proxy`` table an earlier run left."""
    if not ctx.runs_workloads:
        return
    import structlog

    from k3p_plugins.kube_proxy.nft import remove_proxy_rules

    if remove_proxy_rules():
        structlog.get_logger(__name__).info("service proxy disabled: its rules were removed", node=ctx.node_name)
