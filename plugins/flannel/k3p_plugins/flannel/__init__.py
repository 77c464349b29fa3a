"""The pod network: each node's pods reach every other node's pods, as flannel does it for K3s.

The server's node IPAM controller gives every Node a ``spec.podCIDR``. On each node that
runs workloads, the ``flannel-<node>`` component writes the CNI config for that range
(``<data-dir>/agent/etc/cni/net.d/10-flannel.conflist``), announces the node in flannel's
Node annotations and programs a path to every peer's range:

- ``vxlan`` (default): a ``flannel.1`` VXLAN device (VNI 1, UDP 8472); works over any
  routed underlay.
- ``host-gw``: plain routes via the peers' addresses; needs the nodes on one L2 network.
- ``none``: the plugin does nothing; bring your own CNI.

The backend is a cluster setting (``--flannel-backend`` on the server, handed to agents at
join); ``--flannel-iface`` picks the underlay interface per node.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from k3p.hookspecs import hookimpl
from k3p_plugins.flannel.annotations import BACKENDS, NONE, VXLAN

if TYPE_CHECKING:
    from k3p.checks import CheckReport
    from k3p.config import Config, OptionSchema
    from k3p.context import PluginContext
    from k3p.supervisor import Component

__all__ = ["backend_of", "component_name"]


@hookimpl
def k3p_add_options(schema: OptionSchema) -> None:
    """--flannel-backend (server: a cluster setting) and --flannel-iface, named as in K3s."""
    schema.add("flannel-backend", default=VXLAN, choices=BACKENDS, commands=("server",), metavar="BACKEND",
               help="Pod network backend for the whole cluster: vxlan, host-gw (nodes on one L2 network) or "
                    "none (bring your own CNI)")
    schema.add("flannel-iface", default="", metavar="IFACE",
               help="Interface that carries pod traffic between nodes (default: the one holding the node IP)")


@hookimpl
def k3p_cluster_settings(config: Config) -> dict[str, Any]:
    """The backend is the same on every node: the server's ``--flannel-backend`` as ``flannelBackend``."""
    return {"flannelBackend": config.get("flannel_backend") or VXLAN}


def backend_of(ctx: PluginContext) -> str:
    """The cluster's backend: what the server handed out, else this process's own setting."""
    return str((ctx.cluster or {}).get("flannelBackend") or ctx.config.get("flannel_backend") or VXLAN)


def component_name(node_name: str) -> str:
    """The name of the node's pod network component."""
    return f"flannel-{node_name}"


@hookimpl
def k3p_agent_components(ctx: PluginContext) -> list[Component]:
    """``flannel-<node>`` on every node that runs workloads, unless the backend is ``none``."""
    if not ctx.runs_workloads:
        return []
    backend = backend_of(ctx)
    if backend == NONE:
        return []
    from k3p.config import ConfigError
    from k3p.supervisor import TaskComponent
    from k3p_plugins.flannel.agent import FlannelAgent, FlannelSettings

    if backend not in BACKENDS:
        raise ConfigError(f"unsupported flannel backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    assert ctx.new_client is not None
    cluster = ctx.cluster or {}
    settings = FlannelSettings(
        node_name=ctx.node_name,
        agent_dir=Path(ctx.data_dir) / "agent",
        backend=backend,
        cluster_cidr=str(cluster.get("clusterCIDR") or ctx.config.get("cluster_cidr") or "10.42.0.0/16"),
        iface=str(ctx.config.get("flannel_iface") or ""),
        node_ips=list(ctx.node_ips or []),
    )
    return [TaskComponent(component_name(ctx.node_name), FlannelAgent(ctx.new_client, settings).run)]


@hookimpl
def k3p_check_config(config: Config, report: CheckReport, runs_node: bool) -> None:
    """The kernel's VXLAN support and the nft command, for nodes that run the pod network."""
    if not runs_node:
        return
    backend = config.get("flannel_backend") or VXLAN
    if backend == NONE:
        report.ok("flannel", "backend none: bring your own CNI")
        return
    if backend == VXLAN:
        if Path("/sys/module/vxlan").exists() or _module_file("vxlan"):
            report.ok("vxlan", "kernel VXLAN support present")
        else:
            report.warn("vxlan", "no VXLAN support found in the kernel: use --flannel-backend host-gw or none")
        from k3p_plugins.flannel.backends import VXLAN_DEVICE, VXLAN_PORT, has_link

        # An earlier run's flannel.1 holds the port itself and is adopted at start. Asked of
        # this network namespace: /sys may be another namespace's (nsenter --net keeps it).
        if not has_link(VXLAN_DEVICE):
            from k3p.checks import check_port

            check_port(report, VXLAN_PORT, "--flannel-backend host-gw", "flannel VXLAN", udp=True)
    nft = shutil.which("nft")
    if nft:
        report.ok("nft", nft)
    else:
        report.warn("nft", "not found on PATH: pod traffic leaving the cluster is not masqueraded "
                           "(e.g. apt-get install nftables)")


def _module_file(name: str) -> bool:
    import os

    folder = Path("/lib/modules") / os.uname().release
    return folder.is_dir() and any(folder.rglob(f"{name}.ko*"))
