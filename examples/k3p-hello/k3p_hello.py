"""Example k3p plugin.

At server start it writes ``<data-dir>/hello/greeting`` (the text of ``--hello-greeting``)
and runs a child process (``sleep``) under the supervisor, so tests can see that a
third-party plugin's options, components and child processes work like bundled ones.
On every node it keeps ``<data-dir>/hello/node-<name>`` while its node component runs,
and ``k3p_node_cleanup`` (called where the plugin is disabled) writes
``<data-dir>/hello/cleaned-<name>``, so tests can follow a node's plugins.
"""

from __future__ import annotations

import asyncio
import shutil

from k3p import hookimpl
from k3p.supervisor import ProcessComponent, TaskComponent


@hookimpl
def k3p_add_options(schema):
    schema.add("hello-greeting", default="hello from a plugin", commands=("server",),
               help="Text the hello plugin writes to <data-dir>/hello/greeting")


@hookimpl
def k3p_server_components(ctx):
    async def greet(ready):
        folder = ctx.data_dir / "hello"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "greeting").write_text(ctx.config.get("hello_greeting"))
        ready()
        await asyncio.Event().wait()

    return [
        TaskComponent("hello", greet, requires=["apiserver"]),
        ProcessComponent("hello-sleeper", [shutil.which("sleep") or "/bin/sleep", "3600"], requires=["hello"]),
    ]


@hookimpl
def k3p_agent_components(ctx):
    marker = ctx.data_dir / "hello" / f"node-{ctx.node_name}"

    async def mark(ready):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(ctx.node_name)
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            marker.unlink(missing_ok=True)

    return [TaskComponent(f"hello-{ctx.node_name}", mark)]


@hookimpl
def k3p_node_cleanup(ctx):
    folder = ctx.data_dir / "hello"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"cleaned-{ctx.node_name}").write_text("disabled here")
