"""Unknown fields, JSON types and required fields, for built-in and custom schemas."""

from __future__ import annotations

from typing import Any

import pytest

from k3p.apiserver import schemas
from k3p.apiserver.validation import Cause, validate

POD = schemas.schema_for("", "v1", "Pod")
DEPLOYMENT = schemas.schema_for("apps", "v1", "Deployment")


def pod(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec}}


def test_valid_pod_is_ok() -> None:
    body = pod(restartPolicy="Never", volumes=[{"name": "v", "emptyDir": {}}])
    body["metadata"]["labels"] = {"app": "x"}
    body["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1", "memory": 1024}}
    body["spec"]["containers"][0]["ports"] = [{"containerPort": 80, "protocol": "TCP"}]
    result = validate(body, POD, "Strict")
    assert result.ok
    assert result.unknown_fields == [] and result.type_errors == [] and result.required == []
    assert result.strict_error() is None and result.decode_error("Pod", "v1") is None


def test_unknown_fields_with_kube_paths() -> None:
    body = pod(foo=1)
    body["bar"] = {}
    body["metadata"]["nope"] = "x"
    body["spec"]["containers"].append({"name": "d", "image": "i", "ports": [{"containerPort": 1, "hostIp": "x"}]})
    result = validate(body, POD, "Strict")
    # In document order, as the decoder meets them.
    assert result.unknown_fields == ["metadata.nope", "spec.containers[1].ports[0].hostIp", "spec.foo", "bar"]
    assert result.strict_error() == (
        'strict decoding error: unknown field "metadata.nope", unknown field "spec.containers[1].ports[0].hostIp", '
        'unknown field "spec.foo", unknown field "bar"')
    assert not result.ok
    assert result.warnings() == []


def test_warn_and_ignore_modes() -> None:
    body = pod(foo=1)
    warn = validate(body, POD, "Warn")
    assert warn.warnings() == ['unknown field "spec.foo"']
    assert warn.strict_error() is None
    assert warn.ok
    ignore = validate(body, POD, "Ignore")
    assert ignore.unknown_fields == [] and ignore.warnings() == [] and ignore.ok
    with pytest.raises(ValueError, match="fieldValidation"):
        validate(body, POD, "Loose")


def test_maps_and_free_form_objects_take_any_key() -> None:
    body = pod()
    body["metadata"]["annotations"] = {"anything.example.com/x": "y"}
    body["metadata"]["managedFields"] = [{"manager": "m", "fieldsType": "FieldsV1",
                                          "fieldsV1": {"f:spec": {"f:whatever": {}}}}]
    assert validate(body, POD, "Strict").ok
    revision = {"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "r"}, "revision": 1,
                "data": {"spec": {"template": {"anything": True}}}}
    assert validate(revision, schemas.schema_for("apps", "v1", "ControllerRevision"), "Strict").ok


def test_go_decoder_type_errors() -> None:
    body = pod()
    body["spec"]["containers"][0]["ports"] = [{"containerPort": "80"}]
    result = validate(body, POD, "Strict")
    [error] = result.type_errors
    assert error == Cause("FieldValueTypeInvalid",
                          "json: cannot unmarshal string into Go struct field ContainerPort."
                          "spec.containers.ports.containerPort of type int32",
                          "spec.containers[0].ports[0].containerPort")
    assert result.decode_error("Pod", "v1") == (
        'Pod in version "v1" cannot be handled as a Pod: json: cannot unmarshal string into Go struct field '
        "ContainerPort.spec.containers.ports.containerPort of type int32")
    assert result.causes() == []  # a decode error is a 400, not a 422
    assert not result.ok


@pytest.mark.parametrize(("spec", "message"), [
    ({"replicas": "3"}, "cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"),
    ({"replicas": 1.5}, "cannot unmarshal number 1.5 into Go struct field DeploymentSpec.spec.replicas of type int32"),
    ({"replicas": 2**40}, f"cannot unmarshal number {2**40} into Go struct field DeploymentSpec.spec.replicas "
                          "of type int32"),
    ({"paused": "yes"}, "cannot unmarshal string into Go struct field DeploymentSpec.spec.paused of type bool"),
    ({"template": []}, "cannot unmarshal array into Go struct field DeploymentSpec.spec.template of type "
                       "v1.PodTemplateSpec"),
    ({"template": {"spec": {"containers": {}}}},
     "cannot unmarshal object into Go struct field PodSpec.spec.template.spec.containers of type []v1.Container"),
    ({"template": {"spec": {"containers": [{"name": "c", "args": [1]}]}}},
     "cannot unmarshal number into Go struct field Container.spec.template.spec.containers.args of type string"),
    ({"template": {"metadata": {"labels": {"a": True}}}},
     "cannot unmarshal bool into Go struct field ObjectMeta.spec.template.metadata.labels of type string"),
    ({"strategy": {"rollingUpdate": {"maxSurge": False}}},
     "cannot unmarshal bool into Go struct field RollingUpdateDeployment.spec.strategy.rollingUpdate.maxSurge "
     "of type intstr.IntOrString"),
])
def test_go_type_error_wording(spec: dict[str, Any], message: str) -> None:
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {}, "template": {}, **spec}}
    result = validate(body, DEPLOYMENT, "Strict")
    assert [e.message for e in result.type_errors] == ["json: " + message]


def test_int_or_string_and_quantity_accept_both_forms() -> None:
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {}, "template": {}, "strategy": {"rollingUpdate": {"maxSurge": "25%",
                                                                                   "maxUnavailable": 1}}}}
    assert validate(body, DEPLOYMENT, "Strict").ok
    body = pod()
    body["spec"]["containers"][0]["resources"] = {"requests": {"cpu": 0.5, "memory": "64Mi"}}
    assert validate(body, POD, "Strict").ok


def test_null_is_accepted_like_go() -> None:
    body = pod(nodeName=None)
    body["metadata"]["labels"] = None
    assert validate(body, POD, "Strict").ok


def test_root_must_be_an_object() -> None:
    result = validate([], POD, "Strict")
    assert result.type_errors[0].message == "json: cannot unmarshal array into Go value of type v1.Pod"


def test_required_fields() -> None:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"image": "i", "env": [{"value": "x"}]}]}}
    result = validate(body, POD, "Strict")
    assert result.required == [
        Cause("FieldValueRequired", "Required value", "spec.containers[0].name"),
        Cause("FieldValueRequired", "Required value", "spec.containers[0].env[0].name"),
    ]
    assert result.causes() == result.required
    missing = validate({"apiVersion": "v1", "kind": "Pod", "spec": {}}, POD, "Strict")
    assert missing.required == [Cause("FieldValueRequired", "Required value", "spec.containers")]
    assert Cause("FieldValueRequired", "Required value", "spec.containers").as_dict() == {
        "reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers"}
    null = validate({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": None}}, POD, "Strict")
    assert [c.field for c in null.required] == ["spec.containers"]


# --- custom-resource schemas -------------------------------------------------------------------

CRONTAB = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": {
            "type": "object",
            "required": ["cronSpec"],
            "properties": {
                "cronSpec": {"type": "string"},
                "replicas": {"type": "integer"},
                "ratio": {"type": "number"},
                "mode": {"type": "string", "enum": ["Once", "Always"]},
                "port": {"x-kubernetes-int-or-string": True},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "steps": {"type": "array", "items": {"type": "object", "properties": {"run": {"type": "string"}}}},
                "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                        "properties": {"known": {"type": "integer"}}},
                "opaque": {"type": "object"},
                "template": {"type": "object", "x-kubernetes-embedded-resource": True,
                             "properties": {"spec": {"type": "object"}}},
                "maybe": {"type": "string", "nullable": True},
            },
        },
    },
}


def crontab(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "c"},
            "spec": {"cronSpec": "* * * * *", **spec}}


def test_custom_resource_valid() -> None:
    body = crontab(replicas=2, ratio=0.5, mode="Once", port="http", labels={"a": "b"}, steps=[{"run": "x"}],
                   raw={"known": 1, "other": {"deep": [1]}}, maybe=None,
                   template={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}})
    result = validate(body, CRONTAB, "Strict")
    assert result.ok, (result.unknown_fields, result.causes())
    assert validate(crontab(port=8080, ratio=1), CRONTAB, "Strict").ok


def test_custom_resource_unknown_fields() -> None:
    body = crontab(extra=1, steps=[{"run": "x", "shell": "sh"}], opaque={"x": 1},
                   template={"kind": "Pod", "spec": {"anything": 1}, "status": {}})
    body["metadata"]["bogus"] = 1
    result = validate(body, CRONTAB, "Strict")
    assert result.unknown_fields == ["metadata.bogus", "spec.extra", "spec.steps[0].shell", "spec.opaque.x",
                                     "spec.template.spec.anything", "spec.template.status"]
    assert validate(body, CRONTAB, "Ignore").unknown_fields == []


def test_preserve_unknown_fields_stops_checks_below() -> None:
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert validate({"a": {"b": [1, {"c": 2}]}, "d": 3}, schema, "Strict").ok
    assert validate(crontab(raw={"anything": {"at": "all"}}), CRONTAB, "Strict").ok
    # Fields the schema does specify under a preserving object are still checked.
    result = validate(crontab(raw={"known": "one"}), CRONTAB, "Strict")
    assert [c.field for c in result.type_errors] == ["spec.raw.known"]


def test_custom_resource_type_errors_are_invalid_causes() -> None:
    result = validate(crontab(replicas="3", port=True, labels={"a": 1}, mode="Sometimes"), CRONTAB, "Strict")
    assert [str(c) for c in result.causes()] == [
        'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string"',
        'spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean"',
        'spec.labels[a]: Invalid value: "integer": spec.labels[a] in body must be of type string: "integer"',
        'spec.mode: Unsupported value: "Sometimes": supported values: "Once", "Always"',
    ]
    assert {c.reason for c in result.causes()} == {"FieldValueTypeInvalid", "FieldValueNotSupported"}
    assert result.decode_error("CronTab", "v1") is None


def test_custom_resource_required() -> None:
    body = crontab()
    del body["spec"]["cronSpec"]
    result = validate(body, CRONTAB, "Strict")
    assert result.causes() == [Cause("FieldValueRequired", "Required value", "spec.cronSpec")]


def test_builtin_metadata_inside_custom_schema_uses_go_rules() -> None:
    body = crontab()
    body["metadata"]["labels"] = {"a": 1}
    body["metadata"]["managedFields"] = [{"fieldsV1": {"f:spec": {}}}]
    result = validate(body, CRONTAB, "Strict")
    assert result.unknown_fields == []
    assert [c.field for c in result.type_errors] == ["metadata.labels[a]"]
