"""The public plugin context: what k3p hands a plugin's ``k3p_server_components`` and
``k3p_agent_components`` hooks, and nothing more.

The server keeps its own state (PKI, datastore, supervisor, plugin manager) to itself: a
plugin reaches the cluster only through the API (``new_client`` / ``component_client``),
exactly as it would against any Kubernetes, which is what lets it run on a server, on an
agent, or against another cluster in its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from k3p.client import Client
    from k3p.config import Config


def _no_client(*_args: str) -> Client:
    raise RuntimeError("this context has no API client (it was made without a server)")


@dataclass
class PluginContext:
    """One run's settings and API access, as a plugin's components see them.

    In ``k3p_server_components`` the clients act for the control plane; in
    ``k3p_agent_components`` they act for the node (``system:node:<node_name>``), on the
    server's own node as on an agent's.
    """

    #: the resolved options of this command (``config.get("flannel_backend")``)
    config: Config
    #: the command's data dir (``/var/lib/rancher/k3p``); node state lives in ``data_dir / "agent"``
    data_dir: Path
    #: the API server's URL as this process reaches it
    api_url: str = ""
    #: the node's name (agent components; the server's own node)
    node_name: str = ""
    #: the node's InternalIP addresses
    node_ips: list[str] = field(default_factory=list)
    #: whether the node runs real containers (False for simulated nodes and ``--disable-agent``)
    runs_workloads: bool = False
    #: the cluster-wide settings every node gets from the server: ``clusterCIDR``,
    #: ``serviceCIDR``, ``clusterDNS``, ``clusterDomain``, ``disabledPlugins`` and what plugins
    #: add through ``k3p_cluster_settings``
    cluster: dict[str, Any] = field(default_factory=dict)
    #: PEM of the cluster CA (what ``kube-root-ca.crt`` publishes)
    ca_pem: str = ""
    #: ``new_client(user_agent)``: a client with this role's identity (server components:
    #: the control plane's; agent components: the node's)
    new_client: Callable[[str], Client] = _no_client
    #: ``component_client(component, user_agent)``: a client acting as ``system:k3p:<component>``
    #: (``kube-proxy``, ``scheduler`` and ``controller-manager`` as upstream's users). The user
    #: may do nothing until the plugin's manifests grant it RBAC rules.
    component_client: Callable[[str, str], Client] = _no_client
