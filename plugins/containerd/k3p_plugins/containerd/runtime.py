"""The Runtime protocol over containerd's CRI service (gRPC on a unix socket, asyncio).

containerd itself is a supervised child process (see ``process.py``) or, with
``--container-runtime-endpoint``, someone else's. Everything here goes through CRI except
image import, which CRI lacks (``images.py``). Containers belong to containerd and its
shims, not to this process: ``close()`` only hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import structlog
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as api_grpc

import k3p_plugins.containerd.ocibuild as ocibuild
from k3p.protocols.runtime import (
    ContainerConfig,
    ContainerState,
    ContainerStats,
    ContainerStatus,
    ExecResult,
    ImageInfo,
    RuntimeDefaults,
    RuntimeError_,
    SandboxConfig,
    SandboxState,
    SandboxStatus,
)
from k3p_plugins.containerd import convert, images, logs
from k3p_plugins.containerd.config import DEFAULT_PAUSE_IMAGE
from k3p_plugins.containerd.paths import NAMESPACE, ContainerdPaths

log = structlog.get_logger(__name__)

_MAX_MESSAGE = 32 * 2**20


def socket_path(endpoint: str) -> str:
    """The file of a CRI endpoint given as ``unix:///path`` or a plain path."""
    if endpoint.startswith("unix://"):
        return endpoint[len("unix://"):]
    if "://" in endpoint:
        raise ValueError(f"unsupported container runtime endpoint {endpoint!r}: only unix sockets")
    return endpoint


def open_channel(socket: str | Path) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        f"unix://{socket}",
        options=[("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)],
    )


async def cri_version(socket: str | Path, timeout: float = 1.0) -> str | None:
    """The runtime version if a CRI service answers on ``socket`` within ``timeout``, else None."""
    if not Path(socket).exists():
        return None
    channel = open_channel(socket)
    try:
        resp = await api_grpc.RuntimeServiceStub(channel).Version(api.VersionRequest(), timeout=timeout)
        return resp.runtime_version
    except grpc.aio.AioRpcError:
        return None
    finally:
        await channel.close()


def _error(call: str, e: grpc.aio.AioRpcError) -> RuntimeError_:
    detail = e.details() or str(e.code())
    not_found = e.code() == grpc.StatusCode.NOT_FOUND or detail.rstrip().endswith("not found")
    return RuntimeError_(f"{call}: {detail}", not_found=not_found)


class ContainerdRuntime(RuntimeDefaults):
    """k3p's Runtime protocol spoken to containerd over CRI.

    ``endpoint`` is the CRI socket; ``paths`` says where the node's files live (airgap
    images, pod logs). containerd reads the CNI config from ``paths.cni_conf_dir``, where
    the pod network plugin writes it.
    """

    name = "containerd"

    def __init__(
        self,
        endpoint: str | Path,
        paths: ContainerdPaths,
        *,
        pause_image: str = DEFAULT_PAUSE_IMAGE,
        start_timeout: float = 120.0,
        pull_timeout: float = 300.0,
    ) -> None:
        self.socket = socket_path(str(endpoint))
        self.paths = paths
        self.pause_image = ocibuild.normalize_image_name(pause_image)
        self.pod_cidr = ""
        self.start_timeout = start_timeout
        self.pull_timeout = pull_timeout
        self._channel: grpc.aio.Channel | None = None
        self._rt: api_grpc.RuntimeServiceStub | None = None
        self._img: api_grpc.ImageServiceStub | None = None
        # Sandboxes and containers never change their IP, sandbox or start time; only their
        # state moves on. Listing reuses a status while its state is unchanged.
        self._sandbox_cache: dict[str, SandboxStatus] = {}
        self._container_cache: dict[str, tuple[int, ContainerStatus]] = {}
        self._container_sandbox: dict[str, str] = {}
        self._cpu_samples: dict[str, tuple[int, int]] = {}

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def rt(self) -> api_grpc.RuntimeServiceStub:
        if self._rt is None:
            raise RuntimeError_("the containerd runtime is not started")
        return self._rt

    @property
    def img(self) -> api_grpc.ImageServiceStub:
        if self._img is None:
            raise RuntimeError_("the containerd runtime is not started")
        return self._img

    async def connect(self) -> None:
        """Wait (up to ``start_timeout``) until CRI answers on the socket, then open the channel."""
        deadline = time.monotonic() + self.start_timeout
        waited = False
        while (version := await cri_version(self.socket)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError_(f"no CRI service answered on {self.socket} within {self.start_timeout:.0f}s")
            if not waited:
                log.info("waiting for containerd", socket=self.socket)
                waited = True
            await asyncio.sleep(0.1)
        self._channel = open_channel(self.socket)
        self._rt = api_grpc.RuntimeServiceStub(self._channel)
        self._img = api_grpc.ImageServiceStub(self._channel)
        log.info("connected to containerd", socket=self.socket, version=version)

    async def start(self) -> None:
        """Connect, import airgap images and make sure the pause image exists."""
        await self.connect()
        await self.import_airgap_images()
        await self.ensure_pause_image()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._rt = self._img = None

    async def version(self) -> str:
        try:
            resp = await self.rt.Version(api.VersionRequest(), timeout=10)
        except grpc.aio.AioRpcError as e:
            raise _error("Version", e) from None
        return resp.runtime_version

    async def network_ready(self) -> tuple[bool, str]:
        """containerd's NetworkReady condition: false until the pod network's CNI config exists."""
        try:
            resp = await self.rt.Status(api.StatusRequest(), timeout=10)
        except grpc.aio.AioRpcError as e:
            return False, f"container runtime status check failed: {_error('Status', e)}"
        for c in resp.status.conditions:
            if c.type == "NetworkReady" and not c.status:
                return False, (f"container runtime network not ready: NetworkReady=false reason:{c.reason} "
                               f"message:{c.message}")
        return True, ""

    async def runtime_status(self) -> dict:
        """containerd's CRI status and config (``crictl info``)."""
        try:
            resp = await self.rt.Status(api.StatusRequest(verbose=True), timeout=10)
        except grpc.aio.AioRpcError as e:
            raise _error("Status", e) from None
        out: dict = {"conditions": [
            {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
            for c in resp.status.conditions
        ]}
        for key, value in resp.info.items():
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        return out

    # --- pod network ----------------------------------------------------------------------

    async def update_runtime_config(self, pod_cidr: str) -> None:
        """The node's podCIDR (CRI's UpdateRuntimeConfig). The CNI config itself is the pod network's
        to write (the flannel plugin, or the user's own CNI with ``--flannel-backend=none``)."""
        self.pod_cidr = pod_cidr
        if self._rt is not None:
            req = api.UpdateRuntimeConfigRequest(
                runtime_config=api.RuntimeConfig(network_config=api.NetworkConfig(pod_cidr=pod_cidr)))
            try:
                await self._rt.UpdateRuntimeConfig(req, timeout=30)
            except grpc.aio.AioRpcError as e:
                raise _error("UpdateRuntimeConfig", e) from None

    # --- sandboxes ------------------------------------------------------------------------

    def default_log_directory(self, namespace: str, name: str, uid: str) -> Path:
        """Where a pod's logs go when the kubelet names no folder (kube's ``<ns>_<name>_<uid>``)."""
        return self.paths.pod_logs_dir / f"{namespace}_{name}_{uid}"

    async def run_pod_sandbox(self, config: SandboxConfig, runtime_handler: str = "") -> str:
        log_dir = config.log_directory or str(self.default_log_directory(config.namespace, config.name, config.uid))
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        req = api.RunPodSandboxRequest(config=convert.sandbox_to_cri(config, log_dir), runtime_handler=runtime_handler)
        try:
            resp = await self.rt.RunPodSandbox(req, timeout=240)
        except grpc.aio.AioRpcError as e:
            raise _error(f"RunPodSandbox {config.namespace}/{config.name}", e) from None
        return resp.pod_sandbox_id

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        """Stop the sandbox's containers and pause process and tear its network down (a gone sandbox is fine)."""
        try:
            await self.rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=120)
        except grpc.aio.AioRpcError as e:
            err = _error(f"StopPodSandbox {sandbox_id}", e)
            if not err.not_found:
                raise err from None
        self._sandbox_cache.pop(sandbox_id, None)

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        """Remove the sandbox and its containers (a gone sandbox is fine).

        The pod's default log folder goes with the pod's last sandbox.
        """
        meta = None
        with contextlib.suppress(grpc.aio.AioRpcError):
            meta = (await self.rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
                                                   timeout=10)).status.metadata
        try:
            await self.rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=120)
        except grpc.aio.AioRpcError as e:
            err = _error(f"RemovePodSandbox {sandbox_id}", e)
            if not err.not_found:
                raise err from None
        self._sandbox_cache.pop(sandbox_id, None)
        for cid, sid in list(self._container_sandbox.items()):
            if sid == sandbox_id:
                self._forget_container(cid)
        if meta is not None:
            await self._remove_pod_logs_if_unused(meta)

    async def _remove_pod_logs_if_unused(self, meta: api.PodSandboxMetadata) -> None:
        folder = self.default_log_directory(meta.namespace, meta.name, meta.uid)
        if not folder.is_dir():
            return
        # a pod's log folder is shared by all its sandboxes (one per attempt)
        resp = await self.rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30)
        if any(s.metadata.uid == meta.uid for s in resp.items):
            return
        await asyncio.to_thread(shutil.rmtree, folder, True)

    async def pod_sandbox_status(self, sandbox_id: str) -> SandboxStatus:
        try:
            resp = await self.rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=30)
        except grpc.aio.AioRpcError as e:
            raise _error(f"PodSandboxStatus {sandbox_id}", e) from None
        status = convert.sandbox_status_from_cri(resp.status)
        self._sandbox_cache[sandbox_id] = status
        return status

    async def list_pod_sandboxes(self) -> list[SandboxStatus]:
        try:
            resp = await self.rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30)
        except grpc.aio.AioRpcError as e:
            raise _error("ListPodSandbox", e) from None
        items = list(resp.items)
        ready = {s.id: s.state == api.SANDBOX_READY for s in items}

        async def one(sandbox: api.PodSandbox) -> SandboxStatus | None:
            cached = self._sandbox_cache.get(sandbox.id)
            if cached is not None and (cached.state == SandboxState.READY) == ready[sandbox.id]:
                return cached
            try:
                return await self.pod_sandbox_status(sandbox.id)
            except RuntimeError_ as e:
                if e.not_found:  # removed since the list
                    return None
                raise

        found = [s for s in await asyncio.gather(*(one(s) for s in items)) if s is not None]
        for gone in set(self._sandbox_cache) - set(ready):
            del self._sandbox_cache[gone]
        return found

    # --- containers -----------------------------------------------------------------------

    async def create_container(self, sandbox_id: str, config: ContainerConfig, sandbox: SandboxConfig) -> str:
        sandbox_cri = convert.sandbox_to_cri(
            sandbox,
            sandbox.log_directory or str(self.default_log_directory(sandbox.namespace, sandbox.name, sandbox.uid)),
        )
        container_cri = convert.container_to_cri(config, sandbox)
        (Path(sandbox_cri.log_directory) / container_cri.log_path).parent.mkdir(parents=True, exist_ok=True)
        req = api.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=container_cri, sandbox_config=sandbox_cri)
        try:
            resp = await self.rt.CreateContainer(req, timeout=240)
        except grpc.aio.AioRpcError as e:
            raise _error(f"CreateContainer {sandbox.namespace}/{sandbox.name}/{config.name}", e) from None
        self._container_sandbox[resp.container_id] = sandbox_id
        return resp.container_id

    async def start_container(self, container_id: str) -> None:
        try:
            await self.rt.StartContainer(api.StartContainerRequest(container_id=container_id), timeout=240)
        except grpc.aio.AioRpcError as e:
            raise _error(f"StartContainer {container_id}", e) from None

    async def stop_container(self, container_id: str, timeout: int) -> None:
        req = api.StopContainerRequest(container_id=container_id, timeout=int(timeout))
        try:
            await self.rt.StopContainer(req, timeout=max(0, timeout) + 60)
        except grpc.aio.AioRpcError as e:
            raise _error(f"StopContainer {container_id}", e) from None

    async def remove_container(self, container_id: str) -> None:
        """Remove the container and its log file (a gone container is fine).

        kube's kubelet, too, deletes a container's log when it removes the container.
        """
        log_path = ""
        with contextlib.suppress(grpc.aio.AioRpcError):
            resp = await self.rt.ContainerStatus(api.ContainerStatusRequest(container_id=container_id), timeout=10)
            log_path = resp.status.log_path
        try:
            await self.rt.RemoveContainer(api.RemoveContainerRequest(container_id=container_id), timeout=120)
        except grpc.aio.AioRpcError as e:
            err = _error(f"RemoveContainer {container_id}", e)
            if not err.not_found:
                raise err from None
        self._forget_container(container_id)
        if log_path:
            path = Path(log_path)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the container's folder, once empty

    def _forget_container(self, container_id: str) -> None:
        self._container_cache.pop(container_id, None)
        self._container_sandbox.pop(container_id, None)
        self._cpu_samples.pop(container_id, None)

    async def _sandbox_of(self, container_id: str) -> str:
        sid = self._container_sandbox.get(container_id)
        if sid is None:
            req = api.ListContainersRequest(filter=api.ContainerFilter(id=container_id))
            try:
                resp = await self.rt.ListContainers(req, timeout=30)
            except grpc.aio.AioRpcError as e:
                raise _error(f"ListContainers {container_id}", e) from None
            if not resp.containers:
                raise RuntimeError_(f"container {container_id} not found", not_found=True)
            sid = resp.containers[0].pod_sandbox_id
            self._container_sandbox[container_id] = sid
        return sid

    async def container_status(self, container_id: str) -> ContainerStatus:
        try:
            resp = await self.rt.ContainerStatus(api.ContainerStatusRequest(container_id=container_id), timeout=30)
        except grpc.aio.AioRpcError as e:
            raise _error(f"ContainerStatus {container_id}", e) from None
        status = convert.container_status_from_cri(resp.status, await self._sandbox_of(container_id))
        self._container_cache[container_id] = (resp.status.state, status)
        return status

    async def list_containers(self, sandbox_id: str | None = None) -> list[ContainerStatus]:
        flt = api.ContainerFilter(pod_sandbox_id=sandbox_id) if sandbox_id else None
        try:
            resp = await self.rt.ListContainers(api.ListContainersRequest(filter=flt), timeout=30)
        except grpc.aio.AioRpcError as e:
            raise _error("ListContainers", e) from None
        items = list(resp.containers)
        for c in items:
            self._container_sandbox[c.id] = c.pod_sandbox_id

        async def one(c: api.Container) -> ContainerStatus | None:
            cached = self._container_cache.get(c.id)
            if cached is not None and cached[0] == c.state:
                return cached[1]
            try:
                return await self.container_status(c.id)
            except RuntimeError_ as e:
                if e.not_found:
                    return None
                raise

        found = [s for s in await asyncio.gather(*(one(c) for c in items)) if s is not None]
        if sandbox_id is None:
            for gone in set(self._container_cache) - {c.id for c in items}:
                self._forget_container(gone)
        return found

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float) -> ExecResult:
        """Run ``cmd`` in the container and wait; a command still running after ``timeout`` raises RuntimeError_."""
        seconds = math.ceil(timeout) if timeout and timeout > 0 else 0
        req = api.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=seconds)
        try:
            resp = await self.rt.ExecSync(req, timeout=seconds + 30 if seconds else None)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED or "timeout" in (e.details() or "").lower():
                raise RuntimeError_(f"command {cmd!r} in {container_id} timed out after {timeout}s") from None
            raise _error(f"ExecSync {container_id}", e) from None
        return ExecResult(exit_code=resp.exit_code, stdout=resp.stdout, stderr=resp.stderr)

    async def container_stats(self, container_id: str) -> ContainerStats:
        try:
            resp = await self.rt.ContainerStats(api.ContainerStatsRequest(container_id=container_id), timeout=30)
        except grpc.aio.AioRpcError as e:
            raise _error(f"ContainerStats {container_id}", e) from None
        cpu = resp.stats.cpu
        used = cpu.usage_core_nano_seconds.value
        nano_cores = cpu.usage_nano_cores.value
        if not nano_cores and cpu.timestamp:
            # containerd 1.6 leaves the rate empty: derive it from our previous sample
            prev = self._cpu_samples.get(container_id)
            if prev and cpu.timestamp > prev[0] and used >= prev[1]:
                nano_cores = int((used - prev[1]) * 1e9 / (cpu.timestamp - prev[0]))
            self._cpu_samples[container_id] = (cpu.timestamp, used)
        return ContainerStats(
            container_id=container_id,
            cpu_usage_nano_cores=nano_cores,
            cpu_usage_core_nano_seconds=used,
            memory_working_set_bytes=resp.stats.memory.working_set_bytes.value,
        )

    # --- streaming ------------------------------------------------------------------------

    async def exec_url(self, container_id: str, cmd: list[str], tty: bool, stdin: bool, stdout: bool,
                       stderr: bool) -> str:
        req = api.ExecRequest(container_id=container_id, cmd=cmd, tty=tty, stdin=stdin, stdout=stdout,
                              stderr=stderr and not tty)
        try:
            return (await self.rt.Exec(req, timeout=30)).url
        except grpc.aio.AioRpcError as e:
            raise _error(f"Exec {container_id}", e) from None

    async def attach_url(self, container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str:
        req = api.AttachRequest(container_id=container_id, tty=tty, stdin=stdin, stdout=stdout,
                                stderr=stderr and not tty)
        try:
            return (await self.rt.Attach(req, timeout=30)).url
        except grpc.aio.AioRpcError as e:
            raise _error(f"Attach {container_id}", e) from None

    async def port_forward_url(self, sandbox_id: str, ports: list[int]) -> str:
        req = api.PortForwardRequest(pod_sandbox_id=sandbox_id, port=ports)
        try:
            return (await self.rt.PortForward(req, timeout=30)).url
        except grpc.aio.AioRpcError as e:
            raise _error(f"PortForward {sandbox_id}", e) from None

    # --- logs -----------------------------------------------------------------------------

    def read_log(self, status: ContainerStatus, follow: bool = False) -> AsyncIterator[bytes]:
        """The CRI log lines (without newline) of a container; ``follow`` ends when the container stops."""

        async def running() -> bool:
            try:
                return (await self.container_status(status.id)).state == ContainerState.RUNNING
            except RuntimeError_:
                return False

        return logs.read_cri_log(status.log_path, follow=follow, still_running=running)

    # --- images ---------------------------------------------------------------------------

    async def _image_status(self, image: str) -> api.Image | None:
        try:
            resp = await self.img.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=image)), timeout=30)
        except grpc.aio.AioRpcError as e:
            raise _error(f"ImageStatus {image}", e) from None
        return resp.image if resp.HasField("image") and resp.image.id else None

    async def image_present(self, image: str) -> bool:
        return await self._image_status(image) is not None

    async def pull_image(self, image: str) -> str:
        """The image's ID; pulls it when missing (which fails where no registry is reachable)."""
        found = await self._image_status(image)
        if found is not None:
            return found.id
        log.info("pulling image", image=image)
        try:
            resp = await self.img.PullImage(api.PullImageRequest(image=api.ImageSpec(image=image)),
                                            timeout=self.pull_timeout)
        except grpc.aio.AioRpcError as e:
            raise RuntimeError_(
                f"image {image} is not on this node and pulling it failed ({e.details() or e.code()}); "
                f"put an image archive in {self.paths.images_dir} or import one with 'k3p ctr images import'",
                not_found=e.code() == grpc.StatusCode.NOT_FOUND,
            ) from None
        return resp.image_ref

    async def list_images(self) -> list[ImageInfo]:
        try:
            resp = await self.img.ListImages(api.ListImagesRequest(), timeout=30)
        except grpc.aio.AioRpcError as e:
            raise _error("ListImages", e) from None
        return [ImageInfo(id=i.id, tags=list(i.repo_tags), size=i.size) for i in resp.images]

    async def remove_image(self, image: str) -> None:
        try:
            await self.img.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=image)), timeout=60)
        except grpc.aio.AioRpcError as e:
            raise _error(f"RemoveImage {image}", e) from None

    async def import_image(self, path: str) -> list[str]:
        """Import an OCI or ``docker save`` archive into the CRI namespace; returns its image names."""
        try:
            self.paths.containerd_dir.mkdir(parents=True, exist_ok=True)
            names = await images.ctr_import(self.socket, path, NAMESPACE, scratch=self.paths.containerd_dir)
        except (images.ImportError_, OSError) as e:
            raise RuntimeError_(str(e)) from None
        await self._wait_for_images(names)
        return names

    async def _wait_for_images(self, names: list[str], timeout: float = 10.0) -> None:
        # CRI learns about imported images from containerd's events, a moment later
        deadline = time.monotonic() + timeout
        missing = list(names)
        while missing:
            missing = [n for n in missing if not await self.image_present(n)]
            if missing and time.monotonic() > deadline:
                raise RuntimeError_(f"imported images did not show up in CRI: {', '.join(missing)}")
            if missing:
                await asyncio.sleep(0.05)

    async def import_airgap_images(self) -> dict[str, str]:
        """Import each archive in ``<agent>/images`` not imported before; returns file -> "imported"|"skipped".

        An archive counts as imported while its size and mtime are unchanged and all the
        images it held are still present. A broken archive is logged and left out.
        """
        marker = images.ImportMarker(self.paths.import_marker)
        outcome: dict[str, str] = {}
        for archive in images.archives_in(self.paths.images_dir):
            names = marker.names_if_unchanged(archive)
            if names and all([await self.image_present(n) for n in names]):
                outcome[str(archive)] = "skipped"
                continue
            try:
                names = await self.import_image(str(archive))
            except RuntimeError_ as e:
                log.error("cannot import image archive", file=str(archive), error=str(e))
                outcome[str(archive)] = "failed"
                continue
            marker.record(archive, names)
            outcome[str(archive)] = "imported"
        return outcome

    async def sandbox_image(self) -> str:
        """The image containerd makes sandboxes from (its CRI config's sandbox_image)."""
        with contextlib.suppress(RuntimeError_, KeyError, TypeError):
            info = await self.runtime_status()
            return ocibuild.normalize_image_name(info["config"]["sandboxImage"])
        return self.pause_image

    async def ensure_pause_image(self) -> str:
        """Build and import the pause image on this node unless containerd already has it."""
        image = await self.sandbox_image()
        if await self.image_present(image):
            return image
        if not Path(ocibuild.DEFAULT_BUSYBOX).exists():
            raise RuntimeError_(f"the pause image {image} is missing and cannot be built here without "
                                f"{ocibuild.DEFAULT_BUSYBOX} (busybox-static): put its archive in "
                                f"{self.paths.images_dir}")
        log.info("building pause image", image=image)
        self.paths.containerd_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.paths.containerd_dir, prefix=".pause-") as tmp:
            archive = Path(tmp) / "pause.tar"
            await asyncio.to_thread(ocibuild.build_pause_image, archive, image)
            await self.import_image(str(archive))
        return image
