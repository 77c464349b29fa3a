"""How k3p components talk to the cluster: an async API client, informers, work queues, events."""

from k3p.client.api import ApiError, Client, Obj, Resource, key_of, split_key
from k3p.client.controller import Controller, Requeue
from k3p.client.events import EventRecorder
from k3p.client.group import ControllerGroup
from k3p.client.informer import Informer, InformerFactory
from k3p.client.workqueue import WorkQueue

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
