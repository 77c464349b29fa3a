"""Applying the proxy's table with the ``nft`` command, one atomic transaction per sync.

``nft -f -`` reads a script from stdin and commits it as a single transaction: packets
see either the old rules or the new ones, never a mix. The command is a prefix that
callers may change, e.g. ``("ip", "netns", "exec", "NS", "nft")`` to work inside a
network namespace.

An update keeps the table and its ClientIP affinity sets (and what they remember): the
transaction flushes the existing chains and maps, deletes the chains, maps and sets the
new ruleset no longer has, then declares the new table. If the kernel refuses that (an
object whose type changed, an old kernel still holding a reference), the table is
replaced whole instead: deleted and created again in one transaction.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from k3p_plugins.kube_proxy.rules import FAMILY, TABLE, Ruleset

log = structlog.get_logger(__name__)

NftCommand = Sequence[str]
_TABLE = f"{FAMILY} {TABLE}"


class NftError(Exception):
    """``nft`` failed; the message holds its standard error."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


@dataclass
class TableContents:
    """The names of the chains, maps and sets the table holds now."""

    chains: set[str] = field(default_factory=set)
    maps: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)


def _absent(stderr: str) -> bool:
    # nft says ENOENT and echoes the command naming the table; a missing network namespace
    # or binary also says ENOENT, but without the table's name.
    return "No such file or directory" in stderr and f"table {_TABLE}" in stderr


async def _run(nft_command: NftCommand, args: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
    # The script goes in through an unlinked temporary file, not a pipe: under uvloop, feeding a
    # pipe races with the child's exit ("unable to perform operation on <WriteUnixTransport
    # closed=True>") and the sync crashed with it.
    with tempfile.TemporaryFile() as script:
        if stdin is not None:
            script.write(stdin.encode())
            script.seek(0)
        try:
            proc = await asyncio.create_subprocess_exec(
                *nft_command, *args,
                stdin=script if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:  # nft (or the namespace wrapper) is not installed
            raise NftError(f"cannot run {nft_command[0]}: {e}", str(e)) from e
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace").strip()


async def list_table(nft_command: NftCommand = ("nft",)) -> TableContents | None:
    """What the proxy's table holds now (set elements not listed), or None if it does not exist."""
    code, out, err = await _run(nft_command, ["-j", "-t", "list", "table", *_TABLE.split()])
    if code != 0:
        if _absent(err):
            return None
        raise NftError(f"nft list table failed ({code}): {err}", err)
    contents = TableContents()
    for item in json.loads(out).get("nftables", []):
        for kind, bucket in (("chain", contents.chains), ("map", contents.maps), ("set", contents.sets)):
            if kind in item:
                bucket.add(item[kind]["name"])
    return contents


def update_script(ruleset: Ruleset, current: TableContents | None) -> str:
    """The transaction that turns the table from ``current`` into ``ruleset``, keeping affinity sets."""
    if current is None:
        return ruleset.text
    lines = [f"add table {_TABLE}"]
    lines += [f"flush chain {_TABLE} {name}" for name in sorted(current.chains)]
    lines += [f"flush map {_TABLE} {name}" for name in sorted(current.maps)]
    # Rules referring to stale objects were flushed above, in the same transaction.
    lines += [f"delete chain {_TABLE} {name}" for name in sorted(current.chains - set(ruleset.chains))]
    lines += [f"delete map {_TABLE} {name}" for name in sorted(current.maps - set(ruleset.maps))]
    lines += [f"delete set {_TABLE} {name}" for name in sorted(current.sets - set(ruleset.sets))]
    return "\n".join(lines) + "\n" + ruleset.text


def replace_script(ruleset: Ruleset) -> str:
    """The transaction that deletes the table (if any) and creates it anew."""
    # "add" first so that "delete" cannot fail on a missing table.
    return f"add table {_TABLE}\ndelete table {_TABLE}\n{ruleset.text}"


async def run_script(script: str, nft_command: NftCommand = ("nft",)) -> None:
    """Commit ``script`` with ``nft -f -`` as one transaction; NftError with nft's stderr on failure."""
    code, _, err = await _run(nft_command, ["-f", "-"], script)
    if code != 0:
        raise NftError(f"nft -f failed ({code}): {err}", err)


async def apply_ruleset(ruleset: Ruleset, nft_command: NftCommand = ("nft",)) -> None:
    """Make the table exactly ``ruleset`` in one transaction, keeping affinity state if it can."""
    current = await list_table(nft_command)
    try:
        await run_script(update_script(ruleset, current), nft_command)
    except NftError as e:
        if current is None:
            raise
        log.info("in-place update of the proxy table refused; replacing it", component="kube-proxy",
                 error=e.stderr[-500:])
        await run_script(replace_script(ruleset), nft_command)


async def table_exists(nft_command: NftCommand = ("nft",)) -> bool:
    """Whether the proxy's table is in the ruleset (cheap: lists table names only)."""
    code, out, err = await _run(nft_command, ["list", "tables", FAMILY])
    if code != 0:
        raise NftError(f"nft list tables failed ({code}): {err}", err)
    return f"table {_TABLE}" in out.splitlines()


def remove_proxy_rules(nft_command: NftCommand = ("nft",)) -> bool:
    """Delete the proxy's table if present; True if it was there and is gone.

    For nodes where the proxy is disabled: its rules must not outlive it. Without an
    ``nft`` command there is nothing this could have installed, so that is False too.
    """
    try:
        result = subprocess.run([*nft_command, "delete", "table", *_TABLE.split()], capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, check=False)
    except OSError as e:
        log.debug("nft not available; no proxy rules to remove", component="kube-proxy", error=str(e))
        return False
    if result.returncode == 0:
        log.info("proxy rules removed", component="kube-proxy", table=_TABLE)
        return True
    if _absent(result.stderr):
        return False
    raise NftError(f"nft delete table failed ({result.returncode}): {result.stderr.strip()}", result.stderr)
