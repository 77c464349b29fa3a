"""pytest fixtures for k3p and its plugins (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from k3p.plugins import PluginManager
from k3p.testing.process import K3pServer

#: an entry-point group with no members: plugins loaded in isolation come only from ``extra``
_ISOLATED_GROUP = "k3p.plugins.isolated"


@pytest.fixture
def k3p_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., K3pServer]]:
    """Start ``k3p server`` processes: ``factory(args=["--disable", "x"], config="...")``.

    Each gets its own temp dir, data dir and free ports, and is stopped (with anything it
    started) at the end of the test. ``agent=True`` also runs the server's own node (a
    container runtime plugin must be enabled).
    """
    started: list[K3pServer] = []

    def factory(args: Sequence[str] = (), config: str = "", wait: bool = True,
                env: dict[str, str] | None = None, workdir: Path | None = None, agent: bool = False) -> K3pServer:
        server = K3pServer(workdir or tmp_path_factory.mktemp("k3p"), args=args, config=config, env=env,
                           agent=agent)
        started.append(server)
        return server.start(wait=wait)

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def k3p_server(k3p_server_factory: Callable[..., K3pServer]) -> K3pServer:
    """A running ``k3p server`` with default settings on a free port."""
    return k3p_server_factory()


@pytest.fixture
def k3p_plugin_manager() -> Callable[..., PluginManager]:
    """Load plugin objects in isolation: ``k3p_plugin_manager(myplugin=module)``.

    No installed plugin is loaded beside them, so hooks can be called and checked alone:
    ``pm.hook.k3p_datastore(endpoint="x://", config=...)``.
    """

    def make(**plugins: object) -> PluginManager:
        return PluginManager(group=_ISOLATED_GROUP, extra=plugins)

    return make
