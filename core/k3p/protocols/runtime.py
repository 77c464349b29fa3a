"""The Runtime protocol: what the kubelet needs from a container runtime.

It mirrors the CRI verbs the kubelet uses, in plain dataclasses so that core does not
depend on any runtime's library. The containerd plugin implements it over CRI; the
simulated runtime implements it with no containers at all (for hollow nodes). The
kubelet labels every sandbox and container it makes (see ``LABEL_*``) and finds its pods
again from those labels after a restart, so a runtime must return labels as given.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

#: labels the kubelet puts on sandboxes and containers (the names kube's kubelet uses)
LABEL_POD_NAME = "io.kubernetes.pod.name"
LABEL_POD_NAMESPACE = "io.kubernetes.pod.namespace"
LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"
#: annotation holding a container's restart count (kube keeps it as an annotation too)
ANNOTATION_RESTART_COUNT = "io.kubernetes.container.restartCount"


class SandboxState(enum.Enum):
    READY = "ready"
    NOTREADY = "notready"


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass
class PortMapping:
    container_port: int
    host_port: int = 0
    protocol: str = "TCP"
    host_ip: str = ""


@dataclass
class DNSConfig:
    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass
class SandboxConfig:
    """What a pod's sandbox (its network namespace and pause process) is made from."""

    name: str
    namespace: str
    uid: str
    attempt: int = 0
    hostname: str = ""
    log_directory: str = ""
    dns: DNSConfig = field(default_factory=DNSConfig)
    port_mappings: list[PortMapping] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    host_network: bool = False
    cgroup_parent: str = ""


@dataclass
class Mount:
    container_path: str
    host_path: str
    readonly: bool = False


@dataclass
class Resources:
    """Linux resources of one container (0 / None: unlimited or runtime default)."""

    cpu_shares: int = 0
    cpu_quota: int = 0
    cpu_period: int = 0
    memory_limit_bytes: int = 0


@dataclass
class Security:
    run_as_user: int | None = None
    run_as_group: int | None = None
    privileged: bool = False
    capabilities_add: list[str] = field(default_factory=list)
    capabilities_drop: list[str] = field(default_factory=list)
    readonly_rootfs: bool = False


@dataclass
class ContainerConfig:
    name: str
    image: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    working_dir: str = ""
    env: list[tuple[str, str]] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    #: relative to the sandbox's log_directory, e.g. "web/0.log"
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    attempt: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    security: Security = field(default_factory=Security)


@dataclass
class SandboxStatus:
    id: str
    state: SandboxState
    ip: str = ""
    additional_ips: list[str] = field(default_factory=list)
    created_at: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    attempt: int = 0


@dataclass
class ContainerStatus:
    id: str
    sandbox_id: str
    name: str
    state: ContainerState
    image: str = ""
    image_ref: str = ""
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    log_path: str = ""
    attempt: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""


@dataclass
class ImageInfo:
    id: str
    tags: list[str] = field(default_factory=list)
    size: int = 0


@dataclass
class ContainerStats:
    container_id: str
    cpu_usage_nano_cores: int = 0
    cpu_usage_core_nano_seconds: int = 0
    memory_working_set_bytes: int = 0


class RuntimeError_(Exception):
    """A runtime call failed; ``not_found`` tells a missing sandbox/container/image apart."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


class RuntimeDefaults:
    """The optional features of :class:`Runtime` as most runtimes have them; subclass and override."""

    runs_workloads: bool = True
    node_capacity: dict[str, str] | None = None

    async def network_ready(self) -> tuple[bool, str]:
        return True, ""

    async def update_runtime_config(self, pod_cidr: str) -> None:
        return None


@runtime_checkable
class Runtime(Protocol):
    """A container runtime as the kubelet drives it. All methods are coroutines.

    Every member is part of the contract; :class:`RuntimeDefaults` gives the usual answers
    of the optional features (a runtime that runs real containers, reports the host's
    capacity and always has a network), so a runtime subclasses it and overrides what it
    does differently.
    """

    #: e.g. "containerd" (shown as containerd://VERSION in `kubectl get nodes -o wide`)
    name: str
    #: False for a runtime that runs nothing (simulated nodes): the kubelet then creates no
    #: hostPath folders and makes no network probes
    runs_workloads: bool
    #: the capacity the node reports instead of the host's (``{"cpu": "4", "memory": "8Gi"}``), or None
    node_capacity: dict[str, str] | None

    async def network_ready(self) -> tuple[bool, str]:
        """Whether pods can get a network yet, and why not (CRI's NetworkReady condition).

        The node stays NotReady until it is."""

    async def start(self) -> None:
        """Connect (and start the runtime daemon if the plugin owns it); ready to serve after."""

    async def close(self) -> None:
        """Disconnect; containers keep running (a k3p restart must not restart pods)."""

    async def version(self) -> str:
        """The runtime's version, e.g. "1.6.20"."""

    async def update_runtime_config(self, pod_cidr: str) -> None:
        """The node's podCIDR, once known or when it changes (CRI's UpdateRuntimeConfig)."""

    # sandboxes
    async def run_pod_sandbox(self, config: SandboxConfig, runtime_handler: str = "") -> str: ...
    async def stop_pod_sandbox(self, sandbox_id: str) -> None: ...
    async def remove_pod_sandbox(self, sandbox_id: str) -> None: ...
    async def pod_sandbox_status(self, sandbox_id: str) -> SandboxStatus: ...
    async def list_pod_sandboxes(self) -> list[SandboxStatus]: ...

    # containers
    async def create_container(self, sandbox_id: str, config: ContainerConfig, sandbox: SandboxConfig) -> str: ...
    async def start_container(self, container_id: str) -> None: ...
    async def stop_container(self, container_id: str, timeout: int) -> None:
        """SIGTERM (the image's stop signal), then SIGKILL after ``timeout`` seconds."""

    async def remove_container(self, container_id: str) -> None: ...
    async def container_status(self, container_id: str) -> ContainerStatus: ...
    async def list_containers(self, sandbox_id: str | None = None) -> list[ContainerStatus]: ...
    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float) -> ExecResult: ...
    async def container_stats(self, container_id: str) -> ContainerStats: ...

    # streaming: each returns a URL the kubelet's streaming endpoint proxies to (CRI style)
    async def exec_url(self, container_id: str, cmd: list[str], tty: bool, stdin: bool, stdout: bool,
                       stderr: bool) -> str: ...
    async def attach_url(self, container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str: ...
    async def port_forward_url(self, sandbox_id: str, ports: list[int]) -> str: ...

    # logs: the runtime writes CRI-format log lines to the container's log_path
    def read_log(self, status: ContainerStatus, follow: bool = False) -> AsyncIterator[bytes]:
        """Raw CRI log lines (``<RFC3339Nano> <stream> <P|F> <text>``) of a container."""

    # images
    async def image_present(self, image: str) -> bool: ...
    async def pull_image(self, image: str) -> str:
        """Make ``image`` available; raises RuntimeError_ when it cannot (no registry here)."""

    async def list_images(self) -> list[ImageInfo]: ...
    async def import_image(self, path: str) -> list[str]:
        """Import an OCI/docker image tarball; returns the image names it holds."""
