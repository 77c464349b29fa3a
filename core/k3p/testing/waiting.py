"""Wait-for-condition helpers: poll until true, with a message that says what never happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> T:
    """Call ``condition`` until it returns something truthy and return that; raise TimeoutError.

    Exceptions raised by ``condition`` count as "not yet"; the last one is chained to the
    TimeoutError so a failing test shows why the condition never held.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition!r}") from last
        time.sleep(interval)


async def async_wait_for(
    condition: Callable[[], Awaitable[T]],
    timeout: float = 30.0,
    interval: float = 0.1, what: str = ""
) -> T:
    """The asyncio form of :func:`wait_for`, for an async ``condition``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = await condition()
            if result:
                return result
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition!r}") from last
        await asyncio.sleep(interval)
