"""Recording Kubernetes Events (what ``kubectl describe`` shows under Events)."""

from __future__ import annotations

import hashlib
from typing import Any

import structlog

from k3p.client.api import ApiError, Client, Obj
from k3p.client.objects import format_time
from k3p.client.resources import EVENTS

log = structlog.get_logger(__name__)


class EventRecorder:
    """Emits core/v1 Events for objects; repeats of the same event bump its count, as kube does."""

    def __init__(self, client: Client, component: str, host: str = "") -> None:
        self.client = client
        self.component = component
        self.host = host
        #: repeats seen per event name (kube's recorder also counts locally: nodes may not read events)
        self._counts: dict[str, int] = {}

    async def emit(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        """Record ``reason``/``message`` (type Normal or Warning) about ``obj``; never raises."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        digest = hashlib.sha1(f"{meta.get('uid')}{reason}{message}{self.component}".encode()).hexdigest()[:10]
        name = f"{meta.get('name')}.{digest}"
        now = format_time()
        involved: dict[str, Any] = {"kind": obj.get("kind"), "namespace": meta.get("namespace"),
                                    "name": meta.get("name"), "uid": meta.get("uid"),
                                    "apiVersion": obj.get("apiVersion"),
                                    "resourceVersion": meta.get("resourceVersion")}
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {k: v for k, v in involved.items() if v},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": self.component, **({"host": self.host} if self.host else {})},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": self.component, "reportingInstance": self.host or self.component,
        }
        try:
            try:
                await self.client.create(EVENTS, event, namespace)
            except ApiError as e:
                if not e.already_exists:
                    raise
                count = self._counts.get(name, 1) + 1
                self._counts[name] = count
                if len(self._counts) > 4096:
                    self._counts.clear()
                await self.client.patch(EVENTS, name, {"count": count, "lastTimestamp": now}, namespace)
        except Exception as e:  # events are best effort: never fail the caller's work
            log.debug("event not recorded", reason=reason, error=str(e))
