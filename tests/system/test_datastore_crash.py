"""Acknowledged sqlite writes survive kill -9 of the writing process."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from k3p_plugins.datastore_sql.sqlite import SQLiteDatastore

WRITER = Path(__file__).with_name("datastore_crash_writer.py")
KILLS = 20


def _run_and_kill(db: Path, tag: str, rng: random.Random) -> list[tuple[str, str, int]]:
    """Start a writer, SIGKILL it at a random moment, return the writes it acknowledged."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(db), tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 0.4))  # sometimes while it opens (and recovers) the file
        else:
            assert proc.stdout is not None
            while (line := proc.stdout.readline()) != b"ready\n":
                assert line, "the writer exited before it was ready"
            time.sleep(rng.uniform(0.02, 0.5))
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    acked = []
    for line in out.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in "CUD":
            acked.append((parts[0], parts[1], int(parts[2])))
    return acked


async def _check(db: Path, acked: list[tuple[str, str, int]]) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    store = SQLiteDatastore(str(db), compact_interval=0)
    await store.start()
    try:
        if acked:
            assert await store.current_revision() >= max(rev for _, _, rev in acked)
        for kind, key, rev in acked:
            kv = await store.get(key, revision=rev)
            if kind == "D":
                assert kv is None, f"acknowledged delete of {key} at {rev} is lost"
                assert await store.get(key, revision=rev - 1) is not None
            else:
                assert kv is not None and kv.mod_revision == rev, f"acknowledged write {kind} {key} {rev} lost"
                if kind == "C":
                    assert kv.create_revision == rev
    finally:
        await store.close()


@pytest.mark.slow
async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    rng = random.Random()
    acked: list[tuple[str, str, int]] = []
    for i in range(KILLS):
        got = _run_and_kill(db, f"run{i}", rng)
        acked.extend(got)
        await _check(db, acked)
    assert len(acked) > 1000, "the writers hardly wrote anything: the test proves little"
