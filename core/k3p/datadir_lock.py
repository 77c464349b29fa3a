"""One k3p process per data dir: an advisory lock file that holds the owner's PID."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_FILE = "k3p.lock"


class DataDirBusy(Exception):
    """Another live k3p process holds the data dir: printed as one line, exit code 1."""


def hold_data_dir(data_dir: Path, command: str) -> IO[str]:
    """Lock ``data_dir`` for this process until it exits, and write our PID into the lock file.

    ``flock`` locks end with the process that holds them (even on ``kill -9``), so the file a
    crashed server leaves behind never blocks the next start. The returned file must stay
    open (and referenced) for as long as the lock is wanted. Opened files are not inherited
    by child processes (close-on-exec), so a container runtime left running does not hold it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    handle = open(path, "a+")  # kept open for the life of the process
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise DataDirBusy(f"data dir {data_dir} is in use by another k3p process (PID {owner}); "
                          f"stop it first or give this {command} another --data-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    with contextlib.suppress(OSError):
        os.chmod(path, 0o644)
    return handle
