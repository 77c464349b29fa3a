"""Example k3p plugin.

At server start it writes ``<data-dir>/hello/greeting`` (the text of ``--hello-greeting``)
and runs a child process (``sleep``) under the supervisor, so tests can see that a
third-party plugin's options, components and child processes work like bundled ones.
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
