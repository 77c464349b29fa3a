"""ControllerRevisions: the pod-template history of DaemonSets and StatefulSets.

Each revision stores the template as a patch (``{"spec": {"template": {..., "$patch":
"replace"}}}``, as kube does) and a monotonically growing ``revision`` number. Rolling back
to an old template reuses its revision object and moves it to the newest number.
"""

from __future__ import annotations

import copy
from typing import Any

from k3p.client import ApiError, Client, Informer, Obj
from k3p.client.objects import is_controlled_by, is_deleting, meta, name_of, owner_reference, uid_of
from k3p.client.resources import CONTROLLERREVISIONS
from k3p_plugins.controller_manager.hashing import compute_hash

#: label on revisions and pods naming the revision (DaemonSet pods: the hash; StatefulSet pods: the name)
REVISION_HASH_LABEL = "controller-revision-hash"
#: hash label on the revision objects themselves
HASH_LABEL = "controller.kubernetes.io/hash"


def revision_data(parent: Obj) -> Obj:
    template = copy.deepcopy(parent["spec"].get("template") or {})
    template["$patch"] = "replace"
    return {"spec": {"template": template}}


def template_of_revision(rev: Obj) -> Obj:
    template = copy.deepcopy(((rev.get("data") or {}).get("spec") or {}).get("template") or {})
    template.pop("$patch", None)
    return template


def owned_revisions(informer: Informer, parent: Obj) -> list[Obj]:
    ns = meta(parent).get("namespace")
    revs = [r for r in informer.items(ns) if is_controlled_by(r, parent)]
    return sorted(revs, key=lambda r: (int(r.get("revision") or 0), name_of(r)))


def revision_hash(parent: Obj) -> str:
    return compute_hash(parent["spec"].get("template") or {}, (parent.get("status") or {}).get("collisionCount"))


class RevisionCollision(Exception):
    """A revision of that name exists with other content: the owner's collisionCount must grow."""


async def ensure_current_revision(client: Client, informer: Informer, parent: Obj) -> tuple[Obj, list[Obj]]:
    """The revision of ``parent``'s current template (created or renumbered as needed) and all its revisions."""
    revs = owned_revisions(informer, parent)
    data = revision_data(parent)
    latest = max((int(r.get("revision") or 0) for r in revs), default=0)
    equal = [r for r in revs if r.get("data") == data]
    if equal:
        current = equal[-1]
        if int(current.get("revision") or 0) < latest:
            updated = copy.deepcopy(current)
            updated["revision"] = latest + 1
            current = await client.update(CONTROLLERREVISIONS, updated)
            revs = [current if uid_of(r) == uid_of(current) else r for r in revs]
        return current, revs
    pod_hash = revision_hash(parent)
    labels = dict(((parent["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {})
    labels[REVISION_HASH_LABEL] = pod_hash
    labels[HASH_LABEL] = pod_hash
    rev: Obj = {
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": f"{name_of(parent)}-{pod_hash}", "namespace": meta(parent)["namespace"],
                     "labels": labels, "ownerReferences": [owner_reference(parent)]},
        "data": data, "revision": latest + 1,
    }
    if meta(parent).get("annotations"):
        rev["metadata"]["annotations"] = {k: v for k, v in meta(parent)["annotations"].items()
                                          if k != "kubectl.kubernetes.io/last-applied-configuration"}
    try:
        created = await client.create(CONTROLLERREVISIONS, rev)
    except ApiError as e:
        if not e.already_exists:
            raise
        found = await client.get(CONTROLLERREVISIONS, rev["metadata"]["name"], meta(parent)["namespace"])
        if is_controlled_by(found, parent) and found.get("data") == data:
            if int(found.get("revision") or 0) < latest:
                found["revision"] = latest + 1
                found = await client.update(CONTROLLERREVISIONS, found)
            return found, [*revs, found]
        raise RevisionCollision(rev["metadata"]["name"]) from None
    return created, [*revs, created]


async def truncate_history(client: Client, revs: list[Obj], in_use: set[str], limit: int | None) -> None:
    """Delete the oldest revisions no pod uses beyond ``limit`` (revisionHistoryLimit, default 10)."""
    limit = 10 if limit is None else int(limit)
    unused = [r for r in revs if name_of(r) not in in_use and not is_deleting(r)]
    extra = len(unused) - limit
    for rev in unused[:max(extra, 0)]:
        try:
            await client.delete(CONTROLLERREVISIONS, name_of(rev), meta(rev)["namespace"],
                                preconditions={"uid": uid_of(rev)})
        except ApiError as e:
            if not (e.not_found or e.conflict):
                raise


def hash_of(rev: Obj) -> str:
    labels: dict[str, Any] = meta(rev).get("labels") or {}
    return labels.get(REVISION_HASH_LABEL) or name_of(rev).rsplit("-", 1)[-1]
