"""Creations and deletions a controller has made but its informer has not shown yet.

A controller that creates pods and reconciles again before its cache shows them would
create them twice. Like kube's ControllerExpectations, a controller records what it did and
holds off changing the number of pods until the informer has caught up (or a timeout says
the event was lost).
"""

from __future__ import annotations

import time


class Expectations:
    def __init__(self, timeout: float = 300.0) -> None:
        self.timeout = timeout
        self._adds: dict[str, set[str]] = {}
        self._dels: dict[str, set[str]] = {}
        self._since: dict[str, float] = {}

    def expect_creation(self, owner: str, obj_key: str) -> None:
        self._adds.setdefault(owner, set()).add(obj_key)
        self._since[owner] = time.monotonic()

    def expect_deletion(self, owner: str, obj_key: str) -> None:
        self._dels.setdefault(owner, set()).add(obj_key)
        self._since[owner] = time.monotonic()

    def creation_observed(self, owner: str, obj_key: str) -> None:
        self._adds.get(owner, set()).discard(obj_key)

    def deletion_observed(self, owner: str, obj_key: str) -> None:
        self._dels.get(owner, set()).discard(obj_key)

    def satisfied(self, owner: str) -> bool:
        if not self._adds.get(owner) and not self._dels.get(owner):
            return True
        if time.monotonic() - self._since.get(owner, 0) > self.timeout:
            self.forget(owner)
            return True
        return False

    def pending(self, owner: str) -> tuple[set[str], set[str]]:
        return set(self._adds.get(owner, ())), set(self._dels.get(owner, ()))

    def forget(self, owner: str) -> None:
        self._adds.pop(owner, None)
        self._dels.pop(owner, None)
        self._since.pop(owner, None)
