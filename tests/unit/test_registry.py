"""The built-in resource table, registry lookups, and conversion between versions sharing storage."""

from __future__ import annotations

import copy
import json

import pytest

from k3p.apiserver import schemas
from k3p.apiserver.conversion import (
    BEHAVIOR_ANNOTATION,
    CONDITIONS_ANNOTATION,
    CURRENT_METRICS_ANNOTATION,
    METRICS_ANNOTATION,
    ConversionError,
    convert,
)
from k3p.apiserver.registry import (
    VERBS_ALL,
    Registry,
    ResourceType,
    builtin_registry,
    is_stored,
    version_sort_key,
)

EXPECTED = {
    "v1": {"bindings", "configmaps", "endpoints", "events", "limitranges", "namespaces", "nodes",
           "persistentvolumeclaims", "persistentvolumes", "pods", "replicationcontrollers", "resourcequotas",
           "secrets", "serviceaccounts", "services"},
    "apps/v1": {"controllerrevisions", "daemonsets", "deployments", "replicasets", "statefulsets"},
    "batch/v1": {"cronjobs", "jobs"},
    "networking.k8s.io/v1": {"ingressclasses", "ingresses", "networkpolicies"},
    "coordination.k8s.io/v1": {"leases"},
    "discovery.k8s.io/v1": {"endpointslices"},
    "rbac.authorization.k8s.io/v1": {"clusterrolebindings", "clusterroles", "rolebindings", "roles"},
    "apiextensions.k8s.io/v1": {"customresourcedefinitions"},
    "events.k8s.io/v1": {"events"},
    "policy/v1": {"poddisruptionbudgets"},
    "autoscaling/v1": {"horizontalpodautoscalers"},
    "autoscaling/v2": {"horizontalpodautoscalers"},
    "storage.k8s.io/v1": {"storageclasses"},
    "scheduling.k8s.io/v1": {"priorityclasses"},
    "authorization.k8s.io/v1": {"localsubjectaccessreviews", "selfsubjectaccessreviews", "selfsubjectrulesreviews",
                                "subjectaccessreviews"},
    "authentication.k8s.io/v1": {"selfsubjectreviews", "tokenreviews"},
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return builtin_registry()


def test_exactly_the_expected_builtin_types(registry: Registry) -> None:
    served: dict[str, set[str]] = {}
    for rt in registry:
        served.setdefault(rt.api_version, set()).add(rt.resource)
    assert served == EXPECTED


def test_every_builtin_type_has_its_schema_and_list_schema(registry: Registry) -> None:
    for rt in registry:
        assert rt.definition == schemas.definition_name_for(rt.group, rt.version, rt.kind)
        assert rt.schema_node() is schemas.definitions()[rt.definition]
        assert rt.singular == rt.kind.lower()
        if "list" in rt.verbs:
            assert schemas.definition_name_for(rt.group, rt.version, rt.list_kind), rt


@pytest.mark.parametrize(("gvr", "short", "categories", "namespaced"), [
    (("", "v1", "pods"), ("po",), ("all",), True),
    (("", "v1", "services"), ("svc",), ("all",), True),
    (("", "v1", "nodes"), ("no",), (), False),
    (("", "v1", "namespaces"), ("ns",), (), False),
    (("", "v1", "resourcequotas"), ("quota",), (), True),
    (("apps", "v1", "deployments"), ("deploy",), ("all",), True),
    (("batch", "v1", "jobs"), (), ("all",), True),
    (("networking.k8s.io", "v1", "networkpolicies"), ("netpol",), (), True),
    (("apiextensions.k8s.io", "v1", "customresourcedefinitions"), ("crd", "crds"), ("api-extensions",), False),
    (("scheduling.k8s.io", "v1", "priorityclasses"), ("pc",), (), False),
    (("autoscaling", "v2", "horizontalpodautoscalers"), ("hpa",), ("all",), True),
])
def test_names_and_scope_like_kube(registry, gvr, short, categories, namespaced) -> None:
    rt = registry.get(*gvr)
    assert rt.short_names == short
    assert rt.categories == categories
    assert rt.namespaced is namespaced
    assert rt.scope == ("Namespaced" if namespaced else "Cluster")


def test_verbs(registry: Registry) -> None:
    assert registry.get("", "v1", "pods").verbs == VERBS_ALL
    assert "deletecollection" not in registry.get("", "v1", "namespaces").verbs
    for group, resource in [("", "bindings"), ("authorization.k8s.io", "subjectaccessreviews"),
                            ("authorization.k8s.io", "selfsubjectrulesreviews"),
                            ("authentication.k8s.io", "tokenreviews")]:
        rt = registry.get(group, "v1", resource)
        assert rt.verbs == ("create",)
        assert not is_stored(rt)
    assert is_stored(registry.get("", "v1", "pods"))


def test_subresources(registry: Registry) -> None:
    pods = registry.get("", "v1", "pods")
    assert set(pods.subresources) == {"status", "log", "exec", "attach", "portforward", "binding", "eviction",
                                      "ephemeralcontainers"}
    assert pods.subresource("eviction").group == "policy"
    assert pods.subresource("status").kind == "Pod"
    assert pods.subresource("exec").kind == "PodExecOptions"
    with pytest.raises(KeyError):
        pods.subresource("scale")
    for group, resource in [("apps", "deployments"), ("apps", "replicasets"), ("apps", "statefulsets"),
                            ("", "replicationcontrollers")]:
        rt = registry.get(group, "v1", resource)
        assert {"status", "scale"} <= set(rt.subresources)
        scale = rt.subresource("scale")
        assert (scale.group, scale.version, scale.kind) == ("autoscaling", "v1", "Scale")
    assert registry.get("", "v1", "serviceaccounts").subresource("token").kind == "TokenRequest"
    for gvr in [("", "v1", "nodes"), ("", "v1", "persistentvolumes"), ("batch", "v1", "cronjobs"),
                ("networking.k8s.io", "v1", "ingresses"), ("policy", "v1", "poddisruptionbudgets"),
                ("apiextensions.k8s.io", "v1", "customresourcedefinitions"), ("apps", "v1", "daemonsets")]:
        assert "status" in registry.get(*gvr).subresources
    assert registry.get("", "v1", "configmaps").subresources == ()


def test_storage_keys_like_kube(registry: Registry) -> None:
    assert registry.get("", "v1", "pods").storage_key("default", "x") == "/registry/pods/default/x"
    assert registry.get("apps", "v1", "deployments").storage_key("ns", "x") == "/registry/deployments/ns/x"
    assert registry.get("", "v1", "nodes").storage_key(None, "n1") == "/registry/minions/n1"
    assert registry.get("", "v1", "services").storage_key("a", "b") == "/registry/services/specs/a/b"
    assert registry.get("", "v1", "endpoints").storage_key("a", "b") == "/registry/services/endpoints/a/b"
    assert registry.get("", "v1", "namespaces").storage_key(None, "kube-system") == "/registry/namespaces/kube-system"
    crds = registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    assert crds.storage_key(None, "a.b.c") == "/registry/apiextensions.k8s.io/customresourcedefinitions/a.b.c"
    assert registry.get("", "v1", "pods").key_prefix("default") == "/registry/pods/default/"
    assert registry.get("", "v1", "pods").key_prefix() == "/registry/pods/"
    with pytest.raises(ValueError, match="namespace"):
        registry.get("", "v1", "pods").storage_key(None, "x")


def test_versions_sharing_storage(registry: Registry) -> None:
    core, new = registry.get("", "v1", "events"), registry.get("events.k8s.io", "v1", "events")
    assert core.storage_key("a", "b") == new.storage_key("a", "b") == "/registry/events/a/b"
    assert new.storage_api_version == core.storage_api_version == "v1"
    v1, v2 = (registry.get("autoscaling", v, "horizontalpodautoscalers") for v in ("v1", "v2"))
    assert v1.storage_key("a", "b") == v2.storage_key("a", "b")
    assert v1.storage_api_version == v2.storage_api_version == "autoscaling/v2"


def test_custom_resource_storage_key() -> None:
    rt = ResourceType(group="stable.example.com", version="v1", resource="crontabs", kind="CronTab",
                      singular="crontab", namespaced=True, custom=True)
    assert rt.storage_key("ns", "x") == "/registry/stable.example.com/crontabs/ns/x"
    assert rt.list_kind == "CronTabList"
    assert rt.api_version == "stable.example.com/v1"
    assert rt.group_resource == "crontabs.stable.example.com"


def test_groups_in_kube_order_with_preferred_version(registry: Registry) -> None:
    names = [g.name for g in registry.groups()]
    assert names[:6] == ["", "apps", "events.k8s.io", "authentication.k8s.io", "authorization.k8s.io",
                         "autoscaling"]
    assert names.index("rbac.authorization.k8s.io") < names.index("apiextensions.k8s.io") < names.index(
        "discovery.k8s.io")
    autoscaling = registry.group("autoscaling")
    assert autoscaling.versions == ("v2", "v1")
    assert autoscaling.preferred_version == "v2"


def test_version_order() -> None:
    versions = ["v1alpha1", "v1", "foo", "v2beta1", "v1beta2", "v2", "v11alpha2", "v1beta1"]
    assert sorted(versions, key=version_sort_key) == [
        "v2", "v1", "v2beta1", "v1beta2", "v1beta1", "v11alpha2", "v1alpha1", "foo"]


def test_lookups(registry: Registry) -> None:
    assert registry.by_kind("apps", "v1", "Deployment").resource == "deployments"
    assert registry.by_api_version("v1", "Pod").resource == "pods"
    assert registry.by_api_version("apps/v1", "Pod") is None
    assert [rt.version for rt in registry.find("hpa")] == ["v2", "v1"]
    assert registry.find("deploy")[0].resource == "deployments"
    assert registry.find("Deployment")[0].resource == "deployments"
    assert registry.find("deployments.apps")[0].group == "apps"
    events = registry.find("events")
    assert [rt.group for rt in events] == ["", "events.k8s.io"]
    assert registry.find("nope") == []
    assert [rt.version for rt in registry.versions_of("autoscaling", "horizontalpodautoscalers")] == ["v2", "v1"]
    assert [rt.resource for rt in registry.resources("batch", "v1")] == ["cronjobs", "jobs"]


def test_add_and_remove_change_generation() -> None:
    registry = builtin_registry()
    before = registry.generation
    apps_generation = registry.gv_generation("apps", "v1")
    rt = ResourceType(group="stable.example.com", version="v1", resource="crontabs", kind="CronTab",
                      singular="crontab", namespaced=True, custom=True)
    registry.add(rt)
    assert registry.generation > before
    assert registry.gv_generation("stable.example.com", "v1") == registry.generation
    assert registry.gv_generation("apps", "v1") == apps_generation
    assert registry.group("stable.example.com").versions == ("v1",)
    assert [g.name for g in registry.groups()][-1] == "stable.example.com"
    assert registry.by_kind("stable.example.com", "v1", "CronTab") is rt
    assert registry.remove("stable.example.com", "v1", "crontabs") is rt
    assert registry.group("stable.example.com") is None
    assert registry.by_kind("stable.example.com", "v1", "CronTab") is None
    assert registry.remove("stable.example.com", "v1", "crontabs") is None


def test_set_resource_versions_replaces_all_versions() -> None:
    registry = Registry()

    def rt(version: str) -> ResourceType:
        return ResourceType(group="x.io", version=version, resource="things", kind="Thing", singular="thing",
                            namespaced=False, custom=True)

    registry.set_resource_versions("x.io", "things", [rt("v1"), rt("v1beta1")])
    assert registry.group("x.io").versions == ("v1", "v1beta1")
    registry.set_resource_versions("x.io", "things", [rt("v2")])
    assert registry.group("x.io").versions == ("v2",)
    registry.set_resource_versions("x.io", "things", [])
    assert registry.group("x.io") is None


# --- conversion ------------------------------------------------------------------------------

HPA_V2 = {
    "apiVersion": "autoscaling/v2",
    "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": "web", "namespace": "default", "annotations": {"keep": "me"}},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 2,
        "maxReplicas": 10,
        "metrics": [
            {"type": "Resource", "resource": {"name": "memory",
                                              "target": {"type": "AverageValue", "averageValue": "500Mi"}}},
            {"type": "Pods", "pods": {"metric": {"name": "qps"},
                                      "target": {"type": "AverageValue", "averageValue": "10"}}},
            {"type": "Object", "object": {"describedObject": {"kind": "Ingress", "name": "main",
                                                              "apiVersion": "networking.k8s.io/v1"},
                                          "metric": {"name": "rps"}, "target": {"type": "Value", "value": "2k"}}},
            {"type": "External", "external": {"metric": {"name": "queue", "selector": {"matchLabels": {"q": "a"}}},
                                              "target": {"type": "AverageValue", "averageValue": "30"}}},
            {"type": "Resource", "resource": {"name": "cpu",
                                              "target": {"type": "Utilization", "averageUtilization": 60}}},
        ],
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
    },
    "status": {
        "currentReplicas": 3,
        "desiredReplicas": 4,
        "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 70,
                                                                        "averageValue": "350m"}}},
        ],
        "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}],
    },
}


def test_hpa_v2_to_v1_keeps_what_v1_cannot_say_in_annotations() -> None:
    original = copy.deepcopy(HPA_V2)
    v1 = convert(HPA_V2, "autoscaling/v1")
    assert HPA_V2 == original
    assert v1["apiVersion"] == "autoscaling/v1"
    assert v1["spec"] == {"scaleTargetRef": HPA_V2["spec"]["scaleTargetRef"], "minReplicas": 2, "maxReplicas": 10,
                          "targetCPUUtilizationPercentage": 60}
    assert v1["status"] == {"currentReplicas": 3, "desiredReplicas": 4, "currentCPUUtilizationPercentage": 70}
    annotations = v1["metadata"]["annotations"]
    assert annotations["keep"] == "me"
    others = json.loads(annotations[METRICS_ANNOTATION])
    assert [m["type"] for m in others] == ["Resource", "Pods", "Object", "External"]
    assert others[0]["resource"] == {"name": "memory", "targetAverageValue": "500Mi"}
    assert others[1]["pods"] == {"metricName": "qps", "targetAverageValue": "10"}
    assert others[2]["object"]["targetValue"] == "2k"
    assert others[3]["external"]["metricSelector"] == {"matchLabels": {"q": "a"}}
    assert json.loads(annotations[BEHAVIOR_ANNOTATION]) == HPA_V2["spec"]["behavior"]
    assert json.loads(annotations[CONDITIONS_ANNOTATION]) == HPA_V2["status"]["conditions"]
    assert json.loads(annotations[CURRENT_METRICS_ANNOTATION])[0]["resource"]["currentAverageValue"] == "350m"


def test_hpa_round_trip_through_v1_loses_nothing() -> None:
    back = convert(convert(HPA_V2, "autoscaling/v1"), "autoscaling/v2")
    assert back["metadata"] == HPA_V2["metadata"]
    # The CPU target comes back last, as kube orders it.
    assert sorted(back["spec"]["metrics"], key=json.dumps) == sorted(HPA_V2["spec"]["metrics"], key=json.dumps)
    assert back["spec"]["behavior"] == HPA_V2["spec"]["behavior"]
    assert back["status"] == HPA_V2["status"]


def test_hpa_v1_to_v2() -> None:
    v1 = {"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "a"},
          "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "a"}, "maxReplicas": 3,
                   "targetCPUUtilizationPercentage": 50},
          "status": {"currentReplicas": 1, "desiredReplicas": 1, "currentCPUUtilizationPercentage": 20}}
    v2 = convert(v1, "autoscaling/v2")
    assert v2["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]
    assert v2["status"]["currentMetrics"][0]["resource"]["current"] == {"averageUtilization": 20}
    del v1["spec"]["targetCPUUtilizationPercentage"]
    assert convert(v1, "autoscaling/v2")["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 80


def test_hpa_bad_annotation_is_a_conversion_error() -> None:
    v1 = {"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
          "metadata": {"name": "a", "annotations": {METRICS_ANNOTATION: "{nope"}}, "spec": {"maxReplicas": 1}}
    with pytest.raises(ConversionError):
        convert(v1, "autoscaling/v2")


def test_event_field_mapping_both_ways() -> None:
    core = {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
        "reason": "Started", "message": "Started container", "type": "Normal",
        "source": {"component": "kubelet", "host": "n1"},
        "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:01:00Z", "count": 3,
        "reportingComponent": "kubelet", "reportingInstance": "n1", "action": "Start",
    }
    new = convert(core, "events.k8s.io/v1")
    assert new["apiVersion"] == "events.k8s.io/v1"
    assert new["regarding"] == core["involvedObject"]
    assert new["note"] == "Started container"
    assert new["deprecatedSource"] == {"component": "kubelet", "host": "n1"}
    assert new["deprecatedFirstTimestamp"] == "2024-01-01T00:00:00Z"
    assert new["deprecatedCount"] == 3
    assert new["reportingController"] == "kubelet"
    assert "involvedObject" not in new and "message" not in new
    assert convert(new, "v1") == core


def test_other_kinds_are_relabelled_within_their_group() -> None:
    obj = {"apiVersion": "x.io/v1beta1", "kind": "Thing", "spec": {"a": 1}}
    out = convert(obj, "x.io/v1")
    assert out == {"apiVersion": "x.io/v1", "kind": "Thing", "spec": {"a": 1}}
    assert convert(obj, "x.io/v1beta1") == obj
    with pytest.raises(ConversionError):
        convert(obj, "y.io/v1")
