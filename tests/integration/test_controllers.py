"""The controllers against a real k3p server (no kubelet: the test plays kubelet and scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from k3p.client import ApiError, Client, Informer, Obj
from k3p.client.objects import format_time, get_condition
from k3p.client.resources import (
    CONFIGMAPS,
    CONTROLLERREVISIONS,
    DAEMONSETS,
    DEPLOYMENTS,
    ENDPOINTS,
    ENDPOINTSLICES,
    EVENTS,
    JOBS,
    LEASES,
    NAMESPACES,
    NODES,
    PERSISTENTVOLUMECLAIMS,
    PODS,
    REPLICASETS,
    SERVICEACCOUNTS,
    SERVICES,
    STATEFULSETS,
)
from k3p.testing import K3pServer, async_wait_for
from k3p_plugins.controller_manager import ControllerManager, ControllerOptions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    # The controllers under test run in this process (the test plays kubelet and scheduler): the
    # server's own controller manager and scheduler would race them, e.g. two ReplicaSet
    # controllers each creating the missing pods.
    s = K3pServer(tmp_path_factory.mktemp("controllers"),
                  args=["--disable-agent", "--disable-controller-manager", "--disable-scheduler"]).start()
    yield s
    s.stop()


@pytest.fixture
async def client(server: K3pServer) -> AsyncIterator[Client]:
    c = Client.from_kubeconfig(server.kubeconfig)
    yield c
    await c.close()


def options(server: K3pServer, **kw: Any) -> ControllerOptions:
    return ControllerOptions(apiserver_address="127.0.0.1", apiserver_port=server.port,
                             root_ca_pem=server.ca_file.read_text(), **kw)


@contextlib.asynccontextmanager
async def controllers(server: K3pServer, client: Client, **kw: Any) -> AsyncIterator[ControllerManager]:
    gc_client = Client.from_kubeconfig(server.kubeconfig)
    manager = ControllerManager(client, options(server, **kw), gc_client=gc_client)
    await manager.start(sync_timeout=30)
    try:
        yield manager
    finally:
        await manager.stop()
        await gc_client.close()


async def namespace(client: Client, name: str) -> str:
    await client.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


async def make_node(client: Client, name: str, ready: bool = True) -> Obj:
    now = format_time()
    conditions = [{"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady",
                   "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
                   "lastTransitionTime": now}]
    node = await client.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name, "labels": {"kubernetes.io/hostname": name}}})
    node["status"] = {"conditions": conditions}
    return await client.update_status(NODES, node)


class FakeKubelet:
    """Plays scheduler and kubelets: binds pending pods, reports them Running/Ready with an IP,
    and finishes pods being deleted. ``ready(pod)`` decides whether a pod turns ready."""

    def __init__(self, client: Client, nodes: list[str], namespace: str,
                 ready: Callable[[Obj], bool] = lambda _p: True) -> None:
        self.client = client
        self.nodes = itertools.cycle(nodes)
        self.namespace = namespace
        self.ready = ready
        self.informer = Informer(client, PODS, namespace)
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.ips = itertools.count(2)
        self.task: asyncio.Task[None] | None = None
        self.worker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeKubelet:
        self.informer.add_listener(lambda _t, o, _old: self.queue.put_nowait(o["metadata"]["name"]))
        self.task = asyncio.create_task(self.informer.run())
        self.worker = asyncio.create_task(self._work())
        await self.informer.wait_synced()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in (self.task, self.worker):
            assert t is not None
            t.cancel()
        await asyncio.gather(self.task, self.worker, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            name = await self.queue.get()
            try:
                await self._handle(name)
            except ApiError:
                pass

    async def _handle(self, name: str) -> None:
        pod = self.informer.get(f"{self.namespace}/{name}")
        if pod is None:
            return
        if pod["metadata"].get("deletionTimestamp"):
            await self.client.delete(PODS, name, self.namespace, grace_period_seconds=0)
            return
        if not pod["spec"].get("nodeName"):
            await self.client.create_subresource(PODS, name, "binding", {
                "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": next(self.nodes)}}, self.namespace)
            return
        status = pod.get("status") or {}
        if status.get("phase") == "Pending" and not status.get("podIP"):
            await self.set_running(pod, self.ready(pod))

    async def _update_status(self, name: str, change: Callable[[Obj], bool | None]) -> Obj:
        """Read the pod, ``change`` its status, write it; again on a conflict, as a kubelet does.

        The worker and the test both write pods' status: whichever loses a race retries on the
        fresh object. ``change`` returns False while the pod is not ready for it yet, and None
        when there is nothing left to do.
        """
        for _ in range(100):
            pod = await self.client.get(PODS, name, self.namespace)
            wanted = change(pod)
            if wanted is None:
                return pod
            if wanted:
                try:
                    return await self.client.update_status(PODS, pod)
                except ApiError as e:
                    if not e.conflict:
                        raise
            await asyncio.sleep(0.05)
        raise TimeoutError(f"could not update the status of pod {name}")

    async def set_running(self, pod: Obj, ready: bool) -> Obj:
        ip = f"10.42.0.{next(self.ips)}"
        now = format_time()
        flag = "True" if ready else "False"

        def running(fresh: Obj) -> bool | None:
            if fresh["status"].get("podIP"):
                return None  # started meanwhile (the test set it up itself)
            fresh["status"].update({
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.1", "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                    {"type": "Ready", "status": flag, "lastTransitionTime": now},
                ],
                "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": "", "ready": ready,
                                       "restartCount": 0, "started": True,
                                       "state": {"running": {"startedAt": now}}}
                                      for c in fresh["spec"]["containers"]],
            })
            return True

        return await self._update_status(pod["metadata"]["name"], running)

    async def set_ready(self, name: str, ready: bool) -> Obj:
        flag = "True" if ready else "False"

        def readiness(pod: Obj) -> bool:
            conditions = pod["status"].get("conditions")
            if not conditions:
                return False  # not running yet: the worker starts it first
            for cond in conditions:
                if cond["type"] in ("Ready", "ContainersReady"):
                    cond["status"] = flag
                    cond["lastTransitionTime"] = format_time()
            return True

        return await self._update_status(name, readiness)

    async def finish(self, name: str, phase: str = "Succeeded") -> Obj:
        now = format_time()

        def finished(pod: Obj) -> bool:
            pod["status"]["phase"] = phase
            for cond in pod["status"].get("conditions") or []:
                if cond["type"] in ("Ready", "ContainersReady"):
                    cond["status"] = "False"
            pod["status"]["containerStatuses"] = [
                {"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1, "finishedAt": now,
                                          "startedAt": now,
                                          "reason": "Completed" if phase == "Succeeded" else "Error"}}}
                for c in pod["spec"]["containers"]]
            return True

        return await self._update_status(name, finished)


def deployment(name: str, ns: str, replicas: int, image: str, **strategy: Any) -> Obj:
    spec: Obj = {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": image}]}}}
    if strategy:
        spec["strategy"] = {"type": "RollingUpdate", "rollingUpdate": strategy}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns}, "spec": spec}


async def pods_of(client: Client, ns: str, selector: str) -> list[Obj]:
    return (await client.list(PODS, ns, label_selector=selector))["items"]


def is_ready(pod: Obj) -> bool:
    cond = get_condition(pod.get("status"), "Ready")
    return cond is not None and cond.get("status") == "True"


async def test_deployment_rolls_with_max_unavailable_and_kubectl_reads_it(server: K3pServer, client: Client) -> None:
    ns = await namespace(client, "deploy")
    async with controllers(server, client), FakeKubelet(client, ["n1", "n2"], ns) as kubelet:
        await client.create(DEPLOYMENTS, deployment("web", ns, 3, "busybox:1", maxUnavailable=1, maxSurge=0))

        async def three_ready() -> bool:
            pods = await pods_of(client, ns, "app=web")
            return len(pods) == 3 and all(is_ready(p) for p in pods)

        await async_wait_for(three_ready, 30, what="3 ready pods")
        rss = (await client.list(REPLICASETS, ns))["items"]
        assert len(rss) == 1
        rs = rss[0]
        pod_hash = rs["metadata"]["labels"]["pod-template-hash"]
        assert rs["metadata"]["name"] == f"web-{pod_hash}"
        assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
        assert rs["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] == "3"
        assert rs["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] == "3"
        assert rs["spec"]["selector"]["matchLabels"]["pod-template-hash"] == pod_hash
        for pod in await pods_of(client, ns, "app=web"):
            ref = pod["metadata"]["ownerReferences"][0]
            assert ref["kind"] == "ReplicaSet" and ref["controller"] and ref["blockOwnerDeletion"]
            assert pod["metadata"]["name"].startswith(f"web-{pod_hash}-")
            assert len(pod["metadata"]["name"]) == len(f"web-{pod_hash}-") + 5

        # Watch every pod change during the rollout: never fewer than 2 ready, never more than 3 pods.
        live: dict[str, Obj] = {p["metadata"]["name"]: p for p in await pods_of(client, ns, "app=web")}
        violations: list[str] = []
        watcher = Informer(client, PODS, ns, label_selector="app=web")

        def check(type_: str, pod: Obj, _old: Obj | None) -> None:
            name = pod["metadata"]["name"]
            if type_ == "DELETED" or pod["metadata"].get("deletionTimestamp"):
                live.pop(name, None)
            else:
                live[name] = pod
            ready = sum(1 for p in live.values() if is_ready(p))
            if ready < 2 or len(live) > 3:
                violations.append(f"{ready} ready of {len(live)}")

        watcher.add_listener(check)
        watch_task = asyncio.create_task(watcher.run())
        await watcher.wait_synced()
        await client.patch(DEPLOYMENTS, "web", {"metadata": {"annotations": {"kubernetes.io/change-cause": "v2"}},
                                                "spec": {"template": {"spec": {"containers": [
                                                    {"name": "c", "image": "busybox:2"}]}}}}, ns,
                           patch_type="strategic")
        result = await asyncio.to_thread(server.kubectl, "-n", ns, "rollout", "status", "deployment/web",
                                         "--timeout=60s")
        assert result.returncode == 0, result.stderr
        assert 'deployment "web" successfully rolled out' in result.stdout
        await asyncio.sleep(0.5)
        watch_task.cancel()
        await asyncio.gather(watch_task, return_exceptions=True)
        assert not violations, violations
        pods = await pods_of(client, ns, "app=web")
        assert len(pods) == 3 and {p["spec"]["containers"][0]["image"] for p in pods} == {"busybox:2"}

        d = await client.get(DEPLOYMENTS, "web", ns)
        st = d["status"]
        assert st["observedGeneration"] == d["metadata"]["generation"] == 2
        assert (st["replicas"], st["updatedReplicas"], st["readyReplicas"], st["availableReplicas"]) == (3, 3, 3, 3)
        assert "unavailableReplicas" not in st
        progressing = get_condition(st, "Progressing")
        available = get_condition(st, "Available")
        assert progressing["reason"] == "NewReplicaSetAvailable" and progressing["status"] == "True"
        assert available["reason"] == "MinimumReplicasAvailable" and available["status"] == "True"
        assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
        rss = {r["metadata"]["name"]: r for r in (await client.list(REPLICASETS, ns))["items"]}
        old_rs = rss.pop(rs["metadata"]["name"])
        assert old_rs["spec"]["replicas"] == 0
        (new_rs,) = rss.values()
        assert new_rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
        assert new_rs["metadata"]["annotations"]["kubernetes.io/change-cause"] == "v2"

        # kubectl rollout undo patches the old template back: the old ReplicaSet comes back as revision 3.
        undo = await asyncio.to_thread(server.kubectl, "-n", ns, "rollout", "undo", "deployment/web")
        assert undo.returncode == 0, undo.stderr
        result = await asyncio.to_thread(server.kubectl, "-n", ns, "rollout", "status", "deployment/web",
                                         "--timeout=60s")
        assert result.returncode == 0, result.stderr
        back = await client.get(REPLICASETS, rs["metadata"]["name"], ns)
        assert back["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
        assert back["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"
        assert back["spec"]["replicas"] == 3
        assert len((await client.list(REPLICASETS, ns))["items"]) == 2
        history = await asyncio.to_thread(server.kubectl, "-n", ns, "rollout", "history", "deployment/web")
        assert history.returncode == 0, history.stderr
        assert "2         v2" in history.stdout.replace("\t", " ") or "v2" in history.stdout

        # scale down removes pods (the newest, not ready first)
        await client.patch(DEPLOYMENTS, "web", {"spec": {"replicas": 1}}, ns)

        async def one_pod() -> bool:
            return len(await pods_of(client, ns, "app=web")) == 1

        await async_wait_for(one_pod, 20, what="scale down to 1")
        events = (await client.list(EVENTS, ns))["items"]
        reasons = {(e["involvedObject"]["kind"], e["reason"]) for e in events}
        assert ("Deployment", "ScalingReplicaSet") in reasons
        assert ("ReplicaSet", "SuccessfulCreate") in reasons and ("ReplicaSet", "SuccessfulDelete") in reasons

        # deleting the Deployment removes its ReplicaSets and pods (garbage collector, Background)
        await client.delete(DEPLOYMENTS, "web", ns)

        async def all_gone() -> bool:
            return not (await client.list(REPLICASETS, ns))["items"] and not await pods_of(client, ns, "app=web")

        await async_wait_for(all_gone, 30, what="ReplicaSets and pods collected")
        del kubelet


async def test_foreground_and_orphan_deletion(server: K3pServer, client: Client) -> None:
    ns = await namespace(client, "gc")
    async with controllers(server, client), FakeKubelet(client, ["n1"], ns):
        await client.create(DEPLOYMENTS, deployment("fg", ns, 2, "busybox:1"))
        await client.create(DEPLOYMENTS, deployment("orph", ns, 2, "busybox:1"))

        async def pods_up() -> bool:
            return len(await pods_of(client, ns, "app in (fg,orph)")) == 4

        await async_wait_for(pods_up, 30, what="4 pods")
        await client.delete(DEPLOYMENTS, "fg", ns, propagation_policy="Foreground")
        d = await client.get(DEPLOYMENTS, "fg", ns)
        assert "foregroundDeletion" in d["metadata"]["finalizers"]

        async def fg_gone() -> bool:
            try:
                await client.get(DEPLOYMENTS, "fg", ns)
                return False
            except ApiError as e:
                return e.not_found

        await async_wait_for(fg_gone, 30, what="foreground deletion finished")
        assert not await pods_of(client, ns, "app=fg")
        assert not (await client.list(REPLICASETS, ns, label_selector="app=fg"))["items"]

        await client.delete(DEPLOYMENTS, "orph", ns, propagation_policy="Orphan")

        async def orphaned() -> bool:
            try:
                await client.get(DEPLOYMENTS, "orph", ns)
                return False
            except ApiError as e:
                if not e.not_found:
                    raise
            rss = (await client.list(REPLICASETS, ns, label_selector="app=orph"))["items"]
            return len(rss) == 1 and not rss[0]["metadata"].get("ownerReferences")

        await async_wait_for(orphaned, 30, what="orphaned ReplicaSet")
        await asyncio.sleep(1)
        assert len(await pods_of(client, ns, "app=orph")) == 2


async def test_job_completions_with_parallelism(server: K3pServer, client: Client) -> None:
    ns = await namespace(client, "jobs")
    async with controllers(server, client), FakeKubelet(client, ["n1"], ns, ready=lambda _p: True) as kubelet:
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "work", "namespace": ns},
               "spec": {"completions": 3, "parallelism": 2, "template": {"spec": {
                   "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}}}}
        created = await client.create(JOBS, job)
        uid = created["metadata"]["uid"]
        finished: set[str] = set()
        most_active = 0
        for _ in range(200):
            pods = await pods_of(client, ns, f"batch.kubernetes.io/controller-uid={uid}")
            running = [p for p in pods
                       if p["status"].get("phase") == "Running" and p["metadata"]["name"] not in finished]
            active = [p for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")]
            most_active = max(most_active, len(active))
            for pod in running[:1]:
                assert pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "work"
                assert pod["metadata"]["labels"]["job-name"] == "work"
                assert "batch.kubernetes.io/job-tracking" in pod["metadata"]["finalizers"]
                assert pod["spec"]["restartPolicy"] == "Never"
                await kubelet.finish(pod["metadata"]["name"])
                finished.add(pod["metadata"]["name"])
            current = await client.get(JOBS, "work", ns)
            if get_condition(current.get("status"), "Complete"):
                break
            await asyncio.sleep(0.1)
        status = current["status"]
        assert most_active <= 2
        assert status["succeeded"] == 3 and not status.get("active") and not status.get("failed")
        assert get_condition(status, "Complete")["status"] == "True"
        met = get_condition(status, "SuccessCriteriaMet")
        assert met["status"] == "True" and met["reason"] == "CompletionsReached"
        assert status["startTime"] and status["completionTime"]
        assert status["ready"] == 0 and not status["uncountedTerminatedPods"]
        # counted pods no longer carry the tracking finalizer
        for pod in await pods_of(client, ns, f"batch.kubernetes.io/controller-uid={uid}"):
            assert "batch.kubernetes.io/job-tracking" not in (pod["metadata"].get("finalizers") or [])
        got = await asyncio.to_thread(server.kubectl, "-n", ns, "wait", "--for=condition=complete", "job/work",
                                      "--timeout=10s")
        assert got.returncode == 0, got.stderr


async def test_job_backoff_limit_fails(server: K3pServer, client: Client) -> None:
    ns = await namespace(client, "jobfail")
    async with controllers(server, client), FakeKubelet(client, ["n1"], ns) as kubelet:
        await client.create(JOBS, {"apiVersion": "batch/v1", "kind": "Job",
                                   "metadata": {"name": "bad", "namespace": ns},
                                   "spec": {"backoffLimit": 0, "template": {"spec": {
                                       "restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}})

        async def running() -> list[Obj]:
            return [p for p in await pods_of(client, ns, "job-name=bad") if p["status"].get("phase") == "Running"]

        (pod,) = await async_wait_for(running, 20, what="job pod running")
        await kubelet.finish(pod["metadata"]["name"], "Failed")

        async def failed() -> Obj | None:
            job = await client.get(JOBS, "bad", ns)
            return job if get_condition(job.get("status"), "Failed") else None

        job = await async_wait_for(failed, 20, what="job failed")
        assert job["status"]["failed"] == 1
        assert get_condition(job["status"], "Failed")["reason"] == "BackoffLimitExceeded"
        assert get_condition(job["status"], "FailureTarget")["reason"] == "BackoffLimitExceeded"


async def test_node_ipam_gives_distinct_ranges(server: K3pServer, client: Client) -> None:
    async with controllers(server, client, cluster_cidr="10.99.0.0/22"):
        for name in ("ipam-a", "ipam-b", "ipam-c"):
            await client.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})

        async def cidrs() -> dict[str, str] | None:
            found = {}
            for name in ("ipam-a", "ipam-b", "ipam-c"):
                node = await client.get(NODES, name)
                if not node.get("spec", {}).get("podCIDR"):
                    return None
                assert node["spec"]["podCIDRs"] == [node["spec"]["podCIDR"]]
                found[name] = node["spec"]["podCIDR"]
            return found

        first = await async_wait_for(cidrs, 20, what="pod CIDRs")
        assert len(set(first.values())) == 3
        # once set, a node's range is fixed: the node's pod network and every route were built from it
        with pytest.raises(ApiError) as e:
            await client.patch(NODES, "ipam-a", {"spec": {"podCIDR": "10.99.9.0/24", "podCIDRs": ["10.99.9.0/24"]}})
        assert e.value.status == 422 and 'may not change podCIDR except from "" to valid' in str(e.value)
        assert (await client.get(NODES, "ipam-a"))["spec"]["podCIDR"] == first["ipam-a"]
        assert all(c.startswith("10.99.") and c.endswith("/24") for c in first.values())
        await client.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ipam-d"}})

        async def fourth() -> str | None:
            return (await client.get(NODES, "ipam-d")).get("spec", {}).get("podCIDR")

        d = await async_wait_for(fourth, 20, what="4th CIDR")
        assert d not in first.values()
        # the range is full: a fifth node waits until one is released
        await client.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ipam-e"}})
        await asyncio.sleep(1)
        assert not (await client.get(NODES, "ipam-e")).get("spec", {}).get("podCIDR")
        # updates of the waiting node (a kubelet's status reports) neither retry nor repeat the event
        for i in range(5):
            await client.patch(NODES, "ipam-e", {"metadata": {"labels": {"beat": str(i)}}})
        await asyncio.sleep(1)
        events = [e for e in (await client.list(EVENTS, "default"))["items"]
                  if e["involvedObject"].get("name") == "ipam-e" and e["reason"] == "CIDRNotAvailable"]
        assert [e.get("count") for e in events] == [1]
        await client.delete(NODES, "ipam-a")

        async def fifth() -> str | None:
            return (await client.get(NODES, "ipam-e")).get("spec", {}).get("podCIDR")

        assert await async_wait_for(fifth, 30, what="released CIDR reused") == first["ipam-a"]
    for name in ("ipam-b", "ipam-c", "ipam-d", "ipam-e"):
        await client.delete(NODES, name)


async def test_stale_lease_makes_node_unknown_and_evicts(server: K3pServer, client: Client) -> None:
    ns = await namespace(client, "lifecycle")
    await make_node(client, "stale")
    lease = await client.create(LEASES, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                         "metadata": {"name": "stale", "namespace": "kube-node-lease"},
                                         "spec": {"holderIdentity": "stale", "leaseDurationSeconds": 40,
                                                  "renewTime": format_time() + ""}})
    del lease
    async with controllers(server, client, node_monitor_grace_period=2.0, node_monitor_period=0.5), \
            FakeKubelet(client, ["stale"], ns):
        for name, seconds in (("short", 1), ("long", 3600)):
            await client.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                                       "spec": {"containers": [{"name": "c", "image": "x"}], "tolerations": [
                                           {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                            "effect": "NoExecute", "tolerationSeconds": seconds}]}})

        async def both_ready() -> bool:
            pods = [await client.get(PODS, n, ns) for n in ("short", "long")]
            return all(is_ready(p) for p in pods)

        await async_wait_for(both_ready, 20, what="pods ready")

        async def unknown() -> Obj | None:
            node = await client.get(NODES, "stale")
            ready = get_condition(node["status"], "Ready")
            taints = {(t["key"], t["effect"]) for t in node["spec"].get("taints") or []}
            wanted = {("node.kubernetes.io/unreachable", "NoSchedule"), ("node.kubernetes.io/unreachable", "NoExecute")}
            return node if ready["status"] == "Unknown" and wanted <= taints else None

        node = await async_wait_for(unknown, 20, what="node Unknown and tainted")
        ready = get_condition(node["status"], "Ready")
        assert ready["reason"] == "NodeStatusUnknown" and ready["message"] == "Kubelet stopped posting node status."
        noexec = next(t for t in node["spec"]["taints"] if t["effect"] == "NoExecute")
        assert noexec["timeAdded"]

        async def long_not_ready() -> bool:
            return not is_ready(await client.get(PODS, "long", ns))

        await async_wait_for(long_not_ready, 10, what="pods marked not ready")

        async def short_evicted() -> bool:
            try:
                await client.get(PODS, "short", ns)
                return False
            except ApiError as e:
                return e.not_found

        await async_wait_for(short_evicted, 15, what="pod evicted after tolerationSeconds")
        events = (await client.list(EVENTS, ns))["items"]
        assert any(e["reason"] == "TaintManagerEviction" and e["involvedObject"]["name"] == "short" for e in events)
        await client.get(PODS, "long", ns)  # still tolerated

        # the kubelet comes back: Ready again, the taints go away
        fresh = await client.get(NODES, "stale")
        now = format_time()
        for cond in fresh["status"]["conditions"]:
            if cond["type"] == "Ready":
                cond.update({"status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now,
                             "lastTransitionTime": now, "message": "kubelet is posting ready status"})
        await client.update_status(NODES, fresh)
        current = await client.get(LEASES, "stale", "kube-node-lease")
        current["spec"]["renewTime"] = format_time()
        await client.update(LEASES, current)

        async def untainted() -> bool:
            node = await client.get(NODES, "stale")
            return not [t for t in node["spec"].get("taints") or [] if t["key"].startswith("node.kubernetes.io/")]

        await async_wait_for(untainted, 10, what="taints removed")
    await client.delete(NODES, "stale")


async def test_default_service_account_and_root_ca(server: K3pServer, client: Client) -> None:
    async with controllers(server, client):
        ns = await namespace(client, "fresh")

        async def both() -> bool:
            try:
                await client.get(SERVICEACCOUNTS, "default", ns)
                cm = await client.get(CONFIGMAPS, "kube-root-ca.crt", ns)
            except ApiError:
                return False
            return cm["data"]["ca.crt"] == server.ca_file.read_text()

        await async_wait_for(both, 15, what="default service account and root CA")
        await client.delete(SERVICEACCOUNTS, "default", ns)

        async def back() -> bool:
            try:
                await client.get(SERVICEACCOUNTS, "default", ns)
                return True
            except ApiError:
                return False

        await async_wait_for(back, 15, what="default service account recreated")
        for system in ("default", "kube-system", "kube-public", "kube-node-lease"):
            await async_wait_for(lambda s=system: client.get(SERVICEACCOUNTS, "default", s), 10)


async def test_endpoints_follow_ready_pods(server: K3pServer, client: Client) -> None:
    ns = await namespace(client, "eps")
    async with controllers(server, client), FakeKubelet(client, ["n1"], ns) as kubelet:
        await client.create(SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": "web", "namespace": ns, "labels": {"tier": "front"}}, "spec": {
            "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}})
        for i in range(2):
            await client.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"web-{i}", "namespace": ns, "labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "c", "image": "x", "ports": [{"name": "web", "containerPort": 8080 + i}]}]}})

        async def endpoints(ready: int, not_ready: int) -> Obj | None:
            try:
                ep = await client.get(ENDPOINTS, "web", ns)
            except ApiError:
                return None
            got_ready = sum(len(s.get("addresses") or []) for s in ep.get("subsets") or [])
            got_not = sum(len(s.get("notReadyAddresses") or []) for s in ep.get("subsets") or [])
            return ep if (got_ready, got_not) == (ready, not_ready) else None

        ep = await async_wait_for(lambda: endpoints(2, 0), 20, what="2 ready endpoints")
        ports = sorted(s["ports"][0]["port"] for s in ep["subsets"])
        assert ports == [8080, 8081]  # a named targetPort resolves per pod
        assert all(s["ports"][0]["name"] == "http" for s in ep["subsets"])
        assert ep["metadata"]["labels"]["tier"] == "front"
        addr = ep["subsets"][0]["addresses"][0]
        assert addr["targetRef"]["kind"] == "Pod" and addr["nodeName"] == "n1"

        await kubelet.set_ready("web-0", False)
        await async_wait_for(lambda: endpoints(1, 1), 20, what="one not ready")

        async def slices() -> list[Obj] | None:
            items = (await client.list(ENDPOINTSLICES, ns, label_selector="kubernetes.io/service-name=web"))["items"]
            eps = [e for s in items for e in s.get("endpoints") or []]
            states = sorted((e["targetRef"]["name"], e["conditions"]["ready"]) for e in eps)
            return items if states == [("web-0", False), ("web-1", True)] else None

        items = await async_wait_for(slices, 20, what="slices follow readiness")
        for s in items:
            labels = s["metadata"]["labels"]
            assert labels["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
            assert s["addressType"] == "IPv4"
            assert s["metadata"]["ownerReferences"][0]["kind"] == "Service"
            assert s["metadata"]["name"].startswith("web-")

        await client.delete(PODS, "web-1", ns)
        await async_wait_for(lambda: endpoints(0, 1), 20, what="deleted pod leaves the endpoints")

        async def kubernetes_endpoints() -> bool:
            ep = await client.get(ENDPOINTS, "kubernetes", "default")
            sl = await client.get(ENDPOINTSLICES, "kubernetes", "default")
            return (ep["subsets"][0]["ports"][0]["port"] == server.port
                    and sl["endpoints"][0]["addresses"] == ["127.0.0.1"])

        await async_wait_for(kubernetes_endpoints, 20, what="kubernetes service endpoints")


async def test_daemonset_one_pod_per_eligible_node_and_rolling_update(server: K3pServer, client: Client) -> None:
    ns = await namespace(client, "daemons")
    for name in ("ds-a", "ds-b", "ds-c"):
        await make_node(client, name)
    node_c = await client.get(NODES, "ds-c")
    node_c["spec"] = {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}
    await client.update(NODES, node_c)

    def daemon_target(pod: Obj) -> str:
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        return terms["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]

    class DaemonKubelet(FakeKubelet):
        async def _handle(self, name: str) -> None:
            pod = self.informer.get(f"{self.namespace}/{name}")
            if pod is not None and not pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
                self.nodes = itertools.cycle([daemon_target(pod)])
            await super()._handle(name)

    async with controllers(server, client), DaemonKubelet(client, ["x"], ns):
        await client.create(DAEMONSETS, {"apiVersion": "apps/v1", "kind": "DaemonSet",
                                         "metadata": {"name": "agent", "namespace": ns},
                                         "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {
                                             "metadata": {"labels": {"app": "agent"}},
                                             "spec": {"containers": [{"name": "c", "image": "agent:1"}]}}}})

        async def settled(image: str) -> list[Obj] | None:
            pods = [p for p in await pods_of(client, ns, "app=agent") if not p["metadata"].get("deletionTimestamp")]
            ds = await client.get(DAEMONSETS, "agent", ns)
            st = ds.get("status") or {}
            ok = (len(pods) == 2 and all(is_ready(p) for p in pods)
                  and {p["spec"]["containers"][0]["image"] for p in pods} == {image}
                  and st.get("numberReady") == 2 and st.get("updatedNumberScheduled") == 2
                  and st.get("desiredNumberScheduled") == 2
                  and st.get("observedGeneration") == ds["metadata"]["generation"])
            return pods if ok else None

        pods = await async_wait_for(lambda: settled("agent:1"), 30, what="daemon pods on two nodes")
        assert sorted(p["spec"]["nodeName"] for p in pods) == ["ds-a", "ds-b"]  # ds-c's taint is not tolerated
        pod = pods[0]
        assert daemon_target(pod) == pod["spec"]["nodeName"]
        keys = {(t["key"], t["effect"]) for t in pod["spec"]["tolerations"]}
        assert ("node.kubernetes.io/unreachable", "NoExecute") in keys
        assert ("node.kubernetes.io/unschedulable", "NoSchedule") in keys
        first_hash = pod["metadata"]["labels"]["controller-revision-hash"]
        revisions = (await client.list(CONTROLLERREVISIONS, ns))["items"]
        assert [r["metadata"]["name"] for r in revisions] == [f"agent-{first_hash}"]

        await client.patch(DAEMONSETS, "agent", {"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "agent:2"}]}}}}, ns, patch_type="strategic")
        pods = await async_wait_for(lambda: settled("agent:2"), 30, what="daemon pods updated")
        assert {p["metadata"]["labels"]["controller-revision-hash"] for p in pods} != {first_hash}
        assert len((await client.list(CONTROLLERREVISIONS, ns))["items"]) == 2
        result = await asyncio.to_thread(server.kubectl, "-n", ns, "rollout", "status", "daemonset/agent",
                                         "--timeout=20s")
        assert result.returncode == 0, result.stderr
    for name in ("ds-a", "ds-b", "ds-c"):
        await client.delete(NODES, name)


async def test_statefulset_ordered_creation_claims_and_reverse_update(server: K3pServer, client: Client) -> None:
    ns = await namespace(client, "sts")
    ready_gate: set[str] = set()
    async with controllers(server, client), \
            FakeKubelet(client, ["n1"], ns, ready=lambda p: p["metadata"]["name"] in ready_gate) as kubelet:
        await client.create(STATEFULSETS, {
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": ns},
            "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                     "template": {"metadata": {"labels": {"app": "db"}},
                                  "spec": {"containers": [{"name": "c", "image": "db:1"}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                         "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})

        async def names() -> list[str]:
            return sorted(p["metadata"]["name"] for p in await pods_of(client, ns, "app=db"))

        await async_wait_for(lambda: _eq(names(), ["db-0"]), 20, what="db-0 first")
        await asyncio.sleep(1)
        assert await names() == ["db-0"]  # db-1 waits until db-0 is Running and Ready
        pod0 = await client.get(PODS, "db-0", ns)
        assert pod0["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] == "db-0"
        assert pod0["metadata"]["labels"]["apps.kubernetes.io/pod-index"] == "0"
        assert pod0["spec"]["hostname"] == "db-0" and pod0["spec"]["subdomain"] == "db"
        volume = next(v for v in pod0["spec"]["volumes"] if v["name"] == "data")
        assert volume["persistentVolumeClaim"]["claimName"] == "data-db-0"
        await client.get(PERSISTENTVOLUMECLAIMS, "data-db-0", ns)
        for i in range(3):
            ready_gate.add(f"db-{i}")
            await kubelet.set_ready(f"db-{i}", True)
            if i < 2:
                await async_wait_for(lambda i=i: _eq(names(), [f"db-{j}" for j in range(i + 2)]), 20)
        first_rev = (await client.get(PODS, "db-0", ns))["metadata"]["labels"]["controller-revision-hash"]

        async def status_is(**want: Any) -> Obj | None:
            sts = await client.get(STATEFULSETS, "db", ns)
            st = sts.get("status") or {}
            return sts if all(st.get(k) == v for k, v in want.items()) else None

        await async_wait_for(lambda: status_is(replicas=3, readyReplicas=3, currentReplicas=3, updatedReplicas=3,
                                               currentRevision=first_rev, updateRevision=first_rev), 20)
        # update: pods are replaced from the highest ordinal down
        deleted_order: list[str] = []
        watcher = Informer(client, PODS, ns, label_selector="app=db")
        watcher.add_listener(lambda t, o, _old: deleted_order.append(o["metadata"]["name"]) if t == "DELETED" else None)
        task = asyncio.create_task(watcher.run())
        await watcher.wait_synced()
        await client.patch(STATEFULSETS, "db", {"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "db:2"}]}}}}, ns, patch_type="strategic")
        async def updated() -> Obj | None:
            sts = await status_is(updatedReplicas=3, readyReplicas=3, currentReplicas=3)
            st = (sts or {}).get("status") or {}
            return sts if st.get("updateRevision") not in (None, first_rev) and \
                st.get("currentRevision") == st["updateRevision"] else None

        sts = await async_wait_for(updated, 30, what="rolling update done")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert deleted_order == ["db-2", "db-1", "db-0"]
        assert sts["status"]["currentRevision"] == sts["status"]["updateRevision"] != first_rev
        result = await asyncio.to_thread(server.kubectl, "-n", ns, "rollout", "status", "statefulset/db",
                                         "--timeout=20s")
        assert result.returncode == 0, result.stderr
        # scale down removes the highest ordinal; the claim stays (Retain)
        await client.patch(STATEFULSETS, "db", {"spec": {"replicas": 2}}, ns)
        await async_wait_for(lambda: _eq(names(), ["db-0", "db-1"]), 20, what="scale down")
        await client.get(PERSISTENTVOLUMECLAIMS, "data-db-2", ns)


async def test_job_ttl_after_finished_deletes_it(server: K3pServer, client: Client) -> None:
    ns = await namespace(client, "ttl")
    async with controllers(server, client), FakeKubelet(client, ["n1"], ns) as kubelet:
        await client.create(JOBS, {"apiVersion": "batch/v1", "kind": "Job",
                                   "metadata": {"name": "once", "namespace": ns},
                                   "spec": {"ttlSecondsAfterFinished": 1, "template": {"spec": {
                                       "restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}})

        async def running() -> list[Obj]:
            return [p for p in await pods_of(client, ns, "job-name=once") if p["status"].get("phase") == "Running"]

        (pod,) = await async_wait_for(running, 20, what="job pod running")
        await kubelet.finish(pod["metadata"]["name"])

        async def gone() -> bool:
            try:
                await client.get(JOBS, "once", ns)
                return False
            except ApiError as e:
                return e.not_found

        await async_wait_for(gone, 20, what="finished job deleted after its TTL")
        await async_wait_for(lambda: _eq(pods_of(client, ns, "job-name=once"), []), 20, what="its pods collected")


async def _eq(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def test_component_runs_until_cancelled(server: K3pServer, client: Client) -> None:
    from k3p.config import Config
    from k3p.context import PluginContext
    from k3p_plugins.controller_manager import controller_manager_component

    config = Config("server", {"cluster_cidr": "10.42.0.0/16", "https_listen_port": server.port,
                               "advertise_address": "127.0.0.1", "node_monitor_grace_period": "30"})
    made: list[Client] = []

    def component_client(component: str, _agent: str) -> Client:
        assert component == "controller-manager"  # acts as system:kube-controller-manager, not as an admin
        made.append(Client.from_kubeconfig(server.kubeconfig))
        return made[-1]

    ctx = PluginContext(config=config, data_dir=server.data_dir, component_client=component_client)
    component = controller_manager_component(ctx, disabled={"podgc"})
    # its rights come from the plugin's manifests: it starts once the addon deployer applied them
    assert component.name == "controller-manager" and component.requires == ("addons",)
    became_ready = asyncio.Event()
    task = asyncio.create_task(component.run(became_ready.set))
    await asyncio.wait_for(became_ready.wait(), 30)
    ns = await namespace(client, "component")
    await async_wait_for(lambda: client.get(SERVICEACCOUNTS, "default", ns), 15, what="default service account")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(made) == 2 and all(c._http.is_closed for c in made)
