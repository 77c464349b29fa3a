"""How k3p components talk to the cluster: an async API client, informers, work queues, events.

The names below are loaded on first use, so that importing a light submodule (e.g.
:mod:`k3p.client.objects`, which the API server uses for its timestamps) does not import the
HTTP client and the controller machinery with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from k3p.client.api import ApiError, Client, Obj, Resource, key_of, split_key
    from k3p.client.controller import Controller, Requeue
    from k3p.client.events import EventRecorder
    from k3p.client.group import ControllerGroup
    from k3p.client.informer import Informer, InformerFactory
    from k3p.client.workqueue import WorkQueue

#: each public name and the submodule that defines it
_SOURCES = {
    "ApiError": "api",
    "Client": "api",
    "Obj": "api",
    "Resource": "api",
    "key_of": "api",
    "split_key": "api",
    "Controller": "controller",
    "Requeue": "controller",
    "EventRecorder": "events",
    "ControllerGroup": "group",
    "Informer": "informer",
    "InformerFactory": "informer",
    "WorkQueue": "workqueue",
}

__all__ = [
    "ApiError",
    "Client",
    "Controller",
    "ControllerGroup",
    "EventRecorder",
    "Informer",
    "InformerFactory",
    "Obj",
    "Requeue",
    "Resource",
    "WorkQueue",
    "key_of",
    "split_key",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{source}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
