"""Between k3p's runtime dataclasses and the CRI runtime.v1 messages."""

from __future__ import annotations

from cri_api.v1 import api_pb2 as api

from k3p.protocols.runtime import (
    ContainerConfig,
    ContainerState,
    ContainerStatus,
    SandboxConfig,
    SandboxState,
    SandboxStatus,
)

_PROTOCOLS = {"TCP": api.TCP, "UDP": api.UDP, "SCTP": api.SCTP}
_CONTAINER_STATES = {
    api.CONTAINER_CREATED: ContainerState.CREATED,
    api.CONTAINER_RUNNING: ContainerState.RUNNING,
    api.CONTAINER_EXITED: ContainerState.EXITED,
    api.CONTAINER_UNKNOWN: ContainerState.UNKNOWN,
}


def seconds(ns: int) -> float:
    """CRI times are nanoseconds since the epoch; 0 stays 0 (not set)."""
    return ns / 1e9 if ns else 0.0


def _namespaces(host_network: bool) -> api.NamespaceOption:
    return api.NamespaceOption(
        network=api.NODE if host_network else api.POD,
        pid=api.CONTAINER,
        ipc=api.POD,
    )


def sandbox_to_cri(config: SandboxConfig, log_directory: str) -> api.PodSandboxConfig:
    """The PodSandboxConfig for RunPodSandbox (and, unchanged, for every CreateContainer)."""
    privileged = bool(getattr(config, "privileged", False))
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(
            name=config.name, uid=config.uid, namespace=config.namespace, attempt=config.attempt
        ),
        # containerd fails host-network sandboxes that set a hostname: they share the node's
        hostname="" if config.host_network else config.hostname,
        log_directory=log_directory,
        dns_config=api.DNSConfig(
            servers=config.dns.servers, searches=config.dns.searches, options=config.dns.options
        ),
        port_mappings=[
            api.PortMapping(
                protocol=_PROTOCOLS.get(pm.protocol.upper(), api.TCP),
                container_port=pm.container_port,
                host_port=pm.host_port,
                host_ip=pm.host_ip,
            )
            for pm in config.port_mappings
        ],
        labels=config.labels,
        annotations=config.annotations,
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=config.cgroup_parent,
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=_namespaces(config.host_network), privileged=privileged
            ),
        ),
    )


def container_to_cri(config: ContainerConfig, sandbox: SandboxConfig) -> api.ContainerConfig:
    """The ContainerConfig for CreateContainer; the log path defaults to ``<name>/<attempt>.log``."""
    sec = config.security
    res = config.resources
    security = api.LinuxContainerSecurityContext(
        capabilities=api.Capability(add_capabilities=sec.capabilities_add, drop_capabilities=sec.capabilities_drop),
        privileged=sec.privileged,
        namespace_options=_namespaces(sandbox.host_network),
        readonly_rootfs=sec.readonly_rootfs,
    )
    if sec.run_as_user is not None:
        security.run_as_user.value = sec.run_as_user
    if sec.run_as_group is not None:
        security.run_as_group.value = sec.run_as_group
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=config.name, attempt=config.attempt),
        image=api.ImageSpec(image=config.image),
        command=config.command,
        args=config.args,
        working_dir=config.working_dir,
        envs=[api.KeyValue(key=k, value=v) for k, v in config.env],
        mounts=[
            api.Mount(container_path=m.container_path, host_path=m.host_path, readonly=m.readonly)
            for m in config.mounts
        ],
        labels=config.labels,
        annotations=config.annotations,
        log_path=config.log_path or f"{config.name}/{config.attempt}.log",
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        tty=config.tty,
        linux=api.LinuxContainerConfig(
            resources=api.LinuxContainerResources(
                cpu_shares=res.cpu_shares,
                cpu_quota=res.cpu_quota,
                cpu_period=res.cpu_period,
                memory_limit_in_bytes=res.memory_limit_bytes,
            ),
            security_context=security,
        ),
    )


def sandbox_status_from_cri(status: api.PodSandboxStatus) -> SandboxStatus:
    return SandboxStatus(
        id=status.id,
        state=SandboxState.READY if status.state == api.SANDBOX_READY else SandboxState.NOTREADY,
        ip=status.network.ip,
        additional_ips=[ip.ip for ip in status.network.additional_ips],
        created_at=seconds(status.created_at),
        labels=dict(status.labels),
        annotations=dict(status.annotations),
        attempt=status.metadata.attempt,
    )


def container_status_from_cri(status: api.ContainerStatus, sandbox_id: str) -> ContainerStatus:
    return ContainerStatus(
        id=status.id,
        sandbox_id=sandbox_id,
        name=status.metadata.name,
        state=_CONTAINER_STATES.get(status.state, ContainerState.UNKNOWN),
        image=status.image.image,
        image_ref=status.image_ref,
        created_at=seconds(status.created_at),
        started_at=seconds(status.started_at),
        finished_at=seconds(status.finished_at),
        exit_code=status.exit_code,
        reason=status.reason,
        message=status.message,
        log_path=status.log_path,
        attempt=status.metadata.attempt,
        labels=dict(status.labels),
        annotations=dict(status.annotations),
    )


def container_state_from_cri(state: int) -> ContainerState:
    return _CONTAINER_STATES.get(state, ContainerState.UNKNOWN)
