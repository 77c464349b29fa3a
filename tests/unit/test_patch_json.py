"""RFC 6902 JSON patch as the API server applies it."""

from __future__ import annotations

import copy

import pytest

from k3p.apiserver.patch import PatchError, apply_json_patch

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "redis"}]},
}


@pytest.mark.parametrize(
    ("ops", "check"),
    [
        (
            [{"op": "add", "path": "/metadata/labels/tier", "value": "fe"}],
            ("/metadata/labels", {"app": "web", "tier": "fe"}),
        ),
        ([{"op": "remove", "path": "/metadata/labels/app"}], ("/metadata/labels", {})),
        ([{"op": "replace", "path": "/spec/containers/0/image", "value": "x"}], ("/spec/containers/0/image", "x")),
        (
            [{"op": "add", "path": "/spec/containers/-", "value": {"name": "c"}}],
            ("/spec/containers", [{"name": "a", "image": "nginx"}, {"name": "b", "image": "redis"}, {"name": "c"}]),
        ),
        (
            [{"op": "add", "path": "/spec/containers/0", "value": {"name": "z"}}],
            ("/spec/containers/0", {"name": "z"}),
        ),
        (
            [{"op": "move", "from": "/metadata/labels", "path": "/metadata/annotations"}],
            ("/metadata/annotations", {"app": "web"}),
        ),
        ([{"op": "copy", "from": "/metadata/name", "path": "/metadata/labels/name"}], ("/metadata/labels/name", "web")),
        (
            [
                {"op": "test", "path": "/metadata/name", "value": "web"},
                {"op": "replace", "path": "/metadata/name", "value": "w2"},
            ],
            ("/metadata/name", "w2"),
        ),
        # kube-apiserver's JSON patch library: replace of a missing key of an existing object adds it
        ([{"op": "replace", "path": "/metadata/labels/new", "value": "v"}], ("/metadata/labels/new", "v")),
        # ... and a test of a missing key against null passes
        ([{"op": "test", "path": "/metadata/labels/missing", "value": None}], ("/metadata/name", "web")),
        (
            [{"op": "add", "path": "/metadata/labels/a~1b", "value": "slash"}],
            ("/metadata/labels", {"app": "web", "a/b": "slash"}),
        ),
        ([], ("/metadata/name", "web")),
    ],
)
def test_operations_apply(ops, check):
    before = copy.deepcopy(POD)
    result = apply_json_patch(POD, ops)
    assert POD == before, "the input must not change"
    pointer, expected = check
    node = result
    for part in pointer.strip("/").split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    assert node == expected


def test_result_does_not_share_structure_with_input():
    result = apply_json_patch(POD, [{"op": "add", "path": "/metadata/labels/x", "value": "y"}])
    result["spec"]["containers"][0]["image"] = "changed"
    assert POD["spec"]["containers"][0]["image"] == "nginx"


@pytest.mark.parametrize(
    ("ops", "code", "message"),
    [
        (
            [{"op": "test", "path": "/metadata/name", "value": "other"}],
            422,
            "testing value /metadata/name failed: test failed",
        ),
        (
            [{"op": "test", "path": "/metadata/labels/none", "value": "x"}],
            422,
            "testing value /metadata/labels/none failed",
        ),
        (
            [{"op": "test", "path": "/nope/deeper", "value": "x"}],
            422,
            "test operation does not apply: is missing path: /nope/deeper",
        ),
        (
            [{"op": "remove", "path": "/metadata/labels/none"}],
            422,
            "Unable to remove nonexistent key: none: missing value",
        ),
        ([{"op": "remove", "path": "/nope/x"}], 422, 'remove operation does not apply: doc is missing path: "/nope/x"'),
        (
            [{"op": "replace", "path": "/nope/x", "value": 1}],
            422,
            "replace operation does not apply: doc is missing path: /nope/x",
        ),
        (
            [{"op": "add", "path": "/nope/x", "value": 1}],
            422,
            'add operation does not apply: doc is missing path: "/nope/x"',
        ),
        ([{"op": "remove", "path": "/spec/containers/7"}], 422, "Unable to access invalid index: 7"),
        ([{"op": "add", "path": "/spec/containers/9", "value": {}}], 422, "Unable to access invalid index: 9"),
        (
            [{"op": "move", "from": "/nope", "path": "/x"}],
            422,
            "move operation does not apply: doc is missing from path: /nope",
        ),
        ([{"op": "copy", "from": "/metadata/name", "path": "/a/b"}], 422, "doc is missing destination path: /a/b"),
        # a failing operation after a successful one still fails the whole patch
        (
            [
                {"op": "add", "path": "/metadata/labels/x", "value": "1"},
                {"op": "test", "path": "/metadata/labels/x", "value": "2"},
            ],
            422,
            "testing value /metadata/labels/x failed",
        ),
        ([{"op": "replace", "path": "", "value": [1, 2]}], 422, "must be a JSON object"),
    ],
)
def test_operations_that_do_not_apply_are_422(ops, code, message):
    before = copy.deepcopy(POD)
    with pytest.raises(PatchError) as err:
        apply_json_patch(POD, ops)
    assert err.value.code == code
    assert message in err.value.message
    assert POD == before


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ({"op": "add", "path": "/a", "value": 1}, "cannot unmarshal object"),
        ("not a patch", "cannot unmarshal string"),
        (["add"], "cannot unmarshal string into Go value of type jsonpatch.Operation"),
        ([{"path": "/a", "value": 1}], "op"),
        ([{"op": "frobnicate", "path": "/a"}], "Unexpected kind: frobnicate"),
        ([{"op": "add", "value": 1}], "add operation missing path field"),
        ([{"op": "add", "path": "/a"}], "add operation missing value field"),
        ([{"op": "test", "path": "/a"}], "test operation missing value field"),
        ([{"op": "move", "path": "/a"}], "move operation missing from field"),
        ([{"op": "remove", "path": "metadata/name"}], "must start with /"),
        ([{"op": "remove", "path": 3}], "remove operation missing path field"),
    ],
)
def test_malformed_operations_are_400(ops, message):
    with pytest.raises(PatchError) as err:
        apply_json_patch(POD, ops)
    assert err.value.code == 400
    assert message in err.value.message


def test_too_many_operations_is_413():
    ops = [{"op": "test", "path": "/metadata/name", "value": "web"}] * 10_001
    with pytest.raises(PatchError) as err:
        apply_json_patch(POD, ops)
    assert err.value.code == 413


def test_error_is_a_status():
    with pytest.raises(PatchError) as err:
        apply_json_patch(POD, [{"op": "test", "path": "/metadata/name", "value": "x"}])
    status = err.value.status()
    assert status["kind"] == "Status"
    assert status["code"] == 422
    assert status["reason"] == "Invalid"
    assert status["message"] == "testing value /metadata/name failed: test failed"
