"""Garbage collector decisions and its ownership graph."""

from __future__ import annotations

from k3p.client.resources import PODS, REPLICASETS
from k3p_plugins.controller_manager.garbagecollector import GarbageCollector, owner_decision


def refs(*uids: str) -> list[dict]:
    return [{"uid": u, "kind": "ReplicaSet", "apiVersion": "apps/v1", "name": u} for u in uids]


def test_owner_decisions() -> None:
    assert owner_decision(refs("a"), {"a": "solid"}) == ("keep", [])
    assert owner_decision(refs("a"), {"a": "dangling"}) == ("delete", [])
    assert owner_decision(refs("a", "b"), {"a": "dangling", "b": "solid"}) == ("unlink", ["a"])
    assert owner_decision(refs("a", "b"), {"a": "waiting", "b": "solid"}) == ("unlink", ["a"])
    assert owner_decision(refs("a"), {"a": "waiting"}) == ("delete-foreground", [])
    assert owner_decision(refs("a", "b"), {"a": "waiting", "b": "dangling"}) == ("delete-foreground", [])


def obj(uid: str, name: str, owners: list[dict] | None = None, **meta: object) -> dict:
    return {"metadata": {"uid": uid, "name": name, "namespace": "ns", "ownerReferences": owners or [], **meta}}


async def test_graph_tracks_owners_and_queues_orphans() -> None:
    gc = GarbageCollector(client=None, informers=None)  # type: ignore[arg-type]
    gc._on_change(REPLICASETS, "ADDED", obj("rs1", "rs"), None)
    gc._on_change(PODS, "ADDED", obj("p1", "p", refs("rs1")), None)
    assert gc.nodes["rs1"].dependents == {"p1"}
    assert "p1" in gc.queue._queued  # a new dependent is checked once
    gc.queue._queue.clear()
    gc.queue._queued.clear()
    # the owner goes away: its dependents are looked at again
    gc._on_change(REPLICASETS, "DELETED", obj("rs1", "rs"), None)
    assert "p1" in gc.queue._queued and "rs1" not in gc.nodes
    # an owner being deleted in the foreground is queued, and so is it again when a dependent goes
    gc.queue._queue.clear()
    gc.queue._queued.clear()
    gc._on_change(REPLICASETS, "ADDED", obj("rs2", "rs2", deletionTimestamp="t", finalizers=["foregroundDeletion"]),
                  None)
    gc._on_change(PODS, "ADDED", obj("p2", "p2", refs("rs2")), None)
    assert {"rs2", "p2"} <= gc.queue._queued
    gc.queue._queue.clear()
    gc.queue._queued.clear()
    gc._on_change(PODS, "DELETED", obj("p2", "p2", refs("rs2")), None)
    assert "rs2" in gc.queue._queued and gc.nodes["rs2"].dependents == set()
