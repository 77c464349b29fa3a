"""``k3p server``: PKI, datastore, API server and every plugin's components under one supervisor."""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI

from k3p import components as names
from k3p import pki as pki_mod
from k3p.__main__ import release_stop_signals
from k3p.addons import ManifestError, addon_component, object_ref
from k3p.apiserver.app import APIServer
from k3p.apiserver.auth import Authenticator, CertHttpToolsProtocol
from k3p.apiserver.connections import ConnectionLimits, raise_open_files_limit
from k3p.apiserver.health import health_router
from k3p.apiserver.inflight import MaxInFlight
from k3p.apiserver.listener import serve_https
from k3p.apiserver.node_proxy import KubeletProxy
from k3p.apiserver.service_account_tokens import ServiceAccountTokens
from k3p.apiserver.supervisor_api import NodeIdentities, component_user, supervisor_router
from k3p.checks import CheckReport, HostCheckFailed, core_checks
from k3p.client import Client
from k3p.config import Config, ConfigError, default_data_dir
from k3p.context import PluginContext
from k3p.datadir_lock import hold_data_dir
from k3p.plugins import PluginManager
from k3p.protocols.datastore import Datastore
from k3p.supervisor import Component, Ready, Supervisor, TaskComponent

log = structlog.get_logger(__name__)


def runs_node(config: Config) -> bool:
    """Whether this command runs a node (servers unless --disable-agent; agents unless simulated)."""
    return not (config.get("disable_agent") or config.get("simulate"))


def preflight(config: Config, plugins: PluginManager) -> CheckReport:
    report = CheckReport()
    core_checks(config, report)
    plugins.hook.k3p_check_config(config=config, report=report, runs_node=runs_node(config))
    return report


def select_datastore(config: Config, plugins: PluginManager) -> Datastore:
    endpoint = config.get("datastore_endpoint") or ""
    store = plugins.hook.k3p_datastore(endpoint=endpoint, config=config)
    if store is None:
        shown = endpoint or "(default)"
        raise ConfigError(
            f"no enabled plugin serves datastore endpoint {shown} (enabled: {', '.join(plugins.enabled())})"
        )
    return store


def _kubeconfig_mode(config: Config) -> int:
    raw = config.get("write_kubeconfig_mode") or "0600"
    try:
        mode = int(raw, 8)
    except ValueError:
        raise ConfigError(f"invalid value for write-kubeconfig-mode: {raw!r} is not an octal mode") from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"invalid value for write-kubeconfig-mode: {raw!r} is not a file mode")
    return mode


def node_addresses(config: Config) -> list[str]:
    """The addresses the serving certificate must name besides loopback."""
    bind = config.get("bind_address") or ""
    found = [a for a in (config.get("advertise_address"), bind) if a and a not in ("0.0.0.0", "::", "127.0.0.1")]
    try:
        found += pki_mod.host_addresses()
    except OSError as e:  # no netlink in some sandboxes: the loopback name still works
        log.warning("cannot list host addresses for the serving certificate", error=str(e))
    return found


@dataclass
class ServerState:
    """What one ``k3p server`` run holds for itself; plugins get a ``PluginContext`` instead."""

    config: Config
    plugins: PluginManager
    pki: pki_mod.ServerPKI
    token: str
    #: the API server's URL as this process's components reach it
    api_url: str
    node_name: str = ""
    host_addresses: list[str] = field(default_factory=list)
    cluster: dict[str, Any] = field(default_factory=dict)
    supervisor: Supervisor | None = None

    @property
    def data_dir(self) -> Path:
        return self.config.data_path

    def client(self, cert: Path, key: Path, user_agent: str) -> Client:
        return Client(self.api_url, ca_file=self.pki.server_ca.cert_path, cert_file=cert, key_file=key,
                      user_agent=user_agent)

    @functools.cached_property
    def _control_plane_cert(self) -> tuple[Path, Path]:
        return pki_mod.ensure_client_cert(self.pki, "k3p-controller", "system:k3p-controller", ["system:masters"])

    def control_plane_client(self, user_agent: str) -> Client:
        """The core's own identity (addon deployer, supervisor endpoints): ``system:masters``."""
        return self.client(*self._control_plane_cert, user_agent)

    def component_client(self, component: str, user_agent: str) -> Client:
        cert, key = pki_mod.ensure_client_cert(self.pki, f"component-{component}", component_user(component))
        return self.client(cert, key, user_agent)

    def plugin_context(self, **node: Any) -> PluginContext:
        """The context of server components, or (with ``node`` fields) of the server's own node."""
        fields: dict[str, Any] = {"node_ips": self.host_addresses, "new_client": self.control_plane_client, **node}
        return PluginContext(config=self.config, data_dir=self.data_dir, api_url=self.api_url,
                             cluster=self.cluster, ca_pem=self.pki.server_ca.cert_path.read_text(),
                             component_client=self.component_client, **fields)


def kubeconfig_path(config: Config) -> Path:
    """Where the admin kubeconfig goes: ``--write-kubeconfig`` when given; else the default path
    for the default data dir and ``<data-dir>/kubeconfig-k3p.yaml`` for any other, so a second
    server beside the main one never overwrites the main one's kubeconfig. Without root the
    default is ``~/.kube/k3p.yaml`` (K3s: ``~/.kube/k3s.yaml``)."""
    if config.source("write_kubeconfig") != "default":
        return Path(config.get("write_kubeconfig"))
    if config.data_path.resolve() != Path(default_data_dir()).resolve():
        return config.data_path / "kubeconfig-k3p.yaml"
    if os.geteuid() != 0:
        return user_kubeconfig()
    return Path(config.get("write_kubeconfig"))


def user_kubeconfig() -> Path:
    """The admin kubeconfig of a server run without root."""
    return Path.home() / ".kube" / "k3p.yaml"


def local_api_url(config: Config) -> str:
    """Where this process reaches its own API server: the bind address unless it is a wildcard."""
    bind = config.get("bind_address") or "0.0.0.0"
    host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{config.get('https_listen_port')}"


def prepare(config: Config, plugins: PluginManager, node_ips: list[str]) -> ServerState:
    """Everything that must hold before components start: checks, PKI, token, kubeconfig."""
    mode = _kubeconfig_mode(config)
    report = preflight(config, plugins)
    if report.failed:
        first = report.failed[0]
        raise HostCheckFailed(f"preflight check {first.name} failed: {first.detail}")
    data_dir = config.data_path
    (data_dir / "server").mkdir(parents=True, exist_ok=True)
    pki = pki_mod.ensure_server_pki(
        data_dir,
        tls_sans=config.get("tls_san"),
        node_ips=node_ips,
        hostname=config.get("node_name") or socket.gethostname(),
    )
    try:
        token = pki_mod.ensure_token(data_dir, pki, config.get("token"))
    except ValueError as e:
        raise ConfigError(f"invalid --token: {e}") from None
    url = local_api_url(config)
    kubeconfig = kubeconfig_path(config)
    # K3s keeps a copy in the data dir too, for tools that run beside the server.
    for path, path_mode in ((kubeconfig, mode), (data_dir / "server" / "cred" / "admin.kubeconfig", 0o600)):
        _write_kubeconfig(pki, path, url, path_mode)
    return ServerState(config=config, plugins=plugins, pki=pki, token=token, api_url=url)


def _write_kubeconfig(pki: pki_mod.ServerPKI, path: Path, url: str, mode: int) -> None:
    """Write a kubeconfig if it changed; on a full disk warn and go on (the server can still
    start and serve, which is how space gets freed through the API)."""
    try:
        if pki_mod.write_admin_kubeconfig(pki, path, url, mode):
            log.info("kubeconfig written", path=str(path))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        log.warning("cannot write the kubeconfig: no space left on its disk", path=str(path),
                    kept="the earlier file" if path.exists() else "none")


def datastore_component(store: Datastore) -> Component:
    async def run(ready: Ready) -> None:
        await store.start()
        try:
            ready()
            await asyncio.Event().wait()
        finally:
            await store.close()

    # A datastore that cannot start (corrupt file, unreachable database) stops k3p with
    # the reason rather than retrying forever behind a server that looks alive.
    return TaskComponent(names.DATASTORE, run, restart=False)


def apiserver_component(ctx: ServerState, store: Datastore) -> Component:
    pki = ctx.pki

    def readiness() -> dict[str, bool]:
        return ctx.supervisor.status() if ctx.supervisor else {}

    async def run(ready: Ready) -> None:
        authn = Authenticator(ServiceAccountTokens(pki.service_account_key,
                                                   ctx.config.get("service_account_issuer"),
                                                   ctx.config.get("api_audiences")))
        kubelet_cert, kubelet_key = pki_mod.ensure_client_cert(pki, "kube-apiserver", "system:kube-apiserver",
                                                               ["system:masters"])
        kubelets = KubeletProxy(pki.server_ca.cert_path, kubelet_cert, kubelet_key)
        api = APIServer(store, authn, kubelets=kubelets, service_cidr=ctx.config.get("service_cidr"),
                        node_port_range=ctx.config.get("service_node_port_range"),
                        watch_cache_size=ctx.config.get("watch_cache_size"))
        await api.start()
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        app.include_router(health_router(readiness, pki.server_ca.cert_path))
        own_node = "" if ctx.config.get("disable_agent") else ctx.node_name
        identities = NodeIdentities(ctx.control_plane_client, own_node)
        app.include_router(supervisor_router(pki, ctx.token, lambda: ctx.cluster, identities))
        api.mount(app)
        limits = ConnectionLimits.from_config(ctx.config).within_open_files(raise_open_files_limit())
        try:
            await serve_https(
                MaxInFlight.from_config(app, ctx.config),
                host=ctx.config.get("bind_address"),
                port=ctx.config.get("https_listen_port"),
                certfile=pki.serving_cert,
                keyfile=pki.serving_key,
                client_ca=pki.client_ca.cert_path,
                ready=ready,
                http=CertHttpToolsProtocol,
                limits=limits,
            )
        finally:
            await api.close()

    return TaskComponent(names.APISERVER, run, requires=[names.DATASTORE])


def cluster_settings(config: Config, plugins: PluginManager) -> dict[str, Any]:
    """What every node learns from the server (K3s hands these to agents the same way)."""
    found: dict[str, Any] = {
        "clusterCIDR": config.get("cluster_cidr"),
        "serviceCIDR": config.get("service_cidr"),
        "clusterDNS": config.get("cluster_dns"),
        "clusterDomain": config.get("cluster_domain"),
        # agents leave out the node components of plugins the server runs without
        "disabledPlugins": sorted(set(plugins.infos) - set(plugins.enabled())),
    }
    own = set(found)
    for plugin, extra in plugins.call_each("k3p_cluster_settings", config=config):
        clash = sorted(set(extra or {}) & own)
        if clash:
            raise ConfigError(f"plugin {plugin} redefines the cluster setting {clash[0]}")
        found.update(extra or {})
    return found


def node_components(ctx: ServerState) -> list[Component]:
    """This server's own node: kubelet and node agent over the runtime a plugin provides, and
    every plugin's node components, all with the node's own credentials as on an agent."""
    from k3p.agent.components import agent_components
    from k3p.agent.node import node_ip
    from k3p.agent.server import kubelet_server_component

    runtime = ctx.plugins.hook.k3p_runtime(config=ctx.config)
    if runtime is None:
        log.warning("no enabled plugin provides a container runtime: this server runs no workloads",
                    enabled=",".join(ctx.plugins.enabled()))
        return []
    pki, node = ctx.pki, ctx.node_name
    cert, key = pki_mod.ensure_client_cert(pki, f"kubelet-{node}", f"system:node:{node}", ["system:nodes"])
    serving_cert, serving_key = pki.tls_dir / "serving-kubelet.crt", pki.tls_dir / "serving-kubelet.key"
    pki_mod.ensure_serving_cert(pki, serving_cert, serving_key, f"system:node:{node}", [node, "localhost"],
                                ["127.0.0.1", *ctx.host_addresses])

    def node_client(user_agent: str) -> Client:
        return ctx.client(cert, key, user_agent)

    node_ctx = ctx.plugin_context(node_name=node, node_ips=[node_ip(ctx.config)], new_client=node_client,
                                  runs_workloads=runtime.runs_workloads)
    port = ctx.config.get("kubelet_port")
    found = agent_components(node_client, runtime, node, ctx.config, ctx.data_dir / "agent", server=True,
                             node_overrides={"kubelet_port": port})
    found.append(kubelet_server_component(runtime, node, host="0.0.0.0", port=port,
                                          certfile=serving_cert, keyfile=serving_key,
                                          client_ca=pki.client_ca.cert_path))
    ctx.plugins.cleanup_disabled(ctx.plugins.disabled_plugins, ctx=node_ctx)
    for batch in ctx.plugins.hook.k3p_agent_components(ctx=node_ctx):
        found.extend(batch or ())
    return found


def manifests(ctx: ServerState) -> list[tuple[str, list[dict[str, Any]] | None]]:
    """Every enabled plugin's manifests, checked before anything starts."""
    found = ctx.plugins.call_each("k3p_manifests", config=ctx.config)
    for plugin, objects in found:
        for obj in objects or ():
            try:
                object_ref(plugin, obj)
            except ManifestError as e:
                raise ConfigError(str(e)) from None
    return found


def components(ctx: ServerState, store: Datastore) -> list[Component]:
    found: list[Component] = [datastore_component(store), apiserver_component(ctx, store),
                              addon_component(ctx.control_plane_client, manifests(ctx))]
    if not ctx.config.get("disable_agent"):
        found.extend(node_components(ctx))
    for batch in ctx.plugins.hook.k3p_server_components(ctx=ctx.plugin_context()):
        found.extend(batch or ())
    return found


async def run_server(config: Config, plugins: PluginManager) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop."""
    # bad connection or request limits are config errors, found before anything starts
    ConnectionLimits.from_config(config)
    MaxInFlight.from_config(None, config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    release_stop_signals()  # a SIGTERM held since start-up arrives now and stops us cleanly
    _kubeconfig_mode(config)  # a bad mode is a config error: nothing in the data dir changes
    lock = hold_data_dir(config.data_path, "server")  # noqa: F841 - held until the process exits
    node_ips = node_addresses(config)
    ctx = prepare(config, plugins, node_ips)
    if stop.is_set():
        return 0
    ctx.node_name = (config.get("node_name") or socket.gethostname()).lower()
    ctx.host_addresses = node_ips
    ctx.cluster = cluster_settings(config, plugins)
    store = select_datastore(config, plugins)
    supervisor = Supervisor(components(ctx, store))
    ctx.supervisor = supervisor
    log.info("k3p server starting", data_dir=str(ctx.data_dir), port=config.get("https_listen_port"),
             plugins=",".join(plugins.enabled()))
    node = "none (--disable-agent)" if config.get("disable_agent") else ctx.node_name
    announce = asyncio.create_task(announce_ready(supervisor, kubeconfig=str(kubeconfig_path(config)), node=node))
    try:
        await supervisor.run(stop)
    finally:
        announce.cancel()
    log.info("k3p server stopped")
    return 0


async def announce_ready(supervisor: Supervisor, **about: str) -> None:
    """One info line once every component is ready: where start-up ends for the reader of the log."""
    await supervisor.wait_all_ready()
    log.info("k3p is ready", **about)
