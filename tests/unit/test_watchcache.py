"""The watch cache's bounds: the replay window in events and bytes, each watcher's backlog."""

from __future__ import annotations

import asyncio

import pytest

from k3p.apiserver.watchcache import CachedObject, Expired, WatchCache, WatchEvent

PREFIX = "/registry/configmaps/"


def event(rv: int, size: int, name: str = "") -> WatchEvent:
    name = name or f"cm-{rv:04d}"  # one width: every event the same size
    obj = {"kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns"}, "data": {"v": "x" * size}}
    return WatchEvent("ADDED", CachedObject(f"{PREFIX}ns/{name}", obj, rv))


def cache(window: int = 1000, window_bytes: int = 2**20) -> WatchCache:
    c = WatchCache(datastore=None, window=window, window_bytes=window_bytes)  # type: ignore[arg-type]
    c.register(PREFIX)
    return c


def test_window_is_bounded_in_bytes() -> None:
    c = cache(window_bytes=1_000_000)
    bucket = c.bucket(PREFIX)
    for rv in range(1, 11):
        bucket.apply(event(rv, 300_000))
    assert bucket.events_bytes <= 1_000_000
    assert [e.rv for e in bucket.events] == [8, 9, 10]
    assert bucket.window_start == 7
    # the evicted revisions are no longer replayable; those after window_start are
    with pytest.raises(Expired):
        c.watch(PREFIX, 5, lambda o: True)
    _, first = c.watch(PREFIX, 7, lambda o: True)
    assert [e.rv for e in first] == [8, 9, 10]


def test_window_is_bounded_in_events() -> None:
    c = cache(window=5)
    bucket = c.bucket(PREFIX)
    for rv in range(1, 21):
        bucket.apply(event(rv, 10))
    assert [e.rv for e in bucket.events] == [16, 17, 18, 19, 20]
    assert bucket.window_start == 15


def test_newest_event_stays_however_big() -> None:
    bucket = cache(window_bytes=1000).bucket(PREFIX)
    bucket.apply(event(1, 10))
    bucket.apply(event(2, 50_000))
    assert [e.rv for e in bucket.events] == [2]
    assert bucket.window_start == 1


async def test_watcher_past_its_byte_bound_is_closed_and_its_backlog_dropped() -> None:
    c = cache(window_bytes=100 * 2**20)
    bucket = c.bucket(PREFIX)
    watcher, _ = c.watch(PREFIX, None, lambda o: True)
    watcher.max_bytes = 1_000_000
    for rv in range(1, 4):
        bucket.apply(event(rv, 300_000))
    assert watcher.pending() == 3 and not watcher.closed
    bucket.apply(event(4, 300_000))
    assert watcher.closed and watcher.fell_behind
    assert watcher.pending() == 0 and watcher.backlog_bytes == 0
    assert watcher not in bucket.watchers
    assert await watcher.wait() is False
    assert await watcher.next() is None


def test_watcher_past_its_event_bound_is_closed() -> None:
    c = cache()
    bucket = c.bucket(PREFIX)
    watcher, _ = c.watch(PREFIX, None, lambda o: True)
    watcher.max_events = 10
    for rv in range(1, 11):
        bucket.apply(event(rv, 10))
    assert not watcher.closed
    bucket.apply(event(11, 10))
    assert watcher.fell_behind


def test_a_watcher_that_takes_its_events_is_never_closed() -> None:
    c = cache(window_bytes=100 * 2**20)
    bucket = c.bucket(PREFIX)
    watcher, _ = c.watch(PREFIX, None, lambda o: True)
    watcher.max_bytes = 1_000_000
    taken = []
    for rv in range(1, 101):
        bucket.apply(event(rv, 300_000))
        taken += [e.rv for e in watcher.take(64 * 1024)]
    assert not watcher.closed and taken == list(range(1, 101))


def test_take_batches_by_bytes() -> None:
    c = cache()
    bucket = c.bucket(PREFIX)
    watcher, _ = c.watch(PREFIX, None, lambda o: True)
    for rv in range(1, 11):
        bucket.apply(event(rv, 10_000))
    size = bucket.events[0].item.size
    first = watcher.take(3 * size + size // 2)
    assert [e.rv for e in first] == [1, 2, 3]
    assert watcher.backlog_bytes == sum(e.item.size for e in list(bucket.events)[3:])
    # one event bigger than the limit still goes, alone
    assert [e.rv for e in watcher.take(1)] == [4]
    assert [e.rv for e in watcher.take(10**9)] == list(range(5, 11))
    assert watcher.pending() == 0 and watcher.backlog_bytes == 0


async def test_next_returns_events_in_order() -> None:
    c = cache()
    bucket = c.bucket(PREFIX)
    watcher, _ = c.watch(PREFIX, None, lambda o: True)
    bucket.apply(event(1, 10))
    bucket.apply(event(2, 10))
    assert [(await watcher.next()).rv, (await watcher.next()).rv] == [1, 2]  # type: ignore[union-attr]
    watcher.close()
    assert await watcher.next() is None


async def test_replaced_objects_leaving_the_window_trim_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    trims = []
    monkeypatch.setattr("k3p.heap.trim", lambda: trims.append(1) or True)
    c = cache(window_bytes=1_000_000)
    c.trimmer.delay = 0.01
    c.trimmer.threshold = 500_000
    bucket = c.bucket(PREFIX)
    # the same object rewritten: each older version that leaves the window is garbage
    for rv in range(1, 8):
        bucket.apply(event(rv, 300_000, name="big"))
    assert c.trimmer.pending >= 500_000
    await asyncio.sleep(0.05)
    assert trims == [1] and c.trimmer.pending == 0


def test_current_objects_leaving_the_window_are_not_counted_as_freed() -> None:
    c = cache(window_bytes=1_000_000)
    bucket = c.bucket(PREFIX)
    for rv in range(1, 8):
        bucket.apply(event(rv, 300_000))  # all distinct objects, all still stored
    assert c.trimmer.pending == 0


def test_trim_runs_here() -> None:
    from k3p import heap

    assert heap.trim() in (True, False)
