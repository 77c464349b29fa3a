"""The Datastore protocol: the one interface between the API server and any storage backend."""

from k3p.storage.protocol import (
    CompactedError,
    ConflictError,
    Datastore,
    DatastoreError,
    Event,
    EventType,
    KeyExistsError,
    KeyValue,
    ListResult,
    NotFoundError,
)

__all__ = [
    "CompactedError",
    "ConflictError",
    "Datastore",
    "DatastoreError",
    "Event",
    "EventType",
    "KeyExistsError",
    "KeyValue",
    "ListResult",
    "NotFoundError",
]
