"""The SQL of k3p's log table, written once for every database.

The table is a log: every write appends a row and the row's id is the global revision.
A row points at the version it replaces through ``prev_revision``, and the unique index
on ``(name, prev_revision)`` makes two writers that both start from the same version
collide, so compare-and-swap holds even with several servers on one database. A create
is flagged ``created`` (its create revision is its own id), a delete appends a tombstone
flagged ``deleted``. The compaction point lives in the small ``kv_meta`` table.

:class:`Dialect` holds the generic statements; a database's subclass overrides only
what differs (column types, how a write transaction starts, how the new id comes back,
health checks, what to do after a compaction).
"""

from __future__ import annotations

import sys
from typing import Any

from k3p.protocols.datastore import BackupNotSupported, Event, EventType, KeyValue, StorageFull

SCHEMA_VERSION = 1

#: LIMIT used for "no limit": every supported database takes a bigint there
NO_LIMIT = 2**62
#: a revision larger than any real one, for "latest"
LATEST = 2**62

# Column order of every row-returning statement; the helpers below index into it.
_COLUMNS = (
    "kv.id, kv.name, kv.created, kv.deleted, kv.create_revision, kv.prev_revision, kv.lease, kv.value"
)
_PREV_COLUMNS = "p.created, p.create_revision, p.lease, p.value"


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    None when there is no such bound (empty prefix, or only maximal code points). Keys
    compare by code point, which is also the byte order of their UTF-8 form, so this works
    as an index range bound in any database that compares text bytewise.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1])
        if code < sys.maxunicode:
            code += 1
            if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be stored as UTF-8
                code = 0xE000
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def row_kv(row: Any) -> KeyValue:
    """The KeyValue of a live (not deleted) row in ``_COLUMNS`` order."""
    rid = row[0]
    return KeyValue(row[1], row[7], rid if row[2] else row[4], rid, row[6])


def row_event(row: Any) -> Event:
    """The Event of a row read with its predecessor (``_COLUMNS`` + ``_PREV_COLUMNS``)."""
    rid, name = row[0], row[1]
    prev = None
    if row[8] is not None:
        prev_rev = row[5]
        prev = KeyValue(name, row[11], prev_rev if row[8] else row[9], prev_rev, row[10])
    if row[2]:
        return Event(EventType.CREATE, KeyValue(name, row[7], rid, rid, row[6]))
    if row[3]:
        if prev is None:  # only if the database was edited by hand
            return Event(EventType.DELETE, KeyValue(name, b"", row[4], rid, 0))
        return Event(
            EventType.DELETE, KeyValue(name, prev.value, prev.create_revision, rid, prev.lease), prev
        )
    return Event(EventType.UPDATE, KeyValue(name, row[7], row[4], rid, row[6]), prev)


class Dialect:
    """SQL shared by sqlite, postgres and mysql; subclasses override what differs.

    The store talks to the database through DB-API connections in autocommit mode and
    opens transactions itself with :attr:`begin_write` / :attr:`begin_read`. Key ranges
    assume names compare bytewise (sqlite's default; postgres needs ``COLLATE "C"`` on
    ``name``, mysql a binary collation).
    """

    name = "generic"
    #: how a statement's parameters are written: "?" (qmark) or "%s" (format)
    param = "?"
    id_column = "BIGSERIAL PRIMARY KEY"
    name_type = "TEXT"
    value_type = "BYTEA"
    begin_write = "BEGIN"
    begin_read = "BEGIN"
    #: databases that abort the whole transaction on any failed statement need a
    #: savepoint around each write of a batch so one failure does not undo the others
    savepoint_per_write = False

    def __init__(self) -> None:
        q = self.q
        # A row is a key's newest version as of revision R if no row at or below R names
        # it as its predecessor: one probe of the unique index per row.
        newest_at = (
            "kv.id <= ? AND NOT EXISTS (SELECT 1 FROM kv_log AS n"
            " WHERE n.name = kv.name AND n.prev_revision = kv.id AND n.id <= ?)"
        )
        self.current_revision_sql = q("SELECT COALESCE(MAX(id), 0) FROM kv_log")
        self.compact_revision_sql = q("SELECT value FROM kv_meta WHERE name = 'compact_revision'")
        self.schema_version_sql = q("SELECT value FROM kv_meta WHERE name = 'schema_version'")
        # Within one key, prev_revision grows with id (each row points at the key's newest
        # row before it), so the unique (name, prev_revision) index also finds the newest
        # version: no separate index on name is needed, which keeps writes cheaper.
        self.get_sql = q(
            f"SELECT {_COLUMNS} FROM kv_log AS kv WHERE kv.name = ? AND kv.id <= ?"
            " ORDER BY kv.prev_revision DESC LIMIT 1"
        )
        self.get_latest_sql = q(
            f"SELECT {_COLUMNS} FROM kv_log AS kv WHERE kv.name = ? ORDER BY kv.prev_revision DESC LIMIT 1"
        )
        # Keyed by whether the range has an upper bound: an open "name < ?" would defeat
        # the index, so the unbounded form leaves it out.
        self.list_sql = {
            bounded: q(
                f"SELECT {_COLUMNS} FROM kv_log AS kv WHERE {self._name_range('kv', bounded)}"
                f" AND {newest_at} AND kv.deleted = 0 ORDER BY kv.name LIMIT ?"
            )
            for bounded in (False, True)
        }
        self.count_sql = {
            bounded: q(
                f"SELECT COUNT(*) FROM kv_log AS kv WHERE {self._name_range('kv', bounded)}"
                f" AND {newest_at} AND kv.deleted = 0"
            )
            for bounded in (False, True)
        }
        self.events_sql = {
            bounded: q(
                f"SELECT {_COLUMNS}, {_PREV_COLUMNS} FROM kv_log AS kv"
                " LEFT JOIN kv_log AS p ON p.id = kv.prev_revision"
                f" WHERE kv.id > ? AND kv.id <= ? AND {self._name_range('kv', bounded)}"
                " ORDER BY kv.id LIMIT ?"
            )
            for bounded in (False, True)
        }
        self.insert_sql = q(
            "INSERT INTO kv_log (name, created, deleted, create_revision, prev_revision, lease,"
            " expires_at, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        # Compaction of the revisions (lo, hi]: a row that a row in the range replaced is
        # history, and so is a tombstone in the range (its predecessor goes in the same
        # step). A row therefore never outlives its successor, which newest_at relies on.
        # The newest row is kept whatever it is, so MAX(id) never goes back and ids are
        # never reused.
        self.compact_superseded_sql = q(
            "DELETE FROM kv_log WHERE id IN (SELECT s.prev_revision FROM kv_log AS s"
            " WHERE s.id > ? AND s.id <= ? AND s.prev_revision > 0)"
        )
        self.compact_tombstones_sql = q(
            "DELETE FROM kv_log WHERE deleted = 1 AND id > ? AND id <= ?"
            " AND id < (SELECT MAX(t.id) FROM kv_log AS t)"
        )
        self.set_compact_revision_sql = q("UPDATE kv_meta SET value = ? WHERE name = 'compact_revision'")
        self.leases_sql = q(
            "SELECT kv.name, kv.id, kv.expires_at FROM kv_log AS kv WHERE kv.lease > 0 AND kv.deleted = 0"
            " AND NOT EXISTS (SELECT 1 FROM kv_log AS n WHERE n.name = kv.name AND n.prev_revision = kv.id)"
        )

    # --- SQL text -------------------------------------------------------------------------

    def q(self, sql: str) -> str:
        """``sql`` with its ``?`` placeholders in this database's parameter style."""
        return sql if self.param == "?" else sql.replace("?", self.param)

    @staticmethod
    def _name_range(alias: str, bounded: bool) -> str:
        return f"{alias}.name >= ? AND {alias}.name < ?" if bounded else f"{alias}.name >= ?"

    def schema(self) -> list[str]:
        """Statements that create the tables and indexes if they are missing."""
        return [
            f"""CREATE TABLE IF NOT EXISTS kv_log (
                id {self.id_column},
                name {self.name_type} NOT NULL,
                created INTEGER NOT NULL,
                deleted INTEGER NOT NULL,
                create_revision BIGINT NOT NULL,
                prev_revision BIGINT NOT NULL,
                lease BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                value {self.value_type}
            )""",
            "CREATE UNIQUE INDEX IF NOT EXISTS kv_log_name_prev_revision_uindex ON kv_log (name, prev_revision)",
            f"CREATE TABLE IF NOT EXISTS kv_meta (name {self.name_type} PRIMARY KEY, value BIGINT NOT NULL)",
        ]

    def seed(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Rows a new database starts with (inserted only where missing)."""
        insert = self.q(
            "INSERT INTO kv_meta (name, value) SELECT ?, ? WHERE NOT EXISTS"
            " (SELECT 1 FROM kv_meta WHERE name = ?)"
        )
        return [
            (insert, ("compact_revision", 0, "compact_revision")),
            (insert, ("schema_version", SCHEMA_VERSION, "schema_version")),
        ]

    @staticmethod
    def list_args(lo: str, hi: str | None, revision: int, limit: int) -> tuple[bool, tuple[Any, ...]]:
        """(bounded, parameters) for :attr:`list_sql`."""
        if hi is None:
            return False, (lo, revision, revision, limit)
        return True, (lo, hi, revision, revision, limit)

    @staticmethod
    def count_args(lo: str, hi: str | None, revision: int) -> tuple[bool, tuple[Any, ...]]:
        """(bounded, parameters) for :attr:`count_sql`."""
        if hi is None:
            return False, (lo, revision, revision)
        return True, (lo, hi, revision, revision)

    # --- database specifics ---------------------------------------------------------------

    def describe(self) -> str:
        """Where the data lives, for logs and errors (no secrets)."""
        return self.name

    def connect(self, *, writer: bool) -> Any:
        """A new DB-API connection in autocommit mode, set up for writing or reading."""
        raise NotImplementedError(f"{self.name}: no driver")

    def check_health(self, conn: Any) -> None:
        """Raise if the database is damaged. Runs once at start, on the writer connection."""

    def after_open(self, conn: Any) -> None:
        """Runs once after the schema exists (e.g. make the new file durable)."""

    def after_compact(self, conn: Any, *, reclaim: bool = False) -> None:
        """Runs on the writer connection after a compaction (e.g. checkpoint the log).

        ``reclaim``: the disk is full; give every page the compaction freed back to the
        file system now.
        """

    def storage_full(self, exc: BaseException) -> StorageFull | None:
        """``exc`` as a StorageFull if it means the database has no room left, else None."""
        return exc if isinstance(exc, StorageFull) else None

    def take_reserve(self) -> bool:
        """Hold the space kept for deletes on a full disk; False if the disk has no room for it.

        A database that needs no room to delete (a server's own) keeps none.
        """
        return True

    def has_room(self) -> bool:
        """After a full disk: whether writes may be tried again (e.g. the reserve is held again
        and as much is free beside it)."""
        return True

    def frugal(self, conn: Any, on: bool) -> None:
        """Write as little as possible while the disk is full (``on``), or as usual again."""

    def release_reserve(self) -> bool:
        """Give the reserved space back so deletes can commit on a full disk; True if it freed any."""
        return False

    def insert(self, cur: Any, params: tuple[Any, ...]) -> int:
        """Run :attr:`insert_sql`; return the new row's id (the revision)."""
        cur.execute(self.insert_sql + " RETURNING id", params)
        return int(cur.fetchone()[0])

    def is_unique_violation(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the unique ``(name, prev_revision)`` index refusing a row."""
        return False

    def backup(self, dest_path: str) -> None:
        """Write a consistent copy of the whole database to ``dest_path`` (blocking)."""
        raise BackupNotSupported(f"{self.name} datastore: back up with the database's own tools")
