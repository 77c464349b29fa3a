"""``k3p images import FILE...`` and ``k3p images ls``: image archives into this node, without a registry.

The same import the node does at start for ``<data-dir>/agent/images/`` (``ctr images
import`` into the CRI namespace, gzip unpacked first), for a node that is running already.
On a terminal a status line shows how long each archive has been importing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import structlog

from k3p_plugins.containerd.images import ARCHIVE_SUFFIXES, ImportError_, ctr_import


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="k3p images", description="Image archives on this node, without a registry")
    p.add_argument("--runtime-endpoint", default="", help="CRI socket (default: the node's containerd)")
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="Import image archives (docker save, OCI archive; .tar, .tar.gz, .tgz)")
    imp.add_argument("files", nargs="+", metavar="FILE", help="An image archive")
    sub.add_parser("ls", help="List the node's images (as 'k3p crictl images')")
    return p


async def _import_one(socket: str, archive: Path, out: TextIO, tty: bool) -> list[str]:
    size = f"{archive.stat().st_size / 2**20:.1f} MiB"
    task = asyncio.create_task(ctr_import(socket, archive))
    started = time.monotonic()
    while tty and not task.done():
        out.write(f"\rimporting {archive.name} ({size}) {time.monotonic() - started:.0f}s")
        out.flush()
        await asyncio.wait({task}, timeout=1)
    if tty:
        out.write("\r\033[K")
    return await task


def images_main(argv: Sequence[str], data_dir: str | Path, endpoint: str = "", out: TextIO | None = None,
                err: TextIO | None = None) -> int:
    """``k3p images ...``: 0 when every archive went in, 1 when one did not, 2 for bad usage."""
    from k3p_plugins.containerd.cli import _socket, crictl_main

    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(list(argv))
    if args.command == "ls":
        return crictl_main(["images"], data_dir, args.runtime_endpoint or endpoint, out=out, err=err)
    socket = _socket(data_dir, args.runtime_endpoint or endpoint)
    if not Path(socket).exists():
        err.write(f"k3p images: no container runtime at {socket} (is this node's k3p running?)\n")
        return 1
    # the import's own log lines are for the node's log, not this terminal
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    tty = out.isatty()
    code = 0
    for name in args.files:
        archive = Path(name)
        if not archive.is_file() or not archive.name.endswith(ARCHIVE_SUFFIXES):
            err.write(f"k3p images: {name}: not an image archive file ({', '.join(ARCHIVE_SUFFIXES)})\n")
            code = 1
            continue
        try:
            images = asyncio.run(_import_one(socket, archive, out, tty))
        except ImportError_ as e:
            err.write(f"k3p images: {e}\n")
            code = 1
            continue
        out.write(f"{name}: {', '.join(images) or 'no images'}\n")
    return code
