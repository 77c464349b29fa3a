"""RFC 7386 JSON merge patch."""

from __future__ import annotations

import copy

import pytest

from k3p.apiserver.patch import PatchError, apply_merge_patch


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        # RFC 7386 appendix A, the cases that apply to objects
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
        # Kubernetes shapes
        (
            {"metadata": {"labels": {"app": "web", "tier": "fe"}}},
            {"metadata": {"labels": {"tier": None, "env": "prod"}}},
            {"metadata": {"labels": {"app": "web", "env": "prod"}}},
        ),
        (
            {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}},
            {"spec": {"containers": [{"name": "c"}]}},
            {"spec": {"containers": [{"name": "c"}]}},
        ),
        ({"spec": {"replicas": 1}}, {"spec": {"missing": None}}, {"spec": {"replicas": 1}}),
        ({"spec": {"replicas": 1}}, {}, {"spec": {"replicas": 1}}),
    ],
)
def test_merge_patch(target, patch, expected):
    before = copy.deepcopy(target)
    assert apply_merge_patch(target, patch) == expected
    assert target == before


def test_result_is_independent_of_the_input():
    target = {"spec": {"template": {"labels": {"a": "b"}}}, "other": {"x": [1]}}
    result = apply_merge_patch(target, {"spec": {"replicas": 2}})
    result["spec"]["template"]["labels"]["a"] = "changed"
    result["other"]["x"].append(2)
    assert target == {"spec": {"template": {"labels": {"a": "b"}}}, "other": {"x": [1]}}


@pytest.mark.parametrize("patch", [["a"], "text", 3, None])
def test_patch_must_be_an_object(patch):
    with pytest.raises(PatchError) as err:
        apply_merge_patch({"a": 1}, patch)
    assert err.value.code == 400
