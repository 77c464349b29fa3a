"""The sqlite datastore: the conformance suite plus what is particular to sqlite."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from pathlib import Path

import pytest

from k3p.protocols.datastore import CompactedError, Datastore, EventType
from k3p.testing.datastore import DatastoreConformance
from k3p_plugins import datastore_sql
from k3p_plugins.datastore_sql.errors import DatastoreCorruptError
from k3p_plugins.datastore_sql.sqlite import SQLiteDatastore, backup_file
from k3p_plugins.datastore_sql.store import SQLDatastore


def _wal_bytes(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


class _Config:
    def __init__(self, **values: object) -> None:
        self._values = values

    def get(self, name: str, default: object = None) -> object:
        return self._values.get(name, default)


class TestSQLiteConformance(DatastoreConformance):
    @pytest.fixture
    async def datastore(self, tmp_path: Path):
        store = SQLiteDatastore(str(tmp_path / "state.db"))
        await store.start()
        yield store
        await store.close()


class TestSQLiteConformanceSmallBuffers(DatastoreConformance):
    """The same suite with tiny watch buffers and compaction steps, so the fallback paths run."""

    many_keys = 2000
    slow_watcher_writes = 500

    @pytest.fixture
    async def datastore(self, tmp_path: Path):
        store = SQLiteDatastore(str(tmp_path / "state.db"), watch_buffer=8, compact_batch=2, readers=1)
        await store.start()
        yield store
        await store.close()


# --- the hook ------------------------------------------------------------------------------


def test_hook_claims_default_and_sqlite_endpoints(tmp_path: Path) -> None:
    config = _Config(data_dir=str(tmp_path))
    default = datastore_sql.k3p_datastore(endpoint="", config=config)
    assert isinstance(default, SQLiteDatastore) and isinstance(default, Datastore)
    assert default.path == str(tmp_path / "server" / "db" / "state.db")
    relative = datastore_sql.k3p_datastore(endpoint="sqlite://rel/dir/x.db", config=config)
    assert relative.path == os.path.abspath("rel/dir/x.db")
    absolute = datastore_sql.k3p_datastore(endpoint=f"sqlite://{tmp_path}/y.db?_journal=WAL", config=config)
    assert absolute.path == f"{tmp_path}/y.db"
    assert not (tmp_path / "server").exists(), "the hook alone must not touch the disk"


def test_hook_default_data_dir() -> None:
    store = datastore_sql.k3p_datastore(endpoint="", config=_Config())
    assert store.path == "/var/lib/rancher/k3p/server/db/state.db"


@pytest.mark.parametrize(
    "endpoint",
    ["postgres://u:p@127.0.0.1/k3p", "mysql://u@tcp(127.0.0.1:3306)/k3p", "https://127.0.0.1:2379", "x"],
)
def test_hook_declines_other_endpoints(endpoint: str, tmp_path: Path) -> None:
    assert datastore_sql.k3p_datastore(endpoint=endpoint, config=_Config(data_dir=str(tmp_path))) is None


def test_hook_through_plugin_manager(k3p_plugin_manager, tmp_path: Path) -> None:
    pm = k3p_plugin_manager(datastore_sql=datastore_sql)
    store = pm.hook.k3p_datastore(endpoint="", config=_Config(data_dir=str(tmp_path)))
    assert isinstance(store, SQLiteDatastore)
    assert pm.hook.k3p_datastore(endpoint="postgres://x", config=_Config()) is None


async def test_default_store_creates_its_folder(tmp_path: Path) -> None:
    store = datastore_sql.k3p_datastore(endpoint="", config=_Config(data_dir=str(tmp_path)))
    await store.start()
    try:
        await store.create("/a", b"x")
    finally:
        await store.close()
    db = tmp_path / "server" / "db" / "state.db"
    assert db.is_file()
    assert (db.parent.stat().st_mode & 0o777) == 0o700
    assert (db.stat().st_mode & 0o077) == 0


# --- durability settings and restart ----------------------------------------------------------


async def test_wal_and_full_sync(tmp_path: Path) -> None:
    store = SQLiteDatastore(str(tmp_path / "state.db"))
    await store.start()
    try:
        conn = store._wconn  # the writer's own settings are what make commits durable
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        await store.close()


async def test_data_and_revisions_survive_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = SQLiteDatastore(path)
    await store.start()
    rev = await store.create("/a", b"one")
    kv = await store.update("/a", b"two", rev)
    await store.close()

    store = SQLiteDatastore(path)
    await store.start()
    try:
        assert await store.current_revision() == kv.mod_revision
        assert await store.get("/a") == kv
        assert (await store.create("/b", b"x")) == kv.mod_revision + 1
    finally:
        await store.close()


async def test_lease_survives_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = SQLiteDatastore(path)
    await store.start()
    rev = await store.create("/lease/a", b"x", lease=1)
    await store.close()

    store = SQLiteDatastore(path)
    await store.start()
    try:
        watch = store.watch("/lease/", rev)
        event = await asyncio.wait_for(anext(watch), 5)
        assert event.type is EventType.DELETE and event.kv.key == "/lease/a"
        await watch.aclose()
    finally:
        await store.close()


async def test_newer_write_is_not_expired_by_an_old_lease(tmp_path: Path) -> None:
    store = SQLiteDatastore(str(tmp_path / "state.db"))
    await store.start()
    try:
        rev = await store.create("/a", b"x", lease=1)
        kv = await store.update("/a", b"y", rev)  # no lease any more
        await asyncio.sleep(1.5)
        assert await store.get("/a") == kv
    finally:
        await store.close()


async def test_store_refuses_use_before_start_and_after_close(tmp_path: Path) -> None:
    store = SQLiteDatastore(str(tmp_path / "state.db"))
    with pytest.raises(Exception, match="not started"):
        await store.get("/a")
    await store.start()
    watch = store.watch("/", 0)
    await store.create("/a", b"x")
    assert (await anext(watch)).kv.key == "/a"
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await anext(watch)  # close() ends open watches
    with pytest.raises(Exception, match="closed"):
        await store.create("/b", b"x")


# --- corruption -------------------------------------------------------------------------------


async def test_garbage_file_is_reported_not_reset(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    garbage = b"this is not a database at all" * 200
    path.write_bytes(garbage)
    store = SQLiteDatastore(str(path))
    with pytest.raises(DatastoreCorruptError) as err:
        await store.start()
    message = str(err.value)
    assert str(path) in message and "k3p datastore backup" in message
    assert path.read_bytes() == garbage, "the file must be left as it was"


async def test_damaged_page_fails_quick_check(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteDatastore(str(path))
    await store.start()
    await asyncio.gather(*(store.create(f"/k/{i:05d}", os.urandom(200)) for i in range(2000)))
    await store.close()
    assert _wal_bytes(path) == 0  # everything is in the main file we are about to damage
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    # scribble over the interior of some b-tree pages, keeping the header page intact
    for n in range(3, 20, 3):
        data[n * page + 8 : n * page + 400] = b"\xa5" * 392
    path.write_bytes(bytes(data))
    with pytest.raises(DatastoreCorruptError) as err:
        await SQLiteDatastore(str(path)).start()
    assert str(path) in str(err.value)


# --- backup -----------------------------------------------------------------------------------


async def test_backup_while_running_opens_with_the_same_data(tmp_path: Path) -> None:
    store = SQLiteDatastore(str(tmp_path / "state.db"))
    await store.start()
    try:
        await asyncio.gather(*(store.create(f"/k/{i:04d}", f"v{i}".encode(), lease=0) for i in range(500)))
        writes = asyncio.gather(*(store.create(f"/more/{i:04d}", b"m") for i in range(500)))
        await store.backup(str(tmp_path / "backup.db"))  # with writes in flight
        await writes
        expected = await store.list("/k/")
    finally:
        await store.close()
    assert _wal_bytes(tmp_path / "backup.db") == 0
    restored = SQLiteDatastore(str(tmp_path / "backup.db"))
    await restored.start()
    try:
        got = await restored.list("/k/")
        assert got.kvs == expected.kvs
        more = await restored.count("/more/")
        # a consistent snapshot: the "/more/" writes form a prefix of their revisions
        listed = await restored.list("/more/")
        revs = sorted(kv.mod_revision for kv in listed.kvs)
        assert more[1] == len(revs)
        assert revs == list(range(revs[0], revs[0] + len(revs))) if revs else True
    finally:
        await restored.close()


async def test_backup_file_from_outside_the_server(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    store = SQLiteDatastore(db)
    await store.start()
    try:
        await store.create("/a", b"x")
        # another "process": only the file path, no access to the running store
        await backup_file(db, str(tmp_path / "copy.db"))
        unstarted = SQLiteDatastore(db)
        await unstarted.backup(str(tmp_path / "copy2.db"))
    finally:
        await store.close()
    for name in ("copy.db", "copy2.db"):
        conn = sqlite3.connect(tmp_path / name)
        try:
            assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT value FROM kv_log WHERE name = '/a'").fetchone()[0] == b"x"
        finally:
            conn.close()
        assert (os.stat(tmp_path / name).st_mode & 0o077) == 0


async def test_backup_of_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await backup_file(str(tmp_path / "nope.db"), str(tmp_path / "out.db"))
    assert not (tmp_path / "nope.db").exists()


# --- group commit -----------------------------------------------------------------------------


async def test_concurrent_writes_share_transactions(tmp_path: Path) -> None:
    store = SQLiteDatastore(str(tmp_path / "state.db"))
    await store.start()
    try:
        before = store.write_transactions
        revs = await asyncio.gather(*(store.create(f"/k/{i}", b"x") for i in range(500)))
        used = store.write_transactions - before
        assert sorted(revs) == list(range(min(revs), min(revs) + 500))
        assert used < 50, f"500 concurrent writes took {used} transactions"
    finally:
        await store.close()


async def test_one_failed_write_does_not_fail_its_batch(tmp_path: Path) -> None:
    store = SQLiteDatastore(str(tmp_path / "state.db"))
    await store.start()
    try:
        rev = await store.create("/taken", b"x")
        before = store.write_transactions
        results = await asyncio.gather(
            store.create("/a", b"1"),
            store.create("/taken", b"again"),
            store.update("/taken", b"y", rev + 999),
            store.create("/b", b"2"),
            store.update("/taken", b"z", rev),
            return_exceptions=True,
        )
        assert store.write_transactions - before <= 2
        assert isinstance(results[0], int) and isinstance(results[3], int)
        assert type(results[1]).__name__ == "KeyExistsError"
        assert type(results[2]).__name__ == "ConflictError"
        assert results[4].value == b"z"
        assert [r.key for r in (await store.list("/")).kvs] == ["/a", "/b", "/taken"]
    finally:
        await store.close()


async def test_unexpected_error_is_isolated_to_its_write(tmp_path: Path) -> None:
    store = SQLiteDatastore(str(tmp_path / "state.db"))
    await store.start()
    try:
        results = await asyncio.gather(
            store.create("/ok1", b"1"),
            store.create("/bad\ud800", b"x"),  # not encodable: the database refuses it
            store.create("/ok2", b"2"),
            return_exceptions=True,
        )
        assert isinstance(results[0], int) and isinstance(results[2], int)
        assert isinstance(results[1], Exception)
        assert (await store.count("/ok"))[1] == 2
    finally:
        await store.close()


# --- compaction details -----------------------------------------------------------------------


async def test_compaction_removes_history_rows(tmp_path: Path) -> None:
    store = SQLiteDatastore(str(tmp_path / "state.db"), compact_batch=7)
    await store.start()
    try:
        rev = await store.create("/a", b"0")
        for i in range(50):
            rev = (await store.update("/a", str(i).encode(), rev)).mod_revision
        for i in range(20):
            await store.create(f"/gone/{i}", b"x")
            await store.delete(f"/gone/{i}")
        await store.create("/last", b"x")
        await store.compact(await store.current_revision())
        rows = store._rconn.execute("SELECT name FROM kv_log").fetchall()
        assert sorted(r[0] for r in rows) == ["/a", "/last"]
        with pytest.raises(ValueError):
            await store.compact(await store.current_revision() + 10)
    finally:
        await store.close()


async def test_periodic_compaction_keeps_the_window(tmp_path: Path) -> None:
    store: SQLDatastore = SQLiteDatastore(str(tmp_path / "state.db"), compact_interval=0.05, compact_retain=10)
    await store.start()
    try:
        rev = await store.create("/a", b"0")
        for i in range(40):
            rev = (await store.update("/a", str(i).encode(), rev)).mod_revision
        for _ in range(100):
            if store._compact_rev >= rev - 10:
                break
            await asyncio.sleep(0.02)
        assert store._compact_rev == rev - 10
        assert await store.get("/a", revision=rev - 10) is not None
        with pytest.raises(Exception, match="compacted"):
            await store.get("/a", revision=rev - 11)
    finally:
        await store.close()


async def test_random_history_matches_a_model(tmp_path: Path) -> None:
    """Reads at every retained revision, and watch replay, agree with a plain dict model."""
    store = SQLiteDatastore(str(tmp_path / "state.db"), compact_batch=3, compact_interval=0)
    await store.start()
    rng = random.Random(11)
    keys = [f"/m/{i:02d}" for i in range(12)]
    model: dict[str, tuple[bytes, int, int]] = {}  # key: (value, create_revision, mod_revision)
    states: dict[int, dict[str, tuple[bytes, int, int]]] = {}
    compacted = 0
    try:
        for step in range(800):
            key = rng.choice(keys)
            value = f"{step}".encode()
            current = model.get(key)
            if current is None:
                rev = await store.create(key, value)
                model[key] = (value, rev, rev)
            elif rng.random() < 0.6:
                rev = (await store.update(key, value, current[2])).mod_revision
                model[key] = (value, current[1], rev)
            else:
                rev = (await store.delete(key, current[2])).mod_revision
                del model[key]
            states[rev] = dict(model)
            if step % 97 == 96:
                compacted = rng.randrange(compacted, rev + 1)
                await store.compact(compacted)
                for at in (r for r in states if r < compacted):
                    with pytest.raises(CompactedError):
                        await store.list("/m/", revision=at)
                for at in [r for r in states if r < compacted]:
                    del states[at]
        for at, state in states.items():
            listed = await store.list("/m/", revision=at)
            assert {kv.key: (kv.value, kv.create_revision, kv.mod_revision) for kv in listed.kvs} == state
            assert [kv.key for kv in listed.kvs] == sorted(state)
            assert (await store.list("/m/", revision=at, limit=3)).kvs == listed.kvs[:3]
            for key in keys:
                kv = await store.get(key, revision=at)
                assert (None if kv is None else (kv.value, kv.create_revision, kv.mod_revision)) == state.get(key)
        assert (await store.count("/m/"))[1] == len(model)

        # replaying the retained history onto the oldest retained state gives today's state
        base = min(states)
        replayed = {k: v[0] for k, v in states[base].items()}
        watch = store.watch("/m/", base)
        last = await store.current_revision()
        while base < last:
            event = await asyncio.wait_for(anext(watch), 5)
            base = event.revision
            if event.type is EventType.DELETE:
                del replayed[event.kv.key]
            else:
                replayed[event.kv.key] = event.kv.value
        await watch.aclose()
        assert replayed == {k: v[0] for k, v in model.items()}
    finally:
        await store.close()
