"""Conformance suite for :class:`k3p.protocols.datastore.Datastore` implementations.

Subclass :class:`DatastoreConformance` in a test module and give it a ``datastore``
fixture that yields a started store and closes it afterwards::

    import pytest
    from k3p.testing.datastore import DatastoreConformance

    class TestMyStore(DatastoreConformance):
        @pytest.fixture
        async def datastore(self, tmp_path):
            store = MyStore(tmp_path / "db")
            await store.start()
            yield store
            await store.close()

(In a project without ``asyncio_mode = auto``, decorate the fixture with
``pytest_asyncio.fixture``.) Every test works under a key prefix of its own, so the
store may be shared between tests; the revision checks assume nothing else writes to
it while a test runs. Class attributes tune the heavy tests, and
:meth:`DatastoreConformance.compact` can be overridden for stores whose compaction
needs more than ``datastore.compact(revision)``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from k3p.protocols.datastore import (
    CompactedError,
    ConflictError,
    Datastore,
    Event,
    EventType,
    KeyExistsError,
    KeyValue,
    NotFoundError,
)

_TIMEOUT = 30.0


async def _next(watch: AsyncIterator[Event], timeout: float = _TIMEOUT) -> Event:
    return await asyncio.wait_for(anext(watch), timeout)


async def _take(watch: AsyncIterator[Event], n: int, timeout: float = _TIMEOUT) -> list[Event]:
    async def take() -> list[Event]:
        return [await anext(watch) for _ in range(n)]

    return await asyncio.wait_for(take(), timeout)


async def _gather_chunks(coros: list[Any], chunk: int = 200) -> list[Any]:
    """Run coroutines ``chunk`` at a time (many writes in flight, but not 10,000 tasks)."""
    out: list[Any] = []
    for i in range(0, len(coros), chunk):
        out.extend(await asyncio.gather(*coros[i : i + chunk]))
    return out


class DatastoreConformance:
    """The behaviour every Datastore must show. Needs a ``datastore`` fixture."""

    #: lease given to keys in the expiry test, seconds
    lease_seconds: int = 1
    #: how long after the lease runs out the key may still exist, seconds
    lease_slack: float = 4.0
    #: keys written in the many-keys test
    many_keys: int = 10_000
    #: size of the values in the large-value test
    large_value_size: int = 1 << 20
    #: concurrent writers in the compare-and-swap race
    race_writers: int = 50
    #: successful updates each racing writer makes
    race_updates_each: int = 10
    #: writes made while one watcher does not read (should exceed any watch buffer)
    slow_watcher_writes: int = 3000

    async def compact(self, datastore: Datastore, revision: int) -> None:
        """Compact ``datastore`` at ``revision``; override if that takes more than one call."""
        await datastore.compact(revision)

    @staticmethod
    def prefix() -> str:
        """A key prefix no other test uses."""
        return f"/k3p-conformance/{uuid.uuid4().hex[:12]}/"

    # --- single-key semantics -------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_create_then_get(self, datastore: Datastore) -> None:
        p = self.prefix()
        before = await datastore.current_revision()
        rev = await datastore.create(p + "a", b"one")
        assert rev > before
        assert await datastore.current_revision() == rev
        assert await datastore.get(p + "a") == KeyValue(p + "a", b"one", rev, rev, 0)
        assert await datastore.get(p + "missing") is None

    @pytest.mark.asyncio
    async def test_create_existing_key_fails(self, datastore: Datastore) -> None:
        p = self.prefix()
        rev = await datastore.create(p + "a", b"one")
        with pytest.raises(KeyExistsError) as err:
            await datastore.create(p + "a", b"two")
        assert err.value.key == p + "a"
        assert await datastore.current_revision() == rev
        assert (await datastore.get(p + "a")).value == b"one"

    @pytest.mark.asyncio
    async def test_update(self, datastore: Datastore) -> None:
        p = self.prefix()
        rev = await datastore.create(p + "a", b"one")
        kv = await datastore.update(p + "a", b"two", rev)
        assert kv.key == p + "a" and kv.value == b"two"
        assert kv.create_revision == rev and kv.mod_revision > rev
        assert await datastore.get(p + "a") == kv

    @pytest.mark.asyncio
    async def test_update_errors(self, datastore: Datastore) -> None:
        p = self.prefix()
        rev = await datastore.create(p + "a", b"one")
        current = await datastore.update(p + "a", b"two", rev)
        with pytest.raises(ConflictError) as err:
            await datastore.update(p + "a", b"three", rev)
        assert err.value.key == p + "a"
        assert err.value.current == current
        with pytest.raises(NotFoundError):
            await datastore.update(p + "missing", b"x", 1)
        await datastore.delete(p + "a")
        with pytest.raises(NotFoundError):
            await datastore.update(p + "a", b"x", current.mod_revision)
        assert await datastore.get(p + "a") is None

    @pytest.mark.asyncio
    async def test_delete(self, datastore: Datastore) -> None:
        p = self.prefix()
        rev = await datastore.create(p + "a", b"one")
        deleted = await datastore.delete(p + "a")
        assert deleted.key == p + "a" and deleted.value == b"one"
        assert deleted.create_revision == rev and deleted.mod_revision > rev
        assert await datastore.current_revision() == deleted.mod_revision
        assert await datastore.get(p + "a") is None
        with pytest.raises(NotFoundError):
            await datastore.delete(p + "a")

    @pytest.mark.asyncio
    async def test_conditional_delete(self, datastore: Datastore) -> None:
        p = self.prefix()
        rev = await datastore.create(p + "a", b"one")
        current = await datastore.update(p + "a", b"two", rev)
        with pytest.raises(ConflictError) as err:
            await datastore.delete(p + "a", expected_revision=rev)
        assert err.value.current == current
        assert (await datastore.get(p + "a")) == current
        deleted = await datastore.delete(p + "a", expected_revision=current.mod_revision)
        assert deleted.value == b"two"

    @pytest.mark.asyncio
    async def test_create_after_delete_starts_a_new_life(self, datastore: Datastore) -> None:
        p = self.prefix()
        first = await datastore.create(p + "a", b"one")
        await datastore.delete(p + "a")
        second = await datastore.create(p + "a", b"again")
        kv = await datastore.get(p + "a")
        assert kv == KeyValue(p + "a", b"again", second, second, 0)
        assert second > first

    @pytest.mark.asyncio
    async def test_get_at_revision(self, datastore: Datastore) -> None:
        p = self.prefix()
        r1 = await datastore.create(p + "a", b"one")
        kv2 = await datastore.update(p + "a", b"two", r1)
        deleted = await datastore.delete(p + "a")
        assert (await datastore.get(p + "a", revision=r1)).value == b"one"
        assert await datastore.get(p + "a", revision=kv2.mod_revision) == kv2
        assert (await datastore.get(p + "a", revision=deleted.mod_revision - 1)).value == b"two"
        assert await datastore.get(p + "a", revision=deleted.mod_revision) is None
        assert await datastore.get(p + "a", revision=r1 - 1) is None

    @pytest.mark.asyncio
    async def test_failed_writes_take_no_revision(self, datastore: Datastore) -> None:
        p = self.prefix()
        r1 = await datastore.create(p + "a", b"one")
        with pytest.raises(KeyExistsError):
            await datastore.create(p + "a", b"x")
        with pytest.raises(ConflictError):
            await datastore.update(p + "a", b"x", r1 + 1000)
        with pytest.raises(NotFoundError):
            await datastore.delete(p + "b")
        r2 = await datastore.create(p + "b", b"two")
        assert r2 == r1 + 1
        kv = await datastore.update(p + "b", b"three", r2)
        assert kv.mod_revision == r2 + 1
        assert (await datastore.delete(p + "a")).mod_revision == r2 + 2

    @pytest.mark.asyncio
    async def test_revisions_are_unique_and_increasing(self, datastore: Datastore) -> None:
        p = self.prefix()
        before = await datastore.current_revision()
        sequential = [await datastore.create(f"{p}s{i}", b"x") for i in range(20)]
        assert sequential == sorted(set(sequential)) and sequential[0] > before
        concurrent = await asyncio.gather(*(datastore.create(f"{p}c{i}", b"x") for i in range(200)))
        assert len(set(concurrent)) == 200
        assert min(concurrent) > sequential[-1]
        assert await datastore.current_revision() == max(concurrent)
        for i, rev in enumerate(concurrent):
            assert (await datastore.get(f"{p}c{i}")).mod_revision == rev

    # --- listing --------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_list_prefix_in_key_order(self, datastore: Datastore) -> None:
        p = self.prefix()
        for key in ["a/2", "a/10", "a/1", "ab", "a", "b/1", "a/3"]:
            await datastore.create(p + key, key.encode())
        await datastore.delete(p + "a/3")
        result = await datastore.list(p + "a/")
        assert [kv.key for kv in result.kvs] == [p + "a/1", p + "a/10", p + "a/2"]
        assert [kv.value for kv in result.kvs] == [b"a/1", b"a/10", b"a/2"]
        assert result.revision == await datastore.current_revision()
        assert not result.more
        everything = await datastore.list(p)
        assert [kv.key for kv in everything.kvs] == sorted(
            p + k for k in ["a/2", "a/10", "a/1", "ab", "a", "b/1"]
        )
        assert (await datastore.list(p + "zzz")).kvs == []

    @pytest.mark.asyncio
    async def test_list_start_key_and_limit(self, datastore: Datastore) -> None:
        p = self.prefix()
        keys = sorted(f"{p}k{i:03d}" for i in range(25))
        for key in keys:
            await datastore.create(key, b"v")
        page = await datastore.list(p, start_key=keys[5], limit=3)
        assert [kv.key for kv in page.kvs] == keys[5:8]
        assert page.more
        seen, start, pages = [], "", 0
        while True:
            page = await datastore.list(p, start_key=start, limit=10)
            pages += 1
            seen.extend(kv.key for kv in page.kvs)
            if not page.more:
                break
            start = page.kvs[-1].key + "\x00"
        assert seen == keys and pages == 3
        last = await datastore.list(p, start_key=keys[-1], limit=10)
        assert [kv.key for kv in last.kvs] == [keys[-1]] and not last.more
        exact = await datastore.list(p, limit=25)
        assert len(exact.kvs) == 25 and not exact.more

    @pytest.mark.asyncio
    async def test_list_pages_at_one_revision(self, datastore: Datastore) -> None:
        p = self.prefix()
        revs = {}
        for i in range(10):
            revs[f"{p}k{i}"] = await datastore.create(f"{p}k{i}", b"old")
        first = await datastore.list(p, limit=4)
        assert [kv.key for kv in first.kvs] == [f"{p}k{i}" for i in range(4)]
        # the world moves on between pages
        await datastore.create(f"{p}k5a", b"new")
        await datastore.delete(f"{p}k7")
        await datastore.update(f"{p}k8", b"new", revs[f"{p}k8"])
        rest = await datastore.list(p, start_key=first.kvs[-1].key + "\x00", revision=first.revision)
        assert rest.revision == first.revision
        assert [kv.key for kv in rest.kvs] == [f"{p}k{i}" for i in range(4, 10)]
        assert all(kv.value == b"old" for kv in rest.kvs)
        now = await datastore.list(p)
        assert [kv.key for kv in now.kvs] == sorted(
            [f"{p}k{i}" for i in range(10) if i != 7] + [f"{p}k5a"]
        )

    @pytest.mark.asyncio
    async def test_count(self, datastore: Datastore) -> None:
        p = self.prefix()
        assert (await datastore.count(p))[1] == 0
        for i in range(7):
            await datastore.create(f"{p}a/{i}", b"v")
        await datastore.create(f"{p}b", b"v")
        await datastore.delete(f"{p}a/0")
        rev, n = await datastore.count(p + "a/")
        assert n == 6
        assert rev == await datastore.current_revision()
        assert (await datastore.count(p))[1] == 7

    # --- compare-and-swap -----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_compare_and_swap_race(self, datastore: Datastore) -> None:
        p = self.prefix()
        keys = [f"{p}counter{i}" for i in range(5)]
        for key in keys:
            await datastore.create(key, b"0")
        winners: collections.Counter[tuple[str, int]] = collections.Counter()
        won_per_key: collections.Counter[str] = collections.Counter()

        async def writer(seed: int) -> None:
            rng = random.Random(seed)
            done = 0
            while done < self.race_updates_each:
                key = rng.choice(keys)
                kv = await datastore.get(key)
                try:
                    await datastore.update(key, str(int(kv.value) + 1).encode(), kv.mod_revision)
                except ConflictError as err:
                    assert err.current is not None and err.current.mod_revision != kv.mod_revision
                    continue
                winners[(key, kv.mod_revision)] += 1
                won_per_key[key] += 1
                done += 1

        await asyncio.wait_for(
            asyncio.gather(*(writer(i) for i in range(self.race_writers))), _TIMEOUT * 4
        )
        assert max(winners.values()) == 1, "two writers won on the same expected revision"
        total = self.race_writers * self.race_updates_each
        assert sum(winners.values()) == total
        finals = {key: int((await datastore.get(key)).value) for key in keys}
        assert finals == {key: won_per_key[key] for key in keys}, "an update was lost"
        assert sum(finals.values()) == total

    # --- watch ----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_watch_events_in_order(self, datastore: Datastore) -> None:
        p = self.prefix()
        start = await datastore.current_revision()
        watch = datastore.watch(p, start)
        try:
            created = await datastore.create(p + "a", b"one")
            updated = await datastore.update(p + "a", b"two", created)
            await datastore.create("/k3p-conformance-elsewhere/" + p, b"not mine")
            deleted = await datastore.delete(p + "a")
            events = await _take(watch, 3)
        finally:
            await watch.aclose()
        first = KeyValue(p + "a", b"one", created, created, 0)
        assert events[0] == Event(EventType.CREATE, first)
        assert events[1] == Event(EventType.UPDATE, updated, first)
        assert events[2] == Event(EventType.DELETE, deleted, updated)
        assert [e.revision for e in events] == [created, updated.mod_revision, deleted.mod_revision]

    @pytest.mark.asyncio
    async def test_watch_replays_from_revision(self, datastore: Datastore) -> None:
        p = self.prefix()
        revs = [await datastore.create(f"{p}k{i}", str(i).encode()) for i in range(20)]
        mid = revs[9]
        watch = datastore.watch(p, mid)
        try:
            replay = await _take(watch, 10)
            assert [e.revision for e in replay] == revs[10:]
            assert [e.kv.key for e in replay] == [f"{p}k{i}" for i in range(10, 20)]
            assert all(e.type is EventType.CREATE for e in replay)
            live = await datastore.create(p + "live", b"x")
            assert (await _next(watch)).revision == live
        finally:
            await watch.aclose()

    @pytest.mark.asyncio
    async def test_watch_history_then_live_without_gap(self, datastore: Datastore) -> None:
        p = self.prefix()
        start = await datastore.current_revision()
        written: list[int] = []

        async def write(n: int) -> None:
            for i in range(n):
                written.append(await datastore.create(f"{p}k{i:04d}", b"v"))
                if i % 10 == 0:
                    await asyncio.sleep(0)

        writer = asyncio.create_task(write(400))
        while len(written) < 100:
            await asyncio.sleep(0.001)
        watch = datastore.watch(p, start)  # joins while writes keep coming
        try:
            got = [(await _next(watch)).revision for _ in range(400)]
        finally:
            await watch.aclose()
            await writer
        assert got == written

    @pytest.mark.asyncio
    async def test_watch_filters_by_prefix(self, datastore: Datastore) -> None:
        p = self.prefix()
        start = await datastore.current_revision()
        watch = datastore.watch(p + "a/", start)
        try:
            await datastore.create(p + "b/1", b"x")
            await datastore.create(p + "ab", b"x")
            mine = await datastore.create(p + "a/1", b"x")
            assert (await _next(watch)).revision == mine
        finally:
            await watch.aclose()

    @pytest.mark.asyncio
    async def test_watch_ends_on_aclose(self, datastore: Datastore) -> None:
        p = self.prefix()
        watch = datastore.watch(p, await datastore.current_revision())
        await datastore.create(p + "a", b"x")
        await _next(watch)
        await watch.aclose()
        with pytest.raises(StopAsyncIteration):
            await anext(watch)
        await datastore.create(p + "b", b"x")  # nothing waits on the closed watch

    @pytest.mark.asyncio
    async def test_slow_watcher_blocks_nobody(self, datastore: Datastore) -> None:
        p = self.prefix()
        start = await datastore.current_revision()
        slow = datastore.watch(p, start)
        fast = datastore.watch(p, start)
        n = self.slow_watcher_writes
        try:
            first = await datastore.create(p + "first", b"x")
            assert (await _next(slow)).revision == first  # joined, then stops reading
            fast_events = asyncio.create_task(_take(fast, n + 1, _TIMEOUT * 2))
            value = os.urandom(256)
            revs = await asyncio.wait_for(
                _gather_chunks([datastore.create(f"{p}k{i:05d}", value) for i in range(n)], 100),
                _TIMEOUT * 2,
            )
            got = await fast_events
            assert [e.revision for e in got] == [first, *revs]
            late = await _take(slow, n, _TIMEOUT * 2)
            assert [e.revision for e in late] == revs
            assert all(e.kv.value == value for e in late)
        finally:
            await slow.aclose()
            await fast.aclose()

    # --- compaction -----------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_compaction(self, datastore: Datastore) -> None:
        p = self.prefix()
        r1 = await datastore.create(p + "a", b"a1")
        a2 = await datastore.update(p + "a", b"a2", r1)
        await datastore.create(p + "b", b"b1")
        await datastore.delete(p + "b")
        rc = await datastore.create(p + "c", b"c1")
        target = await datastore.current_revision()
        c2 = await datastore.update(p + "c", b"c2", rc)
        await self.compact(datastore, target)

        with pytest.raises(CompactedError):
            await datastore.get(p + "a", revision=r1)
        with pytest.raises(CompactedError):
            await datastore.list(p, revision=r1)
        old_watch = datastore.watch(p, r1)
        try:
            with pytest.raises(CompactedError):
                await _next(old_watch)
        finally:
            await old_watch.aclose()

        assert await datastore.get(p + "a", revision=target) == a2
        at_target = await datastore.list(p, revision=target)
        assert [(kv.key, kv.value) for kv in at_target.kvs] == [(p + "a", b"a2"), (p + "c", b"c1")]
        latest = await datastore.list(p)
        assert [(kv.key, kv.value) for kv in latest.kvs] == [(p + "a", b"a2"), (p + "c", b"c2")]
        watch = datastore.watch(p, target)
        try:
            event = await _next(watch)
            assert event == Event(EventType.UPDATE, c2, KeyValue(p + "c", b"c1", rc, rc, 0))
        finally:
            await watch.aclose()
        assert (await datastore.create(p + "b", b"b2")) > c2.mod_revision

    # --- size and scale -------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_large_values(self, datastore: Datastore) -> None:
        p = self.prefix()
        start = await datastore.current_revision()
        big1, big2 = os.urandom(self.large_value_size), os.urandom(self.large_value_size)
        rev = await datastore.create(p + "big", big1)
        assert (await datastore.get(p + "big")).value == big1
        kv = await datastore.update(p + "big", big2, rev)
        assert (await datastore.list(p)).kvs == [kv]
        assert (await datastore.get(p + "big", revision=rev)).value == big1
        deleted = await datastore.delete(p + "big")
        assert deleted.value == big2
        watch = datastore.watch(p, start)
        try:
            events = await _take(watch, 3)
        finally:
            await watch.aclose()
        assert [e.kv.value for e in events] == [big1, big2, big2]
        assert events[1].prev_kv is not None and events[1].prev_kv.value == big1

    @pytest.mark.asyncio
    async def test_many_keys(self, datastore: Datastore) -> None:
        p = self.prefix()
        n = self.many_keys
        keys = [f"{p}{i:06d}" for i in range(n)]
        value = b"x" * 100
        await _gather_chunks([datastore.create(key, value) for key in keys])
        assert (await datastore.count(p))[1] == n
        everything = await datastore.list(p)
        assert [kv.key for kv in everything.kvs] == keys and not everything.more
        seen, start = [], ""
        while True:
            page = await datastore.list(p, start_key=start, limit=1000, revision=everything.revision)
            seen.extend(kv.key for kv in page.kvs)
            if not page.more:
                break
            start = page.kvs[-1].key + "\x00"
        assert seen == keys
        assert (await datastore.get(keys[n // 2])).value == value

    # --- leases ---------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_lease_expiry(self, datastore: Datastore) -> None:
        p = self.prefix()
        start = await datastore.current_revision()
        watch = datastore.watch(p, start)
        try:
            rev = await datastore.create(p + "short", b"x", lease=self.lease_seconds)
            await datastore.create(p + "forever", b"y")
            kv = await datastore.get(p + "short")
            assert kv is not None and kv.lease == self.lease_seconds
            began = time.monotonic()
            events = await _take(watch, 3, self.lease_seconds + self.lease_slack)
            assert time.monotonic() - began >= self.lease_seconds * 0.5
            assert events[0].revision == rev
            expired = events[2]
            assert expired.type is EventType.DELETE and expired.kv.key == p + "short"
            assert await datastore.get(p + "short") is None
            assert (await datastore.get(p + "forever")).value == b"y"
        finally:
            await watch.aclose()
