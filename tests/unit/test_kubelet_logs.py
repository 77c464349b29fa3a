"""Turning CRI log files into what `kubectl logs` prints: tail, timestamps, partial lines, limits."""

from __future__ import annotations

import datetime as dt

from k3p.agent.server import container_log, parse_cri_line
from k3p.protocols.runtime import ContainerState, ContainerStatus

LINES = [
    b"2026-11-27T10:00:00.000000001Z stdout F first\n",
    b"2026-11-27T10:00:01.5Z stderr P par\n",
    b"2026-11-27T10:00:01.6Z stderr F tial\n",
    b"2026-11-27T10:00:02Z stdout F last\n",
]


class FakeRuntime:
    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    async def read_log(self, status, follow=False):
        for line in self.lines:
            yield line


STATUS = ContainerStatus(id="c1", sandbox_id="s1", name="web", state=ContainerState.RUNNING)


async def collect(**kw) -> bytes:
    defaults = {"follow": False, "tail": None, "since": None, "timestamps": False, "limit_bytes": None}
    defaults.update(kw)
    return b"".join([chunk async for chunk in container_log(FakeRuntime(LINES), STATUS, **defaults)])


def test_parse_cri_line() -> None:
    assert parse_cri_line(LINES[1]) == ("2026-11-27T10:00:01.5Z", "stderr", True, b"par")
    assert parse_cri_line(b"garbage\n") == ("", "stdout", False, b"garbage")


async def test_plain_output_joins_partial_lines() -> None:
    assert await collect() == b"first\npartial\nlast\n"


async def test_tail_timestamps_since_and_limit() -> None:
    assert await collect(tail=1) == b"last\n"
    assert (await collect(timestamps=True)).startswith(b"2026-11-27T10:00:00.000000001Z first\n")
    since = dt.datetime(2026, 11, 27, 10, 0, 1, tzinfo=dt.UTC)
    assert await collect(since=since) == b"partial\nlast\n"
    assert await collect(limit_bytes=8) == b"first\npa"
