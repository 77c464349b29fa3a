"""k3p.client against a real server: verbs, typed errors, informers."""

from __future__ import annotations

import asyncio

import pytest

from k3p.client import ApiError, Client, InformerFactory
from k3p.client.resources import CONFIGMAPS, NAMESPACES
from k3p.testing import K3pServer, async_wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = K3pServer(tmp_path_factory.mktemp("client")).start()
    yield s
    s.stop()


def cm(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
            "data": data}


async def test_verbs_and_typed_errors(server: K3pServer) -> None:
    async with Client.from_kubeconfig(server.kubeconfig) as c:
        made = await c.create(CONFIGMAPS, cm("v1", a="1"))
        with pytest.raises(ApiError) as e:
            await c.create(CONFIGMAPS, cm("v1"))
        assert e.value.already_exists
        made["data"] = {"a": "2"}
        updated = await c.update(CONFIGMAPS, made)
        with pytest.raises(ApiError) as stale:
            await c.update(CONFIGMAPS, made)
        assert stale.value.conflict
        patched = await c.patch(CONFIGMAPS, "v1", {"data": {"b": "3"}}, "default")
        assert patched["data"] == {"a": "2", "b": "3"} and updated["data"] == {"a": "2"}
        applied = await c.patch(CONFIGMAPS, "v2", cm("v2", x="y"), "default", patch_type="apply",
                                field_manager="test")
        assert applied["data"] == {"x": "y"}
        await c.delete(CONFIGMAPS, "v1", "default")
        with pytest.raises(ApiError) as gone:
            await c.get(CONFIGMAPS, "v1", "default")
        assert gone.value.not_found
        names = [n["metadata"]["name"] for n in (await c.list(NAMESPACES))["items"]]
        assert "kube-system" in names


async def test_informer_follows_create_update_delete(server: K3pServer) -> None:
    async with Client.from_kubeconfig(server.kubeconfig) as c:
        await c.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "inf"}})
        factory = InformerFactory(c)
        inf = factory.informer(CONFIGMAPS, "inf")
        seen: list[tuple[str, str]] = []
        inf.add_listener(lambda t, o, _old: seen.append((t, o["metadata"]["name"])))
        factory.start()
        await asyncio.wait_for(factory.wait_synced(), 10)
        await c.create(CONFIGMAPS, {**cm("i1"), "metadata": {"name": "i1", "namespace": "inf"}})
        await async_wait_for(lambda: _true(inf.get("inf/i1")), 5)
        await c.patch(CONFIGMAPS, "i1", {"data": {"k": "v"}}, "inf")
        await async_wait_for(lambda: _true((inf.get("inf/i1") or {}).get("data") == {"k": "v"}), 5)
        await c.delete(CONFIGMAPS, "i1", "inf")
        await async_wait_for(lambda: _true(inf.get("inf/i1") is None), 5)
        assert [t for t, n in seen if n == "i1"] == ["ADDED", "MODIFIED", "DELETED"]
        await factory.stop()


async def _true(value: object) -> bool:
    return bool(value)
