"""``k3p agent``: join a server with its token and run one node (or N simulated nodes)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from k3p import pki as pki_mod
from k3p.__main__ import release_stop_signals
from k3p.agent.join import NodeCredentials, component_credentials, join, node_password
from k3p.client import Client
from k3p.config import Config, ConfigError
from k3p.context import PluginContext
from k3p.datadir_lock import hold_data_dir
from k3p.log import error_text
from k3p.plugins import PluginManager
from k3p.protocols.runtime import Runtime
from k3p.supervisor import Component, Supervisor, TaskComponent

log = structlog.get_logger(__name__)


def read_token(config: Config) -> str:
    if config.get("token"):
        return config.get("token")
    path = config.get("token_file")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read --token-file {path}: {e.strerror}") from None
    return ""


def client_factory(creds: NodeCredentials):
    def new_client(user_agent: str) -> Client:
        return Client(creds.server_url, ca_file=creds.ca_file, cert_file=creds.cert_file, key_file=creds.key_file,
                      user_agent=user_agent)

    return new_client


def node_names(config: Config) -> list[str]:
    base = (config.get("node_name") or socket.gethostname()).lower()
    count = config.get("simulate") or 0
    if count < 0:
        raise ConfigError("invalid value for simulate: must be 0 or more")
    return [base] if count == 0 else [f"{base}-{i}" for i in range(count)]


def runtime_for(config: Config, plugins: PluginManager) -> Runtime:
    runtime = plugins.hook.k3p_runtime(config=config)
    if runtime is None:
        what = "simulated nodes" if config.get("simulate") else "containers"
        raise ConfigError(f"no enabled plugin provides a container runtime for {what} "
                          f"(enabled: {', '.join(plugins.enabled()) or 'none'})")
    return runtime


def reserve_hollow_kubelet_port() -> socket.socket:
    """A loopback socket bound to a port of its own for one hollow node's kubelet.

    The socket stays bound until the kubelet serves on it: a port merely found free could
    be taken by another ``k3p agent --simulate`` process (or handed out again by the kernel)
    before the kubelet binds it, which ended the whole agent.
    """
    sock = socket.socket()
    # no SO_REUSEADDR: on Linux that would let another such socket bind the same port
    sock.bind(("127.0.0.1", 0))
    return sock


async def node_components(config: Config, plugins: PluginManager, name: str, creds: NodeCredentials,
                          folder: Path, *, simulated: bool) -> list[Component]:
    from k3p.agent.components import agent_components
    from k3p.agent.server import kubelet_server_component

    runtime = runtime_for(config, plugins)
    # Hollow nodes share this host: each gets its own kubelet port on loopback.
    bound = reserve_hollow_kubelet_port() if simulated else None
    host, port = ("127.0.0.1", bound.getsockname()[1]) if bound else ("0.0.0.0", config.get("kubelet_port"))
    overrides = {"kubelet_port": port, **({"node_ip": "127.0.0.1"} if simulated else {})}
    assert creds.serving_cert_file and creds.serving_key_file and creds.client_ca_file
    return [
        *agent_components(client_factory(creds), runtime, name, config, folder, cluster=creds.cluster,
                          node_overrides=overrides),
        kubelet_server_component(runtime, name, host=host, port=port, certfile=creds.serving_cert_file,
                                 keyfile=creds.serving_key_file, client_ca=creds.client_ca_file, bound=bound),
    ]


async def run_agent(config: Config, plugins: PluginManager) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    release_stop_signals()
    server = config.get("server")
    if not server:
        raise ConfigError("k3p agent needs --server URL (or K3P_URL)")
    token = read_token(config)
    lock = hold_data_dir(config.data_path, "agent")  # noqa: F841 - held until the process exits
    data_dir = config.data_path / "agent"
    names = node_names(config)
    components: list[Component] = []
    first: NodeCredentials | None = None
    simulated = bool(config.get("simulate"))
    addresses = [config.get("node_ip")] if config.get("node_ip") else pki_mod.host_addresses()
    for i, name in enumerate(names):
        creds = await join(server, token, name, data_dir / "credentials", ["127.0.0.1", *addresses],
                           password=node_password(data_dir, name))
        first = first or creds
        folder = data_dir / "simulated" / name if simulated else data_dir
        components += await node_components(config, plugins, name, creds, folder, simulated=simulated)
        if len(names) > 1 and (i + 1) % 10 == 0:
            log.info("joining simulated nodes", joined=i + 1, total=len(names))
    assert first is not None
    creds_dir = data_dir / "credentials"
    from k3p.agent.node import node_ip

    def component_client(component: str, user_agent: str) -> Client:
        cert, key = component_credentials(first, component, creds_dir)
        return Client(first.server_url, ca_file=first.ca_file, cert_file=cert, key_file=key, user_agent=user_agent)

    ctx = PluginContext(config=config, data_dir=config.data_path, api_url=first.server_url, node_name=names[0],
                        new_client=client_factory(first), component_client=component_client,
                        runs_workloads=not simulated, node_ips=[node_ip(config)], cluster=dict(first.cluster),
                        ca_pem=first.ca_file.read_text())
    node_plugins = NodePlugins(plugins, ctx)
    follower = TaskComponent("plugins-follower", lambda ready: node_plugins.follow(first, supervisor, ready))
    supervisor = Supervisor([*components, *node_plugins.start(ctx.cluster.get("disabledPlugins") or ()), follower])
    log.info("k3p agent starting", server=server, nodes=len(names))

    async def announce_ready() -> None:
        await supervisor.wait_all_ready()
        log.info("k3p is ready", server=server, node=names[0] if len(names) == 1 else f"{len(names)} simulated")

    announce = asyncio.create_task(announce_ready())
    try:
        await supervisor.run(stop)
    finally:
        announce.cancel()
    return 0


class NodePlugins:
    """The plugins' node components on an agent, following the server's list of disabled plugins.

    A plugin the server disables stops here too (and cleans up after itself through
    ``k3p_node_cleanup``); one it enables again starts, both without restarting the agent.
    """

    def __init__(self, plugins: PluginManager, ctx: PluginContext, interval: float = 10.0) -> None:
        self.plugins = plugins
        self.ctx = ctx
        self.interval = interval
        self.running: dict[str, list[Component]] = {}
        self.off: set[str] = set()

    def _components_of(self, plugin: str) -> list[Component]:
        return list(self.plugins.call_one(plugin, "k3p_agent_components", ctx=self.ctx) or ())

    def start(self, server_disabled: Iterable[str]) -> list[Component]:
        """The components to run at start; cleans up after every plugin that is off on this node."""
        self.off = set(server_disabled)
        local_off = set(self.plugins.disabled_plugins)
        self.plugins.cleanup_disabled(sorted(local_off | (self.off & set(self.plugins.plugins))), ctx=self.ctx)
        found: list[Component] = []
        for plugin in self.plugins.plugins:
            if plugin in self.off:
                log.info("plugin disabled on the server: not run on this node", plugin=plugin)
                continue
            self.running[plugin] = self._components_of(plugin)
            found += self.running[plugin]
        return found

    async def apply(self, supervisor: Supervisor, server_disabled: Iterable[str]) -> None:
        """Start and stop plugins so that exactly those the server has not disabled run."""
        wanted_off = set(server_disabled)
        for plugin in sorted((wanted_off - self.off) & set(self.running)):
            comps = self.running.pop(plugin)
            await supervisor.remove([c.name for c in comps])
            self.plugins.cleanup_disabled([plugin], ctx=self.ctx)
            log.info("plugin disabled on the server: stopped on this node", plugin=plugin)
        for plugin in sorted(self.off - wanted_off):
            if plugin not in self.plugins.plugins or plugin in self.running:
                continue
            self.running[plugin] = comps = self._components_of(plugin)
            supervisor.add(comps)
            log.info("plugin enabled on the server: started on this node", plugin=plugin)
        self.off = wanted_off

    async def follow(self, creds: NodeCredentials, supervisor: Supervisor, ready: Callable[[], None]) -> None:
        import httpx

        from k3p.agent.join import fetch_cluster_settings

        ready()
        while True:
            await asyncio.sleep(self.interval)
            try:
                settings = await fetch_cluster_settings(creds)
            except (httpx.HTTPError, ValueError) as e:
                log.debug("cannot read the cluster settings; trying again", error=error_text(e))
                continue
            await self.apply(supervisor, settings.get("disabledPlugins") or ())
