"""CustomResourceDefinitions: resource types, CRD validation, status."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from k3p.apiserver import crd as crdmod
from k3p.apiserver import schemas
from k3p.apiserver.registry import ResourceType, builtin_registry
from k3p.apiserver.validation import validate

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_crd(**spec_overrides: Any) -> dict[str, Any]:
    crd: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "crontabs.stable.example.com"},
        "spec": {
            "group": "stable.example.com",
            "scope": "Namespaced",
            "names": {"plural": "crontabs", "kind": "CronTab", "shortNames": ["ct"], "categories": ["all"]},
            "versions": [
                {
                    "name": "v1", "served": True, "storage": True,
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                                                             "statusReplicasPath": ".status.replicas",
                                                             "labelSelectorPath": ".status.selector"}},
                    "additionalPrinterColumns": [
                        {"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                    "selectableFields": [{"jsonPath": ".spec.cronSpec"}],
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {
                            "cronSpec": {"type": "string"}, "replicas": {"type": "integer"}}},
                        "status": {"type": "object", "properties": {
                            "replicas": {"type": "integer"}, "selector": {"type": "string"}}},
                    }}},
                },
                {"name": "v1beta1", "served": True, "storage": False, "deprecated": True,
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
                {"name": "v1alpha1", "served": False, "storage": False,
                 "schema": {"openAPIV3Schema": {"type": "object"}}},
            ],
        },
    }
    crd["spec"].update(spec_overrides)
    return crd


def test_crd_schema_comes_from_the_kubernetes_schemas() -> None:
    # The CRD object itself validates against the built-in apiextensions.k8s.io/v1 schema.
    schema = schemas.schema_for("apiextensions.k8s.io", "v1", "CustomResourceDefinition")
    result = validate(make_crd(), schema, "Strict")
    assert result.ok, (result.unknown_fields, result.causes(), result.type_errors)


def test_resource_types_one_per_served_version() -> None:
    types = crdmod.resource_types(make_crd())
    assert [rt.version for rt in types] == ["v1", "v1beta1"]
    v1, beta = types
    assert (v1.group, v1.resource, v1.kind, v1.singular, v1.list_kind) == (
        "stable.example.com", "crontabs", "CronTab", "crontab", "CronTabList")
    assert v1.namespaced and v1.custom and v1.definition is None
    assert v1.short_names == ("ct",) and v1.categories == ("all",)
    assert set(v1.subresources) == {"status", "scale"}
    assert beta.subresources == ()
    assert v1.storage_version == beta.storage_version == "v1"
    assert v1.storage_key("ns", "x") == beta.storage_key("ns", "x") == "/registry/stable.example.com/crontabs/ns/x"
    assert v1.schema["properties"]["spec"]["properties"]["cronSpec"] == {"type": "string"}
    assert [c["name"] for c in v1.printer_columns] == ["Spec", "Age"]
    assert v1.scale_paths["specReplicasPath"] == ".spec.replicas"
    assert v1.selectable_fields == (".spec.cronSpec",)
    assert v1.deprecation_warning is None
    assert beta.deprecation_warning == "stable.example.com/v1beta1 CronTab is deprecated"
    assert "deletecollection" in v1.verbs and "watch" in v1.verbs
    scale = v1.subresource("scale")
    assert (scale.group, scale.version, scale.kind) == ("autoscaling", "v1", "Scale")


def test_resource_types_cluster_scope_and_defaults() -> None:
    crd = make_crd(scope="Cluster")
    crd["spec"]["names"] = {"plural": "widgets", "kind": "Widget"}
    crd["metadata"]["name"] = "widgets.stable.example.com"
    [rt, _] = crdmod.resource_types(crd)
    assert not rt.namespaced
    assert rt.singular == "widget" and rt.list_kind == "WidgetList"
    assert rt.storage_key(None, "w") == "/registry/stable.example.com/widgets/w"
    defaulted = crdmod.with_defaults(crd)
    assert defaulted["spec"]["names"]["singular"] == "widget"
    assert defaulted["spec"]["conversion"] == {"strategy": "None"}
    assert "singular" not in crd["spec"]["names"]  # the input is left alone


def test_served_under_accepted_names() -> None:
    crd = make_crd()
    crd["status"] = {"acceptedNames": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab",
                                       "listKind": "CronTabList"}}
    crd["spec"]["names"]["shortNames"] = ["ct", "cront"]
    [rt, _] = crdmod.resource_types(crd)
    assert rt.short_names == ()


def test_valid_crd_has_no_causes() -> None:
    assert crdmod.validate_crd(crdmod.with_defaults(make_crd())) == []


def fields(causes) -> list[str]:
    return [c.field for c in causes]


def test_name_must_be_plural_dot_group() -> None:
    crd = make_crd()
    crd["metadata"]["name"] = "crontab.stable.example.com"
    [cause] = crdmod.validate_crd(crdmod.with_defaults(crd))
    assert cause.field == "metadata.name"
    assert cause.reason == "FieldValueInvalid"
    assert cause.message == 'Invalid value: "crontab.stable.example.com": must be spec.names.plural+"."+spec.group'


def test_exactly_one_storage_version() -> None:
    crd = make_crd()
    crd["spec"]["versions"][1]["storage"] = True
    causes = crdmod.validate_crd(crdmod.with_defaults(crd))
    assert fields(causes) == ["spec.versions"]
    assert causes[0].message.endswith("must have exactly one version marked as storage version")
    crd["spec"]["versions"][0]["storage"] = crd["spec"]["versions"][1]["storage"] = False
    assert fields(crdmod.validate_crd(crdmod.with_defaults(crd))) == ["spec.versions"]


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda c: c["spec"].update(group="example"), "spec.group", "should be a domain with at least one dot"),
    (lambda c: c["spec"].update(scope="Galaxy"), "spec.scope",
     'Unsupported value: "Galaxy": supported values: "Cluster", "Namespaced"'),
    (lambda c: c["spec"]["names"].update(shortNames=["Bad_Name"]), "spec.names.shortNames[0]",
     "a DNS-1035 label must consist of lower case alphanumeric characters"),
    (lambda c: c["spec"]["names"].update(listKind="CronTab"), "spec.names.listKind",
     "kind and listKind may not be the same"),
    (lambda c: c["spec"]["versions"][1].update(name="v1"), "spec.versions", "must contain unique version names"),
    (lambda c: c["spec"]["versions"][0].pop("schema"), "spec.versions[0].schema.openAPIV3Schema",
     "Required value: schemas are required"),
    (lambda c: c["spec"]["versions"][0]["subresources"]["scale"].pop("specReplicasPath"),
     "spec.versions[0].subresources.scale.specReplicasPath", "Required value"),
])
def test_crd_validation_errors(change, field: str, message: str) -> None:
    crd = make_crd()
    change(crd)
    causes = crdmod.validate_crd(crdmod.with_defaults(crd))
    assert field in fields(causes), causes
    assert message in next(c.message for c in causes if c.field == field)


def test_required_names() -> None:
    crd = make_crd()
    crd["spec"]["names"] = {"plural": "crontabs"}
    causes = crdmod.validate_crd(crdmod.with_defaults(crd))
    assert {"spec.names.kind", "spec.names.singular", "spec.names.listKind"} <= set(fields(causes))
    assert all(c.reason == "FieldValueRequired" for c in causes if c.field.startswith("spec.names"))


@pytest.mark.parametrize(("schema", "field", "message"), [
    ({"properties": {"spec": {"type": "object"}}}, "spec.versions[0].schema.openAPIV3Schema.type",
     "Required value: must not be empty at the root"),
    ({"type": "string"}, "spec.versions[0].schema.openAPIV3Schema.type", "must be object at the root"),
    ({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "string"}}}}},
     "spec.versions[0].schema.openAPIV3Schema.properties[spec].type",
     "Required value: must not be empty for specified object fields"),
    ({"type": "object", "properties": {"list": {"type": "array", "items": {}}}},
     "spec.versions[0].schema.openAPIV3Schema.properties[list].items.type",
     "must not be empty for specified array items"),
    ({"type": "object", "properties": {"list": {"type": "array"}}},
     "spec.versions[0].schema.openAPIV3Schema.properties[list].items", "Required value"),
    ({"type": "object", "properties": {"m": {"type": "object", "properties": {"a": {"type": "string"}},
                                            "additionalProperties": {"type": "string"}}}},
     "spec.versions[0].schema.openAPIV3Schema.properties[m].additionalProperties", "mutual exclusive"),
    ({"type": "object", "properties": {"r": {"$ref": "#/definitions/x"}}},
     "spec.versions[0].schema.openAPIV3Schema.properties[r].$ref", "Forbidden"),
])
def test_structural_schema_basics(schema: dict[str, Any], field: str, message: str) -> None:
    crd = make_crd()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = schema
    causes = crdmod.validate_crd(crdmod.with_defaults(crd))
    assert field in fields(causes), causes
    assert message in next(c.message for c in causes if c.field == field)


def test_untyped_fields_allowed_with_int_or_string_or_preserve() -> None:
    crd = make_crd()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = {"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True},
        "any": {"x-kubernetes-preserve-unknown-fields": True}}}
    assert crdmod.validate_crd(crdmod.with_defaults(crd)) == []


def test_status_when_served() -> None:
    status = crdmod.crd_status(make_crd(), builtin_registry(), now=NOW)
    names_accepted, established = status["conditions"]
    assert names_accepted == {"type": "NamesAccepted", "status": "True", "lastTransitionTime": "2025-01-02T03:04:05Z",
                              "reason": "NoConflicts", "message": "no conflicts found"}
    assert established == {"type": "Established", "status": "True", "lastTransitionTime": "2025-01-02T03:04:05Z",
                           "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}
    assert status["acceptedNames"] == {"plural": "crontabs", "singular": "crontab", "shortNames": ["ct"],
                                       "kind": "CronTab", "listKind": "CronTabList", "categories": ["all"]}
    assert status["storedVersions"] == ["v1"]


def test_status_keeps_transition_times_and_stored_versions() -> None:
    crd = make_crd()
    crd["status"] = crdmod.crd_status(crd, now=NOW)
    crd["status"]["storedVersions"] = ["v1beta1"]
    later = datetime(2025, 2, 1, tzinfo=UTC)
    status = crdmod.crd_status(crd, now=later)
    assert [c["lastTransitionTime"] for c in status["conditions"]] == ["2025-01-02T03:04:05Z"] * 2
    assert status["storedVersions"] == ["v1beta1", "v1"]
    assert crdmod.is_established({"status": status})


def test_name_conflict_in_the_same_group() -> None:
    registry = builtin_registry()
    registry.add(ResourceType(group="stable.example.com", version="v1", resource="cronjobs", kind="CronJob",
                              singular="cronjob", namespaced=True, short_names=("ct",), custom=True))
    status = crdmod.crd_status(make_crd(), registry, now=NOW)
    names_accepted, established = status["conditions"]
    assert names_accepted["status"] == "False"
    assert names_accepted["reason"] == "ShortNamesConflict"
    assert names_accepted["message"] == '"ct" is already in use'
    assert established["status"] == "False" and established["reason"] == "NotAccepted"
    assert status["acceptedNames"] == {}
    assert not crdmod.is_established({"status": status})
    # Another group may use the same names.
    assert crdmod.crd_status(make_crd(), builtin_registry(), now=NOW)["conditions"][0]["status"] == "True"


def test_conflict_after_establishment_keeps_serving_old_names() -> None:
    crd = make_crd()
    crd["status"] = crdmod.crd_status(crd, now=NOW)
    registry = builtin_registry()
    registry.add(ResourceType(group="stable.example.com", version="v1", resource="others", kind="Other",
                              singular="other", namespaced=True, short_names=("ot",), custom=True))
    crd = copy.deepcopy(crd)
    crd["spec"]["names"]["shortNames"] = ["ct", "ot"]
    status = crdmod.crd_status(crd, registry, now=NOW)
    assert status["conditions"][0]["reason"] == "ShortNamesConflict"
    assert status["conditions"][1]["status"] == "True"
    assert status["acceptedNames"]["shortNames"] == ["ct"]


def test_validation_schema_makes_metadata_and_type_fields_implicit() -> None:
    [rt, beta] = crdmod.resource_types(make_crd())
    schema = crdmod.validation_schema(rt)
    body = {"apiVersion": "stable.example.com/v1", "kind": "CronTab",
            "metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"cronSpec": "x", "nope": 1}}
    result = validate(body, schema, "Strict")
    assert result.unknown_fields == ["spec.nope"]
    assert "apiVersion" not in rt.schema["properties"]  # the CRD's own schema is left alone
    body["metadata"]["bogus"] = True
    assert validate(body, schema, "Strict").unknown_fields == ["metadata.bogus", "spec.nope"]
    assert validate({"apiVersion": "x/v1beta1", "kind": "CronTab", "metadata": {"name": "x"}, "any": {"thing": 1}},
                    crdmod.validation_schema(beta), "Strict").ok
