"""`k3p images import`: one line per archive, and a status line on a terminal while it imports."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

images_cli = pytest.importorskip("k3p_plugins.containerd.images_cli")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    socket = tmp_path / "agent" / "containerd" / "containerd.sock"
    socket.parent.mkdir(parents=True)
    socket.touch()

    async def fake_import(sock: str, archive: Path) -> list[str]:
        assert sock == str(socket)
        await asyncio.sleep(1.2)
        return [f"example.com/{archive.stem}:1"]

    monkeypatch.setattr(images_cli, "ctr_import", fake_import)
    (tmp_path / "a.tar").write_bytes(b"x" * 10)
    return tmp_path


def test_import_prints_one_line_per_archive(node: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = images_cli.images_main(["import", str(node / "a.tar"), str(node / "b.zip")], node, out=out, err=err)
    assert code == 1
    assert out.getvalue() == f"{node / 'a.tar'}: example.com/a:1\n"
    assert err.getvalue().startswith(f"k3p images: {node / 'b.zip'}: not an image archive file")


def test_import_shows_progress_on_a_terminal(node: Path) -> None:
    out = Terminal()
    assert images_cli.images_main(["import", str(node / "a.tar")], node, out=out, err=io.StringIO()) == 0
    text = out.getvalue()
    assert "\rimporting a.tar (0.0 MiB) 0s" in text and "\rimporting a.tar (0.0 MiB) 1s" in text
    assert text.endswith(f"\r\033[K{node / 'a.tar'}: example.com/a:1\n")
