"""The default sqlite datastore through k3p server: online backup, restore, corrupt files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from k3p.testing import K3pServer


def k3p(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "k3p", *args], capture_output=True, text=True, timeout=60)


def test_online_backup_restores_into_a_new_server(k3p_server_factory, tmp_path) -> None:
    server = k3p_server_factory()
    server.kubectl("create", "-f", "-", check=True,
                   input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: saved}\ndata: {k: v}\n")
    backup = tmp_path / "backup.db"
    out = k3p("datastore", "backup", str(backup), "--config", str(server.config_file),
              "--data-dir", str(server.data_dir))
    assert out.returncode == 0, out.stderr
    assert backup.exists()
    # Restore: a fresh data dir whose state.db is the backup, as the docs say.
    restored = K3pServer(tmp_path / "restored")
    db = restored.data_dir / "server" / "db"
    db.mkdir(parents=True)
    shutil.copy(backup, db / "state.db")
    try:
        restored.start()
        got = json.loads(restored.kubectl("get", "cm", "saved", "-o", "json", check=True).stdout)
        assert got["data"] == {"k": "v"}
    finally:
        restored.stop()


def test_backup_without_a_datastore_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text("")
    out = k3p("datastore", "backup", str(tmp_path / "b.db"), "--config", str(tmp_path / "c.yaml"),
              "--data-dir", str(tmp_path / "none"))
    assert out.returncode == 1
    assert out.stderr.startswith("k3p: error: no datastore to back up") and "state.db" in out.stderr


def test_corrupt_database_stops_the_server_with_the_file_named(tmp_path) -> None:
    server = K3pServer(tmp_path)
    db = server.data_dir / "server" / "db"
    db.mkdir(parents=True)
    (db / "state.db").write_bytes(b"this is not a database" * 100)
    before = (db / "state.db").read_bytes()
    server.start(wait=False)
    try:
        code = server.wait_exit(30)
    finally:
        server.stop()
    assert code != 0
    assert str(db / "state.db") in server.logs()
    assert (db / "state.db").read_bytes() == before  # never reset silently
