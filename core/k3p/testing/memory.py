"""How much memory a process holds, from /proc: for memory tests and benchmarks."""

from __future__ import annotations

import threading


def status_kib(pid: int, field: str, path: str = "status") -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``, ``RssAnon``; or of another
    file such as ``smaps_rollup``), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (VmRSS), or None once it is gone."""
    kib = status_kib(pid, "VmRSS")
    return None if kib is None else kib * 1024


class RssSampler:
    """The highest RSS of a process, read every ``interval`` seconds from a thread while in use.

    ``peak`` also counts one last reading on leaving, so a rise at the very end is not missed;
    ``samples`` says how many readings were taken.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval, self.peak, self.samples = pid, interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, rss_bytes(self.pid) or 0)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
