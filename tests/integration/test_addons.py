"""The addon deployer: plugins' manifests are applied, and removed once a plugin is disabled or drops them."""

from __future__ import annotations

import pytest

from k3p.addons import PLUGIN_LABEL, AddonDeployer, ManifestError, deletion_order, merged_record, object_ref, stale_refs
from k3p.client import ApiError, Resource
from k3p.client.resources import CLUSTERROLES, CONFIGMAPS, CUSTOMRESOURCEDEFINITIONS
from k3p.testing import K3pServer, async_wait_for

WIDGETS = Resource("widgets.example.com", "v1", "widgets", True, "Widget")
GADGETS = Resource("widgets.example.com", "v1", "gadgets", False, "Gadget")


def role(name: str) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]}


def config_map(name: str, namespace: str, value: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
            "data": {"value": value}}


def crd(plural: str, kind: str, scope: str = "Namespaced") -> dict:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.widgets.example.com"},
            "spec": {"group": "widgets.example.com", "scope": scope,
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "properties": {"spec": {
                             "type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}}


def widget(name: str, size: int) -> dict:
    return {"apiVersion": "widgets.example.com/v1", "kind": "Widget",
            "metadata": {"name": name, "namespace": "widget-system"}, "spec": {"size": size}}


def gadget(name: str) -> dict:
    # Cluster-scoped: a namespace given by mistake is dropped once discovery says so.
    return {"apiVersion": "widgets.example.com/v1", "kind": "Gadget",
            "metadata": {"name": name, "namespace": "ignored"}, "spec": {"size": 1}}


def test_object_refs_and_stale_refs() -> None:
    assert object_ref("a", role("r")) == ("rbac.authorization.k8s.io/v1", "ClusterRole", "", "r")
    with pytest.raises(ManifestError, match=r"needs metadata\.namespace"):
        object_ref("a", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    # Kinds that are not built in are checked for shape only: their scope is known at apply time.
    assert object_ref("a", widget("w", 1)) == ("widgets.example.com/v1", "Widget", "widget-system", "w")
    assert object_ref("a", crd("widgets", "Widget"))[2] == ""
    with pytest.raises(ManifestError, match="without apiVersion"):
        object_ref("a", {"kind": "ConfigMap"})
    with pytest.raises(ManifestError, match="without apiVersion"):
        object_ref("a", {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {}})
    with pytest.raises(ManifestError, match="not an object"):
        object_ref("a", ["not", "a", "dict"])  # type: ignore[arg-type]
    r1, r2 = ("v1", "ConfigMap", "ns", "one"), ("v1", "ConfigMap", "ns", "two")
    assert stale_refs({"a": [r1, r2], "b": [r2]}, {"a": [r1]}) == [r2]
    # an object that moved from one plugin to another is kept
    assert stale_refs({"a": [r1]}, {"b": [r1]}) == []
    # While a pass runs, a plugin's old objects stay remembered beside its new ones.
    assert merged_record({"a": [r1, r2]}, {"a": [r2]}) == {"a": [r2, r1]}
    crd_ref = ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", "widgets.widgets.example.com")
    ns_ref = ("v1", "Namespace", "", "widget-system")
    cr_ref = ("widgets.example.com/v1", "Widget", "widget-system", "w")
    assert deletion_order([ns_ref, crd_ref, cr_ref]) == [cr_ref, crd_ref, ns_ref]


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


async def test_crd_and_its_custom_resources_in_one_list(k3p_server: K3pServer) -> None:
    client = k3p_server.admin_client("addons-test")
    try:
        # The custom resources come before their CRDs in the list: the deployer orders them.
        manifests = [("widgets", [widget("big", 3), gadget("g"), crd("widgets", "Widget"),
                                  crd("gadgets", "Gadget", scope="Cluster")]),
                     ("other", [role("other-reader")])]
        applied = await AddonDeployer(client, manifests).run_once()
        assert ("widgets.example.com/v1", "Gadget", "", "g") in applied["widgets"]
        got = await client.get(WIDGETS, "big", "widget-system")
        assert got["spec"] == {"size": 3}
        assert got["metadata"]["labels"][PLUGIN_LABEL] == "widgets"
        assert (await client.get(GADGETS, "g"))["metadata"]["labels"][PLUGIN_LABEL] == "widgets"
        crd_obj = await client.get(CUSTOMRESOURCEDEFINITIONS, "widgets.widgets.example.com")
        assert crd_obj["metadata"]["labels"][PLUGIN_LABEL] == "widgets"

        # A custom resource nobody shipped, created by a user: it goes with its CRD as well.
        await client.create(WIDGETS, {"apiVersion": "widgets.example.com/v1", "kind": "Widget",
                                      "metadata": {"name": "users", "namespace": "default"}, "spec": {"size": 1}})

        # Next start: the widgets plugin is disabled.
        await AddonDeployer(client, [("other", [role("other-reader")])]).run_once()
        for name in ("widgets.widgets.example.com", "gadgets.widgets.example.com"):
            with pytest.raises(ApiError) as e:
                await client.get(CUSTOMRESOURCEDEFINITIONS, name)
            assert e.value.not_found

        async def unserved() -> bool:
            return await client.resource_for("widgets.example.com/v1", "Widget") is None

        await async_wait_for(unserved, timeout=10, what="widgets no longer served")
        record = await client.get(CONFIGMAPS, "k3p-addons", "kube-system")
        assert set(record["data"]) == {"other"}

        # The custom resources are gone, not merely unserved: a new CRD of the kind finds none.
        await client.create(CUSTOMRESOURCEDEFINITIONS, crd("widgets", "Widget"))
        await async_wait_for(lambda: client.resource_for("widgets.example.com/v1", "Widget"), timeout=10,
                             what="widgets served again")
        assert (await client.list(WIDGETS))["items"] == []
        await client.delete(CUSTOMRESOURCEDEFINITIONS, "widgets.widgets.example.com")
    finally:
        await client.close()


async def test_unserved_kind_fails_before_anything_is_recorded(k3p_server: K3pServer) -> None:
    client = k3p_server.admin_client("addons-test")
    try:
        await AddonDeployer(client, [("alpha", [role("alpha-reader")])]).run_once()
        before = await client.get(CONFIGMAPS, "k3p-addons", "kube-system")
        sprocket = {"apiVersion": "sprockets.example.com/v1", "kind": "Sprocket",
                    "metadata": {"name": "s", "namespace": "default"}}
        bad = [("alpha", [role("alpha-reader"), role("alpha-writer")]), ("sprockets", [sprocket])]
        with pytest.raises(ManifestError,
                           match=r"^plugin sprockets: kind Sprocket of sprockets\.example\.com/v1 is not served"):
            await AddonDeployer(client, bad).run_once()
        # A served group with a kind it does not have fails the same way.
        with pytest.raises(ManifestError, match=r"plugin sprockets: kind Sprocket of apps/v1 is not served"):
            await AddonDeployer(client, [("sprockets", [{**sprocket, "apiVersion": "apps/v1"}])]).run_once()
        after = await client.get(CONFIGMAPS, "k3p-addons", "kube-system")
        assert after["data"] == before["data"]
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        with pytest.raises(ApiError) as e:
            await client.get(CLUSTERROLES, "alpha-writer")
        assert e.value.not_found
    finally:
        await client.close()


async def test_crd_that_is_never_established_fails_naming_it(k3p_server: K3pServer) -> None:
    client = k3p_server.admin_client("addons-test")
    try:
        # Two CRDs claiming one kind's plural: the second is never established (names not accepted).
        clash = crd("widgets", "Widget")
        clash["metadata"] = {"name": "clash.widgets.example.com"}
        clash["spec"] = {**clash["spec"], "names": {"plural": "clash", "singular": "clash", "kind": "Widget",
                                                     "shortNames": ["widgets"]}}
        await AddonDeployer(client, [("widgets", [crd("widgets", "Widget")])]).run_once()
        with pytest.raises(Exception, match=r"plugin clash: CustomResourceDefinition clash\.widgets\.example\.com "
                                            r"was not established within 1s"):
            await AddonDeployer(client, [("widgets", [crd("widgets", "Widget")]), ("clash", [clash])],
                                crd_timeout=1).run_once()
    finally:
        await client.close()
