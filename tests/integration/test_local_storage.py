"""Persistent volumes on hollow nodes: `k3p server` (binder, scheduler, local-path provisioner) and
`k3p agent --simulate 3`, driven with the real kubectl.

Hollow nodes make no folders (their kubelet takes a bound claim as it is), so Released
local-path volumes on them are deleted by the server-side provisioner.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from k3p.testing import HollowNodes, K3pServer, wait_for

pytestmark = pytest.mark.slow

NODES = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("storage")
    server = K3pServer(workdir / "server", args=["--disable-agent"])
    agents: list[HollowNodes] = []
    try:
        server.start()
        agents.append(HollowNodes(server, workdir / "agent", NODES, "disk"))
        wait_for(lambda: ready_nodes(server) >= NODES, 60, 0.5, f"{NODES} hollow nodes Ready")
        wait_for(lambda: get(server, "storageclass", "local-path") is not None, 30, 0.5, "StorageClass local-path")
        yield server
    finally:
        for a in agents:
            a.stop()
        server.stop()


def kubectl(server: K3pServer, *args: str, input: str | None = None) -> str:
    return server.kubectl(*args, input=input, check=True, timeout=120).stdout


def get(server: K3pServer, *what: str, namespace: str = "default") -> dict | None:
    result = server.kubectl("get", *what, "-n", namespace, "-o", "json", timeout=60)
    return json.loads(result.stdout) if result.returncode == 0 else None


def ready_nodes(server: K3pServer) -> int:
    nodes = (get(server, "nodes") or {"items": []})["items"]
    return sum(1 for n in nodes for c in n["status"].get("conditions", [])
               if c["type"] == "Ready" and c["status"] == "True")


def phase(obj: dict | None) -> str:
    return ((obj or {}).get("status") or {}).get("phase", "")


def events_for(server: K3pServer, name: str) -> list[tuple[str, str]]:
    items = json.loads(kubectl(server, "get", "events", "-o", "json",
                               "--field-selector", f"involvedObject.name={name}"))["items"]
    return [(e["reason"], e["message"]) for e in items]


def claim_user(pod: str, claim: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {pod}}}
spec:
  containers: [{{name: c, image: registry.local/app:1, volumeMounts: [{{name: data, mountPath: /data}}]}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}]
"""


def test_claim_waits_for_its_pod_then_gets_a_volume_on_the_pods_node(cluster: K3pServer) -> None:
    server = cluster
    kubectl(server, "apply", "-f", "-", input="""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: solo}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 2Gi}}
""")
    # no class named: the default class is given, and it waits for a consumer
    wait_for(lambda: ("WaitForFirstConsumer", "waiting for first consumer to be created before binding")
             in events_for(server, "solo"), 30, 0.5, "WaitForFirstConsumer event")
    claim = get(server, "pvc", "solo")
    assert claim["spec"]["storageClassName"] == "local-path" and phase(claim) == "Pending"
    assert not claim["spec"].get("volumeName")
    assert (get(server, "pv") or {"items": []})["items"] == []

    kubectl(server, "apply", "-f", "-", input=claim_user("solo-user", "solo"))
    wait_for(lambda: phase(get(server, "pod", "solo-user")) == "Running", 60, 0.5, "pod Running")
    pod = get(server, "pod", "solo-user")
    claim = get(server, "pvc", "solo")
    uid = claim["metadata"]["uid"]
    volume = get(server, "pv", f"pvc-{uid}")
    assert phase(claim) == "Bound" and phase(volume) == "Bound"
    assert claim["spec"]["volumeName"] == f"pvc-{uid}"
    assert claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == pod["spec"]["nodeName"]
    assert claim["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] == "yes"
    assert claim["status"]["capacity"] == {"storage": "2Gi"}
    assert volume["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == "rancher.io/local-path"
    assert volume["spec"]["claimRef"]["uid"] == uid
    assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    [term] = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "kubernetes.io/hostname", "operator": "In",
                                         "values": [pod["spec"]["nodeName"]]}]
    expected = Path(server.data_dir) / "storage" / f"pvc-{uid}_default_solo"
    assert volume["spec"]["hostPath"] == {"path": str(expected), "type": "DirectoryOrCreate"}
    reasons = [r for r, _ in events_for(server, "solo")]
    assert {"ExternalProvisioning", "Provisioning", "ProvisioningSucceeded"} <= set(reasons)
    table = kubectl(server, "get", "pv,pvc")
    assert f"pvc-{uid}" in table and "default/solo" in table and "local-path" in table and "Bound" in table

    # a claim in use is not deleted before its pod is gone (pvc-protection)
    assert "kubernetes.io/pvc-protection" in claim["metadata"]["finalizers"]
    kubectl(server, "delete", "pvc", "solo", "--wait=false")
    wait_for(lambda: get(server, "pvc", "solo")["metadata"].get("deletionTimestamp"), 30, 0.5, "claim Terminating")
    assert phase(get(server, "pv", f"pvc-{uid}")) == "Bound"
    # once the pod goes, the claim goes, and its volume is released and deleted
    kubectl(server, "delete", "pod", "solo-user", "--wait=true", "--timeout=60s")
    wait_for(lambda: get(server, "pvc", "solo") is None, 60, 0.5, "claim deleted")
    wait_for(lambda: get(server, "pv", f"pvc-{uid}") is None, 60, 0.5, "provisioned volume deleted")


def test_statefulset_with_claim_templates_comes_up_in_order(cluster: K3pServer) -> None:
    server = cluster
    kubectl(server, "apply", "-f", "-", input="""
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: registry.local/db:1, volumeMounts: [{name: data, mountPath: /var/db}]}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
""")
    kubectl(server, "rollout", "status", "statefulset/db", "--timeout=120s")
    pods = {p["metadata"]["name"]: p for p in get(server, "pods", "-l", "app=db")["items"]}
    assert sorted(pods) == ["db-0", "db-1", "db-2"]

    def ready_since(pod: dict) -> str:
        return next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready")

    # OrderedReady: each pod is made only once the one before it is Ready
    for before, after in (("db-0", "db-1"), ("db-1", "db-2")):
        assert pods[after]["metadata"]["creationTimestamp"] >= ready_since(pods[before])
    for i in range(3):
        claim = get(server, "pvc", f"data-db-{i}")
        assert phase(claim) == "Bound", claim
        volume = get(server, "pv", claim["spec"]["volumeName"])
        assert phase(volume) == "Bound"
        [term] = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        assert term["matchExpressions"][0]["values"] == [pods[f"db-{i}"]["spec"]["nodeName"]]


def test_hand_made_volume_binds_to_a_matching_claim(cluster: K3pServer) -> None:
    server = cluster
    kubectl(server, "apply", "-f", "-", input="""
apiVersion: v1
kind: PersistentVolume
metadata: {name: manual-small, labels: {kind: manual}}
spec:
  storageClassName: manual
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /srv/manual-small}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: manual-big}
spec:
  storageClassName: manual
  capacity: {storage: 5Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /srv/manual-big}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: classless}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /srv/classless}
""")
    wait_for(lambda: phase(get(server, "pv", "manual-big")) == "Available", 30, 0.5, "volumes Available")
    kubectl(server, "apply", "-f", "-", input="""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: manual}
spec:
  storageClassName: manual
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 2Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: no-class}
spec:
  storageClassName: ""
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
""")
    # class "manual" has no StorageClass object: the claim binds at once, to the smallest volume that fits
    wait_for(lambda: phase(get(server, "pvc", "manual")) == "Bound", 30, 0.5, "claim manual Bound")
    claim = get(server, "pvc", "manual")
    assert claim["spec"]["volumeName"] == "manual-big" and claim["status"]["capacity"] == {"storage": "5Gi"}
    volume = get(server, "pv", "manual-big")
    assert phase(volume) == "Bound" and volume["spec"]["claimRef"]["name"] == "manual"
    assert volume["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] == "yes"
    wait_for(lambda: phase(get(server, "pvc", "no-class")) == "Bound", 30, 0.5, "claim no-class Bound")
    assert get(server, "pvc", "no-class")["spec"]["volumeName"] == "classless"
    assert phase(get(server, "pv", "manual-small")) == "Available"
    # a pod on a claim bound at once is scheduled and runs
    kubectl(server, "apply", "-f", "-", input=claim_user("manual-user", "manual"))
    wait_for(lambda: phase(get(server, "pod", "manual-user")) == "Running", 60, 0.5, "pod Running")
    kubectl(server, "delete", "pod", "manual-user", "--wait=true", "--timeout=60s")
    # Retain: the volume outlives its claim, Released
    kubectl(server, "delete", "pvc", "manual", "--wait=true", "--timeout=60s")
    wait_for(lambda: phase(get(server, "pv", "manual-big")) == "Released", 30, 0.5, "volume Released")
    assert get(server, "pv", "manual-big") is not None


def test_pod_with_a_missing_or_unbound_claim_waits_with_the_upstream_message(cluster: K3pServer) -> None:
    server = cluster

    def scheduled_condition(name: str) -> dict | None:
        pod = get(server, "pod", name) or {}
        return next((c for c in (pod.get("status") or {}).get("conditions") or []
                     if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    kubectl(server, "apply", "-f", "-", input=claim_user("lost", "nowhere"))
    wait_for(lambda: scheduled_condition("lost") is not None, 30, 0.5, "PodScheduled=False")
    assert scheduled_condition("lost")["message"] == (
        f'0/{NODES} nodes are available: persistentvolumeclaim "nowhere" not found. preemption: 0/{NODES} nodes '
        f"are available: {NODES} Preemption is not helpful for scheduling.")
    assert ("FailedScheduling", scheduled_condition("lost")["message"]) in events_for(server, "lost")
    assert not get(server, "pod", "lost")["spec"].get("nodeName")

    # a claim of a class that binds at once, with nothing to bind to
    kubectl(server, "apply", "-f", "-", input="""
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: immediate}
provisioner: example.com/absent
volumeBindingMode: Immediate
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: nowhere}
spec:
  storageClassName: immediate
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
""")
    wait_for(lambda: "unbound immediate" in ((scheduled_condition("lost") or {}).get("message") or ""), 30, 0.5,
             "message about the unbound claim")
    assert scheduled_condition("lost")["message"].startswith(
        f"0/{NODES} nodes are available: pod has unbound immediate PersistentVolumeClaims.")
    # the claim is handed to its (absent) provisioner and waits for it
    wait_for(lambda: "ExternalProvisioning" in dict(events_for(server, "nowhere")), 30, 0.5, "ExternalProvisioning")
    claim = get(server, "pvc", "nowhere")
    assert claim["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"] == "example.com/absent"
    assert phase(claim) == "Pending"
    # a volume made by hand for it: the claim binds and the pod is scheduled
    kubectl(server, "apply", "-f", "-", input="""
apiVersion: v1
kind: PersistentVolume
metadata: {name: for-nowhere}
spec:
  storageClassName: immediate
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /srv/for-nowhere}
""")
    wait_for(lambda: phase(get(server, "pod", "lost")) == "Running", 60, 0.5, "pod Running once its claim is bound")
