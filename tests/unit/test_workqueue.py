"""The work queue: one copy of a key, never two workers on one key, retries with back-off."""

from __future__ import annotations

import asyncio

from k3p.client import WorkQueue


async def test_duplicates_collapse_and_order_is_kept() -> None:
    q = WorkQueue()
    for k in ("a", "b", "a", "c", "b"):
        q.add(k)
    assert len(q) == 3
    assert [await q.get() for _ in range(3)] == ["a", "b", "c"]


async def test_key_added_while_processing_comes_back_after_done() -> None:
    q = WorkQueue()
    q.add("a")
    key = await q.get()
    q.add("a")  # changed again while a worker holds it
    assert len(q) == 0
    q.done(key)
    assert len(q) == 1 and await q.get() == "a"


async def test_rate_limited_retries_back_off_and_forget_resets() -> None:
    q = WorkQueue(base_delay=0.02)
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(3):
        q.add_rate_limited("a")
        start = loop.time()
        await q.get()
        q.done("a")
        times.append(loop.time() - start)
    assert times[2] > times[0] * 2
    q.forget("a")
    q.add_rate_limited("a")
    start = loop.time()
    await q.get()
    assert loop.time() - start < times[2]


async def test_add_after_keeps_the_earliest_timer() -> None:
    q = WorkQueue()
    q.add_after("a", 5)
    q.add_after("a", 0.01)
    assert await asyncio.wait_for(q.get(), 1) == "a"
    q.shutdown()
