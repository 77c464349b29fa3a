"""The node's own objects: its Node (registration, labels, taints, status) and its Lease.

Registration creates the Node or adopts an existing one of the same name (re-applying the
default labels, as kube's kubelet does; taints are only set at creation). Status goes
through ``nodes/status``: computed every ``status_interval`` seconds and written when it
changed or when ``report_interval`` has passed (kube's nodeStatusUpdateFrequency and
nodeStatusReportFrequency); liveness is the Lease ``kube-node-lease/<node>``, renewed
every ``lease_renew_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import platform
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from k3p.client import ApiError, Client, InformerFactory
from k3p.client.objects import format_micro_time, format_time
from k3p.client.resources import LEASES, NODES
from k3p.log import error_text
from k3p.protocols.runtime import Runtime

log = structlog.get_logger(__name__)

Obj = dict[str, Any]

KUBELET_VERSION = "v1.32.0+k3p"
KUBELET_PORT = 10250
LEASE_NAMESPACE = "kube-node-lease"
MAX_PODS = 110
#: kube's default hard eviction thresholds: what allocatable leaves out of capacity
EVICTION_MEMORY = 100 * 2**20
EVICTION_DISK_FRACTION = 0.10
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
                 "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}

#: a check of something the node needs (e.g. the pod network): (ready, message when not)
ReadinessCheck = Callable[[], tuple[bool, str]]


def parse_taint(text: str) -> Obj:
    """``key=value:Effect`` or ``key:Effect`` as a taint; ValueError when malformed."""
    body, sep, effect = text.rpartition(":")
    if not sep or effect not in TAINT_EFFECTS:
        raise ValueError(f"invalid taint {text!r}: expected KEY[=VALUE]:EFFECT with EFFECT one of "
                         f"{', '.join(TAINT_EFFECTS)}")
    key, _, value = body.partition("=")
    if not key:
        raise ValueError(f"invalid taint {text!r}: the key is empty")
    taint: Obj = {"key": key, "effect": effect}
    if value:
        taint["value"] = value
    return taint


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``key=value`` strings (each may hold several, comma-separated) as a dict."""
    out: dict[str, str] = {}
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"invalid node label {part!r}: expected KEY=VALUE")
            out[key.strip()] = value.strip()
    return out


def architecture() -> str:
    machine = platform.machine().lower()
    return ARCHITECTURES.get(machine, machine)


@functools.lru_cache(maxsize=1)
def host_ip() -> str:
    """The host's first non-loopback IPv4 address (127.0.0.1 when it has none)."""
    with contextlib.suppress(Exception):
        from k3p.pki import host_addresses

        found = host_addresses()
        if found:
            return found[0]
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            ip = str(info[4][0])
            if not ip.startswith("127."):
                return ip
    return "127.0.0.1"


def node_ip(config: Any) -> str:
    """The node's InternalIP: ``--node-ip``, else the host's first address (as NodeAgent registers it)."""
    return config.get("node_ip") or host_ip()


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return "Linux"


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out = {}
    for line in _read("/proc/meminfo").splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1]) * (1024 if parts[-1] == "kB" else 1)
    return out


def host_capacity(data_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(capacity, allocatable) of this host, with kube's default eviction thresholds held back."""
    mem = meminfo().get("MemTotal", 0)
    try:
        fs = os.statvfs(data_dir if data_dir.exists() else "/")
        disk = fs.f_blocks * fs.f_frsize
    except OSError:
        disk = 0
    cpus = str(os.cpu_count() or 1)
    capacity = {"cpu": cpus, "ephemeral-storage": f"{disk // 1024}Ki", "hugepages-1Gi": "0",
                "hugepages-2Mi": "0", "memory": f"{mem // 1024}Ki", "pods": str(MAX_PODS)}
    allocatable = {**capacity, "memory": f"{max(0, mem - EVICTION_MEMORY) // 1024}Ki",
                   "ephemeral-storage": str(int(disk * (1 - EVICTION_DISK_FRACTION)))}
    return capacity, allocatable


@dataclass
class NodeConfig:
    """How one node registers and reports itself."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[Obj] = field(default_factory=list)
    node_ip: str = ""
    #: a server node gets the control-plane role labels
    server: bool = False
    data_dir: Path = Path(".")
    status_interval: float = 10.0
    report_interval: float = 300.0
    lease_duration: int = 40
    lease_renew_interval: float = 10.0
    kubelet_port: int = KUBELET_PORT
    #: extra readiness checks (e.g. the pod network): all must pass for Ready=True
    readiness_checks: list[ReadinessCheck] = field(default_factory=list)


class NodeAgent:
    """Registers the Node, keeps its status and renews its Lease."""

    def __init__(self, client: Client, runtime: Runtime, config: NodeConfig) -> None:
        self.client = client
        self.runtime = runtime
        self.config = config
        self.name = config.name
        self.simulated = not runtime.runs_workloads
        self.node: Obj | None = None
        self.registered = asyncio.Event()
        self._ip = config.node_ip
        self._pod_cidr = ""
        self._lease: Obj | None = None
        self._last_report = 0.0
        self._reported: Obj | None = None
        fixed = runtime.node_capacity
        if fixed:
            cap = {"pods": str(MAX_PODS), **{k: str(v) for k, v in fixed.items()}}
            self.capacity, self.allocatable = cap, dict(cap)
        else:
            self.capacity, self.allocatable = host_capacity(config.data_dir)

    # --- what other parts read ----------------------------------------------------------

    @property
    def host_ips(self) -> list[str]:
        return [self._ip] if self._ip else []

    @property
    def pod_cidr(self) -> str:
        return self._pod_cidr

    @property
    def uid(self) -> str:
        return (self.node or {}).get("metadata", {}).get("uid", "")

    # --- registration -------------------------------------------------------------------

    def labels(self) -> dict[str, str]:
        arch = architecture()
        labels = {
            "beta.kubernetes.io/arch": arch, "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch, "kubernetes.io/os": "linux", "kubernetes.io/hostname": self.name,
            "node.kubernetes.io/instance-type": "k3p", "beta.kubernetes.io/instance-type": "k3p",
        }
        if self.config.server:
            labels["node-role.kubernetes.io/control-plane"] = "true"
            labels["node-role.kubernetes.io/master"] = "true"
        labels.update(self.config.labels)
        return labels

    def annotations(self) -> dict[str, str]:
        return {"node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "k3p.io/hostname": self.name, "k3p.io/internal-ip": self._ip}

    def initial_node(self) -> Obj:
        spec: Obj = {}
        if self.config.taints:
            spec["taints"] = [dict(t) for t in self.config.taints]
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": self.labels(), "annotations": self.annotations()},
                "spec": spec}

    async def register(self) -> Obj:
        """Create the Node, or adopt the existing one of this name; retries until it works."""
        if not self._ip:
            # pyroute2's synchronous API runs its own event loop: keep it off this one
            self._ip = await asyncio.to_thread(host_ip)
        delay = 0.2
        while True:
            try:
                try:
                    node = await self.client.create(NODES, self.initial_node())
                    log.info("node registered", node=self.name)
                except ApiError as e:
                    if not e.already_exists:
                        raise
                    node = await self.client.patch(NODES, self.name, {"metadata": {
                        "labels": self.labels(), "annotations": self.annotations()}})
                    log.info("node adopted", node=self.name)
                self.node = node
                self._pod_cidr = (node.get("spec") or {}).get("podCIDR") or ""
                self.registered.set()
                return node
            except ApiError as e:
                log.warning("node registration failed; retrying", node=self.name, error=error_text(e))
            except Exception as e:  # the server may be restarting
                log.info("node registration failed; retrying", node=self.name, error=error_text(e))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 7)

    # --- status -------------------------------------------------------------------------

    async def node_info(self) -> Obj:
        try:
            version = await self.runtime.version()
        except Exception:
            version = "unknown"
        if self.simulated:
            digest = hashlib.sha256(self.name.encode()).hexdigest()
            machine_id, system_uuid, boot_id = digest[:32], _uuid(digest[32:]), _uuid(digest[:32])
        else:
            machine_id = _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id")
            system_uuid = _read("/sys/class/dmi/id/product_uuid") or machine_id
            boot_id = _read("/proc/sys/kernel/random/boot_id")
        return {"machineID": machine_id, "systemUUID": system_uuid, "bootID": boot_id,
                "kernelVersion": platform.release(), "osImage": os_image(),
                "containerRuntimeVersion": f"{self.runtime.name}://{version}",
                "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux", "architecture": architecture()}

    async def _runtime_ready(self) -> tuple[bool, str]:
        try:
            await self.runtime.version()
        except Exception as e:
            return False, f"container runtime is down: {e}"
        ok, message = await self.runtime.network_ready()
        if not ok:
            return False, message
        for check in self.config.readiness_checks:
            ok, message = check()
            if not ok:
                return False, message
        return True, ""

    def _pressure(self) -> tuple[bool, bool]:
        """(memory pressure, disk pressure) by kube's default hard eviction thresholds."""
        if self.simulated:
            return False, False
        memory = meminfo().get("MemAvailable", EVICTION_MEMORY + 1) < EVICTION_MEMORY
        try:
            fs = os.statvfs(self.config.data_dir if self.config.data_dir.exists() else "/")
            disk = fs.f_bavail < fs.f_blocks * EVICTION_DISK_FRACTION
        except OSError:
            disk = False
        return memory, disk

    async def conditions(self) -> list[Obj]:
        """The kubelet's four node conditions (without times)."""
        memory, disk = self._pressure()
        ready, message = await self._runtime_ready()
        return [
            {"type": "MemoryPressure", "status": "True" if memory else "False",
             "reason": "KubeletHasInsufficientMemory" if memory else "KubeletHasSufficientMemory",
             "message": "kubelet has insufficient memory available" if memory else
             "kubelet has sufficient memory available"},
            {"type": "DiskPressure", "status": "True" if disk else "False",
             "reason": "KubeletHasDiskPressure" if disk else "KubeletHasNoDiskPressure",
             "message": "kubelet has disk pressure" if disk else "kubelet has no disk pressure"},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
             "message": "kubelet has sufficient PID available"},
            {"type": "Ready", "status": "True" if ready else "False",
             "reason": "KubeletReady" if ready else "KubeletNotReady",
             "message": "kubelet is posting ready status" if ready else message},
        ]

    async def images(self) -> list[Obj]:
        try:
            found = await self.runtime.list_images()
        except Exception:
            return []
        found.sort(key=lambda i: i.size, reverse=True)
        return [{"names": [*i.tags, i.id] if i.id else list(i.tags), "sizeBytes": i.size} for i in found[:50]]

    async def status(self) -> Obj:
        """The node status to report (conditions without heartbeat/transition times)."""
        return {
            "capacity": self.capacity,
            "allocatable": self.allocatable,
            "conditions": await self.conditions(),
            "addresses": [{"type": "InternalIP", "address": self._ip}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.config.kubelet_port}},
            "nodeInfo": await self.node_info(),
            "images": await self.images(),
        }

    async def report_status(self, force: bool = False) -> bool:
        """Write the status if it changed (or ``force``/the report interval says so); True if written."""
        status = await self.status()
        now = time.monotonic()
        if not force and status == self._reported and now - self._last_report < self.config.report_interval:
            return False
        stamp = format_time()
        old = {c.get("type"): c for c in ((self.node or {}).get("status") or {}).get("conditions") or []}
        conditions = []
        for c in status["conditions"]:
            prev = old.get(c["type"])
            since = prev.get("lastTransitionTime") if prev and prev.get("status") == c["status"] else None
            conditions.append({**c, "lastHeartbeatTime": stamp, "lastTransitionTime": since or stamp})
        body = {**status, "conditions": conditions}
        node = await self.client.patch(NODES, self.name, {"status": body}, subresource="status",
                                       patch_type="strategic")
        self.node = node
        self._reported = status
        self._last_report = now
        return True

    # --- lease --------------------------------------------------------------------------

    def _new_lease(self) -> Obj:
        meta: Obj = {"name": self.name, "namespace": LEASE_NAMESPACE}
        if self.uid:
            meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": self.name, "leaseDurationSeconds": self.config.lease_duration,
                         "renewTime": format_micro_time()}}

    async def renew_lease(self) -> Obj:
        """Renew (or create) the node's Lease; returns the stored Lease."""
        for _ in range(3):
            if self._lease is None:
                try:
                    self._lease = await self.client.get(LEASES, self.name, LEASE_NAMESPACE)
                except ApiError as e:
                    if not e.not_found:
                        raise
                    try:
                        self._lease = await self.client.create(LEASES, self._new_lease())
                        return self._lease
                    except ApiError as e2:
                        if not e2.already_exists:
                            raise
                        continue
            lease = {**self._lease, "spec": {**(self._lease.get("spec") or {}), "holderIdentity": self.name,
                                             "leaseDurationSeconds": self.config.lease_duration,
                                             "renewTime": format_micro_time()}}
            try:
                self._lease = await self.client.update(LEASES, lease)
                return self._lease
            except ApiError as e:
                if not (e.conflict or e.not_found):
                    raise
                self._lease = None
        raise RuntimeError("the node lease kept changing under us")

    # --- running ------------------------------------------------------------------------

    async def _watch_node(self, factory: InformerFactory, on_pod_cidr: Callable[[str], Any] | None) -> None:
        informer = factory.informer(NODES, field_selector=f"metadata.name={self.name}")

        def changed(type_: str, obj: Obj, _old: Obj | None) -> None:
            if type_ == "DELETED":
                return
            self.node = obj
            cidr = (obj.get("spec") or {}).get("podCIDR") or ""
            if cidr and cidr != self._pod_cidr:
                self._pod_cidr = cidr
                log.info("node podCIDR", node=self.name, pod_cidr=cidr)
                if on_pod_cidr:
                    on_pod_cidr(cidr)

        informer.add_listener(changed)

    async def tell_runtime_pod_cidr(self, cidr: str) -> None:
        if cidr:
            try:
                await self.runtime.update_runtime_config(cidr)
            except Exception as e:
                log.warning("runtime did not take the podCIDR", node=self.name, error=error_text(e))

    async def run(self, ready: Callable[[], None]) -> None:
        """Register, then keep the status and the Lease fresh until cancelled."""
        await self.register()
        await self.tell_runtime_pod_cidr(self._pod_cidr)
        factory = InformerFactory(self.client)
        pending: set[asyncio.Task[Any]] = set()

        def on_cidr(cidr: str) -> None:
            task = asyncio.create_task(self.tell_runtime_pod_cidr(cidr))
            pending.add(task)
            task.add_done_callback(pending.discard)

        await self._watch_node(factory, on_cidr)
        factory.start()
        try:
            await self._first_report()
            ready()
            await asyncio.gather(self._lease_loop(), self._status_loop())
        finally:
            await factory.stop()

    async def _first_report(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.report_status(force=True)
                await self.renew_lease()
                return
            except Exception as e:
                log.warning("node status not written; retrying", node=self.name, error=error_text(e))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 7)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_renew_interval)
            try:
                await self.renew_lease()
            except Exception as e:
                log.warning("lease not renewed", node=self.name, error=error_text(e))
                self._lease = None

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval)
            try:
                if self.node is not None and not self.node.get("status", {}).get("conditions"):
                    await self.report_status(force=True)  # someone wiped the status: write it again
                else:
                    await self.report_status()
            except ApiError as e:
                if e.not_found:
                    log.warning("node object deleted; registering again", node=self.name)
                    await self.register()
                    await self.report_status(force=True)
                else:
                    log.warning("node status not written", node=self.name, error=error_text(e))
            except Exception as e:
                log.warning("node status not written", node=self.name, error=error_text(e))


def _uuid(hex_text: str) -> str:
    h = (hex_text + "0" * 32)[:32]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def node_config_from(config: Mapping[str, Any] | Any, name: str, data_dir: Path, server: bool) -> NodeConfig:
    """A NodeConfig from the command's config (``node_label``, ``node_taint``, ``node_ip``)."""
    get = config.get
    return NodeConfig(name=name, labels=parse_labels(get("node_label") or []),
                      taints=[parse_taint(t) for t in get("node_taint") or []], node_ip=get("node_ip") or "",
                      server=server, data_dir=data_dir)
