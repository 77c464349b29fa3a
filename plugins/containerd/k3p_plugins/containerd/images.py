"""Getting images into containerd without a registry: ``ctr images import`` of local tarballs.

CRI has no import verb, so archives go in through containerd's own API, driven by the
``ctr`` tool that ships with containerd, into the CRI namespace. The CRI plugin notices new
images from containerd's events, a moment after the import.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import structlog

from k3p_plugins.containerd.paths import NAMESPACE

log = structlog.get_logger(__name__)

#: archive names taken from the images folder; compressed ones are unpacked to a temp file first
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_GZIP_SUFFIXES = (".tar.gz", ".tgz")
#: how often a long import reports that it is still working
PROGRESS_EVERY = 15.0
_UNPACKED = re.compile(r"^unpacking (\S+) \((sha256:[0-9a-f]+)\)")


class ImportError_(Exception):
    """ctr could not import an archive."""


def ctr_binary() -> str:
    return shutil.which("ctr") or "ctr"


def ctr_argv(socket: str | Path, *args: str, namespace: str = NAMESPACE) -> list[str]:
    """``ctr`` aimed at one containerd socket and namespace."""
    return [ctr_binary(), "--address", str(socket), "--namespace", namespace, *args]


async def ctr_import(socket: str | Path, archive: str | Path, namespace: str = NAMESPACE,
                     scratch: str | Path | None = None) -> list[str]:
    """Import one archive (OCI layout or ``docker save`` tar); returns the image names it held.

    A gzip-compressed archive is first unpacked into ``scratch`` (default: beside it). A
    big archive takes a while: progress goes to the log every ``PROGRESS_EVERY`` seconds.
    """
    archive = Path(archive)
    if archive.name.endswith(_GZIP_SUFFIXES):
        # ctr reads plain tars only
        with tempfile.TemporaryDirectory(dir=scratch or archive.parent, prefix=".import-") as tmp:
            plain = Path(tmp) / archive.name.removesuffix(".gz").replace(".tgz", ".tar")
            log.info("decompressing image archive", file=str(archive))
            await asyncio.to_thread(_gunzip, archive, plain)
            return await ctr_import(socket, plain, namespace)
    size = archive.stat().st_size
    started = time.monotonic()
    log.info("importing image archive", file=str(archive), size_mib=round(size / 2**20, 1))
    proc = await asyncio.create_subprocess_exec(
        *ctr_argv(socket, "images", "import", str(archive), namespace=namespace),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            log.info("still importing image archive", file=str(archive),
                     elapsed=f"{time.monotonic() - started:.0f}s")

    ticker = asyncio.create_task(progress())
    try:
        out, err = await proc.communicate()
    finally:
        ticker.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        raise ImportError_(f"ctr images import {archive} failed (exit {proc.returncode}): {detail}")
    names = [m.group(1) for line in out.decode(errors="replace").splitlines() if (m := _UNPACKED.match(line))]
    log.info("imported image archive", file=str(archive), images=names,
             seconds=round(time.monotonic() - started, 2))
    return names


def _gunzip(source: Path, dest: Path) -> None:
    with gzip.open(source, "rb") as src, dest.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def archives_in(folder: str | Path) -> list[Path]:
    """The image archives of an airgap images folder, in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))


class ImportMarker:
    """Remembers which archives were imported (by size and mtime) and which names they held."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def _stamp(archive: Path) -> dict:
        st = archive.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def names_if_unchanged(self, archive: Path) -> list[str] | None:
        """The names an earlier import of this very file gave, or None if it is new or changed."""
        entry = self.entries.get(str(archive))
        if not entry:
            return None
        if {k: entry.get(k) for k in ("size", "mtime_ns")} != self._stamp(archive):
            return None
        return list(entry.get("names", []))

    def record(self, archive: Path, names: list[str]) -> None:
        self.entries[str(archive)] = {**self._stamp(archive), "names": names}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
