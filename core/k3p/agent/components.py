"""The components of one node: its runtime, its Node and Lease, and its kubelet.

``agent_components`` is called once per node a process runs: once by ``k3p agent`` and
by ``k3p server`` (unless --disable-agent), N times by ``k3p agent --simulate N`` (each
with its own node name and its own runtime instance). Component names carry the node's
name, so any number of nodes can share one supervisor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from k3p import components as names
from k3p.agent.kubelet import KubeletConfig, run_kubelet
from k3p.agent.node import NodeAgent, NodeConfig, ReadinessCheck, node_config_from
from k3p.client import Client
from k3p.config import ConfigError
from k3p.protocols.runtime import Runtime
from k3p.supervisor import Component, Ready, TaskComponent

log = structlog.get_logger(__name__)


class _Holder:
    """The node agent of the current run, for the kubelet to read host IPs and allocatable from."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.agent: NodeAgent | None = None

    def host_ips(self) -> list[str]:
        if self.agent is not None:
            return self.agent.host_ips
        return [self.config.node_ip] if self.config.node_ip else []

    def allocatable(self) -> dict[str, Any]:
        return dict(self.agent.allocatable) if self.agent is not None else {}


def agent_components(new_client: Callable[[str], Client], runtime: Runtime, node_name: str, config: Any,
                     data_dir: str | Path, *, server: bool = False, cluster: Mapping[str, Any] | None = None,
                     readiness_checks: Iterable[ReadinessCheck] = (),
                     kubelet_overrides: Mapping[str, Any] | None = None,
                     node_overrides: Mapping[str, Any] | None = None) -> list[Component]:
    """The components that make ``node_name`` a node: runtime, node registration + lease, kubelet.

    ``new_client(user_agent)`` returns an API client with the node's credentials;
    ``config`` is the command's config (``node_label``, ``node_taint``, ``node_ip``, and on
    servers ``cluster_dns``/``cluster_domain``); ``data_dir`` is the node's agent folder
    (pods in ``<data_dir>/pods/<uid>``); ``server`` adds the control-plane role labels;
    ``cluster`` holds the settings a joining agent got from the server (``clusterDNS``,
    ``clusterDomain``); ``readiness_checks`` must all pass for the node to be Ready (e.g.
    the pod network); ``kubelet_overrides`` and ``node_overrides`` set fields of
    KubeletConfig (periods, back-off) and NodeConfig (status and lease intervals).
    """
    data_dir = Path(data_dir)
    try:
        node_config = node_config_from(config, node_name, data_dir, server)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    node_config.readiness_checks = list(readiness_checks)
    cluster = cluster or {}
    dns = cluster.get("clusterDNS") or config.get("cluster_dns") or "10.43.0.10"
    domain = cluster.get("clusterDomain") or config.get("cluster_domain") or "cluster.local"
    kubelet_config = KubeletConfig(node_name=node_name, data_dir=data_dir,
                                   cluster_dns=[ip.strip() for ip in str(dns).split(",") if ip.strip()],
                                   cluster_domain=str(domain),
                                   host_resolv_conf=config.get("resolv_conf") or "/etc/resolv.conf")
    for target, overrides in ((kubelet_config, kubelet_overrides), (node_config, node_overrides)):
        for key, value in (overrides or {}).items():
            if not hasattr(target, key):
                raise ValueError(f"unknown {type(target).__name__} setting {key!r}")
            setattr(target, key, value)
    holder = _Holder(node_config)

    async def run_runtime(ready: Ready) -> None:
        await runtime.start()
        try:
            ready()
            await asyncio.Event().wait()
        finally:
            await runtime.close()  # containers keep running: a restart of k3p adopts them

    async def run_node(ready: Ready) -> None:
        client = new_client(f"k3p-node/{node_name}")
        agent = NodeAgent(client, runtime, node_config)
        holder.agent = agent
        try:
            await agent.run(ready)
        finally:
            await client.close()

    async def run_pods(ready: Ready) -> None:
        await run_kubelet(new_client, runtime, kubelet_config, ready, host_ips=holder.host_ips,
                          allocatable=holder.allocatable)

    return [
        TaskComponent(names.runtime(node_name), run_runtime),
        TaskComponent(names.node(node_name), run_node, requires=[names.runtime(node_name)]),
        TaskComponent(names.kubelet(node_name), run_pods, requires=[names.node(node_name)]),
    ]
