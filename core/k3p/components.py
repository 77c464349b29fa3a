"""The names of the core's components, the ones a plugin's component may list in ``requires``.

A component named here starts before any component that requires it and is ready once
what its docstring says holds. Node components carry the node's name, so many nodes can
share one supervisor (``k3p agent --simulate N``).
"""

from __future__ import annotations

#: the datastore is open (server only)
DATASTORE = "datastore"
#: the API server answers on its port (server only)
APISERVER = "apiserver"
#: every enabled plugin's ``k3p_manifests`` objects are applied (server only): require it
#: before acting as a ``component_client`` user whose RBAC those manifests grant
ADDONS = "addons"


def runtime(node_name: str) -> str:
    """The node's container runtime: started and answering."""
    return f"runtime-{node_name}"


def node(node_name: str) -> str:
    """The node's registration and Lease: its Node object exists."""
    return f"node-{node_name}"


def kubelet(node_name: str) -> str:
    """The node's kubelet: its pod workers run."""
    return f"kubelet-{node_name}"
