"""The k3p plugin test harness: the fixtures and helpers k3p's own tests use, for plugin authors too.

Installed as a pytest plugin (entry point ``pytest11``), so a plugin's test suite gets the
fixtures with no setup: ``k3p_server`` (a real server on free ports with a temporary data
dir), ``k3p_server_factory`` (start servers with your own flags), ``k3p_plugin_manager``
(load one plugin in isolation) and the helpers ``wait_for`` and ``free_port``.
"""

from k3p.testing.process import HollowNodes, K3pServer, descendants, free_port, stop_process
from k3p.testing.waiting import async_wait_for, wait_for

__all__ = ["HollowNodes", "K3pServer", "async_wait_for", "descendants", "free_port", "stop_process", "wait_for"]
