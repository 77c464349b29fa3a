"""Strategic merge patch with the Kubernetes v1.32 schemas, including the patches kubectl sends."""

from __future__ import annotations

import copy
import json

import pytest

from k3p.apiserver.patch import PatchError, apply_strategic_merge_patch
from k3p.apiserver.schemas import schema_for

DEPLOYMENT = schema_for("apps", "v1", "Deployment")
SERVICE = schema_for("", "v1", "Service")
POD = schema_for("", "v1", "Pod")


def deployment(containers=None, **spec):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers or [{"name": "nginx", "image": "nginx:1.25"}]},
            },
            **spec,
        },
    }


def containers_of(obj):
    return obj["spec"]["template"]["spec"]["containers"]


def test_kubectl_patch_adds_a_second_service_port():
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }
    result = apply_strategic_merge_patch(svc, {"spec": {"ports": [{"port": 443, "targetPort": 8443}]}}, SERVICE)
    # merged by the merge key `port`; an item only the patch has goes before the live-only ones
    assert result["spec"]["ports"] == [
        {"port": 443, "targetPort": 8443},
        {"port": 80, "targetPort": 8080, "protocol": "TCP"},
    ]
    assert result["spec"]["selector"] == {"app": "web"}


def test_patch_of_an_existing_service_port_changes_it_in_place():
    svc = {"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443}]}}
    result = apply_strategic_merge_patch(svc, {"spec": {"ports": [{"port": 443, "name": "https"}]}}, SERVICE)
    assert result["spec"]["ports"] == [
        {"port": 80, "targetPort": 8080},
        {"port": 443, "targetPort": 8443, "name": "https"},
    ]


def test_kubectl_patch_adds_a_container_env_var():
    obj = deployment([{"name": "nginx", "image": "nginx", "env": [{"name": "A", "value": "1"}]}, {"name": "side"}])
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "nginx", "env": [{"name": "B", "value": "2"}]}]}}}}
    result = apply_strategic_merge_patch(obj, patch, DEPLOYMENT)
    assert containers_of(result) == [
        {"name": "nginx", "image": "nginx", "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]},
        {"name": "side"},
    ]


def test_kubectl_patch_changes_an_env_var_value_and_deletes_another_with_null_field():
    obj = deployment([{"name": "nginx", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "x"}]}])
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "nginx", "env": [{"name": "A", "value": None}]}]}}}}
    result = apply_strategic_merge_patch(obj, patch, DEPLOYMENT)
    assert containers_of(result)[0]["env"] == [{"name": "A"}, {"name": "B", "value": "x"}]


def test_delete_a_container_with_patch_delete():
    obj = deployment([{"name": "nginx", "image": "nginx"}, {"name": "side", "image": "busybox"}])
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}}
    result = apply_strategic_merge_patch(obj, patch, DEPLOYMENT)
    assert containers_of(result) == [{"name": "nginx", "image": "nginx"}]


def test_retain_keys_on_deployment_strategy_clears_rolling_update():
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    result = apply_strategic_merge_patch(deployment(), patch, DEPLOYMENT)
    assert result["spec"]["strategy"] == {"type": "Recreate"}


def test_without_retain_keys_the_strategy_map_is_merged():
    result = apply_strategic_merge_patch(deployment(), {"spec": {"strategy": {"type": "Recreate"}}}, DEPLOYMENT)
    assert result["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}


def test_kubectl_client_side_apply_patch_with_set_element_order():
    live = deployment(
        [
            {"name": "nginx", "image": "nginx:1.24", "imagePullPolicy": "IfNotPresent"},
            {"name": "injected", "image": "x"},
        ]
    )
    last_applied = json.dumps(deployment([{"name": "nginx", "image": "nginx:1.25"}]))
    # what `kubectl apply` computes for a new image and a new container added first
    patch = {
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": last_applied}},
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "log"}, {"name": "nginx"}],
                    "containers": [{"image": "fluentd", "name": "log"}, {"image": "nginx:1.25", "name": "nginx"}],
                }
            }
        },
    }
    result = apply_strategic_merge_patch(live, patch, DEPLOYMENT)
    assert result["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] == last_applied
    # listed items follow $setElementOrder; an item it does not list is kept, by its live position
    assert containers_of(result) == [
        {"name": "log", "image": "fluentd"},
        {"name": "nginx", "image": "nginx:1.25", "imagePullPolicy": "IfNotPresent"},
        {"name": "injected", "image": "x"},
    ]
    assert "$setElementOrder/containers" not in result["spec"]["template"]["spec"]


def test_set_element_order_alone_reorders():
    live = deployment([{"name": "a"}, {"name": "b"}, {"name": "c"}])
    patch = {"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}]}}}}
    result = apply_strategic_merge_patch(live, patch, DEPLOYMENT)
    # b is not listed: it keeps its live place before c (live order a, b, c)
    assert [c["name"] for c in containers_of(result)] == ["b", "c", "a"]


def test_set_element_order_with_a_deletion_and_an_addition():
    # same ordering as kube-apiserver for this combination
    live = {"spec": {"containers": [{"name": "1"}, {"name": "2", "image": "b"}, {"name": "4", "image": "c"}]}}
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "2"}, {"name": "3"}],
            "containers": [{"name": "3"}, {"name": "1", "$patch": "delete"}],
        }
    }
    result = apply_strategic_merge_patch(live, patch, POD)
    assert result["spec"]["containers"] == [{"name": "2", "image": "b"}, {"name": "4", "image": "c"}, {"name": "3"}]


@pytest.mark.parametrize(
    ("live", "patch", "expected"),
    [
        # finalizers: strategy merge, scalars -> merged as a set
        (["a", "b"], {"finalizers": ["b", "c"]}, ["a", "b", "c"]),
        (["a", "b"], {"finalizers": ["c"]}, ["c", "a", "b"]),
        (["a", "b", "c"], {"$deleteFromPrimitiveList/finalizers": ["b"]}, ["a", "c"]),
        (
            ["a", "b"],
            {"$setElementOrder/finalizers": ["b", "x", "a"], "finalizers": ["x"]},
            ["b", "x", "a"],
        ),
        (["a"], {"finalizers": None}, None),
    ],
)
def test_primitive_merge_list(live, patch, expected):
    obj = {"metadata": {"name": "p", "finalizers": live}}
    result = apply_strategic_merge_patch(obj, {"metadata": patch}, POD)
    assert result["metadata"].get("finalizers") == expected


@pytest.mark.parametrize(
    ("original", "patch", "expected"),
    [
        # null deletes, unmatched nulls vanish
        (
            {"metadata": {"labels": {"a": "1", "b": "2"}}},
            {"metadata": {"labels": {"a": None, "c": None}}},
            {"metadata": {"labels": {"b": "2"}}},
        ),
        # a list without merge strategy is replaced
        (
            {"spec": {"containers": [{"name": "a", "args": ["x", "y"]}]}},
            {"spec": {"containers": [{"name": "a", "args": ["z"]}]}},
            {"spec": {"containers": [{"name": "a", "args": ["z"]}]}},
        ),
        # $patch: replace on a map
        (
            {"metadata": {"labels": {"a": "1", "b": "2"}}},
            {"metadata": {"labels": {"$patch": "replace", "c": "3"}}},
            {"metadata": {"labels": {"c": "3"}}},
        ),
        # $patch: delete on a map empties it
        (
            {"metadata": {"labels": {"a": "1"}}},
            {"metadata": {"labels": {"$patch": "delete"}}},
            {"metadata": {"labels": {}}},
        ),
        # $patch: merge on a map is the default
        (
            {"metadata": {"labels": {"a": "1"}}},
            {"metadata": {"labels": {"$patch": "merge", "b": "2"}}},
            {"metadata": {"labels": {"a": "1", "b": "2"}}},
        ),
        # $patch: replace in a merging list replaces the list
        (
            {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}},
            {"spec": {"containers": [{"name": "c"}, {"$patch": "replace"}]}},
            {"spec": {"containers": [{"name": "c"}]}},
        ),
        # deleting every item with that key, duplicates included
        (
            {"spec": {"containers": [{"name": "a"}, {"name": "a"}, {"name": "b"}]}},
            {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}},
            {"spec": {"containers": [{"name": "b"}]}},
        ),
        # new content is taken without its nulls and directives
        (
            {"spec": {}},
            {"spec": {"volumes": [{"name": "v", "emptyDir": {"medium": None}}, {"name": "gone", "$patch": "delete"}]}},
            {"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}},
        ),
        # a type change replaces the value
        (
            {"spec": {"nodeSelector": "x"}},
            {"spec": {"nodeSelector": {"a": "b"}}},
            {"spec": {"nodeSelector": {"a": "b"}}},
        ),
        # the whole object deleted
        ({"spec": {"x": 1}}, {"$patch": "delete"}, {}),
    ],
)
def test_directives_and_nulls(original, patch, expected):
    assert apply_strategic_merge_patch(original, patch, POD) == expected


def test_volumes_merge_and_retain_keys_in_list_items():
    obj = {"spec": {"volumes": [{"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}]}}
    patch = {"spec": {"volumes": [{"name": "data", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/d"}}]}}
    result = apply_strategic_merge_patch(obj, patch, POD)
    assert result["spec"]["volumes"] == [
        {"name": "data", "hostPath": {"path": "/d"}},
        {"name": "cfg", "configMap": {"name": "c"}},
    ]


def test_without_schema_maps_merge_and_lists_are_replaced():
    obj = {"spec": {"items": [{"name": "a"}], "size": {"cpu": 1, "mem": 2}}}
    result = apply_strategic_merge_patch(obj, {"spec": {"items": [{"name": "b"}], "size": {"cpu": None}}}, None)
    assert result == {"spec": {"items": [{"name": "b"}], "size": {"mem": 2}}}


def test_input_is_not_changed():
    obj = deployment([{"name": "nginx"}, {"name": "side"}])
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}, {"name": "x"}]}}}}
    before_obj, before_patch = copy.deepcopy(obj), copy.deepcopy(patch)
    apply_strategic_merge_patch(obj, patch, DEPLOYMENT)
    assert obj == before_obj
    assert patch == before_patch


@pytest.mark.parametrize(
    ("patch", "code", "message"),
    [
        ({"spec": {"containers": [{"image": "no-name"}]}}, 400, "does not contain declared merge key: name"),
        ({"spec": {"containers": [{"$patch": "delete"}]}}, 400, "does not contain declared merge key: name"),
        ({"spec": {"containers": [{"name": "a", "$patch": "merge"}]}}, 400, "merging lists cannot yet be specified"),
        ({"metadata": {"$patch": "explode"}}, 400, "unknown patch type: explode"),
        ({"spec": {"$retainKeys": ["a"], "hostname": "h"}}, 400, "invalid patch format of retainKeys"),
        ({"spec": {"$retainKeys": "a"}}, 400, "invalid patch format of retainKeys"),
        (
            {"spec": {"$setElementOrder/containers": [{"name": "b"}], "containers": [{"name": "a"}]}},
            400,
            "doesn't match $setElementOrder list",
        ),
        ({"spec": {"$setElementOrder/containers": "a"}}, 400, "invalid patch format of setElementOrder list"),
        ({"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}}, 400, "invalid patch format of primitive list"),
        ({"metadata": {"finalizers": ["a", 1]}}, 400, "list element types are not identical"),
    ],
)
def test_bad_patches(patch, code, message):
    obj = {"metadata": {"finalizers": ["x"]}, "spec": {"containers": [{"name": "a"}]}}
    with pytest.raises(PatchError) as err:
        apply_strategic_merge_patch(obj, patch, POD)
    assert err.value.code == code
    assert message in err.value.message


def test_patch_must_be_an_object():
    with pytest.raises(PatchError) as err:
        apply_strategic_merge_patch({"a": 1}, ["a"], POD)
    assert err.value.code == 400


def test_lists_of_lists_are_422():
    with pytest.raises(PatchError) as err:
        apply_strategic_merge_patch({"metadata": {"finalizers": [["x"]]}}, {"metadata": {"finalizers": [["a"]]}}, POD)
    assert err.value.code == 422
    assert "lists of lists are not supported" in err.value.message
