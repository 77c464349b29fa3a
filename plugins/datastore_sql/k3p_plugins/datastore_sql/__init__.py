"""sqlite (and later postgres/mysql) storage for k3p.

Claims the empty endpoint (the default store, ``<data-dir>/server/db/state.db``) and
``sqlite://PATH`` (``sqlite:///abs/path`` for an absolute path). The returned store
creates the file and its folder on ``start()``; ``await store.backup(FILE)`` copies it
online, also from another process than the server's.
"""

from __future__ import annotations

from typing import Any

from k3p.hookspecs import hookimpl
from k3p_plugins.datastore_sql.sqlite import DEFAULT_DATA_DIR, SQLiteDatastore, path_from_endpoint


@hookimpl
def k3p_datastore(endpoint: str, config: Any) -> SQLiteDatastore | None:
    """A sqlite store for "" and ``sqlite://`` endpoints; None for anything else."""
    path = path_from_endpoint(endpoint, config.get("data_dir") or DEFAULT_DATA_DIR)
    return None if path is None else SQLiteDatastore(path)
