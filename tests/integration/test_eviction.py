"""Eviction, PodDisruptionBudgets and ``kubectl drain`` on hollow nodes; dry runs of subresources.

`k3p server` with its controllers and scheduler, plus `k3p agent --simulate 2`: the real
kubectl drains a node, the eviction subresource consults the budgets the disruption
controller keeps, and dry-run writes leave the store as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest

from k3p.testing import HollowNodes, K3pServer, wait_for

pytestmark = pytest.mark.slow

NODES = ("evict-0", "evict-1")
VIOLATION = "Cannot evict pod as it would violate the pod's disruption budget"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("evict")
    server = K3pServer(workdir / "server", args=["--disable-agent"])
    agents: list[HollowNodes] = []
    try:
        server.start()
        agents.append(HollowNodes(server, workdir / "agent", 2, "evict"))
        wait_for(lambda: ready_nodes(server) >= 2, 60, 0.5, "2 hollow nodes Ready")
        yield server
    finally:
        for a in agents:
            a.stop()
        server.stop()


@pytest.fixture(scope="module")
def http(cluster: K3pServer):
    with httpx.Client(base_url=cluster.url, verify=cluster.ssl_context(), timeout=30) as c:
        yield c


def kubectl(server: K3pServer, *args: str, input: str | None = None) -> str:
    return server.kubectl(*args, input=input, check=True, timeout=120).stdout


def ready_nodes(server: K3pServer) -> int:
    nodes = json.loads(server.kubectl("get", "nodes", "-o", "json").stdout or '{"items": []}')["items"]
    return sum(1 for n in nodes for c in n["status"].get("conditions", [])
               if c["type"] == "Ready" and c["status"] == "True")


def pods(http: httpx.Client, selector: str) -> list[dict]:
    r = http.get("/api/v1/namespaces/default/pods", params={"labelSelector": selector})
    r.raise_for_status()
    return [p for p in r.json()["items"] if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def pdb_status(http: httpx.Client, name: str) -> dict:
    r = http.get(f"/apis/policy/v1/namespaces/default/poddisruptionbudgets/{name}")
    r.raise_for_status()
    return r.json().get("status") or {}


def wait_pdb(http: httpx.Client, name: str, **wanted: int) -> dict:
    def matches() -> dict | None:
        status = pdb_status(http, name)
        return status if all(status.get(k) == v for k, v in wanted.items()) else None

    try:
        return wait_for(matches, 30, 0.2, f"PDB {name} status {wanted}")
    except TimeoutError as e:
        raise AssertionError(f"{e}: last status {pdb_status(http, name)}") from None


def deployment(server: K3pServer, name: str, replicas: int) -> None:
    kubectl(server, "create", "deployment", name, f"--image=registry.local/{name}:1", f"--replicas={replicas}")
    kubectl(server, "rollout", "status", f"deployment/{name}", "--timeout=60s")


def pdb(server: K3pServer, name: str, app: str, **budget: int | str) -> None:
    kubectl(server, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": app}}, **budget}}))


def evict(http: httpx.Client, pod: str, version: str = "policy/v1", name: str | None = None,
          **params: str) -> httpx.Response:
    body = {"apiVersion": version, "kind": "Eviction",
            "metadata": {"name": pod if name is None else name, "namespace": "default"}}
    return http.post(f"/api/v1/namespaces/default/pods/{pod}/eviction", json=body, params=params)


def test_drain_moves_a_deployments_pods_to_the_other_node(cluster: K3pServer, http: httpx.Client) -> None:
    deployment(cluster, "web", 2)
    node = pods(http, "app=web")[0]["spec"]["nodeName"]
    other = next(n for n in NODES if n != node)
    out = cluster.kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s",
                          timeout=90)
    assert out.returncode == 0, out.stderr
    assert f"node/{node} drained" in out.stdout, out.stdout
    assert json.loads(kubectl(cluster, "get", "node", node, "-o", "json"))["spec"].get("unschedulable") is True
    # kubectl lists the node's pods by field selector: none are left there
    left = json.loads(kubectl(cluster, "get", "pods", "-A", "--field-selector", f"spec.nodeName={node}",
                              "-o", "json"))["items"]
    assert left == []
    kubectl(cluster, "rollout", "status", "deployment/web", "--timeout=60s")
    web = pods(http, "app=web")
    assert len(web) == 2 and {p["spec"]["nodeName"] for p in web} == {other}
    kubectl(cluster, "uncordon", node)
    kubectl(cluster, "delete", "deployment", "web")


def test_drain_waits_on_the_budget_until_the_deployment_scales_up(cluster: K3pServer, http: httpx.Client,
                                                                   tmp_path) -> None:
    deployment(cluster, "guarded", 2)
    pdb(cluster, "guarded", "guarded", minAvailable=2)
    status = wait_pdb(http, "guarded", currentHealthy=2, desiredHealthy=2, expectedPods=2, disruptionsAllowed=0)
    cond = next(c for c in status["conditions"] if c["type"] == "DisruptionAllowed")
    assert (cond["status"], cond["reason"]) == ("False", "InsufficientPods")
    victim = pods(http, "app=guarded")[0]
    r = evict(http, victim["metadata"]["name"])
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["reason"] == "TooManyRequests" and body["message"] == VIOLATION + "."
    assert body["details"]["causes"] == [{"reason": "DisruptionBudget", "message":
                                          "The disruption budget guarded needs 2 healthy pods and has 2 currently"}]

    node = victim["spec"]["nodeName"]
    log = tmp_path / "drain.log"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "KUBECACHEDIR": str(cluster.workdir / "kube-cache")}
    with log.open("w") as out:
        drain = subprocess.Popen(["kubectl", "drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
                                  "--timeout=60s"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: VIOLATION in log.read_text(), 30, 0.2, "drain to report the budget")
        assert drain.poll() is None, log.read_text()
        kubectl(cluster, "scale", "deployment/guarded", "--replicas=3")
        assert drain.wait(timeout=75) == 0, log.read_text()
    finally:
        if drain.poll() is None:
            drain.kill()
            drain.wait()
    assert "will retry after 5s" in log.read_text()
    assert all(p["spec"]["nodeName"] != node for p in pods(http, "app=guarded"))
    kubectl(cluster, "uncordon", node)
    kubectl(cluster, "delete", "deployment", "guarded")
    kubectl(cluster, "delete", "pdb", "guarded")


def test_budget_status_follows_the_pods(cluster: K3pServer, http: httpx.Client) -> None:
    deployment(cluster, "nums", 4)
    pdb(cluster, "nums-min", "nums", minAvailable=3)
    pdb(cluster, "nums-max", "nums", maxUnavailable="50%")
    status = wait_pdb(http, "nums-min", expectedPods=4, desiredHealthy=3, currentHealthy=4, disruptionsAllowed=1,
                      observedGeneration=1)
    cond = next(c for c in status["conditions"] if c["type"] == "DisruptionAllowed")
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("True", "SufficientPods", 1)
    wait_pdb(http, "nums-max", expectedPods=4, desiredHealthy=2, currentHealthy=4, disruptionsAllowed=2)

    # two budgets on one pod: upstream's 500, and the pod stays
    victim = pods(http, "app=nums")[0]["metadata"]["name"]
    r = evict(http, victim)
    assert r.status_code == 500 and "more than one PodDisruptionBudget" in r.json()["message"], r.text
    assert victim in {p["metadata"]["name"] for p in pods(http, "app=nums")}

    kubectl(cluster, "scale", "deployment/nums", "--replicas=2")
    status = wait_pdb(http, "nums-min", expectedPods=2, desiredHealthy=3, currentHealthy=2, disruptionsAllowed=0)
    cond = next(c for c in status["conditions"] if c["type"] == "DisruptionAllowed")
    assert (cond["status"], cond["reason"]) == ("False", "InsufficientPods")
    wait_pdb(http, "nums-max", expectedPods=2, desiredHealthy=1, currentHealthy=2, disruptionsAllowed=1)

    # a spec change is a new generation: the controller catches up on it
    kubectl(cluster, "patch", "pdb", "nums-max", "--type=merge", "-p", '{"spec": {"maxUnavailable": 0}}')
    wait_pdb(http, "nums-max", observedGeneration=2, desiredHealthy=2, disruptionsAllowed=0)
    kubectl(cluster, "patch", "pdb", "nums-max", "--type=merge", "-p", '{"spec": {"maxUnavailable": "50%"}}')
    wait_pdb(http, "nums-max", observedGeneration=3, disruptionsAllowed=1)

    # one budget left: the eviction is granted, recorded in the budget, and the pod goes
    kubectl(cluster, "delete", "pdb", "nums-min")
    victim = pods(http, "app=nums")[0]["metadata"]["name"]
    r = evict(http, victim, "policy/v1beta1")
    assert r.status_code == 201, r.text
    assert r.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
    wait_for(lambda: victim not in {p["metadata"]["name"] for p in pods(http, "app=nums")}, 30, 0.2,
             "the evicted pod to go")
    kubectl(cluster, "rollout", "status", "deployment/nums", "--timeout=60s")
    status = wait_pdb(http, "nums-max", currentHealthy=2, disruptionsAllowed=1)
    assert victim not in (status.get("disruptedPods") or {})
    kubectl(cluster, "delete", "deployment", "nums")
    kubectl(cluster, "delete", "pdb", "nums-max")


def test_dry_runs_persist_nothing(cluster: K3pServer, http: httpx.Client) -> None:
    deployment(cluster, "dry", 1)
    pdb(cluster, "dry", "dry", maxUnavailable=1)
    before_pdb = wait_pdb(http, "dry", currentHealthy=1, disruptionsAllowed=1)
    pod = pods(http, "app=dry")[0]
    name = pod["metadata"]["name"]

    r = evict(http, name, dryRun="All")
    assert r.status_code == 201, r.text
    body = {"apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": name},
            "deleteOptions": {"dryRun": ["All"], "gracePeriodSeconds": 0}}
    r = http.post(f"/api/v1/namespaces/default/pods/{name}/eviction", json=body)
    assert r.status_code == 201, r.text
    time.sleep(0.5)
    after = http.get(f"/api/v1/namespaces/default/pods/{name}").json()
    assert not after["metadata"].get("deletionTimestamp")
    assert not any(c["type"] == "DisruptionTarget" for c in after["status"].get("conditions", []))
    assert pdb_status(http, "dry")["disruptionsAllowed"] == 1 and not pdb_status(http, "dry").get("disruptedPods")
    assert pdb_status(http, "dry")["conditions"] == before_pdb["conditions"]

    # the body must be an Eviction of this very pod
    r = evict(http, name, name="someone-else")
    assert r.status_code == 400 and r.json()["message"] == "name in URL does not match name in Eviction object"
    r = evict(http, name, version="v1")
    assert r.status_code == 400 and "does not match the expected API version" in r.json()["message"], r.text

    out = kubectl(cluster, "scale", "deployment/dry", "--replicas=5", "--dry-run=server")
    assert "scaled (server dry run)" in out, out
    stored = json.loads(kubectl(cluster, "get", "deployment", "dry", "-o", "json"))
    assert stored["spec"]["replicas"] == 1
    r = http.patch("/apis/apps/v1/namespaces/default/deployments/dry/scale", params={"dryRun": "All"},
                   content=b'{"spec": {"replicas": 7}}', headers={"content-type": "application/merge-patch+json"})
    assert r.status_code == 200 and r.json()["spec"]["replicas"] == 7, r.text
    assert http.get("/apis/apps/v1/namespaces/default/deployments/dry").json()["spec"]["replicas"] == 1

    status_url = "/apis/apps/v1/namespaces/default/deployments/dry/status"
    r = http.patch(status_url, params={"dryRun": "All"}, content=b'{"status": {"observedGeneration": 99}}',
                   headers={"content-type": "application/merge-patch+json"})
    assert r.status_code == 200 and r.json()["status"]["observedGeneration"] == 99, r.text
    current = http.get(status_url).json()
    assert current["status"]["observedGeneration"] != 99
    current["status"]["replicas"] = 42
    r = http.put(status_url, params={"dryRun": "All"}, json=current)
    assert r.status_code == 200, r.text
    assert http.get(status_url).json()["status"]["replicas"] == 1

    # a pod no scheduler will take, bound by hand in a dry run only
    http.post("/api/v1/namespaces/default/pods", json={
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unbound"},
        "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "registry.local/c:1"}]},
    }).raise_for_status()
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "unbound"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": NODES[0]}}
    r = http.post("/api/v1/namespaces/default/pods/unbound/binding", params={"dryRun": "All"}, json=binding)
    assert r.status_code == 201, r.text
    r = http.post("/api/v1/namespaces/default/bindings", params={"dryRun": "All"}, json=binding)
    assert r.status_code == 201, r.text
    assert not http.get("/api/v1/namespaces/default/pods/unbound").json()["spec"].get("nodeName")

    # a pending pod goes whatever its budget says; the caller's preconditions hold
    kubectl(cluster, "label", "pod", "unbound", "app=pending")
    pdb(cluster, "pending", "pending", minAvailable=1)
    wait_pdb(http, "pending", expectedPods=1, currentHealthy=0, disruptionsAllowed=0)
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "unbound"},
            "deleteOptions": {"preconditions": {"uid": "not-the-pod"}}}
    r = http.post("/api/v1/namespaces/default/pods/unbound/eviction", json=body)
    assert r.status_code == 409 and "the UID in the precondition (not-the-pod) does not match" in r.json()["message"]
    r = evict(http, "unbound")
    assert r.status_code == 201, r.text
    assert http.get("/api/v1/namespaces/default/pods/unbound").status_code == 404
    kubectl(cluster, "delete", "pdb", "pending")
    kubectl(cluster, "delete", "deployment", "dry")
    kubectl(cluster, "delete", "pdb", "dry")


def test_unknown_field_selector_is_a_bad_request(cluster: K3pServer, http: httpx.Client) -> None:
    for path in ("/api/v1/pods", "/api/v1/namespaces/kube-public/pods"):
        for extra in ({}, {"watch": "true", "timeoutSeconds": "1"}):
            r = http.get(path, params={"fieldSelector": "foo=bar", **extra})
            assert r.status_code == 400, r.text
            assert r.json()["reason"] == "BadRequest" and r.json()["message"] == "field label not supported: foo"
    r = http.delete("/api/v1/namespaces/kube-public/pods", params={"fieldSelector": "foo=bar"})
    assert r.status_code == 400, r.text
    out = cluster.kubectl("get", "pods", "--field-selector", "foo=bar")
    assert out.returncode != 0 and "field label not supported: foo" in out.stderr
    # the selectors kubectl drain uses work
    r = http.get("/api/v1/pods", params={"fieldSelector": f"spec.nodeName={NODES[0]}"})
    assert r.status_code == 200 and all(p["spec"]["nodeName"] == NODES[0] for p in r.json()["items"])


def test_namespace_held_by_a_finalizer_says_so(cluster: K3pServer, http: httpx.Client) -> None:
    http.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": "stuck"}}).raise_for_status()
    for name in ("held-1", "held-2"):
        http.post("/api/v1/namespaces/stuck/configmaps", json={
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "finalizers": ["example.com/hold"]}}).raise_for_status()
    http.delete("/api/v1/namespaces/stuck").raise_for_status()

    def conditions() -> dict | None:
        got = {c["type"]: c for c in http.get("/api/v1/namespaces/stuck").json()["status"].get("conditions", [])}
        return got if got.get("NamespaceFinalizersRemaining", {}).get("status") == "True" else None

    got = wait_for(conditions, 20, 0.2, "the namespace's conditions")
    content = got["NamespaceContentRemaining"]
    assert (content["status"], content["reason"]) == ("True", "SomeResourcesRemain")
    assert content["message"] == "Some resources are remaining: configmaps. has 2 resource instances"
    final = got["NamespaceFinalizersRemaining"]
    assert final["reason"] == "SomeFinalizersRemain"
    assert final["message"] == ("Some content in the namespace has finalizers remaining: example.com/hold in 2 "
                                "resource instances")
    assert got["NamespaceDeletionContentFailure"]["status"] == "False"
    out = kubectl(cluster, "describe", "namespace", "stuck")
    assert "NamespaceContentRemaining" in out and "SomeFinalizersRemain" in out

    for name in ("held-1", "held-2"):
        r = http.patch(f"/api/v1/namespaces/stuck/configmaps/{name}", content=b'{"metadata": {"finalizers": null}}',
                       headers={"content-type": "application/merge-patch+json"})
        r.raise_for_status()
    wait_for(lambda: http.get("/api/v1/namespaces/stuck").status_code == 404, 20, 0.2, "the namespace to go")
