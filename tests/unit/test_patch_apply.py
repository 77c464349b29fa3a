"""Server-side apply and managedFields, with the Kubernetes v1.32 schemas."""

from __future__ import annotations

import copy
import json

import pytest

from k3p.apiserver.patch import (
    ApplyConflictError,
    ApplyError,
    server_side_apply,
    update_managed_fields,
)
from k3p.apiserver.schemas import schema_for

DEPLOYMENT = schema_for("apps", "v1", "Deployment")
SERVICE = schema_for("", "v1", "Service")
CONFIGMAP = schema_for("", "v1", "ConfigMap")

T0 = "2024-05-01T10:00:00Z"
T1 = "2024-05-01T10:01:00Z"
T2 = "2024-05-01T10:02:00Z"
T3 = "2024-05-01T10:03:00Z"

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def config(replicas=2, labels=None, containers=None, **spec):
    cfg = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": labels or {"app": "web"}},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers or [{"name": "nginx", "image": "nginx:1.25"}]},
            },
            **spec,
        },
    }
    if replicas is not None:
        cfg["spec"]["replicas"] = replicas
    return cfg


def stored(obj):
    """What the API layer adds when it stores an object."""
    obj = copy.deepcopy(obj)
    obj["metadata"].setdefault("uid", "0b6e0c6c-1111-2222-3333-444455556666")
    obj["metadata"]["resourceVersion"] = str(int(obj["metadata"].get("resourceVersion", "0")) + 1)
    return obj


def entries(obj):
    return {(e["manager"], e["operation"]): e for e in obj["metadata"].get("managedFields", [])}


def fields(obj, manager, operation="Apply"):
    return entries(obj)[(manager, operation)]["fieldsV1"]


def create_by_apply(manager="kubectl", **kwargs):
    return stored(server_side_apply(None, config(**kwargs), manager, DEPLOYMENT, now=T0))


def test_create_via_apply_records_the_applied_fields():
    obj = server_side_apply(None, config(), "kubectl", DEPLOYMENT, now=T0)
    assert obj["spec"] == config()["spec"]
    assert obj["metadata"]["labels"] == {"app": "web"}
    assert obj["metadata"]["managedFields"] == [
        {
            "manager": "kubectl",
            "operation": "Apply",
            "apiVersion": "apps/v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:selector": {},
                    "f:template": {
                        "f:metadata": {"f:labels": {"f:app": {}}},
                        "f:spec": {
                            "f:containers": {'k:{"name":"nginx"}': {".": {}, "f:image": {}, "f:name": {}}},
                        },
                    },
                },
            },
        }
    ]


def test_reapplying_the_same_configuration_changes_nothing():
    live = create_by_apply()
    again = server_side_apply(live, config(), "kubectl", DEPLOYMENT, now=T1)
    assert again == live  # managedFields (time included) and every field unchanged


def test_removing_a_field_from_the_configuration_deletes_it():
    labels = {"app": "web", "tier": "frontend"}
    live = create_by_apply(labels=labels)
    result = server_side_apply(live, config(replicas=None, labels=labels), "kubectl", DEPLOYMENT, now=T1)
    assert "replicas" not in result["spec"]
    assert result["metadata"]["labels"] == labels
    result = server_side_apply(stored(result), config(replicas=None), "kubectl", DEPLOYMENT, now=T2)
    assert result["metadata"]["labels"] == {"app": "web"}
    assert "f:tier" not in json.dumps(fields(result, "kubectl"))
    assert entries(result)[("kubectl", "Apply")]["time"] == T2


def test_removing_a_container_from_the_configuration_removes_only_that_container():
    live = create_by_apply(containers=[{"name": "nginx", "image": "nginx"}, {"name": "side", "image": "busybox"}])
    result = server_side_apply(live, config(), "kubectl", DEPLOYMENT, now=T1)
    assert result["spec"]["template"]["spec"]["containers"] == [{"name": "nginx", "image": "nginx:1.25"}]


def test_a_field_another_manager_also_applied_is_kept():
    live = create_by_apply()
    live = stored(server_side_apply(live, config(), "ci", DEPLOYMENT, now=T1))  # same values: shared
    assert {("kubectl", "Apply"), ("ci", "Apply")} == set(entries(live))
    result = server_side_apply(live, config(replicas=None), "kubectl", DEPLOYMENT, now=T2)
    assert result["spec"]["replicas"] == 2
    assert "f:replicas" not in fields(result, "kubectl")["f:spec"]
    assert "f:replicas" in fields(result, "ci")["f:spec"]


def scale_by_controller(live, replicas=5, manager="kube-controller-manager", now=T1):
    new = copy.deepcopy(live)
    new["spec"]["replicas"] = replicas
    return stored(update_managed_fields(live, new, manager, schema=DEPLOYMENT, now=now))


def test_conflict_with_another_manager():
    live = scale_by_controller(create_by_apply())
    with pytest.raises(ApplyConflictError) as err:
        server_side_apply(live, config(replicas=3), "kubectl", DEPLOYMENT, now=T2)
    error = err.value
    assert [c[:2] for c in error.conflicts] == [("kube-controller-manager", ".spec.replicas")]
    assert error.code == 409
    assert error.message == (
        'Apply failed with 1 conflict: conflict with "kube-controller-manager" using apps/v1: .spec.replicas'
    )
    status = error.status()
    assert status["reason"] == "Conflict"
    assert status["code"] == 409
    assert status["details"]["causes"] == [
        {
            "reason": "FieldManagerConflict",
            "message": 'conflict with "kube-controller-manager" using apps/v1',
            "field": ".spec.replicas",
        }
    ]


def test_applying_the_value_another_manager_set_is_no_conflict():
    live = scale_by_controller(create_by_apply(), replicas=3)
    result = server_side_apply(live, config(replicas=3), "kubectl", DEPLOYMENT, now=T2)
    assert result["spec"]["replicas"] == 3
    assert "f:replicas" in fields(result, "kubectl")["f:spec"]
    assert "f:replicas" in fields(result, "kube-controller-manager", "Update")["f:spec"]


def test_several_conflicts_are_grouped_by_manager():
    live = scale_by_controller(create_by_apply())
    new = copy.deepcopy(live)
    new["metadata"]["labels"]["app"] = "changed"
    live = stored(update_managed_fields(live, new, "editor", schema=DEPLOYMENT, now=T2))
    with pytest.raises(ApplyConflictError) as err:
        server_side_apply(live, config(replicas=3), "kubectl", DEPLOYMENT, now=T3)
    assert [c[:2] for c in err.value.conflicts] == [
        ("editor", ".metadata.labels.app"),
        ("kube-controller-manager", ".spec.replicas"),
    ]
    assert err.value.message == (
        "Apply failed with 2 conflicts: "
        'conflicts with "editor" using apps/v1:\n- .metadata.labels.app\n'
        'conflicts with "kube-controller-manager" using apps/v1:\n- .spec.replicas'
    )


def test_force_takes_ownership():
    live = scale_by_controller(create_by_apply())
    result = server_side_apply(live, config(replicas=3), "kubectl", DEPLOYMENT, force=True, now=T2)
    assert result["spec"]["replicas"] == 3
    assert ("kube-controller-manager", "Update") not in entries(result)  # its only field moved
    assert "f:replicas" in fields(result, "kubectl")["f:spec"]
    assert entries(result)[("kubectl", "Apply")]["time"] == T2


def test_update_records_the_changed_fields_for_its_manager():
    live = create_by_apply()
    new = copy.deepcopy(live)
    new["spec"]["replicas"] = 5
    new["metadata"]["annotations"] = {"note": "x"}
    new["status"] = {"replicas": 5}  # the main resource does not own status
    result = update_managed_fields(live, new, "kubectl-edit", schema=DEPLOYMENT, now=T1)
    entry = entries(result)[("kubectl-edit", "Update")]
    assert entry == {
        "manager": "kubectl-edit",
        "operation": "Update",
        "apiVersion": "apps/v1",
        "time": T1,
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:note": {}}}, "f:spec": {"f:replicas": {}}},
    }
    assert "f:replicas" not in fields(result, "kubectl")["f:spec"]
    assert [e["operation"] for e in result["metadata"]["managedFields"]] == ["Apply", "Update"]
    assert result["status"] == {"replicas": 5}
    assert live["spec"]["replicas"] == 2, "the input must not change"


def test_update_entries_of_one_manager_accumulate():
    live = scale_by_controller(create_by_apply(), now=T1)
    new = copy.deepcopy(live)
    new["spec"]["paused"] = True
    result = update_managed_fields(live, new, "kube-controller-manager", schema=DEPLOYMENT, now=T2)
    entry = entries(result)[("kube-controller-manager", "Update")]
    assert entry["fieldsV1"] == {"f:spec": {"f:paused": {}, "f:replicas": {}}}
    assert entry["time"] == T2


def test_update_that_changes_nothing_keeps_managed_fields():
    live = create_by_apply()
    assert update_managed_fields(live, copy.deepcopy(live), "someone", schema=DEPLOYMENT, now=T1) == live


def test_create_by_update_records_everything_but_server_fields():
    obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "cm",
            "namespace": "default",
            "uid": "u",
            "resourceVersion": "7",
            "creationTimestamp": T0,
            "labels": {"a": "b"},
        },
        "data": {"k": "v"},
    }
    result = update_managed_fields(None, obj, "kubectl-create", schema=CONFIGMAP, now=T0)
    assert result["metadata"]["managedFields"] == [
        {
            "manager": "kubectl-create",
            "operation": "Update",
            "apiVersion": "v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {".": {}, "f:k": {}}, "f:metadata": {"f:labels": {".": {}, "f:a": {}}}},
        }
    ]


def test_status_subresource_updates_are_tracked_apart():
    live = create_by_apply()
    new = copy.deepcopy(live)
    new["status"] = {"replicas": 2, "readyReplicas": 2}
    result = update_managed_fields(
        live, new, "kube-controller-manager", subresource="status", schema=DEPLOYMENT, now=T1
    )
    entry = [e for e in result["metadata"]["managedFields"] if e.get("subresource") == "status"]
    assert entry == [
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "apps/v1",
            "time": T1,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:readyReplicas": {}, "f:replicas": {}}},
            "subresource": "status",
        }
    ]


def test_managed_fields_sent_with_an_update_are_used_and_an_empty_list_resets_them():
    live = create_by_apply()
    new = copy.deepcopy(live)
    new["metadata"]["managedFields"] = []
    reset = update_managed_fields(live, new, "kubectl-patch", schema=DEPLOYMENT, now=T1)
    assert "managedFields" not in reset["metadata"]
    # an existing object without managedFields stays untracked by updates
    untracked = stored(reset)
    changed = copy.deepcopy(untracked)
    changed["spec"]["replicas"] = 9
    assert "managedFields" not in update_managed_fields(untracked, changed, "x", schema=DEPLOYMENT, now=T2)["metadata"]


def test_apply_to_an_untracked_object_conflicts_with_before_first_apply():
    live = create_by_apply()
    del live["metadata"]["managedFields"]
    with pytest.raises(ApplyConflictError) as err:
        server_side_apply(live, config(replicas=4), "ci", DEPLOYMENT, now=T1)
    assert [c[:2] for c in err.value.conflicts] == [("before-first-apply", ".spec.replicas")]


def test_kubectl_server_side_apply_takes_over_from_client_side_apply():
    # an object made by `kubectl apply` (client side): one Update entry and the annotation
    csa_config = config(replicas=2)
    created = copy.deepcopy(csa_config)
    created["metadata"]["annotations"] = {LAST_APPLIED: json.dumps(csa_config) + "\n"}
    live = stored(update_managed_fields(None, created, "kubectl-client-side-apply", schema=DEPLOYMENT, now=T0))
    result = server_side_apply(live, config(replicas=3), "kubectl", DEPLOYMENT, now=T1)
    assert result["spec"]["replicas"] == 3
    assert json.loads(result["metadata"]["annotations"][LAST_APPLIED]) == config(replicas=3)
    assert "f:replicas" not in json.dumps(entries(result)[("kubectl-client-side-apply", "Update")]["fieldsV1"])
    # a field someone else changed since the last client-side apply still conflicts
    scaled = scale_by_controller(live, replicas=7, manager="kubectl-client-side-apply")
    with pytest.raises(ApplyConflictError):
        server_side_apply(scaled, config(replicas=3), "kubectl", DEPLOYMENT, now=T2)


def test_service_ports_merge_by_port_and_protocol():
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
    }
    live = stored(server_side_apply(None, svc, "a", SERVICE, now=T0))
    live["spec"]["ports"][0]["protocol"] = "TCP"  # the server defaults it
    other = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 443}]}}
    result = server_side_apply(live, other, "b", SERVICE, now=T1)
    assert result["spec"]["ports"] == [{"port": 80, "targetPort": 8080, "protocol": "TCP"}, {"port": 443}]
    # re-applying the port without protocol still names the defaulted live port
    again = server_side_apply(stored(result), svc, "a", SERVICE, now=T2)
    assert again["spec"]["ports"] == result["spec"]["ports"]


def test_lists_and_maps_follow_their_schema_types():
    live = create_by_apply(containers=[{"name": "nginx", "image": "nginx", "args": ["a", "b"]}])
    applied = config(containers=[{"name": "nginx", "image": "nginx", "args": ["c"]}])
    applied["metadata"]["finalizers"] = ["example.com/x"]
    result = stored(server_side_apply(live, applied, "kubectl", DEPLOYMENT, now=T1))
    assert result["spec"]["template"]["spec"]["containers"][0]["args"] == ["c"]  # atomic: replaced
    other = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "finalizers": ["example.com/y"]},
    }
    result = server_side_apply(result, other, "other", DEPLOYMENT, now=T2)
    assert result["metadata"]["finalizers"] == ["example.com/x", "example.com/y"]  # set: union
    assert fields(result, "other") == {"f:metadata": {"f:finalizers": {'v:"example.com/y"': {}}}}


def test_custom_resource_and_schemaless_objects():
    crd_schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "size": {"type": "integer"},
                    "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                },
            }
        },
    }
    cr = {
        "apiVersion": "example.com/v1",
        "kind": "Thing",
        "metadata": {"name": "t"},
        "spec": {"size": 1, "tags": ["a"]},
    }
    for schema, tags in ((crd_schema, {"f:tags": {'v:"a"': {}}}), (None, {"f:tags": {}})):
        obj = server_side_apply(None, cr, "op", schema, now=T0)
        assert obj["spec"] == cr["spec"]
        spec_fields = fields(obj, "op")["f:spec"]
        assert spec_fields["f:size"] == {}
        assert {k: v for k, v in spec_fields.items() if k == "f:tags"} == tags


@pytest.mark.parametrize(
    ("applied", "kwargs", "code", "message"),
    [
        (
            {**config(), "metadata": {"name": "web", "managedFields": [{"manager": "x"}]}},
            {},
            400,
            "metadata.managedFields must be nil",
        ),
        (config(), {"api_version": "apps/v1beta1"}, 400, "Incorrect version specified in apply patch"),
        (
            config(containers=[{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]),
            {},
            422,
            'duplicate entries for key [name="a"]',
        ),
        (config(containers=[{"image": "x"}]), {}, 422, "omits all key fields"),
    ],
)
def test_bad_apply_requests(applied, kwargs, code, message):
    with pytest.raises(ApplyError) as err:
        server_side_apply(None, applied, "kubectl", DEPLOYMENT, now=T0, **kwargs)
    assert err.value.code == code
    assert message in err.value.message


def test_update_managers_beyond_ten_are_folded_into_ancient_changes():
    live = create_by_apply()
    for i in range(12):
        new = copy.deepcopy(live)
        new["metadata"].setdefault("annotations", {})[f"a{i}"] = "x"
        live = stored(
            update_managed_fields(live, new, f"m{i:02d}", schema=DEPLOYMENT, now=f"2024-05-01T11:{i:02d}:00Z")
        )
    updaters = [e["manager"] for e in live["metadata"]["managedFields"] if e["operation"] == "Update"]
    assert len(updaters) == 10
    assert "ancient-changes" in updaters
    assert not {"m00", "m01", "m02"} & set(updaters)  # the oldest are folded in
    assert {"m03", "m11"} <= set(updaters)
    ancient = next(e for e in live["metadata"]["managedFields"] if e["manager"] == "ancient-changes")
    assert set(ancient["fieldsV1"]["f:metadata"]["f:annotations"]) == {".", "f:a0", "f:a1", "f:a2"}
