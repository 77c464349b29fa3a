"""The addon deployer: plugins' manifests are applied, and removed once a plugin is disabled or drops them."""

from __future__ import annotations

import pytest

from k3p.addons import PLUGIN_LABEL, AddonDeployer, ManifestError, object_ref, stale_refs
from k3p.client import ApiError
from k3p.client.resources import CLUSTERROLES, CONFIGMAPS
from k3p.testing import K3pServer


def role(name: str) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]}


def config_map(name: str, namespace: str, value: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
            "data": {"value": value}}


def test_object_refs_and_stale_refs() -> None:
    assert object_ref("a", role("r")) == ("rbac.authorization.k8s.io/v1", "ClusterRole", "", "r")
    with pytest.raises(ManifestError, match=r"needs metadata\.namespace"):
        object_ref("a", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    with pytest.raises(ManifestError, match="not one the addon deployer knows"):
        object_ref("a", {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}})
    with pytest.raises(ManifestError, match="without apiVersion"):
        object_ref("a", {"kind": "ConfigMap"})
    r1, r2 = ("v1", "ConfigMap", "ns", "one"), ("v1", "ConfigMap", "ns", "two")
    assert stale_refs({"a": [r1, r2], "b": [r2]}, {"a": [r1]}) == [r2]
    # an object that moved from one plugin to another is kept
    assert stale_refs({"a": [r1]}, {"b": [r1]}) == []


async def test_apply_then_remove_disabled_and_dropped_objects(k3p_server: K3pServer) -> None:
    client = k3p_server.admin_client("addons-test")
    try:
        first = [("alpha", [role("alpha-reader"), config_map("alpha-settings", "alpha-system", "1")]),
                 ("beta", [role("beta-reader")])]
        await AddonDeployer(client, first).run_once()
        got = await client.get(CLUSTERROLES, "alpha-reader")
        assert got["metadata"]["labels"][PLUGIN_LABEL] == "alpha"
        assert (await client.get(CONFIGMAPS, "alpha-settings", "alpha-system"))["data"] == {"value": "1"}
        await client.get(CLUSTERROLES, "beta-reader")

        # Next start: beta is disabled, alpha changed one object and dropped another.
        second = [("alpha", [config_map("alpha-settings", "alpha-system", "2")])]
        await AddonDeployer(client, second).run_once()
        for name in ("beta-reader", "alpha-reader"):
            with pytest.raises(ApiError) as e:
                await client.get(CLUSTERROLES, name)
            assert e.value.not_found
        assert (await client.get(CONFIGMAPS, "alpha-settings", "alpha-system"))["data"] == {"value": "2"}
        record = await client.get(CONFIGMAPS, "k3p-addons", "kube-system")
        assert set(record["data"]) == {"alpha"}

        # Applying the same manifests again changes nothing.
        before = (await client.get(CONFIGMAPS, "alpha-settings", "alpha-system"))["metadata"]["resourceVersion"]
        await AddonDeployer(client, second).run_once()
        after = (await client.get(CONFIGMAPS, "alpha-settings", "alpha-system"))["metadata"]["resourceVersion"]
        assert before == after
    finally:
        await client.close()
