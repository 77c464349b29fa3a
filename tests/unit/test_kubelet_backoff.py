"""The restart back-off: 10s, 20s, 40s ... 5min, reset after a quiet spell (kube's flowcontrol.Backoff)."""

from __future__ import annotations

from k3p.agent.kubelet import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_failure_restarts_at_once_then_the_delay_doubles() -> None:
    clock = Clock()
    b = Backoff(10, 300, clock)
    # first exit: not in back-off, the kubelet restarts at once and records it
    assert not b.in_backoff_since("app", clock.now)
    assert b.next("app", clock.now) == 10
    # second exit right away: wait 10s
    clock.now += 1
    finished = clock.now
    assert b.in_backoff_since("app", finished)
    clock.now += 9.5
    assert b.in_backoff_since("app", finished)
    clock.now += 0.6
    assert not b.in_backoff_since("app", finished)
    delays = [b.next("app", clock.now) for _ in range(8)]
    assert delays == [20, 40, 80, 160, 300, 300, 300, 300]
    assert b.get("app") == 300


def test_quiet_spell_resets_the_delay() -> None:
    clock = Clock()
    b = Backoff(10, 300, clock)
    for _ in range(5):
        b.next("app", clock.now)
    assert b.get("app") == 160
    clock.now += 601  # more than twice the maximum since the last failure
    assert not b.in_backoff_since("app", clock.now - 1)
    assert b.next("app", clock.now) == 10


def test_keys_are_independent_and_reset_forgets() -> None:
    clock = Clock()
    b = Backoff(1, 8, clock)
    b.next("a", clock.now)
    b.next("a", clock.now)
    assert (b.get("a"), b.get("b")) == (2, 0)
    assert b.in_backoff_since_update("a") and not b.in_backoff_since_update("b")
    clock.now += 2.5
    assert not b.in_backoff_since_update("a")
    b.reset("a")
    assert b.get("a") == 0
