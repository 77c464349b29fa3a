"""sqlite: the zero-config default store, one file in the data dir.

WAL journal with ``synchronous=FULL``: a write is acknowledged only after its commit is
fsynced, so it survives ``kill -9`` and power loss; throughput comes from the store's
group commit, not from weaker syncing. Readers use their own connections and never wait
for the writer (WAL).

A full disk: a reserve file beside the database (``state.db.reserve``) is given up when
the disk fills, so deletes and compaction can still commit (see ``space``). New files
use incremental auto-vacuum, so the pages a compaction frees can go back to the file
system instead of only being reused inside the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog

from k3p.protocols.datastore import DatastoreError, StorageFull
from k3p_plugins.datastore_sql.dialect import Dialect
from k3p_plugins.datastore_sql.errors import DatastoreCorruptError
from k3p_plugins.datastore_sql.space import NO_SPACE_ERRNOS, SpaceReserve, mount_point, no_room
from k3p_plugins.datastore_sql.store import SQLDatastore

log = structlog.get_logger(__name__)

DEFAULT_DATA_DIR = "/var/lib/rancher/k3p"
_SCHEME = "sqlite://"
# result codes (low byte of the extended code) that mean the file itself is bad
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
#: room kept for deletes on a full disk: a delete appends a small tombstone row, a
#: compaction step rewrites a few pages per thousand revisions
DEFAULT_RESERVE_BYTES = 4 << 20
#: free space beside the reserve before writes are tried again after a full disk
_MIN_ROOM_BYTES = 1 << 20
#: free pages worth giving back to the file system after an ordinary compaction
_VACUUM_FREE_BYTES = 8 << 20
#: pages moved per vacuum step, each step checkpointed: the log never needs much room
_VACUUM_STEP_PAGES = 256


def default_path(data_dir: str) -> str:
    """Where the default store lives under ``data_dir``."""
    return os.path.join(data_dir, "server", "db", "state.db")


def path_from_endpoint(endpoint: str, data_dir: str) -> str | None:
    """The database file for a ``--datastore-endpoint`` value, or None if it is not sqlite.

    "" is the default file in the data dir; ``sqlite://PATH`` names a file (relative or,
    as ``sqlite:///abs/path``, absolute). Query parameters (``?_journal=WAL``, as kine
    accepts) are ignored: the settings are always WAL and full sync.
    """
    if endpoint == "":
        return default_path(data_dir)
    if not endpoint.startswith(_SCHEME):
        return None
    path = endpoint[len(_SCHEME) :].split("?", 1)[0]
    return path or default_path(data_dir)


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _CORRUPT_CODES


def _sqlite_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SQLiteDialect(Dialect):
    """sqlite's differences from the generic SQL: types, locking, ids, checks, backup."""

    name = "sqlite"
    id_column = "INTEGER PRIMARY KEY"
    value_type = "BLOB"
    # take the write lock at BEGIN: a deferred transaction that reads first could fail
    # to upgrade later
    begin_write = "BEGIN IMMEDIATE"

    def __init__(
        self,
        path: str,
        busy_timeout_ms: int = 5000,
        reader_mmap_bytes: int = 256 << 20,
        reader_cache_kib: int = 8192,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self.reserve = SpaceReserve(self.path + ".reserve", reserve_bytes)
        #: the build's secure_delete setting, restored when the disk has room again
        self.secure_delete = 0
        self.busy_timeout_ms = busy_timeout_ms
        self.reader_mmap_bytes = reader_mmap_bytes
        self.reader_cache_kib = reader_cache_kib

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def connect(self, *, writer: bool) -> sqlite3.Connection:
        if writer:
            Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            created = not os.path.exists(self.path)
            # the file holds the cluster's secrets: owner only
            old_umask = os.umask(0o077)
        try:
            conn = sqlite3.connect(
                self.path if writer else self._uri(),
                uri=not writer,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=64,
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                if writer:
                    # takes effect only in a file without tables yet (a new one)
                    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise DatastoreError(f"{self.path}: cannot switch to WAL journal (got {mode})")
                conn.execute("PRAGMA synchronous = FULL")
                if not writer:
                    # Lists touch one page per row in key order, scattered over the file:
                    # reading through a memory map (the OS page cache, no second copy)
                    # and a larger page cache make them about a third faster.
                    conn.execute(f"PRAGMA mmap_size = {int(self.reader_mmap_bytes)}").fetchall()
                    conn.execute(f"PRAGMA cache_size = -{int(self.reader_cache_kib)}")
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            if _is_corruption(exc):
                raise DatastoreCorruptError(self.path, str(exc)) from exc
            full = self.storage_full(exc)
            if full is not None:
                raise full from exc
            raise DatastoreError(f"cannot open datastore file {self.path}: {exc}") from exc
        finally:
            if writer:
                os.umask(old_umask)
        if writer:
            self.secure_delete = int(conn.execute("PRAGMA secure_delete").fetchone()[0])
        if writer and created:
            _fsync_dir(os.path.dirname(self.path))
        return conn

    def _uri(self) -> str:
        # mode=rw: a reader must never create an empty database in place of a missing one
        return f"file:{quote(self.path)}?mode=rw"

    def check_health(self, conn: sqlite3.Connection) -> None:
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(10)").fetchall()]
        except sqlite3.Error as exc:
            if _is_corruption(exc):
                raise DatastoreCorruptError(self.path, str(exc)) from exc
            raise DatastoreError(f"cannot check datastore file {self.path}: {exc}") from exc
        if rows != ["ok"]:
            raise DatastoreCorruptError(self.path, "quick_check: " + "; ".join(map(str, rows)))

    def after_compact(self, conn: sqlite3.Connection, *, reclaim: bool = False) -> None:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:  # INCREMENTAL
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if reclaim or free * page >= _VACUUM_FREE_BYTES:
                while free > 0:
                    conn.execute(f"PRAGMA incremental_vacuum({_VACUUM_STEP_PAGES})").fetchall()
                    # the file shrinks when the log is checkpointed; TRUNCATE also empties the log
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                    left = conn.execute("PRAGMA freelist_count").fetchone()[0]
                    if left >= free:
                        break
                    free = left
                return
        # PASSIVE: copies what it can without waiting for readers or blocking writers;
        # on a full disk the log's own space is given back too
        conn.execute(f"PRAGMA wal_checkpoint({'TRUNCATE' if reclaim else 'PASSIVE'})").fetchall()

    def storage_full(self, exc: BaseException) -> StorageFull | None:
        if isinstance(exc, StorageFull):
            return exc
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            detail = exc.strerror or str(exc)
        elif isinstance(exc, sqlite3.Error) and _sqlite_code(exc) == sqlite3.SQLITE_FULL:
            detail = str(exc)
        elif isinstance(exc, sqlite3.Error) and _sqlite_code(exc) == sqlite3.SQLITE_IOERR \
                and no_room(os.path.dirname(self.path)):
            # sqlite names only ENOSPC "disk is full"; a quota shows as an I/O error
            detail = f"{exc} (no room for new data: disk or quota full)"
        else:
            return None
        return StorageFull(f"the file system at {mount_point(self.path)}, which holds {self.path}", detail)

    def take_reserve(self) -> bool:
        return self.reserve.take()

    def has_room(self) -> bool:
        if not self.reserve.take():
            return False
        st = os.statvfs(os.path.dirname(self.path))
        return st.f_bavail * st.f_frsize >= max(self.reserve.size, _MIN_ROOM_BYTES)

    def frugal(self, conn: sqlite3.Connection, on: bool) -> None:
        # Built with SECURE_DELETE (Debian's sqlite is), a delete overwrites every freed
        # page with zeros, so compacting away N bytes of values first writes N bytes to the
        # log: on a full disk that is room there is not. FAST zeroes only what costs no I/O.
        conn.execute(f"PRAGMA secure_delete = {'FAST' if on else self.secure_delete}").fetchall()

    def release_reserve(self) -> bool:
        freed = self.reserve.release()
        if freed:
            log.warning("datastore disk full: released the space reserved for deletes",
                        component="datastore", reserve=self.reserve.path)
        return freed

    def insert(self, cur: Any, params: tuple[Any, ...]) -> int:
        cur.execute(self.insert_sql, params)
        return int(cur.lastrowid)

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def backup(self, dest_path: str) -> None:
        backup_file_sync(self.path, dest_path)


def backup_file_sync(db_path: str, dest_path: str) -> None:
    """Copy the sqlite store at ``db_path`` to ``dest_path``, consistently, while it is in use.

    Uses sqlite's online backup API in one step, so the copy is one snapshot of the
    database, even when another process is writing. The copy is written beside
    ``dest_path``, checked, fsynced and renamed into place: ``dest_path`` is either the
    old file or a complete backup. It is a plain single-file database (no -wal file),
    readable only by its owner.
    """
    db_path = os.path.abspath(db_path)
    if not os.path.isfile(db_path):
        raise FileNotFoundError(f"no datastore file at {db_path}")
    dest = os.path.abspath(dest_path)
    tmp = f"{dest}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    src = sqlite3.connect(f"file:{quote(db_path)}?mode=rw", uri=True, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout = 5000")
        old_umask = os.umask(0o077)
        try:
            dst = sqlite3.connect(tmp, isolation_level=None)
        finally:
            os.umask(old_umask)
        try:
            src.backup(dst)
            # one self-contained file: the copy must not depend on a -wal beside it
            dst.execute("PRAGMA journal_mode = DELETE").fetchall()
            result = [r[0] for r in dst.execute("PRAGMA quick_check(10)").fetchall()]
            if result != ["ok"]:
                raise DatastoreError(f"backup of {db_path} failed its check: {'; '.join(result)}")
        finally:
            dst.close()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        src.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    _fsync_dir(os.path.dirname(dest))


async def backup_file(db_path: str, dest_path: str) -> None:
    """Async form of :func:`backup_file_sync` (runs in a thread)."""
    await asyncio.to_thread(backup_file_sync, db_path, dest_path)


class SQLiteDatastore(SQLDatastore):
    """The Datastore on one sqlite file. Options as for :class:`SQLDatastore`.

    ``reserve_bytes``: the space kept beside the file for deletes on a full disk (0: none).
    """

    def __init__(self, path: str, *, reserve_bytes: int = DEFAULT_RESERVE_BYTES, **options: Any) -> None:
        self._sqlite = SQLiteDialect(path, reserve_bytes=reserve_bytes)
        super().__init__(self._sqlite, **options)

    @property
    def path(self) -> str:
        """The database file (absolute)."""
        return self._sqlite.path
