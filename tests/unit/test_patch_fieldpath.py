"""Field paths and the FieldsV1 encoding of managedFields."""

from __future__ import annotations

import pytest

from k3p.apiserver.patch import fieldpath as fp
from k3p.apiserver.patch import structured
from k3p.apiserver.schemas import schema_for

POD = schema_for("", "v1", "Pod")

CONTAINER = fp.key({"name": "nginx"})
PORT = fp.key({"protocol": "TCP", "containerPort": 80})


def test_key_elements_are_canonical():
    assert fp.serialize_element(PORT) == 'k:{"containerPort":80,"protocol":"TCP"}'
    assert fp.key({"containerPort": 80.0, "protocol": "TCP"}) == PORT
    assert fp.serialize_element(fp.value("a<b")) == 'v:"a\\u003cb"'
    assert fp.parse_element('k:{"protocol": "TCP", "containerPort": 80}') == PORT


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (fp.make_path("spec", "replicas"), ".spec.replicas"),
        (fp.make_path("spec", "containers", CONTAINER, "image"), '.spec.containers[name="nginx"].image'),
        (fp.make_path("spec", "ports", PORT), '.spec.ports[containerPort=80,protocol="TCP"]'),
        (fp.make_path("metadata", "finalizers", fp.value("x")), '.metadata.finalizers[="x"]'),
        (fp.make_path("items", fp.index(3)), ".items[3]"),
    ],
)
def test_path_strings(path, text):
    assert fp.path_string(path) == text


FIELDS = {
    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
    "f:spec": {
        "f:containers": {
            'k:{"name":"nginx"}': {
                ".": {},
                "f:image": {},
                "f:name": {},
                "f:ports": {'k:{"containerPort":80,"protocol":"TCP"}': {".": {}, "f:containerPort": {}}},
            }
        },
        "f:finalizers": {'v:"a"': {}},
    },
}


def test_fields_v1_round_trip():
    paths = fp.from_fields_v1(FIELDS)
    assert paths == {
        fp.make_path("metadata", "labels"),
        fp.make_path("metadata", "labels", "app"),
        fp.make_path("spec", "containers", CONTAINER),
        fp.make_path("spec", "containers", CONTAINER, "image"),
        fp.make_path("spec", "containers", CONTAINER, "name"),
        fp.make_path("spec", "containers", CONTAINER, "ports", PORT),
        fp.make_path("spec", "containers", CONTAINER, "ports", PORT, "containerPort"),
        fp.make_path("spec", "finalizers", fp.value("a")),
    }
    assert fp.to_fields_v1(paths) == FIELDS


def test_fields_v1_orders_fields_before_keys_before_values():
    paths = {
        fp.make_path("x", fp.value(2)),
        fp.make_path("x", fp.value("b")),
        fp.make_path("x", fp.key({"n": "a"})),
        fp.make_path("x", "z"),
        fp.make_path("x", fp.value(1)),
        fp.make_path("a"),
    }
    encoded = fp.to_fields_v1(paths)
    assert list(encoded) == ["f:a", "f:x"]
    assert list(encoded["f:x"]) == ["f:z", 'k:{"n":"a"}', "v:1", "v:2", 'v:"b"']


def test_unknown_element_kinds_are_skipped_and_bad_ones_refused():
    assert fp.from_fields_v1({"x:future": {}, "f:a": {}}) == {fp.make_path("a")}
    with pytest.raises(ValueError):
        fp.from_fields_v1({"nocolon": {}})
    with pytest.raises(ValueError):
        fp.from_fields_v1({"k:not-json": {}})


def test_recursive_difference_drops_subtrees():
    paths = {fp.make_path("status"), fp.make_path("status", "phase"), fp.make_path("spec", "x")}
    assert fp.recursive_difference(paths, {fp.make_path("status")}) == {fp.make_path("spec", "x")}


def test_field_set_of_a_pod():
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "web"}, "finalizers": ["a"]},
        "spec": {
            "containers": [
                {"name": "nginx", "image": "nginx", "args": ["-g"], "ports": [{"containerPort": 80}], "resources": {}}
            ],
            "nodeSelector": {"disk": "ssd"},
        },
    }
    paths = structured.to_field_set(pod, POD)
    c = ("spec", "containers", CONTAINER)
    assert paths == {
        fp.make_path("apiVersion"),
        fp.make_path("kind"),
        fp.make_path("metadata", "name"),
        fp.make_path("metadata", "labels", "app"),
        fp.make_path("metadata", "finalizers", fp.value("a")),
        fp.make_path(*c),
        fp.make_path(*c, "name"),
        fp.make_path(*c, "image"),
        fp.make_path(*c, "args"),  # atomic list: owned as a whole
        fp.make_path(*c, "resources"),  # empty object: a leaf
        # protocol is defaulted in the key, as the API server's OpenAPI says
        fp.make_path(*c, "ports", PORT),
        fp.make_path(*c, "ports", PORT, "containerPort"),
        fp.make_path("spec", "nodeSelector"),  # x-kubernetes-map-type: atomic
    }
