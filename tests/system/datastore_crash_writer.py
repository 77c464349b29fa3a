"""Helper of test_datastore_crash: writes to a sqlite datastore until killed.

Usage: python datastore_crash_writer.py DB_PATH TAG

Prints ``ready`` once the store is open, then one line per acknowledged write, flushed
before the next write starts: ``C key revision`` (create), ``U key revision`` (update),
``D key revision`` (delete).
"""

from __future__ import annotations

import asyncio
import sys

import structlog

from k3p_plugins.datastore_sql.sqlite import SQLiteDatastore

WRITERS = 16


def ack(kind: str, key: str, revision: int) -> None:
    sys.stdout.write(f"{kind} {key} {revision}\n")
    sys.stdout.flush()


async def worker(store: SQLiteDatastore, tag: str, w: int) -> None:
    n = 0
    while True:
        key = f"/crash/{tag}/{w}/{n}"
        rev = await store.create(key, f"{tag}-{w}-{n}".encode())
        ack("C", key, rev)
        kv = await store.update(key, b"updated" * (n % 50), rev)
        ack("U", key, kv.mod_revision)
        if n % 3 == 0:
            deleted = await store.delete(key, expected_revision=kv.mod_revision)
            ack("D", key, deleted.mod_revision)
        n += 1


async def main(path: str, tag: str) -> None:
    store = SQLiteDatastore(path, compact_interval=0)  # keep all history for the checks
    await store.start()
    print("ready", flush=True)
    await asyncio.gather(*(worker(store, tag, w) for w in range(WRITERS)))


if __name__ == "__main__":
    # stdout carries only the acknowledgements
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    asyncio.run(main(sys.argv[1], sys.argv[2]))
