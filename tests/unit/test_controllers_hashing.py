"""Content hashes in names, and ControllerRevision data."""

from __future__ import annotations

from k3p_plugins.controller_manager.hashing import compute_hash, fnv32a, safe_encode
from k3p_plugins.controller_manager.revisions import revision_data, template_of_revision


def test_fnv32a_reference_values() -> None:
    assert fnv32a(b"") == 0x811C9DC5
    assert fnv32a(b"a") == 0xE40C292C
    assert fnv32a(b"foobar") == 0xBF9CF968


def test_safe_encoding_has_no_vowels() -> None:
    encoded = safe_encode("0123456789")
    assert len(encoded) == 10 and not set(encoded) & set("aeiou013")


def test_compute_hash_is_stable_and_depends_on_content_and_collisions() -> None:
    t = {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    same = {"spec": {"containers": [{"image": "x", "name": "c"}]}, "metadata": {"labels": {"a": "b"}}}
    assert compute_hash(t) == compute_hash(same)
    assert compute_hash(t) != compute_hash({**t, "spec": {"containers": [{"name": "c", "image": "y"}]}})
    assert compute_hash(t) != compute_hash(t, 1)
    assert compute_hash(t, 0) == compute_hash(t)


def test_revision_data_round_trips_the_template() -> None:
    owner = {"spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}}}
    data = revision_data(owner)
    assert data["spec"]["template"]["$patch"] == "replace"
    assert template_of_revision({"data": data}) == owner["spec"]["template"]
