"""Recording Kubernetes Events (what ``kubectl describe`` shows under Events)."""

from __future__ import annotations

import hashlib
from typing import Any

import structlog

from k3p.client.api import ApiError, Client, Obj
from k3p.client.event_correlator import AGGREGATED_PREFIX, EventCorrelator
from k3p.client.objects import format_time
from k3p.client.resources import EVENTS

log = structlog.get_logger(__name__)


class EventRecorder:
    """Emits core/v1 Events for objects; repeats of the same event bump its count, and
    floods are dropped or aggregated (:mod:`k3p.client.event_correlator`), as kube does."""

    def __init__(self, client: Client, component: str, host: str = "") -> None:
        self.client = client
        self.component = component
        self.host = host
        #: repeats seen per event name (kube's recorder also counts locally: nodes may not read events)
        self._counts: dict[str, int] = {}
        self.correlator = EventCorrelator()

    async def emit(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        """Record ``reason``/``message`` (type Normal or Warning) about ``obj``; never raises."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        source = (self.component, self.host, str(obj.get("kind")), str(meta.get("namespace")),
                  str(meta.get("name")), str(meta.get("uid")))
        if not self.correlator.allow(source):
            log.debug("event dropped: too many for this object", reason=reason, name=meta.get("name"))
            return
        message = self.correlator.message((*source, type_, reason), message)
        # an aggregated event is one object whatever its latest message, so its count goes up
        identity = "aggregated" if message.startswith(AGGREGATED_PREFIX) else message
        digest = hashlib.sha1(f"{meta.get('uid')}{reason}{identity}{self.component}".encode()).hexdigest()[:10]
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
            if name in self._counts and await self._repeat(name, namespace, now, message):
                return
            try:
                await self.client.create(EVENTS, event, namespace)
                self._remember(name, 1)
            except ApiError as e:
                if not e.already_exists:
                    raise
                self._remember(name, 1)
                await self._repeat(name, namespace, now, message)
        except Exception as e:  # events are best effort: never fail the caller's work
            log.debug("event not recorded", reason=reason, error=str(e))

    def _remember(self, name: str, count: int) -> None:
        self._counts[name] = count
        if len(self._counts) > 4096:
            self._counts.clear()

    async def _repeat(self, name: str, namespace: str, now: str, message: str) -> bool:
        """Count one more of a known event with a patch; False if it is gone (expired)."""
        count = self._counts.get(name, 1) + 1
        try:
            await self.client.patch(EVENTS, name, {"count": count, "lastTimestamp": now, "message": message},
                                    namespace)
        except ApiError as e:
            if e.not_found:
                self._counts.pop(name, None)
                return False
            raise
        self._remember(name, count)
        return True
