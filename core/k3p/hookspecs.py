"""Every extension point of k3p, grouped by the phase in which k3p calls it.

A plugin is a module (or object) that defines some of these functions, each decorated
with ``k3p.hookimpl``, and is announced in the ``k3p.plugins`` entry-point group::

    # pyproject.toml of your distribution
    [project.entry-points."k3p.plugins"]
    hello = "k3p_hello"

    # k3p_hello.py
    from k3p import hookimpl

    @hookimpl
    def k3p_server_components(ctx):
        return [MyController(ctx)]

A plugin may declare the names of plugins it cannot work without in a module attribute
``K3P_REQUIRES = ("containerd",)``; disabling one of those while the plugin is enabled is a
startup error. A hook implementation may take any subset of the arguments of its spec, by
name. Implementing a function marked ``@hookimpl`` that is not listed here, or with an
argument the spec does not have, makes k3p reject the plugin at load with a message that
names the plugin and the hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from k3p.checks import CheckReport
    from k3p.config import Config, OptionSchema
    from k3p.context import PluginContext
    from k3p.protocols.datastore import Datastore
    from k3p.protocols.runtime import Runtime
    from k3p.supervisor import Component

#: the version of this hook API. It grows by one when a hook changes in a way that breaks
#: plugins written for the version before (new hooks and new optional arguments do not
#: change it); a plugin may check it at import: ``assert k3p.HOOK_API_VERSION >= 1``.
HOOK_API_VERSION = 1

hookspec = pluggy.HookspecMarker("k3p")
hookimpl = pluggy.HookimplMarker("k3p")


# --- Phase 1: configuration --------------------------------------------------------------


@hookspec
def k3p_add_options(schema: OptionSchema) -> None:
    """Add the plugin's own flags and config keys.

    Call ``schema.add(name, type=..., default=..., help=...)`` for each option. The option
    becomes ``--name`` on the command line, ``name:`` in config.yaml and
    ``K3P_NAME`` (upper case, dashes as underscores) in the environment, and shows up in
    ``k3p server --help`` under the plugin's name. Prefix names with your plugin's name
    (``--flannel-backend``) to stay clear of core and other plugins. Commands: pass
    ``commands=("server", "agent")`` to choose which commands accept it (default: both).
    """


@hookspec
def k3p_check_config(config: Config, report: CheckReport, runs_node: bool) -> None:
    """Preflight checks for ``k3p check-config`` and for server/agent start.

    Inspect the host (binaries, kernel features, ports, permissions) and record findings
    with ``report.ok(name, detail)``, ``report.warn(name, detail)`` or
    ``report.fail(name, detail)``. A failure stops ``k3p server`` before anything starts.
    ``runs_node`` is False when this command runs no node with real containers
    (``--disable-agent``, simulated nodes): check only what your components need in the
    run at hand, so a control-plane-only server starts on a machine without containerd.
    """


@hookspec
def k3p_commands() -> dict[str, Callable[[list[str], str], int]] | None:
    """Extra ``k3p`` commands the plugin provides, e.g. ``{"crictl": crictl_main}``.

    Each function gets the command's arguments and the data dir (``K3P_DATA_DIR`` or the
    default) and returns the exit code. Keep imports inside the function so ``k3p --help``
    stays fast. A name that another plugin or k3p itself uses is an error.
    """


@hookspec
def k3p_cluster_settings(config: Config) -> dict[str, Any] | None:
    """Cluster-wide settings the server hands to every node, as ``{"camelCaseKey": value}``.

    Called on the server; the merged result (beside k3p's own ``clusterCIDR``,
    ``serviceCIDR``, ``clusterDNS`` and ``clusterDomain``) reaches joining agents through
    the join endpoint and every node's components as ``ctx.cluster``. Use it for a setting
    that must be the same on all nodes, such as the pod network's backend, so agents do
    not need their own copy of the server's flags. Keys must not collide with k3p's.
    """


# --- Phase 2: storage --------------------------------------------------------------------


@hookspec(firstresult=True)
def k3p_datastore(endpoint: str, config: Config) -> Datastore | None:
    """Return a Datastore for ``endpoint`` if this plugin handles it, else None.

    ``endpoint`` is the value of ``--datastore-endpoint`` ("" when not set: the default
    store). The first plugin that returns an object wins, so only claim the URL schemes you
    serve (``sqlite://``, ``postgres://``, ``https://`` etcd ...). The object must follow
    ``k3p.protocols.datastore.Datastore``; k3p calls ``start()`` before use and ``close()`` on
    shutdown. Check it with the conformance suite in ``k3p.testing.datastore``.
    """


@hookspec(firstresult=True)
def k3p_runtime(config: Config) -> Runtime | None:
    """Return the container runtime this node uses (an object following ``k3p.protocols.runtime.Runtime``).

    The first plugin that returns one wins. The containerd plugin returns a runtime that
    supervises containerd and speaks CRI; the simulated runtime (hollow nodes) returns one
    that runs nothing. Return None to leave the choice to another plugin. k3p calls
    ``start()`` before the kubelet uses it and ``close()`` on shutdown; containers must
    survive ``close()``.
    """


# --- Phase 3: cluster objects ------------------------------------------------------------


@hookspec
def k3p_manifests(config: Config) -> list[dict[str, Any]] | None:
    """Kubernetes objects the plugin needs in the cluster (RBAC, IngressClass, StorageClass ...).

    Return a list of complete objects (``apiVersion``, ``kind``, ``metadata.name`` and, for
    namespaced kinds, ``metadata.namespace``). At every start the server's addon deployer
    applies them with server-side apply (field manager ``k3p-deploy``) and adds the label
    ``k3p.io/plugin: <plugin name>``. Objects the plugin no longer returns, and all of a
    plugin's objects once it is disabled (``--disable NAME``), are deleted at the next
    start, so a disabled plugin leaves nothing behind in the cluster.

    Any kind the API serves may be shipped, CustomResourceDefinitions included: the
    deployer applies CRDs first and waits until they are established, so custom
    resources of those kinds may follow in the same list.

    Components act as ``system:k3p:<component>`` (``ctx.component_client``), a user with no
    rights by default: return a ClusterRole and a ClusterRoleBinding for it here, and
    make the components that use it require ``k3p.components.ADDONS``.
    """


# --- Phase 4: components -----------------------------------------------------------------


@hookspec
def k3p_agent_components(ctx: PluginContext) -> list[Component] | None:
    """Long-running parts of every node (``k3p agent``, and ``k3p server`` unless --disable-agent).

    Same contract as ``k3p_server_components``; ``ctx.node_name`` is the node's name,
    ``ctx.new_client(user_agent)`` gives an API client with the node's credentials
    (``system:node:<name>``) and ``ctx.runs_workloads`` says whether the node runs real
    containers (False on simulated nodes: leave the host alone there). Node components
    may require ``k3p.components.runtime(node)``, ``.node(node)`` or ``.kubelet(node)``.

    When the server's list of disabled plugins changes, an agent stops the components of
    a plugin that became disabled (then calls its ``k3p_node_cleanup``) and starts those
    of one that became enabled, without a restart.
    """


@hookspec
def k3p_node_cleanup(ctx: PluginContext) -> None:
    """Remove what the plugin left on this host, because it is installed but disabled here.

    Called for every installed plugin that is disabled (``--disable NAME`` on the server,
    or an agent's own ``--disable-kube-proxy``), at the start of every node and when an
    agent learns that the server disabled the plugin. It is the only hook a disabled
    plugin gets: use it to delete host state an earlier run made (nftables tables,
    interfaces, listening sockets' files), so a disabled component leaves no trace. Keep
    it idempotent and quick; ``ctx`` is the node's context, as for ``k3p_agent_components``.
    """


@hookspec
def k3p_server_components(ctx: PluginContext) -> list[Component] | None:
    """Long-running parts that ``k3p server`` runs: controllers, proxies, scrapers.

    Return a list of ``k3p.supervisor.Component`` objects (``TaskComponent`` for asyncio
    work, ``ProcessComponent`` for a child process). The supervisor starts them in the
    order their ``requires`` give, restarts one that crashes (with back-off) and stops them
    in reverse order on shutdown. Names a component may require are in ``k3p.components``
    (``APISERVER``, ``ADDONS``). ``ctx`` is a ``k3p.context.PluginContext``: the resolved
    config, the data dir, the cluster CA and API clients (``ctx.new_client`` acts for the
    control plane, ``ctx.component_client`` as the plugin's own user). For a set of
    controllers, ``k3p.client.ControllerGroup`` is the whole component.
    """
