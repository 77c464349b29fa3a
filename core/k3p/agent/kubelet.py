"""The kubelet: one asyncio worker per pod bound to this node, driving the Runtime protocol.

A pod's worker is level-triggered like kube's SyncPod: each sync reads the pod (from an
informer on ``spec.nodeName=<node>``) and the pod's sandboxes and containers (from the
runtime, found by the ``io.kubernetes.pod.uid`` label), does the next steps (volumes,
sandbox, init containers in order, containers, restarts with back-off, probes, graceful
termination) and writes the status through ``pods/status`` when it changed. A sync runs
when the pod changes, when the runtime reports a change (a relist every
``relist_period`` seconds, kube's PLEG), when a timer it set fires (back-off, image pull
retry) and every ``resync_period`` seconds (volume refresh).

Everything the kubelet knows is derived from the API and the runtime, so a restarted
kubelet adopts running pods without restarting them (restart counts come from the
containers' annotations), and tears down pods that were deleted or moved meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from k3p.agent import podspec, podstatus
from k3p.agent.podstatus import PodView, ProbeState
from k3p.agent.probes import ActionTarget, ContainerProbes, run_action
from k3p.agent.volumes import VolumeError, VolumeManager
from k3p.client import ApiError, Client, EventRecorder, Informer, InformerFactory
from k3p.client.resources import CONFIGMAPS, PODS, SECRETS, SERVICES
from k3p.protocols.runtime import (
    LABEL_POD_UID,
    ContainerState,
    ContainerStatus,
    DNSConfig,
    Runtime,
    RuntimeError_,
    SandboxConfig,
    SandboxState,
    SandboxStatus,
)

log = structlog.get_logger(__name__)

Obj = dict[str, Any]

#: kube's floor for a container's stop timeout
MIN_GRACE_SECONDS = 2


@dataclass
class KubeletConfig:
    """Settings of one node's kubelet (defaults are kube's)."""

    node_name: str
    #: the node's agent folder: pods live in ``<data_dir>/pods/<uid>``, logs in ``<data_dir>/logs/pods``
    data_dir: Path
    cluster_dns: list[str] = field(default_factory=lambda: ["10.43.0.10"])
    cluster_domain: str = "cluster.local"
    relist_period: float = 1.0
    resync_period: float = 60.0
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    record_events: bool = True
    #: API requests one node's pod workers may have in flight at once
    api_concurrency: int = 8
    host_resolv_conf: str = "/etc/resolv.conf"

    @property
    def pods_dir(self) -> Path:
        return self.data_dir / "pods"

    @property
    def log_root(self) -> Path:
        return self.data_dir / "logs" / "pods"


class Backoff:
    """kube's flowcontrol.Backoff: per key, a delay that doubles up to a maximum.

    ``next(key, t)`` records a failure that happened at ``t`` (the delay starts at
    ``initial``, or doubles); ``in_backoff_since(key, t)`` tells whether, now, less than the
    current delay has passed since ``t``. An entry not updated for twice the maximum
    starts again at ``initial``.
    """

    def __init__(self, initial: float, maximum: float, clock: Callable[[], float] = time.time) -> None:
        self.initial = initial
        self.maximum = maximum
        self.clock = clock
        self._entries: dict[str, tuple[float, float]] = {}

    def _expired(self, at: float, last_update: float) -> bool:
        return at - last_update > 2 * self.maximum

    def next(self, key: str, event_time: float) -> float:
        entry = self._entries.get(key)
        if entry is None or self._expired(event_time, entry[1]):
            delay = self.initial
        else:
            delay = min(entry[0] * 2, self.maximum)
        self._entries[key] = (delay, event_time)
        return delay

    def get(self, key: str) -> float:
        entry = self._entries.get(key)
        return entry[0] if entry else 0.0

    def in_backoff_since(self, key: str, event_time: float) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        now = self.clock()
        if self._expired(now, entry[1]):
            return False
        return now - event_time < entry[0]

    def in_backoff_since_update(self, key: str) -> bool:
        """Whether less than the current delay has passed since the last recorded failure."""
        entry = self._entries.get(key)
        return entry is not None and self.clock() - entry[1] < entry[0]

    def reset(self, key: str) -> None:
        self._entries.pop(key, None)


def _newest_by_name(containers: list[ContainerStatus]) -> dict[str, list[ContainerStatus]]:
    out: dict[str, list[ContainerStatus]] = {}
    for c in podstatus.newest_first(containers):
        out.setdefault(c.name, []).append(c)
    return out


def _revision(obj: Obj | None) -> int:
    """An object's resourceVersion as a number (0 when it is not one: then it never looks newer)."""
    raw = ((obj or {}).get("metadata") or {}).get("resourceVersion") or ""
    return int(raw) if raw.isdigit() else 0


def _grace_of(containers: list[ContainerStatus]) -> int:
    for c in containers:
        raw = c.annotations.get(podspec.ANNOTATION_GRACE_PERIOD)
        if raw and raw.isdigit():
            return int(raw)
    return 30


class PodWorker:
    """Drives one pod (by uid) until it is gone from the API and the runtime."""

    def __init__(self, kubelet: Kubelet, uid: str) -> None:
        self.k = kubelet
        self.uid = uid
        self.pod: Obj | None = None
        self.done = False
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.probes: dict[str, ContainerProbes] = {}
        #: container name -> (waiting reason, message) while it cannot be (re)started
        self.waiting: dict[str, tuple[str, str]] = {}
        self.backoff = Backoff(kubelet.config.backoff_initial, kubelet.config.backoff_max)
        self.image_backoff = Backoff(kubelet.config.backoff_initial, kubelet.config.backoff_max)
        self.volume_paths: dict[str, str] | None = None
        self._volumes_at = 0.0
        #: set by the resync tick: refresh the volumes on the next sync whatever their age
        self.volumes_due = False
        self._volume_backoff = Backoff(1.0, 120.0)
        self.last_written: Obj | None = None
        self._written_rv = 0
        self.terminated = False
        self._sandbox_configs: dict[str, SandboxConfig] = {}
        self._emitted: set[tuple[str, str]] = set()
        self._errors = 0
        #: container name -> time before which a failed create/start is not retried
        self._hold_until: dict[str, float] = {}

    # --- scheduling of syncs ----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pod-{self.uid}")

    def update(self, pod: Obj | None) -> None:
        old, self.pod = self.pod, pod
        if pod is not None and old is not None and self._echo(old, pod):
            return  # only our own status write came back: nothing to do
        self.kick()

    def _echo(self, old: Obj, new: Obj) -> bool:
        """Whether ``new`` differs from ``old`` only by the status this worker wrote last."""
        if old.get("spec") != new.get("spec") or self.last_written is None:
            return False
        ignore = ("resourceVersion", "managedFields")
        if {k: v for k, v in (old.get("metadata") or {}).items() if k not in ignore} != \
                {k: v for k, v in (new.get("metadata") or {}).items() if k not in ignore}:
            return False
        status = new.get("status") or {}
        foreign = {k: v for k, v in status.items() if k not in podstatus.KUBELET_FIELDS}
        old_foreign = {k: v for k, v in (old.get("status") or {}).items() if k not in podstatus.KUBELET_FIELDS}
        return foreign == old_foreign and podstatus.owned(status) == self.last_written

    def kick(self) -> None:
        self._wake.set()

    def kick_after(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        if self._timer is not None and self._timer.when() <= when:
            return  # an earlier wake-up is already set
        if self._timer is not None:
            self._timer.cancel()

        def fire() -> None:
            self._timer = None
            self.kick()

        self._timer = loop.call_at(when, fire)

    async def stop(self) -> None:
        """Stop working (the kubelet is shutting down); containers keep running."""
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for probes in self.probes.values():
            await probes.stop()
        self.probes.clear()

    async def _run(self) -> None:
        while not self.done:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
                self._errors = 0
                await asyncio.sleep(0)  # a runtime that never blocks must not starve the loop
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._errors += 1
                delay = min(30.0, 0.5 * 2 ** min(self._errors, 6))
                if isinstance(e, ApiError | RuntimeError_):
                    log.warning("pod sync failed; retrying", pod=self.name, error=str(e), retry_in=delay)
                else:
                    log.exception("pod sync failed; retrying", pod=self.name, retry_in=delay)
                self.kick_after(delay)
        for probes in self.probes.values():
            await probes.stop()
        self.probes.clear()
        self.k.worker_done(self)

    @property
    def name(self) -> str:
        if self.pod is None:
            return self.uid
        m = self.pod.get("metadata") or {}
        return f"{m.get('namespace')}/{m.get('name')}"

    # --- runtime state ----------------------------------------------------------------------

    async def runtime_state(self) -> tuple[list[SandboxStatus], list[ContainerStatus]]:
        rt = self.k.runtime
        sandboxes = [s for s in await rt.list_pod_sandboxes() if s.labels.get(LABEL_POD_UID) == self.uid]
        containers: list[ContainerStatus] = []
        for sb in sandboxes:
            containers += await rt.list_containers(sb.id)
        return sandboxes, containers

    # --- the sync ---------------------------------------------------------------------------

    async def sync(self) -> None:
        pod = self.pod
        sandboxes, containers = await self.runtime_state()
        if pod is None:
            await self._teardown(None, sandboxes, containers)
            self.done = True
            return
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            await self._finish_deletion(pod, sandboxes, containers)
            return
        if ((pod.get("status") or {}).get("phase") in podstatus.TERMINAL_PHASES
                or (self.last_written or {}).get("phase") in podstatus.TERMINAL_PHASES):
            await self._kill_pod(pod, sandboxes, containers)
            return
        await self._sync_running(pod, sandboxes, containers)

    async def _sync_running(self, pod: Obj, sandboxes: list[SandboxStatus],
                            containers: list[ContainerStatus]) -> None:
        spec = podspec.spec(pod)
        policy = spec.get("restartPolicy") or "Always"
        if not await self._ensure_volumes(pod, sandboxes):
            await self.write_status(pod, sandboxes, containers)
            return
        sandbox = podstatus.latest_sandbox(s for s in sandboxes if s.state == SandboxState.READY)
        if sandbox is None:
            if policy == "Never" and any(c.state == ContainerState.EXITED for c in containers):
                # kube does not make a new sandbox for a Never pod whose containers already ran
                await self.write_status(pod, sandboxes, containers)
                return
            sandbox = await self._new_sandbox(pod, sandboxes, containers)
            if sandbox is None:
                await self.write_status(pod, sandboxes, containers)
                return
            sandboxes, containers = await self.runtime_state()
        changed = await self._sync_containers(pod, sandbox, containers)
        if changed:
            sandboxes, containers = await self.runtime_state()
        self._sync_probes(pod, sandbox, containers)
        status = await self.write_status(pod, sandboxes, containers)
        if status.get("phase") in podstatus.TERMINAL_PHASES:
            # finished for good: stop what is left (sidecars) and the sandbox, keep the status
            await self._kill_pod(pod, sandboxes, containers)
        elif changed:
            self.kick_after(0)  # look again soon: a container may already have exited
        await self._collect_garbage(sandboxes, containers)

    # --- volumes and sandbox ----------------------------------------------------------------

    async def _ensure_volumes(self, pod: Obj, sandboxes: list[SandboxStatus]) -> bool:
        now = time.time()
        if self.volume_paths is not None and not self.volumes_due \
                and now - self._volumes_at < self.k.config.resync_period:
            return True
        self.volumes_due = False
        if self.volume_paths is None and self._volume_backoff.in_backoff_since("volumes", self._volumes_at):
            return False
        try:
            configmaps, secrets = await self.k.referenced_objects(pod)
            sandbox = podstatus.latest_sandbox(s for s in sandboxes if s.state == SandboxState.READY)
            pod_ips = [sandbox.ip] if sandbox and sandbox.ip else []
            paths = await self.k.volumes.setup(pod, configmaps, secrets, pod_ips=pod_ips,
                                               host_ips=self.k.host_ips())
        except VolumeError as e:
            self._volumes_at = now
            delay = self._volume_backoff.next("volumes", now)
            if self.volume_paths is None:
                self.k.event(pod, "Warning", "FailedMount", str(e))
                self.kick_after(delay)
                return False
            log.warning("volume refresh failed", pod=self.name, error=str(e))
            return True
        self.volume_paths = paths
        self._volumes_at = now
        self._volume_backoff.reset("volumes")
        return True

    def sandbox_config(self, pod: Obj, attempt: int) -> SandboxConfig:
        return podspec.sandbox_config(pod, attempt=attempt, log_root=str(self.k.config.log_root),
                                      cluster_dns=self.k.config.cluster_dns,
                                      cluster_domain=self.k.config.cluster_domain, host_dns=self.k.host_dns)

    async def _new_sandbox(self, pod: Obj, sandboxes: list[SandboxStatus],
                           containers: list[ContainerStatus]) -> SandboxStatus | None:
        for c in containers:  # containers of a dead sandbox must not outlive it
            if c.state == ContainerState.RUNNING:
                await self._stop_container(pod, c, podspec.termination_grace_seconds(pod), "")
        for sb in sandboxes:
            with contextlib.suppress(RuntimeError_):
                await self.k.runtime.stop_pod_sandbox(sb.id)
        attempt = max((s.attempt for s in sandboxes), default=-1) + 1
        config = self.sandbox_config(pod, attempt)
        if self.k.runs_workloads:
            Path(config.log_directory).mkdir(parents=True, exist_ok=True)
        try:
            sid = await self.k.runtime.run_pod_sandbox(config)
        except RuntimeError_ as e:
            self.k.event(pod, "Warning", "FailedCreatePodSandBox", f"Failed to create pod sandbox: {e}")
            self.kick_after(self.backoff.next("sandbox", time.time()))
            return None
        self._sandbox_configs[sid] = config
        status = await self.k.runtime.pod_sandbox_status(sid)
        if self.k.runs_workloads and not podspec.spec(pod).get("hostNetwork"):
            self.k.volumes.write_etc_hosts(pod, [status.ip] if status.ip else [], self.k.config.cluster_domain)
        if attempt > 0:
            self.k.event(pod, "Normal", "SandboxChanged", "Pod sandbox changed, it will be killed and re-created.")
        return status

    # --- containers -------------------------------------------------------------------------

    async def _sync_containers(self, pod: Obj, sandbox: SandboxStatus, containers: list[ContainerStatus]) -> bool:
        """Start, restart or kill containers as the spec says; True when something was done."""
        spec = podspec.spec(pod)
        policy = spec.get("restartPolicy") or "Always"
        all_by_name = _newest_by_name(containers)
        here = _newest_by_name([c for c in containers if c.sandbox_id == sandbox.id])
        regular_started = any(c.get("name") in here for c in spec.get("containers") or [])
        changed = False

        for c in spec.get("initContainers") or []:
            name = c.get("name", "")
            latest = (here.get(name) or [None])[0]
            if podspec.is_restartable_init(c):
                if latest is not None and latest.state == ContainerState.RUNNING:
                    if await self._check_running(pod, c, latest, "Always"):
                        changed = True
                        if not regular_started:
                            break
                        continue
                    probes = self.probes.get(latest.id)
                    if probes is not None and not probes.started and not regular_started:
                        break  # the next init container waits until this sidecar has started
                    continue
                if latest is not None and latest.state == ContainerState.CREATED:
                    changed |= await self._start_created(pod, latest)
                else:
                    changed |= await self._start_with_backoff(pod, sandbox, c, latest, all_by_name.get(name))
                if not regular_started:
                    break
                continue
            if regular_started and (latest is None or latest.state == ContainerState.EXITED):
                continue  # init already done in this sandbox; its records may have been collected
            if latest is None:
                changed |= await self._start_with_backoff(pod, sandbox, c, None, all_by_name.get(name))
                break
            if latest.state == ContainerState.CREATED:
                changed |= await self._start_created(pod, latest)
                break
            if latest.state == ContainerState.RUNNING:
                break
            if latest.exit_code == 0:
                continue
            if policy == "Never":
                return changed  # init failed for good: the pod fails
            changed |= await self._start_with_backoff(pod, sandbox, c, latest, all_by_name.get(name))
            break
        else:
            for c in spec.get("containers") or []:
                name = c.get("name", "")
                latest = (here.get(name) or [None])[0]
                if latest is None:
                    changed |= await self._start_with_backoff(pod, sandbox, c, None, all_by_name.get(name))
                elif latest.state == ContainerState.CREATED:
                    changed |= await self._start_created(pod, latest)
                elif latest.state == ContainerState.RUNNING:
                    changed |= await self._check_running(pod, c, latest, policy)
                else:
                    restart = policy == "Always" or (policy == "OnFailure" and latest.exit_code != 0)
                    if restart:
                        changed |= await self._start_with_backoff(pod, sandbox, c, latest, all_by_name.get(name))
                    else:
                        self.waiting.pop(name, None)
        return changed

    async def _check_running(self, pod: Obj, spec: Obj, current: ContainerStatus, policy: str) -> bool:
        """Kill a running container whose spec changed or whose probes failed; True if killed."""
        name = spec.get("name", "")
        probes = self.probes.get(current.id)
        message = ""
        if current.annotations.get(podspec.ANNOTATION_CONTAINER_HASH, podspec.container_hash(spec)) != \
                podspec.container_hash(spec):
            message = f"Container {name} definition changed"
        elif probes is not None and probes.failed_startup:
            message = f"Container {name} failed startup probe"
        elif probes is not None and not probes.live:
            message = f"Container {name} failed liveness probe"
        if not message:
            return False
        message += ", will be restarted" if policy != "Never" else ""
        await self._stop_container(pod, current, podspec.termination_grace_seconds(pod), message)
        return True

    async def _start_created(self, pod: Obj, container: ContainerStatus) -> bool:
        """A container created before a restart of the kubelet but never started: start it now."""
        try:
            await self.k.runtime.start_container(container.id)
        except RuntimeError_ as e:
            self._fail_start(pod, container.name, "RunContainerError", e)
            with contextlib.suppress(RuntimeError_):
                await self.k.runtime.remove_container(container.id)
            return False
        self.waiting.pop(container.name, None)
        self.k.event(pod, "Normal", "Started", f"Started container {container.name}")
        return True

    async def _start_with_backoff(self, pod: Obj, sandbox: SandboxStatus, spec: Obj, previous: ContainerStatus | None,
                                  history: list[ContainerStatus] | None) -> bool:
        name = spec.get("name", "")
        key = f"{name}/{podspec.container_hash(spec)}"
        if previous is not None and previous.state in (ContainerState.EXITED, ContainerState.UNKNOWN):
            finished = previous.finished_at or time.time()
            if self.backoff.in_backoff_since(key, finished):
                delay = self.backoff.get(key)
                message = (f"back-off {podstatus.go_duration(delay)} restarting failed container={name} "
                           f"pod={podspec.pod_full_name(pod)}")
                self.waiting[name] = ("CrashLoopBackOff", message)
                self._event_once(pod, "Warning", "BackOff", f"Back-off restarting failed container {name} in pod "
                                 f"{podspec.pod_full_name(pod)}", key=f"{key}/{finished}")
                self.kick_after(finished + delay - time.time())
                return False
            self.backoff.next(key, finished)
        hold = self._hold_until.get(name, 0.0)
        if hold > time.time():
            self.kick_after(hold - time.time())
            return False
        attempt = (podstatus.restart_count(history[0]) + 1) if history else 0
        return await self._start_container(pod, sandbox, spec, attempt)

    def _fail_start(self, pod: Obj, name: str, reason: str, error: Exception | str) -> None:
        """A container could not be made or started: say why and retry after a back-off."""
        self.waiting[name] = (reason, str(error))
        self.k.event(pod, "Warning", "Failed", f"Error: {error}")
        delay = self.backoff.next(f"start-failure/{name}", time.time())
        self._hold_until[name] = time.time() + delay
        self.kick_after(delay)

    async def _pull(self, pod: Obj, spec: Obj) -> bool:
        """Make the container's image present per imagePullPolicy; False (waiting reason set) if not."""
        rt = self.k.runtime
        name, image = spec.get("name", ""), spec.get("image", "")
        policy = spec.get("imagePullPolicy") or "IfNotPresent"
        present = await rt.image_present(image)
        if policy == "Never" or (present and policy != "Always"):
            if not present:
                message = f'Container image "{image}" is not present with pull policy of Never'
                self.waiting[name] = ("ErrImageNeverPull", message)
                self.k.event(pod, "Warning", "ErrImageNeverPull", message)
                return False
            self._event_once(pod, "Normal", "Pulled", f'Container image "{image}" already present on machine',
                             key=f"pulled/{name}/{image}")
            return True
        key = f"image/{image}"
        if self.image_backoff.in_backoff_since_update(key):
            self.waiting[name] = ("ImagePullBackOff", f'Back-off pulling image "{image}"')
            self._event_once(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"',
                             key=f"{key}/{self.image_backoff.get(key)}")
            self.kick_after(self.image_backoff.get(key))
            return False
        self.k.event(pod, "Normal", "Pulling", f'Pulling image "{image}"')
        began = time.monotonic()
        try:
            await rt.pull_image(image)
        except RuntimeError_ as e:
            self.image_backoff.next(key, time.time())
            self.waiting[name] = ("ErrImagePull", str(e))
            self.k.event(pod, "Warning", "Failed", f'Failed to pull image "{image}": {e}')
            self.kick_after(1.0)  # the next look shows ImagePullBackOff until the delay has passed
            return False
        self.image_backoff.reset(key)
        took = time.monotonic() - began
        self.k.event(pod, "Normal", "Pulled",
                     f'Successfully pulled image "{image}" in {took:.3f}s ({took:.3f}s including waiting)')
        return True

    async def _start_container(self, pod: Obj, sandbox: SandboxStatus, spec: Obj, attempt: int) -> bool:
        rt = self.k.runtime
        name = spec.get("name", "")
        uid = self.uid
        if not await self._pull(pod, spec):
            return False
        pod_ips = [sandbox.ip, *sandbox.additional_ips] if sandbox.ip else []
        if podspec.spec(pod).get("hostNetwork"):
            pod_ips = self.k.host_ips()
        try:
            configmaps, secrets = await self.k.referenced_objects(pod, env_only=True)
            env = podspec.container_env(pod, spec, configmaps=configmaps, secrets=secrets,
                                        services_env=self.k.services_env(pod), pod_ips=pod_ips,
                                        host_ips=self.k.host_ips(), allocatable=self.k.allocatable())
            etc_hosts = term_file = ""
            if self.k.runs_workloads:
                if not podspec.spec(pod).get("hostNetwork"):
                    etc_hosts = str(self.k.volumes.pod_dir(uid) / "etc-hosts")
                term_file = self.k.volumes.termination_message_file(uid, name, attempt)
            mounts = self.k.volumes.mounts(pod, spec, self.volume_paths or {}, dict(env), etc_hosts=etc_hosts,
                                          termination_file=term_file)
        except (podspec.ConfigError, VolumeError) as e:
            self._fail_start(pod, name, "CreateContainerConfigError", e)
            return False
        config = podspec.container_config(pod, spec, podspec.ContainerInputs(env=env, mounts=mounts, attempt=attempt))
        sandbox_config = self._sandbox_configs.get(sandbox.id) or self.sandbox_config(pod, sandbox.attempt)
        if self.k.runs_workloads and sandbox_config.log_directory:
            (Path(sandbox_config.log_directory) / name).mkdir(parents=True, exist_ok=True)
        try:
            cid = await rt.create_container(sandbox.id, config, sandbox_config)
        except RuntimeError_ as e:
            self._fail_start(pod, name, "CreateContainerError", e)
            return False
        self.k.event(pod, "Normal", "Created", f"Created container: {name}")
        try:
            await rt.start_container(cid)
        except RuntimeError_ as e:
            self._fail_start(pod, name, "RunContainerError", e)
            with contextlib.suppress(RuntimeError_):
                await rt.remove_container(cid)
            return False
        self.waiting.pop(name, None)
        self._hold_until.pop(name, None)
        self.backoff.reset(f"start-failure/{name}")
        self.k.event(pod, "Normal", "Started", f"Started container {name}")
        hook = (spec.get("lifecycle") or {}).get("postStart")
        if hook:
            target = ActionTarget(rt, cid, spec, pod_ips[0] if pod_ips else "", self.k.runs_workloads)
            outcome = await run_action(hook, target, float(podspec.termination_grace_seconds(pod)))
            if not outcome.success:
                self.k.event(pod, "Warning", "FailedPostStartHook", outcome.message or "PostStartHook failed")
                with contextlib.suppress(RuntimeError_):
                    await rt.stop_container(cid, MIN_GRACE_SECONDS)
        return True

    async def _stop_container(self, pod: Obj | None, container: ContainerStatus, grace: int, message: str) -> None:
        """preStop hook, then stop with what is left of the grace period (never less than 2 s)."""
        if container.state not in (ContainerState.RUNNING, ContainerState.CREATED):
            return
        spec = podspec.find_container(pod, container.name) if pod else None
        if pod is not None:
            self.k.event(pod, "Normal", "Killing", message or f"Stopping container {container.name}")
        began = time.monotonic()
        hook = ((spec or {}).get("lifecycle") or {}).get("preStop")
        if hook and container.state == ContainerState.RUNNING and spec is not None:
            sandbox = next((s for s in await self.k.runtime.list_pod_sandboxes() if s.id == container.sandbox_id),
                           None)
            target = ActionTarget(self.k.runtime, container.id, spec, sandbox.ip if sandbox else "",
                                  self.k.runs_workloads)
            try:
                outcome = await asyncio.wait_for(run_action(hook, target, float(max(grace, 1))), max(grace, 1))
            except TimeoutError:
                outcome = None
            if outcome is not None and not outcome.success and pod is not None:
                self.k.event(pod, "Warning", "FailedPreStopHook", outcome.message or "PreStopHook failed")
        left = max(MIN_GRACE_SECONDS, int(grace - (time.monotonic() - began)))
        try:
            await self.k.runtime.stop_container(container.id, left)
        except RuntimeError_ as e:
            if not e.not_found:
                raise
        probes = self.probes.pop(container.id, None)
        if probes is not None:
            await probes.stop()

    async def _kill_pod(self, pod: Obj | None, sandboxes: list[SandboxStatus],
                        containers: list[ContainerStatus], grace: int | None = None) -> None:
        """Stop every container (regular ones first, then sidecars) and every sandbox of the pod."""
        if grace is None:
            grace = podspec.termination_grace_seconds(pod) if pod else _grace_of(containers)
        running = [c for c in containers if c.state in (ContainerState.RUNNING, ContainerState.CREATED)]
        if running or any(s.state == SandboxState.READY for s in sandboxes):
            sidecars = {c.get("name") for c in (podspec.spec(pod).get("initContainers") or [])} if pod else set()
            first = [c for c in running if c.name not in sidecars]
            last = [c for c in running if c.name in sidecars]
            for group in (first, last):
                await asyncio.gather(*(self._stop_container(pod, c, grace, "") for c in group))
            for sb in sandboxes:
                if sb.state == SandboxState.READY:
                    with contextlib.suppress(RuntimeError_):
                        await self.k.runtime.stop_pod_sandbox(sb.id)
        for probes in self.probes.values():
            await probes.stop()
        self.probes.clear()

    async def _remove_all(self, sandboxes: list[SandboxStatus], containers: list[ContainerStatus]) -> None:
        for c in containers:
            with contextlib.suppress(RuntimeError_):
                await self.k.runtime.remove_container(c.id)
        for sb in sandboxes:
            with contextlib.suppress(RuntimeError_):
                await self.k.runtime.stop_pod_sandbox(sb.id)
                await self.k.runtime.remove_pod_sandbox(sb.id)
        await self.k.volumes.cleanup(self.uid)
        log_root = self.k.config.log_root
        if self.k.runs_workloads and log_root.is_dir():
            for folder in log_root.glob(f"*_{self.uid}"):
                await asyncio.to_thread(shutil.rmtree, folder, True)

    async def _teardown(self, pod: Obj | None, sandboxes: list[SandboxStatus],
                        containers: list[ContainerStatus]) -> None:
        """The pod is gone from the API (or was never there): stop and remove what is left."""
        if sandboxes or containers:
            log.info("tearing down a pod that is no longer bound here", pod=self.name)
            await self._kill_pod(pod, sandboxes, containers)
            await self._remove_all(sandboxes, containers)
        else:
            await self.k.volumes.cleanup(self.uid)

    async def _finish_deletion(self, pod: Obj, sandboxes: list[SandboxStatus],
                               containers: list[ContainerStatus]) -> None:
        """Graceful deletion: stop everything within the grace period, then delete the pod for good."""
        if not self.terminated:
            await self._kill_pod(pod, sandboxes, containers)
            sandboxes, containers = await self.runtime_state()
            self.terminated = True
            with contextlib.suppress(ApiError):
                await self.write_status(pod, sandboxes, containers, terminal=True)
        await self._remove_all(sandboxes, containers)
        meta = pod.get("metadata") or {}
        try:
            async with self.k.api_slots:
                await self.k.client.delete(PODS, meta["name"], meta.get("namespace"), grace_period_seconds=0,
                                           preconditions={"uid": self.uid})
        except ApiError as e:
            if not (e.not_found or e.conflict):
                raise

    async def _collect_garbage(self, sandboxes: list[SandboxStatus], containers: list[ContainerStatus]) -> None:
        """Keep the two newest instances of each container and the two newest sandboxes (kube's GC)."""
        for instances in _newest_by_name(containers).values():
            for old in instances[2:]:
                if old.state == ContainerState.EXITED:
                    with contextlib.suppress(RuntimeError_):
                        await self.k.runtime.remove_container(old.id)
        ordered = sorted(sandboxes, key=lambda s: (s.attempt, s.created_at), reverse=True)
        for old in ordered[2:]:
            if old.state != SandboxState.READY:
                with contextlib.suppress(RuntimeError_):
                    await self.k.runtime.remove_pod_sandbox(old.id)

    # --- probes -----------------------------------------------------------------------------

    def _sync_probes(self, pod: Obj, sandbox: SandboxStatus, containers: list[ContainerStatus]) -> None:
        running = {c.id: c for c in containers if c.state == ContainerState.RUNNING}
        for cid in [cid for cid in self.probes if cid not in running]:
            probes = self.probes.pop(cid)
            task = asyncio.create_task(probes.stop())
            self.k.keep(task)
        pod_ip = sandbox.ip or (self.k.host_ips() or [""])[0]
        for cid, c in running.items():
            if cid in self.probes:
                continue
            spec = podspec.find_container(pod, c.name)
            if spec is None or not any(spec.get(f"{k}Probe") for k in ("startup", "liveness", "readiness")):
                continue
            target = ActionTarget(self.k.runtime, cid, spec, pod_ip, self.k.runs_workloads)
            probes = ContainerProbes(spec, target, c.started_at, self._probe_changed(pod, c.name))
            known = self._api_container_status(pod, c.name)
            if known.get("containerID") == f"{self.k.runtime.name}://{cid}":
                # adopted after a kubelet restart: keep what the probes had found until they say otherwise
                probes.resume(started=bool(known.get("started")), ready=bool(known.get("ready")))
            probes.start()
            self.probes[cid] = probes

    def _probe_changed(self, pod: Obj, name: str) -> Callable[[str, bool, str], None]:
        def changed(kind: str, ok: bool, message: str) -> None:
            if not ok:
                self.k.event(self.pod or pod, "Warning", "Unhealthy",
                             f"{kind.capitalize()} probe failed: {message}".rstrip(": "))
            self.kick()

        return changed

    @staticmethod
    def _api_container_status(pod: Obj, name: str) -> Obj:
        status = pod.get("status") or {}
        for cs in [*(status.get("containerStatuses") or []), *(status.get("initContainerStatuses") or [])]:
            if cs.get("name") == name:
                return cs
        return {}

    def probe_states(self) -> dict[str, ProbeState]:
        return {cid: ProbeState(started=p.started, ready=p.ready) for cid, p in self.probes.items()}

    # --- status -----------------------------------------------------------------------------

    def _event_once(self, pod: Obj, type_: str, reason: str, message: str, key: str) -> None:
        if (reason, key) in self._emitted:
            return
        self._emitted.add((reason, key))
        self.k.event(pod, type_, reason, message)

    async def write_status(self, pod: Obj, sandboxes: list[SandboxStatus], containers: list[ContainerStatus],
                           terminal: bool = False) -> Obj:
        """Compute the status and write it through ``pods/status`` if it differs from what is there."""
        api_status = pod.get("status") or {}
        # until the informer shows our last write, that write is the better picture of the status
        fresh = self.last_written is None or _revision(pod) >= self._written_rv
        base = api_status if fresh else {**api_status, **podstatus.owned(self.last_written)}
        view = PodView(sandboxes=sandboxes, containers=containers, probes=self.probe_states(),
                       waiting=dict(self.waiting), host_ips=self.k.host_ips(), runtime_name=self.k.runtime.name,
                       terminal=terminal,
                       termination_message=self._termination_message if self.k.runs_workloads else None)
        status = podstatus.generate({**pod, "status": base}, view, time.time())
        if status == podstatus.owned(api_status) or (not fresh and status == self.last_written):
            return status
        patch = podstatus.status_patch(api_status, status)
        meta = pod.get("metadata") or {}
        try:
            async with self.k.api_slots:
                stored = await self.k.client.patch(PODS, meta["name"], {"metadata": {"uid": self.uid},
                                                                        "status": patch},
                                                   meta.get("namespace"), subresource="status",
                                                   patch_type="strategic")
        except ApiError as e:
            if e.not_found:
                return status
            raise
        self.last_written = status
        self._written_rv = _revision(stored)
        return status

    def _termination_message(self, name: str, attempt: int) -> str:
        return self.k.volumes.read_termination_message(self.uid, name, attempt)


class Kubelet:
    """The pod workers of one node, fed by a pod informer and a runtime relist."""

    def __init__(self, client: Client, runtime: Runtime, config: KubeletConfig, *,
                 host_ips: Callable[[], list[str]] | None = None,
                 allocatable: Callable[[], dict[str, Any]] | None = None,
                 events: EventRecorder | None = None) -> None:
        self.client = client
        self.runtime = runtime
        self.config = config
        self.node_name = config.node_name
        self.runs_workloads = runtime.runs_workloads
        self._host_ips = host_ips or list
        self._allocatable = allocatable or dict
        self.events = events or EventRecorder(client, "kubelet", host=config.node_name)
        self.volumes = VolumeManager(client, config.pods_dir, host_paths=self.runs_workloads,
                                     allocatable=self._allocatable)
        self.workers: dict[str, PodWorker] = {}
        self.api_slots = asyncio.Semaphore(config.api_concurrency)
        self.host_dns = DNSConfig()
        self.informers = InformerFactory(client)
        self.pods: Informer | None = None
        self.services: Informer | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._fingerprints: dict[str, tuple[Any, ...]] = {}
        self._synced = False

    # --- what workers use -------------------------------------------------------------------

    def host_ips(self) -> list[str]:
        return list(self._host_ips())

    def allocatable(self) -> dict[str, Any]:
        return dict(self._allocatable())

    def keep(self, task: asyncio.Task[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def event(self, pod: Obj, type_: str, reason: str, message: str) -> None:
        """Record an Event about ``pod`` in the background (best effort)."""
        if not self.config.record_events:
            return

        async def emit() -> None:
            async with self.api_slots:
                await self.events.emit({**pod, "kind": "Pod", "apiVersion": "v1"}, type_, reason, message)

        self.keep(asyncio.create_task(emit()))

    def services_env(self, pod: Obj) -> dict[str, str]:
        if self.services is None:
            return {}
        ns = podspec.meta(pod).get("namespace", "")
        enable = podspec.spec(pod).get("enableServiceLinks", True) is not False
        return podspec.service_env(self.services.items(), ns, enable)

    async def referenced_objects(self, pod: Obj, env_only: bool = False
                                 ) -> tuple[dict[str, Obj | None], dict[str, Obj | None]]:
        """The ConfigMaps and Secrets the pod refers to, fetched now (None for a missing one)."""
        ns = podspec.meta(pod).get("namespace")
        configmaps, secrets = podspec.referenced_objects(pod)
        if env_only:
            env_pod = {**pod, "spec": {**podspec.spec(pod), "volumes": []}}
            configmaps, secrets = podspec.referenced_objects(env_pod)

        async def fetch(res: Any, name: str) -> Obj | None:
            try:
                async with self.api_slots:
                    return await self.client.get(res, name, ns)
            except ApiError as e:
                if e.not_found:
                    return None
                raise

        cm_values = await asyncio.gather(*(fetch(CONFIGMAPS, n) for n in configmaps))
        secret_values = await asyncio.gather(*(fetch(SECRETS, n) for n in secrets))
        return dict(zip(configmaps, cm_values, strict=True)), dict(zip(secrets, secret_values, strict=True))

    # --- workers ----------------------------------------------------------------------------

    def _worker(self, uid: str) -> PodWorker:
        worker = self.workers.get(uid)
        if worker is None:
            worker = self.workers[uid] = PodWorker(self, uid)
            worker.start()
        return worker

    def worker_done(self, worker: PodWorker) -> None:
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
            # the runtime may still list the pod until the next relist: forget its fingerprint
            self._fingerprints.pop(worker.uid, None)

    def _on_pod(self, type_: str, pod: Obj, old: Obj | None) -> None:
        uid = podspec.meta(pod).get("uid", "")
        if old is not None:
            old_uid = podspec.meta(old).get("uid", "")
            if old_uid and old_uid != uid and old_uid in self.workers:
                self.workers[old_uid].update(None)  # same name, new pod: the old one is gone
        if not uid:
            return
        if type_ == "DELETED" or podspec.spec(pod).get("nodeName") != self.node_name:
            if uid in self.workers:
                self.workers[uid].update(None)
            return
        self._worker(uid).update(pod)

    def _api_uids(self) -> set[str]:
        assert self.pods is not None
        return {podspec.meta(p).get("uid", "") for p in self.pods.items()}

    # --- runtime relist (kube's PLEG) --------------------------------------------------------

    async def relist(self) -> set[str]:
        """Compare the runtime's pods with the last look; wake the workers of pods that changed."""
        sandboxes = await self.runtime.list_pod_sandboxes()
        containers = await self.runtime.list_containers()
        prints: dict[str, list[Any]] = {}
        for sb in sandboxes:
            uid = sb.labels.get(LABEL_POD_UID)
            if uid:
                prints.setdefault(uid, []).append(("s", sb.id, sb.state.value))
        for c in containers:
            uid = c.labels.get(LABEL_POD_UID)
            if uid:
                prints.setdefault(uid, []).append(("c", c.id, c.state.value))
        current = {uid: tuple(sorted(items)) for uid, items in prints.items()}
        changed = {uid for uid in current.keys() | self._fingerprints.keys()
                   if current.get(uid) != self._fingerprints.get(uid)}
        self._fingerprints = current
        if self._synced and changed:
            known = self._api_uids()
            for uid in changed:
                if uid in self.workers:
                    self.workers[uid].kick()
                elif uid in current and uid not in known:
                    self._worker(uid).update(None)  # in the runtime, not in the API: an orphan
        return changed

    async def _relist_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.relist_period)
            try:
                await self.relist()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("runtime relist failed", node=self.node_name, error=str(e))

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_period)
            for worker in list(self.workers.values()):
                # the tick is not aligned with each pod's last refresh: an age check alone would
                # skip every other tick and let a refresh take up to twice the period
                worker.volumes_due = True
                worker.kick()

    # --- running ----------------------------------------------------------------------------

    def _read_host_dns(self) -> None:
        try:
            self.host_dns = podspec.parse_resolv_conf(Path(self.config.host_resolv_conf).read_text())
        except OSError:
            self.host_dns = DNSConfig()

    async def run(self, ready: Callable[[], None]) -> None:
        """Adopt what the runtime runs, follow the node's pods until cancelled (pods keep running)."""
        self._read_host_dns()
        self.pods = self.informers.informer(PODS, field_selector=f"spec.nodeName={self.node_name}")
        if self.runs_workloads:
            self.services = self.informers.informer(SERVICES)
        self.pods.add_listener(self._on_pod)
        # what the runtime already runs, before the API says anything: to be adopted or torn down
        await self.relist()
        self.informers.start()
        try:
            await self.informers.wait_synced()
            self._synced = True
            known = self._api_uids()
            for uid in list(self._fingerprints):
                if uid not in known and uid not in self.workers:
                    self._worker(uid).update(None)
            log.info("kubelet started", node=self.node_name, pods=len(known), adopted=len(self._fingerprints))
            ready()
            await asyncio.gather(self._relist_loop(), self._resync_loop())
        finally:
            self._synced = False
            await asyncio.gather(*(w.stop() for w in list(self.workers.values())), return_exceptions=True)
            self.workers.clear()
            for task in list(self._background):
                task.cancel()
            await self.informers.stop()


async def run_kubelet(new_client: Callable[[str], Client], runtime: Runtime, config: KubeletConfig,
                      ready: Callable[[], None], **kwargs: Any) -> None:
    """Run a kubelet with its own API client until cancelled."""
    client = new_client(f"kubelet/{config.node_name}")
    try:
        await Kubelet(client, runtime, config, **kwargs).run(ready)
    finally:
        await client.close()


__all__ = ["Backoff", "Kubelet", "KubeletConfig", "PodWorker", "run_kubelet"]
