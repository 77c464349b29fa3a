"""Disk space for a database file: telling a full disk from other I/O errors, and a reserve.

sqlite needs free space even to delete: a delete appends a tombstone row, and every
commit goes through the write-ahead log first. On a disk that is full to the last byte
nothing could be freed through the API. So the store keeps a reserve file beside the
database, taken while there is room and given back to the file system when the disk
fills, so that deletes and compaction can still commit; the store takes it again once
the disk has room for it.
"""

from __future__ import annotations

import contextlib
import errno
import os

#: errno values of a write that failed for lack of space (a quota counts as a full disk)
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_PROBE_BYTES = 64 << 10


def mount_point(path: str) -> str:
    """The mount point of the file system holding ``path`` (which may not exist yet)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    dev = os.stat(path).st_dev
    while path != "/":
        parent = os.path.dirname(path)
        if os.stat(parent).st_dev != dev:
            break
        path = parent
    return path


def _allocate(path: str, size: int) -> None:
    """Create ``path`` with ``size`` bytes really allocated; OSError if there is no room."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def no_room(folder: str) -> bool:
    """Whether a new file in ``folder`` cannot get space (disk or quota full).

    sqlite reports ENOSPC as "database or disk is full" but an exhausted quota (EDQUOT)
    only as an I/O error; trying to allocate a small probe file tells them apart.
    """
    probe = os.path.join(folder, f".k3p-space-probe-{os.getpid()}")
    try:
        _allocate(probe, _PROBE_BYTES)
    except OSError as exc:
        return exc.errno in NO_SPACE_ERRNOS
    os.unlink(probe)
    return False


class SpaceReserve:
    """A file of ``size`` bytes kept beside a database for the moment its disk fills up."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = max(0, size)

    @property
    def present(self) -> bool:
        """Whether the reserve is held now."""
        try:
            return os.path.getsize(self.path) >= self.size
        except OSError:
            return False

    def take(self) -> bool:
        """Hold the reserve (allocating it if missing); False if the disk has no room for it."""
        if self.size == 0 or self.present:
            return True
        tmp = self.path + ".tmp"
        try:
            _allocate(tmp, self.size)
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS:
                return False
            raise
        os.replace(tmp, self.path)
        return True

    def release(self) -> bool:
        """Give the reserve back to the file system; True if that freed anything."""
        freed = False
        for path in (self.path, self.path + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                freed = self.size > 0
        return freed
