"""Workloads on hollow nodes: `k3p server` + `k3p agent --simulate N`, driven with the real kubectl.

The nodes run the real node agent and kubelet over the simulated runtime, so the
controllers, the scheduler and the kubelet all act as they would with containers.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest

from k3p.testing import HollowNodes, K3pServer, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("hollow")
    server = K3pServer(workdir / "server", args=["--disable-agent", "--node-monitor-grace-period", "25s"])
    agents: list[HollowNodes] = []
    try:
        server.start()
        agents.append(HollowNodes(server, workdir / "agent", 3, "hollow"))
        wait_for(lambda: ready_nodes(server) >= 3, 60, 0.5, "3 hollow nodes Ready")
        yield server, agents, workdir
    finally:
        for a in agents:
            a.stop()
        server.stop()


def kubectl(server: K3pServer, *args: str, input: str | None = None) -> str:
    return server.kubectl(*args, input=input, check=True, timeout=120).stdout


def ready_nodes(server: K3pServer) -> int:
    nodes = json.loads(server.kubectl("get", "nodes", "-o", "json").stdout or '{"items": []}')["items"]
    return sum(1 for n in nodes for c in n["status"].get("conditions", [])
               if c["type"] == "Ready" and c["status"] == "True")


def pods(server: K3pServer, selector: str, namespace: str = "default") -> list[dict]:
    items = json.loads(kubectl(server, "get", "pods", "-n", namespace, "-l", selector, "-o", "json"))["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def test_deployment_rolls_out_spreads_undoes_scales_and_deletes(cluster) -> None:
    server, _, _ = cluster
    kubectl(server, "create", "deployment", "web", "--image=registry.local/web:1", "--replicas=6")
    kubectl(server, "rollout", "status", "deployment/web", "--timeout=90s")
    spread = Counter(p["spec"]["nodeName"] for p in pods(server, "app=web"))
    assert sorted(spread.values()) == [2, 2, 2], spread
    kubectl(server, "set", "image", "deployment/web", "web=registry.local/web:2")
    kubectl(server, "rollout", "status", "deployment/web", "--timeout=90s")
    images = {p["spec"]["containers"][0]["image"] for p in pods(server, "app=web")}
    assert images == {"registry.local/web:2"}
    kubectl(server, "rollout", "undo", "deployment/web")
    kubectl(server, "rollout", "status", "deployment/web", "--timeout=90s")
    assert {p["spec"]["containers"][0]["image"] for p in pods(server, "app=web")} == {"registry.local/web:1"}
    kubectl(server, "scale", "deployment/web", "--replicas=1")
    wait_for(lambda: len(pods(server, "app=web")) == 1, 60, 0.5, "scale down to 1 pod")
    kubectl(server, "delete", "deployment", "web")
    wait_for(lambda: not pods(server, "app=web") and not json.loads(
        kubectl(server, "get", "rs", "-l", "app=web", "-o", "json"))["items"], 60, 0.5, "RS and pods collected")


def test_daemonset_job_and_statefulset(cluster) -> None:
    server, agents, workdir = cluster
    kubectl(server, "apply", "-f", "-", input="""
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agentd}
spec:
  selector: {matchLabels: {app: agentd}}
  template:
    metadata: {labels: {app: agentd}}
    spec: {containers: [{name: d, image: registry.local/d:1}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: three}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: registry.local/c:1, command: [sh, -c, "sleep 1; exit 0"]}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: registry.local/db:1}]}
""")
    wait_for(lambda: len(pods(server, "app=agentd")) == 3, 60, 0.5, "one daemon pod per node")
    kubectl(server, "wait", "--for=condition=complete", "job/three", "--timeout=90s")
    kubectl(server, "rollout", "status", "statefulset/db", "--timeout=90s")
    db = sorted(pods(server, "app=db"), key=lambda p: p["metadata"]["creationTimestamp"])
    # (volumeClaimTemplates with bound claims: tests/integration/test_local_storage.py)
    assert [p["metadata"]["name"] for p in db] == ["db-0", "db-1", "db-2"]
    # a node that joins gets a daemon pod too
    extra = HollowNodes(server, workdir / "late", 1, "late")
    agents.append(extra)
    wait_for(lambda: len(pods(server, "app=agentd")) == 4, 60, 0.5, "a daemon pod on the new node")


def test_pod_that_fits_nowhere_waits_with_upstream_message_then_schedules(cluster) -> None:
    server, agents, workdir = cluster
    kubectl(server, "apply", "-f", "-", input="""
apiVersion: v1
kind: Pod
metadata: {name: huge}
spec:
  containers: [{name: c, image: registry.local/c:1, resources: {requests: {cpu: "12"}}}]
""")

    def unschedulable() -> str:
        pod = json.loads(kubectl(server, "get", "pod", "huge", "-o", "json"))
        cond = [c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"]
        return cond[0].get("message", "") if cond and cond[0]["status"] == "False" else ""

    message = wait_for(unschedulable, 30, 0.5, "PodScheduled=False on the huge pod")
    assert "nodes are available:" in message and "Insufficient cpu" in message
    assert "FailedScheduling" in kubectl(server, "get", "events", "--field-selector", "involvedObject.name=huge")
    big = HollowNodes(server, workdir / "big", 1, "big", "--simulate-capacity", "cpu=16,memory=64Gi,pods=110")
    agents.append(big)
    wait_for(lambda: json.loads(kubectl(server, "get", "pod", "huge", "-o", "json"))["spec"].get("nodeName"),
             60, 0.5, "the huge pod bound to the big node")


def test_node_that_stops_renewing_goes_unknown_and_its_pods_move(cluster) -> None:
    server, agents, workdir = cluster
    lonely = HollowNodes(server, workdir / "lonely", 1, "lonely")
    agents.append(lonely)
    wait_for(lambda: "lonely-0" in kubectl(server, "get", "nodes", "-o", "name"), 60, 0.5, "lonely node")
    kubectl(server, "apply", "-f", "-", input="""
apiVersion: apps/v1
kind: Deployment
metadata: {name: pinned}
spec:
  replicas: 1
  selector: {matchLabels: {app: pinned}}
  template:
    metadata: {labels: {app: pinned}}
    spec:
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            preference: {matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [lonely-0]}]}
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers: [{name: c, image: registry.local/c:1}]
""")
    kubectl(server, "rollout", "status", "deployment/pinned", "--timeout=60s")
    first_pod = pods(server, "app=pinned")[0]
    assert first_pod["spec"]["nodeName"] == "lonely-0"
    first = first_pod["metadata"]["uid"]
    lonely.stop(signal.SIGKILL)  # no goodbye: the lease simply stops being renewed
    started = time.monotonic()

    def node_unknown() -> bool:
        node = json.loads(kubectl(server, "get", "node", "lonely-0", "-o", "json"))
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        return ready["status"] == "Unknown"

    wait_for(node_unknown, 50, 0.5, "lonely-0 Ready=Unknown")
    assert time.monotonic() - started < 50
    taints = json.loads(kubectl(server, "get", "node", "lonely-0", "-o", "json"))["spec"].get("taints", [])
    assert {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"} in [
        {"key": t["key"], "effect": t["effect"]} for t in taints]
    # evicted after its 2 s toleration, and the Deployment's replacement runs on another node
    def replaced() -> bool:
        now = pods(server, "app=pinned")
        return bool(now) and all(p["metadata"]["uid"] != first and p["spec"].get("nodeName") not in (None, "lonely-0")
                                 and p["status"].get("phase") == "Running" for p in now)

    wait_for(replaced, 60, 0.5, "the pod evicted and replaced on another node")


def test_server_restart_in_the_middle_of_a_rollout(cluster) -> None:
    server, _, _ = cluster
    kubectl(server, "create", "deployment", "restart", "--image=registry.local/r:1", "--replicas=6")
    time.sleep(0.5)
    assert server.stop() == 0
    server.start()
    kubectl(server, "rollout", "status", "deployment/restart", "--timeout=120s")
    names = [p["metadata"]["name"] for p in pods(server, "app=restart")]
    assert len(names) == 6 and len(set(names)) == 6
    time.sleep(2)  # nothing more appears later either
    assert len(pods(server, "app=restart")) == 6


def test_cronjob_runs_on_schedule_and_keeps_its_history_limit(cluster) -> None:
    server, _, _ = cluster
    kubectl(server, "apply", "-f", "-", input="""
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: registry.local/c:1, command: [sh, -c, "exit 0"]}]
""")

    def succeeded() -> bool:
        status = json.loads(kubectl(server, "get", "cronjob", "tick", "-o", "json")).get("status") or {}
        return bool(status.get("lastSuccessfulTime"))

    # the first run starts at the next minute boundary
    wait_for(succeeded, 100, 1, "the CronJob's first Job to succeed")
    jobs = [j for j in json.loads(kubectl(server, "get", "jobs", "-o", "json"))["items"]
            if j["metadata"]["name"].startswith("tick-")]
    assert 1 <= len(jobs) <= 2  # the history limit keeps one finished Job (a second may be running)
