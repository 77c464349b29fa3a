"""Ingress for k3p: a reverse proxy that serves the cluster's Ingresses on every node.

K3s ships Traefik as its ingress controller; this plugin plays that part under the same
name, so ``k3p server --disable traefik`` removes it as users of K3s expect. It installs
the IngressClass ``traefik`` (the default class, controller ``traefik.io/ingress-controller``)
and runs, on each node that runs workloads, a proxy listening on ``--traefik-http-port``
(80) and ``--traefik-https-port`` (443) that routes by the Ingress rules to the ready
endpoints of their Services, terminates TLS with the certificates of the Ingresses' TLS
Secrets, and reports the nodes' addresses in each Ingress's status.

The parts: :mod:`.routes` (the routing table, pure), :mod:`.proxy` (the asyncio proxy),
:mod:`.certs` (TLS and SNI), :mod:`.controller` (informers, table rebuilds, status) and
:mod:`.manifests` (IngressClass and RBAC).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from k3p.hookspecs import hookimpl
from k3p_plugins.traefik.manifests import manifests
from k3p_plugins.traefik.routes import Backend, RoutingTable, TlsCertificate, build_routing_table

if TYPE_CHECKING:
    from k3p.checks import CheckReport
    from k3p.config import Config, OptionSchema
    from k3p.context import PluginContext
    from k3p.supervisor import Component
    from k3p_plugins.traefik.controller import IngressController, ingress_component
    from k3p_plugins.traefik.proxy import IngressProxy

__all__ = [
    "Backend",
    "IngressController",
    "IngressProxy",
    "RoutingTable",
    "TlsCertificate",
    "build_routing_table",
    "ingress_component",
]

# aiohttp loads only when a node starts the proxy, not for every k3p command
_LAZY = {"IngressProxy": "proxy", "IngressController": "controller", "ingress_component": "controller"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


@hookimpl
def k3p_add_options(schema: OptionSchema) -> None:
    """--traefik-http-port, --traefik-https-port and --traefik-bind-address."""
    both = ("server", "agent")
    schema.add("traefik-http-port", type=int, default=80, commands=both, metavar="PORT",
               help="Port the ingress proxy serves HTTP on, on every node (0 turns HTTP off)")
    schema.add("traefik-https-port", type=int, default=443, commands=both, metavar="PORT",
               help="Port the ingress proxy serves HTTPS on, on every node (0 turns HTTPS off)")
    schema.add("traefik-bind-address", default="0.0.0.0", commands=both, metavar="ADDRESS",
               help="Address the ingress proxy listens on")


@hookimpl
def k3p_check_config(config: Config, report: CheckReport, runs_node: bool) -> None:
    """The proxy's HTTP and HTTPS ports, on nodes that run it."""
    if not runs_node:
        return
    from k3p.checks import check_port

    host = config.get("traefik_bind_address") or "0.0.0.0"
    check_port(report, config.get("traefik_http_port"), "--traefik-http-port", "ingress HTTP", host=host)
    check_port(report, config.get("traefik_https_port"), "--traefik-https-port", "ingress HTTPS", host=host)


@hookimpl
def k3p_manifests(config: Config) -> list[dict[str, Any]]:
    """IngressClass ``traefik`` (the default class) and the controller's ClusterRole and binding."""
    return manifests()


@hookimpl
def k3p_agent_components(ctx: PluginContext) -> list[Component]:
    """``traefik-<node>``: the proxy and its controller, on nodes that run workloads."""
    if not ctx.runs_workloads or ctx.component_client is None:
        return []
    from k3p_plugins.traefik.controller import ingress_component

    config = ctx.config
    component_client = ctx.component_client
    return [ingress_component(
        lambda: component_client("traefik", "k3p-traefik"),
        ctx.node_name,
        http_port=int(config.get("traefik_http_port", 80)) or None,
        https_port=int(config.get("traefik_https_port", 443)) or None,
        host=config.get("traefik_bind_address") or "0.0.0.0",
    )]
