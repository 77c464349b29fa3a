"""What a running k3p command hands to its components and plugins."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from k3p.client import Client
    from k3p.config import Config
    from k3p.pki import ServerPKI
    from k3p.plugins import PluginManager
    from k3p.storage import Datastore
    from k3p.supervisor import Supervisor


@dataclass
class RunContext:
    """The resolved config, the plugins and the shared parts of one ``k3p server`` run.

    ``supervisor`` is set once the components are known; ``datastore`` is only for the API
    server: every other component talks to the cluster through the Kubernetes API.
    """

    config: Config
    plugins: PluginManager
    data_dir: Path
    pki: ServerPKI | None = None
    token: str = ""
    datastore: Datastore | None = None
    supervisor: Supervisor | None = None
    #: the API server's URL as components in this process reach it
    api_url: str = ""
    #: this node's name (agents, and servers that run an agent)
    node_name: str = ""
    #: an API client with this process's component credentials: ``new_client("k3p-scheduler")``
    new_client: Callable[[str], Client] | None = None
    #: an API client for one of this process's components, as user ``system:k3p:<component>``
    #: (``kube-proxy`` is ``system:kube-proxy``): ``component_client("coredns", "k3p-coredns")``.
    #: The user can do nothing until the plugin's manifests grant it RBAC rules.
    component_client: Callable[[str, str], Client] | None = None
    #: whether this node runs real workloads (False for simulated nodes and --disable-agent)
    runs_workloads: bool = False
    #: this node's InternalIP addresses
    node_ips: list[str] = field(default_factory=list)
    #: the cluster-wide settings every node gets from the server (``clusterCIDR``,
    #: ``serviceCIDR``, ``clusterDNS``, ``clusterDomain`` and what plugins add through
    #: ``k3p_cluster_settings``)
    cluster: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
