"""Errors of the SQL datastore beyond the protocol's typed errors."""

from __future__ import annotations

from k3p.protocols.datastore import DatastoreError


class DatastoreCorruptError(DatastoreError):
    """The database file is damaged or is not a database; k3p refuses to start on it.

    The store is never reset silently: the message names the file and says how to put a
    backup in its place.
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"datastore file {path} is corrupt or unreadable ({detail}). "
            "k3p will not start on it and will not reset it. To restore: stop k3p, copy a file "
            f"made by `k3p datastore backup FILE` to {path}, delete {path}-wal and {path}-shm "
            "if they exist, and start k3p again."
        )
        self.path = path
        self.detail = detail
