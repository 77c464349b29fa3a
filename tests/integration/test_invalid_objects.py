"""Objects stored without validation (as an older version may have stored them) that the
controllers cannot work with: a Warning event and a condition, no crash loop, no traceback,
and every other object is still reconciled."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from k3p.apiserver.registry import builtin_registry
from k3p.apiserver.watchcache import encode
from k3p.testing import K3pServer, wait_for
from k3p_plugins.datastore_sql.sqlite import SQLiteDatastore, default_path

LABELS = {"app": "x"}
TEMPLATE = {"metadata": {"labels": LABELS}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
BROKEN = {
    # (resource, name): (spec, what the event says)
    ("deployments", "no-template"): ({"replicas": 1, "selector": {"matchLabels": LABELS}}, "spec.template"),
    ("deployments", "bad-replicas"): ({"replicas": "x", "selector": {"matchLabels": LABELS}, "template": TEMPLATE},
                                      "spec.replicas"),
    # not one of the shapes the controller checks first: the generic handling of a failed reconcile
    ("deployments", "bad-strategy"): ({"replicas": 1, "selector": {"matchLabels": LABELS}, "template": TEMPLATE,
                                       "strategy": {"type": "RollingUpdate", "rollingUpdate": "x"}},
                                      "AttributeError"),
    ("replicasets", "rs-no-template"): ({"replicas": 1, "selector": {"matchLabels": LABELS}}, "spec.template"),
    ("jobs", "job-no-template"): ({"completions": 1}, "spec.template"),
}
KINDS = {"deployments": ("apps", "Deployment"), "replicasets": ("apps", "ReplicaSet"), "jobs": ("batch", "Job")}


def store_broken(data_dir: Path) -> None:
    """Write the broken objects straight into a new server's datastore, past validation."""
    registry = builtin_registry()

    async def write() -> None:
        store = SQLiteDatastore(default_path(str(data_dir)), compact_interval=0)
        await store.start()
        try:
            for (resource, name), (spec, _) in BROKEN.items():
                group, kind = KINDS[resource]
                rt = registry.get(group, "v1", resource)
                obj = {"apiVersion": f"{group}/v1", "kind": kind,
                       "metadata": {"name": name, "namespace": "default", "uid": str(uuid.uuid4()),
                                    "generation": 1, "creationTimestamp": "2025-01-01T00:00:00Z"},
                       "spec": spec}
                await store.create(rt.storage_key("default", name), encode(obj))
        finally:
            await store.close()

    asyncio.run(write())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = K3pServer(tmp_path_factory.mktemp("invalid"))
    store_broken(s.data_dir)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server: K3pServer):
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10) as c:
        yield c


def events_for(http: httpx.Client, name: str) -> list[dict]:
    r = http.get("/api/v1/namespaces/default/events")
    r.raise_for_status()
    return [e for e in r.json()["items"] if e["involvedObject"]["name"] == name]


def condition(obj: dict, type_: str) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def path(resource: str, name: str = "") -> str:
    group = KINDS[resource][0]
    return f"/apis/{group}/v1/namespaces/default/{resource}" + (f"/{name}" if name else "")


def test_a_good_deployment_is_reconciled_beside_broken_ones(server: K3pServer, http: httpx.Client) -> None:
    good = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "good"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "good"}},
                     "template": {"metadata": {"labels": {"app": "good"}}, "spec": TEMPLATE["spec"]}}}
    r = http.post(path("deployments"), json=good)
    assert r.status_code == 201, r.text

    def reconciled() -> bool:
        d = http.get(path("deployments", "good")).json()
        rs = [x for x in http.get(path("replicasets")).json()["items"]
              if any(o["name"] == "good" for o in x["metadata"].get("ownerReferences") or [])]
        return bool(rs) and d.get("status", {}).get("replicas") == 2

    wait_for(reconciled, 30, 0.2, "the good deployment reconciled")


def test_a_broken_object_gets_one_warning_event(server: K3pServer, http: httpx.Client) -> None:
    for (resource, name), (_, what) in BROKEN.items():
        found = wait_for(lambda name=name: events_for(http, name), 30, 0.2, f"an event for {name}")
        assert len(found) == 1, found
        event = found[0]
        assert event["type"] == "Warning" and event["reason"] == "InvalidObject", event
        assert event["involvedObject"]["kind"] == KINDS[resource][1]
        assert what in event["message"], event["message"]
    # once per version of the object: no retry loop piles up events
    time.sleep(3)
    for _, name in BROKEN:
        again = events_for(http, name)
        assert len(again) == 1 and again[0].get("count", 1) == 1, again


@pytest.mark.parametrize(("resource", "name", "type_", "reason"), [
    ("deployments", "no-template", "ReplicaFailure", "ReplicaSetCreateError"),
    ("deployments", "bad-replicas", "ReplicaFailure", "ReplicaSetCreateError"),
    ("deployments", "bad-strategy", "ReplicaFailure", "ReplicaSetCreateError"),
    ("replicasets", "rs-no-template", "ReplicaFailure", "FailedCreate"),
])
def test_a_broken_object_gets_a_condition(http: httpx.Client, resource: str, name: str, type_: str,
                                          reason: str) -> None:
    def cond() -> dict | None:
        return condition(http.get(path(resource, name)).json(), type_)

    found = wait_for(cond, 30, 0.2, f"condition {type_} on {name}")
    assert found["status"] == "True" and found["reason"] == reason, found
    assert BROKEN[(resource, name)][1] in found["message"]


def test_no_traceback_for_broken_objects(server: K3pServer, http: httpx.Client) -> None:
    for _, name in BROKEN:
        wait_for(lambda name=name: events_for(http, name), 30, 0.2, f"an event for {name}")
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    about = [line for line in lines if any(name in json.dumps(line) for _, name in BROKEN)]
    assert about, "the controllers said nothing about the broken objects"
    assert not [line for line in about if "exception" in line], about
    assert not [line for line in lines if line.get("event") == "informer listener failed"]
    assert "Traceback" not in server.logs()
