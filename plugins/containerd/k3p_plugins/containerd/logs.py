"""Reading a container's CRI log file, optionally following it while the container runs.

containerd writes one line per chunk of output: ``<RFC3339Nano> <stdout|stderr> <P|F> <text>``
(``P``: a partial line continued in the next entry). The file is written by the shim, so
following means polling: there is no notification when it grows.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable

CHUNK = 64 * 1024
#: how long to wait for more output at the end of a followed file
POLL = 0.1
#: how often to ask whether the container still runs while nothing is written
ALIVE_EVERY = 1.0


def _read(fd: int, size: int) -> bytes:
    return os.read(fd, size)


async def read_cri_log(
    path: str,
    follow: bool = False,
    still_running: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[bytes]:
    """Yield each complete line of the log at ``path`` (without its newline).

    With ``follow``, keep waiting for new lines until ``still_running()`` says the
    container has stopped (then the rest of the file is read and the iteration ends). A
    file replaced under the same name (rotation) is read from its start. A missing file
    yields nothing.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        pending = b""
        idle_since = float("-inf")  # the first end of file asks at once: a stopped container ends quickly
        stopping = False
        while True:
            chunk = await asyncio.to_thread(_read, fd, CHUNK)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line
                idle_since = asyncio.get_running_loop().time()
                continue
            if not follow or stopping:
                break
            # at the end of the file: was it rotated?
            try:
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    fresh = os.open(path, os.O_RDONLY)
                    os.close(fd)
                    fd, pending = fresh, b""
                    continue
            except FileNotFoundError:
                pass
            now = asyncio.get_running_loop().time()
            if still_running is not None and now - idle_since >= ALIVE_EVERY:
                idle_since = now
                if not await still_running():
                    stopping = True  # one more read catches what was written just before the exit
                    continue
            await asyncio.sleep(POLL)
        if pending:
            yield pending
    finally:
        os.close(fd)
