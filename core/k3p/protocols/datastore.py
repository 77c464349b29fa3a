"""The async key-value contract every k3p storage backend implements.

It is shaped like kine's backend: a flat keyspace of ``str`` keys holding ``bytes``
values, one global revision counter that increases by one with every write (it becomes
the Kubernetes ``resourceVersion``), compare-and-swap on a key's ``mod_revision``, and a
watch that replays history from any retained revision.

Only the API server calls a Datastore; everything else goes through the Kubernetes API.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One version of one key.

    ``create_revision`` is the revision of the write that created this incarnation of the
    key; ``mod_revision`` the revision of the write that produced this version. ``lease``
    is the time-to-live in seconds given when it was written (0: forever).
    """

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


class EventType(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    """A change to one key at revision ``kv.mod_revision``.

    For DELETE, ``kv`` carries the deleted value with ``mod_revision`` set to the revision
    of the delete. ``prev_kv`` is the version before the change (None for CREATE).
    """

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class ListResult:
    """A page of a prefix listing, consistent at ``revision``.

    ``more`` tells that keys after the last one returned exist (the page hit ``limit``).
    """

    revision: int
    kvs: list[KeyValue]
    more: bool = False


class DatastoreError(Exception):
    """Base of the typed datastore errors."""


class BackupNotSupported(DatastoreError):
    """backup() of a store whose copies its own tools make (the message names them)."""


class KeyExistsError(DatastoreError):
    """create() of a key that already exists."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key already exists: {key}")
        self.key = key


class NotFoundError(DatastoreError):
    """update() or delete() of a key that does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key not found: {key}")
        self.key = key


class ConflictError(DatastoreError):
    """The key's current mod_revision is not the expected one. ``current`` is what is stored now."""

    def __init__(self, key: str, current: KeyValue | None) -> None:
        found = current.mod_revision if current else None
        super().__init__(f"revision conflict on {key} (current revision {found})")
        self.key = key
        self.current = current


class StorageFull(DatastoreError):
    """A write failed for lack of space (disk full, quota exhausted); nothing of it was stored.

    Any backend raises it from create/update/delete (and compact) when its storage has no
    room. ``where`` names what is full (a file system and the file on it, a database).
    Reads keep working on a full store, and a backend should keep deletes working too,
    since they are how space is freed: one that needs room even to delete keeps some in
    reserve. The API server answers it with 507 Insufficient Storage.
    """

    def __init__(self, where: str, detail: str = "") -> None:
        super().__init__(f"no space left for the datastore: {where}" + (f" ({detail})" if detail else ""))
        self.where = where
        self.detail = detail


class CompactedError(DatastoreError):
    """The requested revision is older than the compaction point; history there is gone."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {requested} has been compacted (oldest retained: {compact_revision})"
        )
        self.requested = requested
        self.compact_revision = compact_revision


@runtime_checkable
class Datastore(Protocol):
    """What the API server needs from storage. All methods are coroutine-safe.

    Revisions: every successful create/update/delete takes the next global revision.
    ``revision=0`` in reads means "latest". Reads at an older revision that has been
    compacted raise CompactedError.
    """

    async def start(self) -> None:
        """Open connections, check the store's health and start background work (compaction)."""

    async def close(self) -> None:
        """Stop background work, end every watch and release the store."""

    async def current_revision(self) -> int:
        """The revision of the last committed write (0 for an empty store)."""

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        """The key's value at ``revision`` (latest if 0), or None if it does not exist."""

    async def list(
        self, prefix: str, start_key: str = "", limit: int = 0, revision: int = 0
    ) -> ListResult:
        """Keys beginning with ``prefix`` in key order, from ``start_key`` (inclusive) on.

        ``limit`` 0 means no limit. ``revision`` 0 means latest; the result's ``revision``
        says which revision the page is consistent at, so the next page can ask for it.
        """

    async def count(self, prefix: str) -> tuple[int, int]:
        """(current revision, number of live keys beginning with ``prefix``)."""

    async def create(self, key: str, value: bytes, lease: int = 0) -> int:
        """Create ``key``; returns the new revision. Raises KeyExistsError."""

    async def update(self, key: str, value: bytes, expected_revision: int, lease: int = 0) -> KeyValue:
        """Replace ``key`` if its mod_revision is ``expected_revision``; returns the new version.

        Raises NotFoundError if the key does not exist, ConflictError if it changed.
        """

    async def delete(self, key: str, expected_revision: int = 0) -> KeyValue:
        """Delete ``key`` (only if its mod_revision is ``expected_revision``, unless that is 0).

        Returns the deleted value with ``mod_revision`` = the revision of the delete.
        Raises NotFoundError or ConflictError.
        """

    def watch(self, prefix: str, after_revision: int) -> AsyncIterator[Event]:
        """Every change to keys beginning with ``prefix`` with revision > ``after_revision``.

        Events come in revision order, first the retained history, then live changes, with
        no gap and no duplicate. Raises CompactedError (on first iteration) if
        ``after_revision`` is older than the compaction point. A slow consumer never blocks
        writers or other watchers. Close the iterator with ``aclose()`` to stop watching.
        """

    async def compact(self, revision: int) -> None:
        """Drop history at or below ``revision``: superseded versions and deleted keys.

        The latest version of every live key is kept. Reads and watches from a revision
        below the compaction point raise CompactedError afterwards.
        """

    async def backup(self, dest_path: str) -> None:
        """Write a consistent copy of the whole store to ``dest_path`` (``k3p datastore backup``).

        Called without ``start()``, possibly while a server in another process uses the
        store. A store whose copies only its own tools make (an external database) raises
        BackupNotSupported with a message naming the command that does it.
        """
