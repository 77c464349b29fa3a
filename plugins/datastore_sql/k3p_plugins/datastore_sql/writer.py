"""The writer thread behind group commit.

Work is queued from the event loop; the thread takes everything that is waiting as
soon as it is free and runs it as one batch. It does not wait for the loop between
batches: while the loop wakes the callers of one batch, the next one is already being
written. Results go back to the loop in order, one callback per batch.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

#: one unit of queued work: (the work, the caller's future) - the thread never touches
#: the future, it only hands the pair back with the outcome
Item = tuple[Any, Any]


class Job:
    """A function to run alone on the writer thread (open, compaction step, checkpoint)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


class BatchWriter:
    """Runs queued items on one thread: consecutive writes as one batch, jobs one by one.

    ``run_batch(works)`` returns one result per write; ``on_done(items, results, error)``
    is called on the writer thread after each batch or job (``results`` is a list, or
    ``error`` the exception that stopped it) and must hand over to the loop itself.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        on_done: Callable[[list[Item], list[Any] | None, BaseException | None], None],
        *,
        max_batch: int = 1000,
        max_batch_bytes: int = 32 << 20,
        size: Callable[[Any], int] = lambda work: 0,
        name: str = "k3p-db-writer",
    ) -> None:
        self._run_batch = run_batch
        self._on_done = on_done
        self._max_batch = max(1, max_batch)
        self._max_bytes = max_batch_bytes
        self._size = size
        self._items: collections.deque[Item] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Item) -> None:
        """Queue ``item``; safe from any thread."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("writer is stopped")
            self._items.append(item)
            self._cond.notify()

    def stop(self) -> None:
        """Finish what is queued, then end the thread (blocking)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _take(self) -> list[Item]:
        items = self._items
        if isinstance(items[0][0], Job):
            return [items.popleft()]
        batch: list[Item] = []
        size = 0
        while items and len(batch) < self._max_batch and size < self._max_bytes:
            if isinstance(items[0][0], Job):
                break
            item = items.popleft()
            batch.append(item)
            size += self._size(item[0])
        return batch

    def _main(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if not self._items:
                    return
                batch = self._take()
            first = batch[0][0]
            try:
                results = [first.fn()] if isinstance(first, Job) else self._run_batch([w for w, _ in batch])
            except BaseException as exc:
                self._on_done(batch, None, exc)
            else:
                self._on_done(batch, results, None)
