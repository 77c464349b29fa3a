"""Persistent volumes without a server: matching, the binder's writes, the scheduler's volume binding,
the local-path provisioner's volumes and the kubelet's claim mounts."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from k3p.agent.volumes import VolumeError, VolumeManager
from k3p.client import Client, InformerFactory
from k3p.client.informer import Informer
from k3p.client.resources import PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, STORAGECLASSES
from k3p.client.volumes import (
    ANN_BIND_COMPLETED,
    ANN_BOUND_BY_CONTROLLER,
    ANN_SELECTED_NODE,
    ANN_STORAGE_PROVISIONER,
    claim_class,
    class_unset,
    default_class,
    find_matching_volume,
    is_delay_binding,
    volume_mismatch,
)
from k3p_plugins.controller_manager.persistentvolume import (
    PVC_PROTECTION_FINALIZER,
    PersistentVolumeController,
    PVCProtectionController,
)
from k3p_plugins.local_storage import manifests
from k3p_plugins.local_storage.provisioner import (
    ProvisioningError,
    provisioned_volume,
    safe_folder,
    volume_node,
)
from k3p_plugins.scheduler.algorithm import Algorithm
from k3p_plugins.scheduler.cache import SchedulerCache
from k3p_plugins.scheduler.model import NodeInfo, PodInfo
from k3p_plugins.scheduler.volumes import REASON_BIND_CONFLICT, REASON_NODE_CONFLICT, VolumeBinder

# --- objects -------------------------------------------------------------------------------------


def pv(name: str, size: str = "1Gi", cls: str = "manual", modes: tuple[str, ...] = ("ReadWriteOnce",),
       phase: str = "Available", claim: dict | None = None, node: str = "", labels: dict | None = None,
       **spec: Any) -> dict:
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "10", "labels": labels or {}},
        "spec": {"capacity": {"storage": size}, "accessModes": list(modes), "storageClassName": cls,
                 "hostPath": {"path": f"/data/{name}"}, **spec},
        "status": {"phase": phase}}
    if claim is not None:
        body["spec"]["claimRef"] = claim
    if node:
        body["spec"]["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}
    return body


def pvc(name: str, size: str = "1Gi", cls: str | None = "manual", modes: tuple[str, ...] = ("ReadWriteOnce",),
        annotations: dict | None = None, **spec: Any) -> dict:
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "20",
                     "annotations": dict(annotations or {})},
        "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": size}}, **spec},
        "status": {}}
    if cls is not None:
        body["spec"]["storageClassName"] = cls
    return body


def storage_class(name: str, provisioner: str = "rancher.io/local-path", mode: str = "WaitForFirstConsumer",
                  default: bool = False, created: str = "2024-01-01T00:00:00Z", **extra: Any) -> dict:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if default:
        meta["annotations"] = {"storageclass.kubernetes.io/is-default-class": "true"}
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": meta,
            "provisioner": provisioner, "volumeBindingMode": mode, "reclaimPolicy": "Delete", **extra}


def node(name: str, **labels: str) -> dict:
    return {"metadata": {"name": name, "resourceVersion": "1",
                         "labels": {"kubernetes.io/hostname": name, **labels}},
            "spec": {}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                                   "conditions": [{"type": "Ready", "status": "True"}]}}


def ref(claim: dict, uid: bool = True) -> dict:
    out = {"kind": "PersistentVolumeClaim", "namespace": "ns", "name": claim["metadata"]["name"]}
    if uid:
        out["uid"] = claim["metadata"]["uid"]
    return out


def names(obj: dict | None) -> str | None:
    return obj["metadata"]["name"] if obj else None


# --- matching ------------------------------------------------------------------------------------


def test_smallest_available_volume_of_the_same_class_wins() -> None:
    claim = pvc("data", "2Gi")
    volumes = [pv("small", "1Gi"), pv("big", "10Gi"), pv("fit", "3Gi"), pv("other-class", "2Gi", cls="fast"),
               pv("taken", "2Gi", claim={"namespace": "ns", "name": "else", "uid": "x"}, phase="Bound"),
               pv("released", "2Gi", phase="Released")]
    assert names(find_matching_volume(claim, volumes)) == "fit"
    assert find_matching_volume(pvc("huge", "100Gi"), volumes) is None


def test_access_modes_fewest_first_then_prebound_selector_and_mode() -> None:
    claim = pvc("data", "1Gi")
    # volumes offering exactly the claim's modes are tried before volumes offering more
    assert names(find_matching_volume(claim, [pv("rwx", "1Gi", modes=("ReadWriteOnce", "ReadWriteMany")),
                                              pv("rwo", "5Gi")])) == "rwo"
    assert find_matching_volume(pvc("many", modes=("ReadWriteMany",)), [pv("rwo")]) is None
    # a volume pre-bound to the claim is taken even when a smaller one fits
    pre = pv("pre", "8Gi", claim=ref(claim, uid=False))
    assert names(find_matching_volume(claim, [pv("small"), pre])) == "pre"
    # the claim's selector and volume mode must match too
    picky = pvc("picky", selector={"matchLabels": {"tier": "gold"}})
    assert names(find_matching_volume(picky, [pv("plain"), pv("gold", "2Gi", labels={"tier": "gold"})])) == "gold"
    block = pvc("block", volumeMode="Block")
    assert find_matching_volume(block, [pv("fs")]) is None
    assert names(find_matching_volume(block, [pv("blk", volumeMode="Block")])) == "blk"


def test_delay_binding_and_node_affinity() -> None:
    claim = pvc("data", cls="local")
    volumes = [pv("on-a", cls="local", node="a"), pv("on-b", "2Gi", cls="local", node="b")]
    # the binder alone leaves claims that wait for a consumer to the scheduler
    assert find_matching_volume(claim, volumes, delay_binding=True) is None
    assert names(find_matching_volume(claim, volumes, node=node("b"), delay_binding=True)) == "on-b"
    assert names(find_matching_volume(claim, volumes, node=node("a"), delay_binding=True)) == "on-a"
    assert find_matching_volume(claim, volumes, node=node("c"), delay_binding=True) is None
    assert find_matching_volume(claim, volumes, node=node("a"), delay_binding=True, excluded=["on-a"]) is None


def test_classes_defaults_and_mismatch_reasons() -> None:
    assert claim_class(pvc("a", annotations={"volume.beta.kubernetes.io/storage-class": "beta"})) == "beta"
    assert class_unset(pvc("a", cls=None)) and not class_unset(pvc("a", cls=""))
    old = storage_class("old", default=True, created="2023-01-01T00:00:00Z")
    new = storage_class("new", default=True, created="2024-06-01T00:00:00Z")
    assert names(default_class([old, storage_class("plain"), new])) == "new"
    assert default_class([storage_class("plain")]) is None
    classes = {"wait": storage_class("wait"), "now": storage_class("now", mode="Immediate")}
    assert is_delay_binding(pvc("a", cls="wait"), classes)
    assert not is_delay_binding(pvc("a", cls="now"), classes)
    assert not is_delay_binding(pvc("a", cls="missing"), classes)  # no class object: bind at once
    assert volume_mismatch(pv("v", "1Gi"), pvc("c", "2Gi")) == "requested PV is too small"
    assert volume_mismatch(pv("v", cls="x"), pvc("c")) == "storageClassName does not match"
    assert volume_mismatch(pv("v"), pvc("c", modes=("ReadWriteMany",))) == "incompatible accessMode"
    assert volume_mismatch(pv("v"), pvc("c")) == ""


# --- the binder ---------------------------------------------------------------------------------------


class FakeApi(Client):
    """Answers writes as the API would (bumping resourceVersion) and records them."""

    def __init__(self) -> None:
        super().__init__("https://127.0.0.1:1")
        self.calls: list[tuple[str, str, Any]] = []
        self.objects: dict[str, dict] = {}
        self.rv = 100
        #: the answer to a list (GET of a collection); None: 404
        self.list_answer: dict | None = None

    async def request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                      content_type: str = "application/json") -> Any:
        if isinstance(body, bytes):
            body = json.loads(body)
        self.calls.append((method, path, body))
        self.rv += 1
        if method == "PUT":
            out = copy.deepcopy(body)
            out["metadata"]["resourceVersion"] = str(self.rv)
            self.objects[path] = out
            return out
        if method == "PATCH":
            base = copy.deepcopy(self.objects.get(path.removesuffix("/status"), {"metadata": {}}))
            _merge(base, body)
            base.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
            self.objects[path.removesuffix("/status")] = base
            return base
        if method == "GET":
            if self.list_answer is not None and path.endswith("/pods"):
                return self.list_answer
            from k3p.client import ApiError

            raise ApiError(404, {"reason": "NotFound", "message": "not found"})
        return body or {}

    def writes(self, what: str) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[0] in ("PUT", "PATCH", "POST") and what in c[1]]


def _merge(base: dict, patch: dict) -> None:
    for k, v in patch.items():
        if v is None:
            base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)


@pytest.fixture
async def binder():
    api = FakeApi()
    c = PersistentVolumeController(api, InformerFactory(api))
    c.setup()
    yield c, api
    await asyncio.sleep(0)  # let the background event tasks finish
    await asyncio.gather(*c._pending_events, return_exceptions=True)
    await api.close()


def load(c: PersistentVolumeController, *objs: dict) -> None:
    """Objects as the informers (and the fake API) hold them."""
    for obj in objs:
        kind = obj["kind"]
        informer = {"PersistentVolume": c.volumes, "PersistentVolumeClaim": c.claims, "StorageClass": c.classes}[kind]
        name = obj["metadata"]["name"]
        informer.store[name if kind != "PersistentVolumeClaim" else f"ns/{name}"] = obj
        c.client.objects[informer.res.path(obj["metadata"].get("namespace"), name)] = copy.deepcopy(obj)


async def events(c: PersistentVolumeController, api: FakeApi) -> list[tuple[str, str]]:
    await asyncio.gather(*c._pending_events, return_exceptions=True)
    return [(b["reason"], b["message"]) for m, p, b in api.calls if m == "POST" and p.endswith("/events")]


async def test_binder_binds_an_immediate_claim_to_the_smallest_fit(binder) -> None:
    c, api = binder
    claim = pvc("data", "1Gi")
    load(c, claim, pv("big", "5Gi"), pv("fit", "2Gi"))
    await c.reconcile("claim:ns/data")
    [(_, path, volume)] = [w for w in api.writes("/persistentvolumes/") if w[0] == "PUT"]
    assert path.endswith("/persistentvolumes/fit")
    assert volume["spec"]["claimRef"]["uid"] == "uid-data" and volume["spec"]["claimRef"]["name"] == "data"
    assert volume["metadata"]["annotations"][ANN_BOUND_BY_CONTROLLER] == "yes"
    [volume_status] = [w[2] for w in api.writes("/persistentvolumes/fit/status")]
    assert volume_status["status"]["phase"] == "Bound"
    [(_, _, bound)] = [w for w in api.writes("/persistentvolumeclaims/data") if w[0] == "PUT"]
    assert bound["spec"]["volumeName"] == "fit"
    assert bound["metadata"]["annotations"][ANN_BIND_COMPLETED] == "yes"
    [claim_status] = [w[2] for w in api.writes("/persistentvolumeclaims/data/status")]
    assert claim_status["status"] == {"phase": "Bound", "accessModes": ["ReadWriteOnce"],
                                      "capacity": {"storage": "2Gi"}}


async def test_binder_waits_for_first_consumer_then_hands_to_provisioner(binder) -> None:
    c, api = binder
    load(c, storage_class("local-path"), pvc("data", cls="local-path"))
    await c.reconcile("claim:ns/data")
    assert not api.writes("/persistentvolumes/")
    assert ("WaitForFirstConsumer", "waiting for first consumer to be created before binding") in await events(c, api)
    assert [w[2]["status"]["phase"] for w in api.writes("/persistentvolumeclaims/data/status")] == ["Pending"]
    # the scheduler picked a node: the claim goes to the class's provisioner
    api.calls.clear()
    placed = pvc("data", cls="local-path", annotations={ANN_SELECTED_NODE: "n1"})
    placed["metadata"]["resourceVersion"] = "500"  # newer than what the binder wrote
    load(c, placed)
    await c.reconcile("claim:ns/data")
    [patch] = [w[2] for w in api.writes("/persistentvolumeclaims/data") if w[0] == "PATCH" and "status" not in w[1]]
    assert patch["metadata"]["annotations"][ANN_STORAGE_PROVISIONER] == "rancher.io/local-path"
    assert patch["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-provisioner"] == \
        "rancher.io/local-path"
    reasons = dict(await events(c, api))
    assert "'rancher.io/local-path'" in reasons["ExternalProvisioning"]


async def test_binder_gives_a_classless_claim_the_default_class(binder) -> None:
    c, api = binder
    load(c, storage_class("local-path", default=True), storage_class("other"), pvc("data", cls=None))
    await c.reconcile("claim:ns/data")
    [(_, _, updated)] = api.writes("/persistentvolumeclaims/data")
    assert updated["spec"]["storageClassName"] == "local-path"


async def test_binder_without_class_or_volume_reports(binder) -> None:
    c, api = binder
    load(c, pvc("data", cls=""))
    await c.reconcile("claim:ns/data")
    assert ("FailedBinding", "no persistent volumes available for this claim and no storage class is set") \
        in await events(c, api)


async def test_volume_of_a_deleted_claim_is_released_and_kept_or_failed(binder) -> None:
    c, api = binder
    gone = {"kind": "PersistentVolumeClaim", "namespace": "ns", "name": "gone", "uid": "old"}
    load(c, pv("kept", claim=gone, phase="Bound", persistentVolumeReclaimPolicy="Retain"),
         pv("manual-delete", claim=gone, phase="Bound", persistentVolumeReclaimPolicy="Delete"))
    await c.reconcile("volume:kept")
    assert [w[2]["status"]["phase"] for w in api.writes("/kept/status")] == ["Released"]
    await c.reconcile("volume:manual-delete")
    # no provisioner made it, so nothing here can delete it
    assert [w[2]["status"]["phase"] for w in api.writes("/manual-delete/status")] == ["Released", "Failed"]
    assert "VolumeFailedDelete" in dict(await events(c, api))
    assert not [m for m, _, _ in api.calls if m == "DELETE"]


async def test_provisioned_volume_pre_bound_to_its_claim_completes_the_binding(binder) -> None:
    c, api = binder
    claim = pvc("data", cls="local-path", annotations={ANN_SELECTED_NODE: "n1"})
    volume = pv("pvc-uid-data", cls="local-path", phase="", claim=ref(claim), node="n1")
    volume["metadata"]["annotations"] = {"pv.kubernetes.io/provisioned-by": "rancher.io/local-path"}
    load(c, storage_class("local-path"), claim, volume)
    await c.reconcile("claim:ns/data")
    # already pre-bound with the uid: no claimRef write, no bound-by-controller on the volume
    assert not [w for w in api.writes("/persistentvolumes/pvc-uid-data") if w[0] == "PUT"]
    [(_, _, bound)] = [w for w in api.writes("/persistentvolumeclaims/data") if w[0] == "PUT"]
    assert bound["spec"]["volumeName"] == "pvc-uid-data"


async def test_claim_protection_waits_for_the_pods_that_mount_it() -> None:
    api = FakeApi()
    c = PVCProtectionController(api, InformerFactory(api))
    c.setup()
    claim = pvc("data")
    c.claims.store["ns/data"] = claim
    await c.reconcile("ns/data")
    [(_, _, patch)] = api.writes("/persistentvolumeclaims/data")
    assert patch["metadata"]["finalizers"] == [PVC_PROTECTION_FINALIZER]
    deleting = copy.deepcopy(claim)
    deleting["metadata"].update(finalizers=[PVC_PROTECTION_FINALIZER], deletionTimestamp="2024-01-01T00:00:00Z")
    c.claims.store["ns/data"] = deleting
    user = {"metadata": {"name": "u", "namespace": "ns"}, "status": {"phase": "Running"},
            "spec": {"nodeName": "n1", "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}
    c.pods.store["ns/u"] = user
    api.calls.clear()
    await c.reconcile("ns/data")
    assert not api.writes("/persistentvolumeclaims/")  # still mounted: the finalizer stays
    c.pods.store["ns/u"] = {**user, "status": {"phase": "Succeeded"}}
    api.list_answer = {"items": []}
    await c.reconcile("ns/data")
    [(_, _, patch)] = api.writes("/persistentvolumeclaims/data")
    assert patch["metadata"]["finalizers"] == []
    await api.close()


# --- the scheduler's volume binding ------------------------------------------------------------------


def informer(res, *objs: dict) -> Informer:
    inf = Informer(None, res)  # type: ignore[arg-type]
    for obj in objs:
        ns = obj["metadata"].get("namespace")
        inf.store[f"{ns}/{obj['metadata']['name']}" if ns else obj["metadata"]["name"]] = obj
    return inf


def pod_with(*claims: str) -> PodInfo:
    return PodInfo({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                    "spec": {"containers": [{"name": "c"}],
                             "volumes": [{"name": c, "persistentVolumeClaim": {"claimName": c}} for c in claims]}})


def bound(claim: dict, volume: str) -> dict:
    claim = copy.deepcopy(claim)
    claim["spec"]["volumeName"] = volume
    claim["metadata"]["annotations"][ANN_BIND_COMPLETED] = "yes"
    claim["status"] = {"phase": "Bound"}
    return claim


def binder_of(claims=(), volumes=(), classes=()) -> VolumeBinder:
    return VolumeBinder(informer(PERSISTENTVOLUMECLAIMS, *claims), informer(PERSISTENTVOLUMES, *volumes),
                        informer(STORAGECLASSES, *classes))


def test_scheduler_prefilter_messages() -> None:
    vb = binder_of([pvc("now", cls="manual")], classes=[storage_class("manual", mode="Immediate")])
    assert vb.prefilter(pod_with("missing")) == (None, 'persistentvolumeclaim "missing" not found')
    assert vb.prefilter(pod_with("now")) == (None, "pod has unbound immediate PersistentVolumeClaims")
    cache = SchedulerCache()
    cache.set_node(node("a"))
    cache.set_node(node("b"))
    decision = Algorithm(cache, volumes=vb).schedule(pod_with("missing"))
    assert decision.node is None and decision.reason == "Unschedulable"
    assert decision.message == ('0/2 nodes are available: persistentvolumeclaim "missing" not found. preemption: '
                                "0/2 nodes are available: 2 Preemption is not helpful for scheduling.")


def test_scheduler_filters_nodes_by_volume_affinity_and_plans_the_binding() -> None:
    pinned = bound(pvc("pinned", cls="local-path"), "pv-a")
    waiting = pvc("new", cls="local-path")
    manual = pvc("static", cls="local")
    vb = binder_of([pinned, waiting, manual],
                   [pv("pv-a", cls="local-path", node="a", phase="Bound", claim=ref(pinned)),
                    pv("local-b", cls="local", node="b"), pv("local-a", cls="local", node="a")],
                   [storage_class("local-path"), storage_class("local", provisioner="kubernetes.io/no-provisioner")])
    a, b = NodeInfo("a", node("a")), NodeInfo("b", node("b"))
    state, why = vb.prefilter(pod_with("pinned"))
    assert why == "" and vb.filter_node(state, a) is None
    assert vb.filter_node(state, b).reasons == (REASON_NODE_CONFLICT,)
    # a claim that waits: any node its class can provision on; a static volume must be on the node
    state, _ = vb.prefilter(pod_with("new", "static"))
    assert vb.filter_node(state, a) is None and vb.filter_node(state, b) is None
    assert vb.filter_node(state, NodeInfo("c", node("c"))).reasons == (REASON_BIND_CONFLICT,)
    plan = vb.plan(pod_with("new", "static"), state, b)
    assert [p["metadata"]["name"] for p in plan.provision] == ["new"]
    assert [(v["metadata"]["name"], c["metadata"]["name"]) for v, c in plan.static] == [("local-b", "static")]
    assert plan.claims == ["ns/new", "ns/static"]
    # once reserved, another pod cannot pick the same volume on that node
    vb.assume(plan)
    other = pvc("static2", cls="local")
    vb.claims.store["ns/static2"] = other
    state2, _ = vb.prefilter(pod_with("static2"))
    assert vb.filter_node(state2, b).reasons == (REASON_BIND_CONFLICT,)
    # a claim a provisioner already works on for node a only fits node a
    vb.claims.store["ns/new"] = pvc("new", cls="local-path", annotations={ANN_SELECTED_NODE: "a"})
    state3, _ = vb.prefilter(pod_with("new"))
    assert vb.filter_node(state3, a) is None and vb.filter_node(state3, b) is not None


# --- the local-path provisioner --------------------------------------------------------------------


def test_provisioned_volume_for_a_claim() -> None:
    claim = pvc("data", "3Gi", cls="local-path")
    volume = provisioned_volume(claim, storage_class("local-path"), node("n1"), "/var/lib/k3p/storage")
    assert volume["metadata"] == {"name": "pvc-uid-data",
                                  "annotations": {"pv.kubernetes.io/provisioned-by": "rancher.io/local-path"}}
    spec = volume["spec"]
    assert spec["hostPath"] == {"path": "/var/lib/k3p/storage/pvc-uid-data_ns_data", "type": "DirectoryOrCreate"}
    assert spec["capacity"] == {"storage": "3Gi"} and spec["accessModes"] == ["ReadWriteOnce"]
    assert spec["persistentVolumeReclaimPolicy"] == "Delete" and spec["storageClassName"] == "local-path"
    assert spec["claimRef"]["uid"] == "uid-data" and spec["claimRef"]["namespace"] == "ns"
    assert spec["nodeAffinity"]["required"]["nodeSelectorTerms"] == [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]
    assert volume_node(volume) == "n1" and safe_folder(volume) == "/var/lib/k3p/storage/pvc-uid-data_ns_data"
    retained = provisioned_volume(claim, {**storage_class("keep"), "reclaimPolicy": "Retain"}, node("n1"), "/s")
    assert retained["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    with pytest.raises(ProvisioningError, match="ReadWriteOnce"):
        provisioned_volume(pvc("x", modes=("ReadWriteMany",)), storage_class("local-path"), node("n1"), "/s")
    with pytest.raises(ProvisioningError, match="Selector"):
        provisioned_volume(pvc("x", selector={}), storage_class("local-path"), node("n1"), "/s")
    # a folder that is not one the provisioner makes is never removed
    strange = copy.deepcopy(volume)
    strange["spec"]["hostPath"]["path"] = "/"
    assert safe_folder(strange) == ""
    strange["spec"]["hostPath"]["path"] = "/home/someone"
    assert safe_folder(strange) == ""


def test_manifests_class_and_rbac() -> None:
    sc, role, binding = manifests()
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert (sc["provisioner"], sc["volumeBindingMode"], sc["reclaimPolicy"]) == \
        ("rancher.io/local-path", "WaitForFirstConsumer", "Delete")
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert {("persistentvolumes", "create"), ("persistentvolumes", "delete"), ("persistentvolumeclaims", "watch"),
            ("storageclasses", "list"), ("nodes", "get"), ("events", "create")} <= granted
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": "system:k3p:local-storage"}]


# --- the kubelet --------------------------------------------------------------------------------------


class ClaimApi:
    def __init__(self, *objs: dict) -> None:
        self.objs = {o["metadata"]["name"]: o for o in objs}

    async def get(self, res, name, namespace=None):
        from k3p.client import ApiError

        if name not in self.objs:
            raise ApiError(404, {"reason": "NotFound", "message": f'{res.plural} "{name}" not found'})
        return self.objs[name]


def claim_pod(read_only: bool = False) -> dict:
    return {"metadata": {"name": "web", "namespace": "ns", "uid": "pod-uid"},
            "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data",
                                                                            "readOnly": read_only}}],
                     "containers": [{"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}


async def test_kubelet_mounts_a_bound_claim_and_waits_for_an_unbound_one(tmp_path: Path) -> None:
    claim = bound(pvc("data", cls="local-path"), "pvc-1")
    folder = tmp_path / "storage" / "pvc-1_ns_data"
    volume = pv("pvc-1", cls="local-path", phase="Bound", claim=ref(claim),
                hostPath={"path": str(folder), "type": "DirectoryOrCreate"})
    vm = VolumeManager(ClaimApi(claim, volume), tmp_path / "pods")  # type: ignore[arg-type]
    paths = await vm.setup(claim_pod(), {}, {})
    assert paths == {"data": str(folder)} and folder.is_dir()
    [mount] = vm.mounts(claim_pod(read_only=True), claim_pod()["spec"]["containers"][0], paths)
    assert mount.readonly and mount.host_path == str(folder)
    pending = pvc("data", cls="local-path")
    pending["status"] = {"phase": "Pending"}
    with pytest.raises(VolumeError, match=r'PVC ns/data has non-bound phase \("Pending"\)'):
        await VolumeManager(ClaimApi(pending), tmp_path / "pods").setup(claim_pod(), {}, {})  # type: ignore[arg-type]
    stolen = copy.deepcopy(volume)
    stolen["spec"]["claimRef"]["uid"] = "someone-else"
    with pytest.raises(VolumeError, match=r"does not point to claim\.UID"):
        await VolumeManager(ClaimApi(claim, stolen), tmp_path / "pods").setup(claim_pod(), {}, {})  # type: ignore[arg-type]
    # a simulated node takes the claim as it is
    hollow = VolumeManager(ClaimApi(), tmp_path / "hollow", host_paths=False)  # type: ignore[arg-type]
    assert await hollow.setup(claim_pod(), {}, {}) == {"data": ""}
