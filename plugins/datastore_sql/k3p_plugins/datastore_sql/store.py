"""The Datastore on a SQL database: group commit, watch fan-out, compaction and leases.

Threads and connections:

* One writer thread owns the only writing connection. Writes queue up for it; whenever
  it is free it takes everything queued so far as one batch, which it runs as one
  transaction with one commit (group commit): a single thread hop and a single fsync
  for the whole batch. Each write in the batch is checked on its own (a
  failed compare-and-swap fails that write only) and gets its own revision or error.
  Maintenance jobs (compaction steps, checkpoints) run on the same thread between
  batches, each in its own short transaction, so they never fight writes for the lock.
* Point reads (``get``) run directly on the event loop on their own connection: an
  indexed lookup costs a few microseconds, far less than a hop to a thread.
* Lists, counts and watch history run on a small pool of reader threads, each with its
  own connection (WAL lets readers work beside the writer).

Committed events are published to watchers on the event loop before the writes'
callers are woken, in the same step that advances the store's revision.

A full disk: once a write fails for lack of space the store refuses creates and updates
(StorageFull) and accepts only deletes, as etcd does under its space alarm, until the
dialect says there is room again (sqlite: its reserve is back and as much is free). The
first delete that finds no room gets the reserve released for it; deletes on a full
disk are followed by a compaction of all history (watchers further back relist), since
history is the only space the store can free by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from k3p.protocols.datastore import (
    CompactedError,
    ConflictError,
    DatastoreError,
    Event,
    EventType,
    KeyExistsError,
    KeyValue,
    ListResult,
    NotFoundError,
    StorageFull,
)
from k3p_plugins.datastore_sql.dialect import (
    LATEST,
    NO_LIMIT,
    SCHEMA_VERSION,
    Dialect,
    prefix_end,
    row_event,
    row_kv,
)
from k3p_plugins.datastore_sql.leases import LeaseKeeper
from k3p_plugins.datastore_sql.watch import WatchHub
from k3p_plugins.datastore_sql.writer import BatchWriter, Item, Job

log = structlog.get_logger(__name__)

_CREATE, _UPDATE, _DELETE = "create", "update", "delete"


class _WriteOp:
    __slots__ = ("expected", "key", "kind", "lease", "value")

    def __init__(self, kind: str, key: str, value: bytes | None, expected: int, lease: int) -> None:
        self.kind = kind
        self.key = key
        self.value = value
        self.expected = expected
        self.lease = lease


class _Done:
    """A successful write: the new version, its event and when its lease runs out (ms)."""

    __slots__ = ("event", "expires_ms", "kv")

    def __init__(self, kv: KeyValue, event: Event, expires_ms: int) -> None:
        self.kv = kv
        self.event = event
        self.expires_ms = expires_ms


class SQLDatastore:
    """A :class:`k3p.protocols.datastore.Datastore` on a SQL database described by a :class:`Dialect`.

    Options: ``compact_interval`` seconds between automatic compactions (0 turns them
    off), ``compact_retain`` revisions of history they keep, ``compact_batch`` revisions
    per compaction transaction, ``watch_buffer`` events a watcher may fall behind before
    it is switched to catching up from the database, ``readers`` reader threads,
    ``max_batch`` writes per group-commit transaction.
    """

    def __init__(
        self,
        dialect: Dialect,
        *,
        compact_interval: float = 300.0,
        compact_retain: int = 1000,
        compact_batch: int = 1000,
        watch_buffer: int = 1000,
        readers: int = 2,
        max_batch: int = 1000,
        max_batch_bytes: int = 32 << 20,
    ) -> None:
        self._dialect = dialect
        self._compact_interval = compact_interval
        self._compact_retain = compact_retain
        self._compact_batch = max(1, compact_batch)
        self._n_readers = max(1, readers)
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes

        self._started = False
        self._closing = False
        self._revision = 0
        self._compact_rev = 0
        self._outstanding = 0  # queued writes and jobs not yet answered
        self._idle: asyncio.Event | None = None
        self._compact_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: BatchWriter | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._wconn: Any = None
        self._rconn: Any = None
        self._reader_conns: list[Any] = []
        self._reader_lock = threading.Lock()
        self._local = threading.local()
        self._hub = WatchHub(buffer=watch_buffer)
        self._leases: LeaseKeeper | None = None
        self._tasks: list[asyncio.Task] = []
        #: set while the disk is full (the error that said so): only deletes are tried
        self._full: StorageFull | None = None
        self._full_retry_at = 0.0
        self._reclaim_task: asyncio.Task | None = None
        #: write transactions committed so far (a measure of how well writes batch)
        self.write_transactions = 0

    @property
    def dialect(self) -> Dialect:
        """The database this store runs on."""
        return self._dialect

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._dialect.describe()}>"

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database (checking it), create the schema, start compaction and leases."""
        if self._started:
            raise DatastoreError("datastore already started")
        loop = self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._compact_lock = asyncio.Lock()
        self._writer = BatchWriter(
            self._run_batch,
            self._batch_done,
            max_batch=self._max_batch,
            max_batch_bytes=self._max_batch_bytes,
            size=lambda op: len(op.value or b""),
        )
        self._writer.start()
        self._readers = ThreadPoolExecutor(self._n_readers, thread_name_prefix="k3p-db-reader")
        try:
            self._revision, self._compact_rev = await self._enqueue(Job(self._open_writer))
            # the loop's own connection, for point reads (see the module docstring)
            self._rconn = await loop.run_in_executor(self._readers, self._new_reader_conn)
            leased = await self._read(self._leased_sync)
        except BaseException:
            await self._release()
            raise
        self._hub.open(self._revision)
        self._leases = LeaseKeeper(self._expire)
        for key, revision, expires_ms in leased:
            self._leases.add(key, revision, expires_ms / 1000)
        self._started = True
        self._tasks.append(asyncio.create_task(self._leases.run(), name="k3p-datastore-leases"))
        if self._compact_interval > 0:
            self._tasks.append(asyncio.create_task(self._compact_forever(), name="k3p-datastore-compact"))
        log.info(
            "datastore started",
            component="datastore",
            store=self._dialect.describe(),
            revision=self._revision,
            compact_revision=self._compact_rev,
            leases=len(leased),
        )

    async def close(self) -> None:
        """Finish queued writes, end every watch, stop background work and close the database."""
        if not self._started or self._closing:
            return
        self._closing = True
        if self._reclaim_task is not None:
            self._tasks.append(self._reclaim_task)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        assert self._idle is not None
        await self._idle.wait()
        self._hub.close()
        await self._release()
        log.info("datastore closed", component="datastore", store=self._dialect.describe())

    async def _release(self) -> None:
        if self._writer is not None:
            if self._wconn is not None:
                await self._enqueue(Job(self._wconn.close))
                self._wconn = None
            await asyncio.to_thread(self._writer.stop)
            self._writer = None
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, wait=True)
            self._readers = None
        with self._reader_lock:
            conns, self._reader_conns = self._reader_conns, []
        for conn in conns:
            conn.close()
        self._rconn = None

    def _open_writer(self) -> tuple[int, int]:
        d = self._dialect
        try:
            conn = d.connect(writer=True)
        except StorageFull as exc:
            # opening makes the log's index file: on a full disk only the reserve has room
            self._enter_full(exc)
            if not d.release_reserve():
                raise
            conn = d.connect(writer=True)
        try:
            d.check_health(conn)
            conn.execute(d.begin_write)
            try:
                for statement in d.schema():
                    conn.execute(statement)
                for statement, args in d.seed():
                    conn.execute(statement, args)
                version = conn.execute(d.schema_version_sql).fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise DatastoreError(
                        f"{d.describe()} has schema version {version}, newer than this k3p "
                        f"understands ({SCHEMA_VERSION}): run a newer k3p"
                    )
                revision = conn.execute(d.current_revision_sql).fetchone()[0]
                compact = conn.execute(d.compact_revision_sql).fetchone()[0]
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            d.after_open(conn)
            if self._full is None and not d.take_reserve():
                self._enter_full(StorageFull(d.describe(), "no room for the space reserved for deletes"))
            if self._full is not None:
                d.frugal(conn, True)
        except BaseException:
            conn.close()
            raise
        self._wconn = conn
        return int(revision), int(compact)

    def _check_open(self) -> None:
        if not self._started:
            raise DatastoreError("datastore is not started")
        if self._closing:
            raise DatastoreError("datastore is closed")

    # --- reads ----------------------------------------------------------------------------

    async def current_revision(self) -> int:
        """The revision of the last committed write (0 for an empty store)."""
        return self._revision

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        """The key's value at ``revision`` (latest if 0), or None if it does not exist."""
        self._check_open()
        return self._get_sync(self._rconn, key, revision)

    async def list(self, prefix: str, start_key: str = "", limit: int = 0, revision: int = 0) -> ListResult:
        """Keys beginning with ``prefix`` in key order, from ``start_key`` on, at ``revision``."""
        self._check_open()
        return await self._read(self._list_sync, prefix, start_key, max(0, limit), revision)

    async def count(self, prefix: str) -> tuple[int, int]:
        """(current revision, number of live keys beginning with ``prefix``)."""
        self._check_open()
        return await self._read(self._count_sync, prefix)

    def _new_reader_conn(self) -> Any:
        conn = self._dialect.connect(writer=False)
        with self._reader_lock:
            self._reader_conns.append(conn)
        return conn

    def _reader_conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._new_reader_conn()
        return conn

    def _in_reader(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        return fn(self._reader_conn(), *args)

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None and self._readers is not None
        return await self._loop.run_in_executor(self._readers, self._in_reader, fn, args)

    @contextlib.contextmanager
    def _snapshot(self, conn: Any) -> Iterator[None]:
        """A read transaction: every statement inside sees the same committed state."""
        conn.execute(self._dialect.begin_read)
        try:
            yield
        finally:
            _rollback(conn)

    def _check_compacted(self, conn: Any, revision: int) -> None:
        compact = conn.execute(self._dialect.compact_revision_sql).fetchone()[0]
        if revision < compact:
            raise CompactedError(revision, int(compact))

    def _get_sync(self, conn: Any, key: str, revision: int) -> KeyValue | None:
        d = self._dialect
        if not revision:
            row = conn.execute(d.get_latest_sql, (key,)).fetchone()
        else:
            with self._snapshot(conn):
                self._check_compacted(conn, revision)
                row = conn.execute(d.get_sql, (key, revision)).fetchone()
        if row is None or row[3]:
            return None
        return row_kv(row)

    def _list_sync(self, conn: Any, prefix: str, start_key: str, limit: int, revision: int) -> ListResult:
        d = self._dialect
        lo, hi = max(prefix, start_key), prefix_end(prefix)
        with self._snapshot(conn):
            current = int(conn.execute(d.current_revision_sql).fetchone()[0])
            if revision:
                self._check_compacted(conn, revision)
            at = min(revision, current) if revision else current
            if hi is not None and lo >= hi:
                return ListResult(at, [], False)
            bounded, args = d.list_args(lo, hi, at, limit + 1 if limit > 0 else NO_LIMIT)
            rows = conn.execute(d.list_sql[bounded], args).fetchall()
        more = 0 < limit < len(rows)
        if more:
            del rows[limit:]
        return ListResult(at, [row_kv(r) for r in rows], more)

    def _count_sync(self, conn: Any, prefix: str) -> tuple[int, int]:
        d = self._dialect
        bounded, args = d.count_args(prefix, prefix_end(prefix), LATEST)
        with self._snapshot(conn):
            current = int(conn.execute(d.current_revision_sql).fetchone()[0])
            n = int(conn.execute(d.count_sql[bounded], args).fetchone()[0])
        return current, n

    def _events_sync(self, conn: Any, prefix: str, after: int, upto: int, limit: int) -> list[Event]:
        d = self._dialect
        hi = prefix_end(prefix)
        args: tuple[Any, ...] = (
            (after, upto, prefix, limit) if hi is None else (after, upto, prefix, hi, limit)
        )
        with self._snapshot(conn):
            self._check_compacted(conn, after)
            rows = conn.execute(d.events_sql[hi is not None], args).fetchall()
        return [row_event(r) for r in rows]

    def _leased_sync(self, conn: Any) -> list[tuple[str, int, int]]:
        with self._snapshot(conn):
            return [(r[0], int(r[1]), int(r[2])) for r in conn.execute(self._dialect.leases_sql)]

    # --- watch ----------------------------------------------------------------------------

    def watch(self, prefix: str, after_revision: int) -> AsyncIterator[Event]:
        """Every change under ``prefix`` after ``after_revision``: history first, then live."""
        return self._hub.stream(prefix, after_revision, self._read_events)

    async def _read_events(self, prefix: str, after: int, upto: int, limit: int) -> list[Event]:
        self._check_open()
        return await self._read(self._events_sync, prefix, after, upto, limit)

    # --- writes ---------------------------------------------------------------------------

    async def create(self, key: str, value: bytes, lease: int = 0) -> int:
        """Create ``key``; returns the new revision. Raises KeyExistsError."""
        kv = await self._write(_WriteOp(_CREATE, _check_key(key), bytes(value), 0, _check_lease(lease)))
        return kv.mod_revision

    async def update(self, key: str, value: bytes, expected_revision: int, lease: int = 0) -> KeyValue:
        """Replace ``key`` if its mod_revision is ``expected_revision``; returns the new version."""
        op = _WriteOp(_UPDATE, _check_key(key), bytes(value), expected_revision, _check_lease(lease))
        return await self._write(op)

    async def delete(self, key: str, expected_revision: int = 0) -> KeyValue:
        """Delete ``key`` (only at ``expected_revision`` unless 0); returns the deleted value."""
        return await self._write(_WriteOp(_DELETE, _check_key(key), None, expected_revision, 0))

    async def _write(self, op: _WriteOp) -> KeyValue:
        self._check_open()
        return await self._enqueue(op)

    def _enqueue(self, item: _WriteOp | Job) -> asyncio.Future:
        assert self._loop is not None and self._idle is not None and self._writer is not None
        fut = self._loop.create_future()
        self._writer.put((item, fut))
        self._outstanding += 1
        self._idle.clear()
        return fut

    def _batch_done(self, items: list[Item], results: list[Any] | None, error: BaseException | None) -> None:
        """On the writer thread: hand a finished batch to the loop (in order, batch by batch)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            self._loop.call_soon_threadsafe(self._finish, items, results, error)

    def _finish(self, items: list[Item], results: list[Any] | None, error: BaseException | None) -> None:
        """On the loop: publish a finished batch's events, then wake its callers."""
        self._outstanding -= len(items)
        if isinstance(items[0][0], Job):
            fut = items[0][1]
            if not fut.done():
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(results[0] if results else None)
        else:
            if results is None:
                results = [DatastoreError(f"write failed: {error}") for _ in items]
            events = []
            revision = self._revision
            for res in results:
                if isinstance(res, _Done):
                    events.append(res.event)
                    revision = max(revision, res.kv.mod_revision)
                    if res.expires_ms and self._leases is not None:
                        self._leases.add(res.kv.key, res.kv.mod_revision, res.expires_ms / 1000)
            self._revision = revision
            self._hub.publish(events, revision)
            if self._full is not None and any(e.type is EventType.DELETE for e in events):
                self._reclaim_soon()
            for (_, fut), res in zip(items, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, _Done):
                    fut.set_result(res.kv)
                else:
                    fut.set_exception(res)
        if self._outstanding == 0 and self._idle is not None:
            self._idle.set()

    def _run_batch(self, ops: list[_WriteOp]) -> list[_Done | BaseException]:
        """On the writer thread: all of ``ops`` in one transaction, one result each."""
        if self._full is not None and not self._room_again():
            return self._run_deletes(ops)
        return self._run_txn(ops)

    def _run_deletes(self, ops: list[_WriteOp]) -> list[_Done | BaseException]:
        """The deletes of ``ops`` (a full disk): everything else is refused unwritten."""
        results: list[_Done | BaseException] = [self._refusal(op) for op in ops]
        picked = [i for i, op in enumerate(ops) if op.kind == _DELETE]
        if picked:
            for i, res in zip(picked, self._run_txn([ops[i] for i in picked]), strict=True):
                results[i] = res
        return results

    def _run_txn(self, ops: list[_WriteOp]) -> list[_Done | BaseException]:
        conn, d = self._wconn, self._dialect
        try:
            conn.execute(d.begin_write)
            cur = conn.cursor()
            now_ms = int(time.time() * 1000)
            results = [self._apply(cur, op, now_ms) for op in ops]
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            full = d.storage_full(exc)
            if full is not None:
                self._enter_full(full)
                # deletes are how space comes back: the reserve is theirs, once
                if any(op.kind == _DELETE for op in ops) and d.release_reserve():
                    return self._run_deletes(ops)
                return [self._refusal(op) for op in ops]
            if len(ops) == 1:
                return [exc]
            # something other than a compare-and-swap failed: retry each write in its own
            # transaction so that only the bad one fails
            log.warning("write batch failed, retrying one by one", component="datastore", error=str(exc))
            return [self._run_txn([op])[0] for op in ops]
        self.write_transactions += 1
        return results

    # --- a full disk ------------------------------------------------------------------------

    def _enter_full(self, error: StorageFull) -> None:
        """On the writer thread: the disk is full."""
        if self._full is None:
            log.warning(
                "datastore disk full: refusing creates and updates, accepting deletes until there is room",
                component="datastore", store=self._dialect.describe(), error=str(error),
            )
            if self._wconn is not None:
                self._dialect.frugal(self._wconn, True)
        self._full = error

    def _refusal(self, op: _WriteOp) -> BaseException:
        """A write not stored for lack of space: the error it would get anyway (a create of
        a key that exists is still "exists", so callers that expect it go on), else StorageFull."""
        try:
            row = self._wconn.execute(self._dialect.get_latest_sql, (op.key,)).fetchone()
        except Exception:
            return self._full_error()
        live = row is not None and not row[3]
        if op.kind == _CREATE and live:
            return KeyExistsError(op.key)
        if op.kind != _CREATE and not live:
            return NotFoundError(op.key)
        if op.kind != _CREATE and op.expected and row_kv(row).mod_revision != op.expected:
            return ConflictError(op.key, row_kv(row))
        return self._full_error()

    def _full_error(self) -> StorageFull:
        full = self._full or StorageFull(self._dialect.describe())
        return StorageFull(full.where, full.detail)

    def _room_again(self, *, now: bool = False) -> bool:
        """On the writer thread: leave the full state if the disk has room again."""
        clock = time.monotonic()
        if not now and clock < self._full_retry_at:
            return False
        self._full_retry_at = clock + 1.0  # a refused write costs no allocation attempt
        try:
            ok = self._dialect.has_room()
        except OSError as exc:
            log.warning("cannot take the datastore's space reserve", component="datastore", error=str(exc))
            ok = False
        if ok:
            self._full = None
            self._dialect.frugal(self._wconn, False)
            log.info("datastore has room again: accepting every write", component="datastore",
                     store=self._dialect.describe())
        return ok

    def _reclaim_soon(self) -> None:
        """After deletes on a full disk: compact everything shortly (once for a burst of deletes)."""
        if self._reclaim_task is None or self._reclaim_task.done():
            self._reclaim_task = asyncio.create_task(self._reclaim(), name="k3p-datastore-reclaim")

    async def _reclaim(self) -> None:
        await asyncio.sleep(1.0)
        try:
            await self.compact(self._revision)
        except Exception as exc:  # the next delete tries again
            log.warning("compaction on a full disk failed", component="datastore", error=str(exc))

    def _apply(self, cur: Any, op: _WriteOp, now_ms: int) -> _Done | DatastoreError:
        d = self._dialect
        if d.savepoint_per_write:
            cur.execute("SAVEPOINT k3p_write")
        try:
            result = self._apply_checked(cur, op, now_ms)
        except Exception as exc:
            if not d.is_unique_violation(exc):
                raise
            # another writer on the same database took that version first
            if d.savepoint_per_write:
                cur.execute("ROLLBACK TO SAVEPOINT k3p_write")
            row = cur.execute(d.get_latest_sql, (op.key,)).fetchone()
            current = row_kv(row) if row is not None and not row[3] else None
            result = KeyExistsError(op.key) if op.kind == _CREATE else ConflictError(op.key, current)
        if d.savepoint_per_write:
            cur.execute("RELEASE SAVEPOINT k3p_write")
        return result

    def _apply_checked(self, cur: Any, op: _WriteOp, now_ms: int) -> _Done | DatastoreError:
        d, key = self._dialect, op.key
        row = cur.execute(d.get_latest_sql, (key,)).fetchone()
        live = row is not None and not row[3]
        if op.kind == _CREATE:
            if live:
                return KeyExistsError(key)
            expires = now_ms + op.lease * 1000 if op.lease else 0
            rev = d.insert(cur, (key, 1, 0, 0, row[0] if row else 0, op.lease, expires, op.value))
            kv = KeyValue(key, op.value, rev, rev, op.lease)  # type: ignore[arg-type]
            return _Done(kv, Event(EventType.CREATE, kv), expires)
        if not live:
            return NotFoundError(key)
        current = row_kv(row)
        if op.kind == _UPDATE:
            if current.mod_revision != op.expected:
                return ConflictError(key, current)
            expires = now_ms + op.lease * 1000 if op.lease else 0
            rev = d.insert(
                cur, (key, 0, 0, current.create_revision, current.mod_revision, op.lease, expires, op.value)
            )
            kv = KeyValue(key, op.value, current.create_revision, rev, op.lease)  # type: ignore[arg-type]
            return _Done(kv, Event(EventType.UPDATE, kv, current), expires)
        if op.expected and current.mod_revision != op.expected:
            return ConflictError(key, current)
        rev = d.insert(cur, (key, 0, 1, current.create_revision, current.mod_revision, 0, 0, None))
        kv = KeyValue(key, current.value, current.create_revision, rev, current.lease)
        return _Done(kv, Event(EventType.DELETE, kv, current), 0)

    async def _expire(self, key: str, revision: int) -> None:
        try:
            await self.delete(key, expected_revision=revision)
        except (NotFoundError, ConflictError):
            pass  # changed or gone since: that newer write decides
        else:
            log.debug("lease expired", component="datastore", key=key, revision=revision)

    # --- compaction -----------------------------------------------------------------------

    async def compact(self, revision: int) -> None:
        """Drop superseded versions and tombstones at or below ``revision``.

        Works through the history in steps of ``compact_batch`` revisions, each its own
        short transaction between write batches, then checkpoints the database's log.
        Raises ValueError for a revision newer than the current one.
        """
        self._check_open()
        assert self._compact_lock is not None
        async with self._compact_lock:
            if revision > self._revision:
                raise ValueError(f"cannot compact at {revision}: the current revision is {self._revision}")
            if revision <= self._compact_rev:
                return
            started, removed = time.monotonic(), 0
            lo = self._compact_rev
            while lo < revision:
                self._check_open()  # close() may have begun between steps
                hi = min(lo + self._compact_batch, revision)
                removed += await self._enqueue(Job(lambda lo=lo, hi=hi: self._compact_step(lo, hi)))
                self._compact_rev = lo = hi
            await self._enqueue(Job(self._after_compact))
            log.info(
                "datastore compacted",
                component="datastore",
                revision=revision,
                rows_removed=removed,
                seconds=round(time.monotonic() - started, 3),
            )

    def _compact_step(self, lo: int, hi: int, *, retry: bool = True) -> int:
        conn, d = self._wconn, self._dialect
        conn.execute(d.begin_write)
        try:
            removed = conn.execute(d.compact_superseded_sql, (lo, hi)).rowcount
            removed += conn.execute(d.compact_tombstones_sql, (lo, hi)).rowcount
            conn.execute(d.set_compact_revision_sql, (hi,))
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            full = d.storage_full(exc)
            if full is None:
                raise
            self._enter_full(full)
            # compaction frees space, so like a delete it may use the reserve
            if retry and d.release_reserve():
                return self._compact_step(lo, hi, retry=False)
            raise full from exc
        except BaseException:
            _rollback(conn)
            raise
        return max(0, removed)

    def _after_compact(self) -> None:
        full = self._full is not None
        try:
            self._dialect.after_compact(self._wconn, reclaim=full)
        except Exception as exc:
            if self._dialect.storage_full(exc) is None:
                raise
            log.warning("cannot give freed space back on a full disk", component="datastore", error=str(exc))
        if full:
            self._room_again(now=True)

    async def _compact_forever(self) -> None:
        while True:
            await asyncio.sleep(self._compact_interval)
            target = self._revision - self._compact_retain
            if target > self._compact_rev:
                try:
                    await self.compact(target)
                except Exception as exc:  # keep compacting later; a failed round is not fatal
                    log.warning("compaction failed", component="datastore", error=str(exc))

    # --- backup ---------------------------------------------------------------------------

    async def backup(self, dest_path: str) -> None:
        """Write a consistent copy of the store to ``dest_path``, online.

        Needs no :meth:`start`: the copy is taken through a connection of its own, so it
        also works on the file of a server running in another process.
        """
        await asyncio.to_thread(self._dialect.backup, dest_path)


def _rollback(conn: Any) -> None:
    # Ends a transaction whatever state it is in; the database may already have rolled
    # back by itself (e.g. after an I/O error), which is not a new error.
    with contextlib.suppress(Exception):
        conn.execute("ROLLBACK")


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"a key must be a non-empty str, not {key!r}")
    return key


def _check_lease(lease: int) -> int:
    if lease < 0:
        raise ValueError(f"lease must be >= 0 seconds, not {lease}")
    return int(lease)
