"""kube-apiserver's ``--max-requests-inflight`` and ``--max-mutating-requests-inflight``.

Requests being served at once are counted in two pools, read-only (get, list, watch)
and mutating (everything else); a request that finds its pool full is answered 429
with ``Retry-After: 1`` at once, as upstream's max-in-flight filter does (upstream
writes the message as plain text; here it is the same message in a ``Status``).
Long-running requests are not counted: watches, and the proxy, exec, attach,
portforward and log subresources (upstream's long-running check), and every WebSocket.

Never refused, and not counted when their pool is full:

- ``system:masters``, exempt upstream too ("so powerful that they should always get an
  answer. It's a super-admin or a loopback connection"); k3p's own core components act
  as ``system:masters`` over loopback;
- the controller manager and the scheduler (``system:kube-controller-manager``,
  ``system:kube-scheduler``), whose certificates never leave a server: when clients
  fill the server, the cluster's own controllers must still make progress. Upstream
  gets the same effect from priority and fairness, which gives them a level of their own;
- the health probes ``/healthz``, ``/livez`` and ``/readyz``, which priority and fairness
  exempts: a busy server must not look dead to whatever restarts it.

Only a client certificate can make a request exempt (no bearer token carries those
users or groups), so the decision needs nothing but the certificate the TLS handshake
already verified.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

import structlog

from k3p.apiserver.auth import ANONYMOUS
from k3p.apiserver.bodies import status_response
from k3p.apiserver.errors import APIError
from k3p.apiserver.request_info import RequestInfoError, UserInfo, request_attributes
from k3p.config import Config, ConfigError

READ_ONLY_VERBS = frozenset({"get", "list", "watch"})
LONG_RUNNING_VERBS = frozenset({"watch", "proxy"})
LONG_RUNNING_SUBRESOURCES = frozenset({"attach", "exec", "proxy", "log", "portforward"})
PROBES = frozenset({"/healthz", "/livez", "/readyz"})
EXEMPT_GROUPS = frozenset({"system:masters"})
EXEMPT_USERS = frozenset({"system:kube-controller-manager", "system:kube-scheduler"})
MESSAGE = "Too many requests, please try again later."
RETRY_AFTER = 1
_REFUSAL_LOG_INTERVAL = 10.0

log = structlog.get_logger(__name__)


def classify(method: str, path: str, query_string: bytes) -> str | None:
    """``"readonly"`` or ``"mutating"``: the pool a request counts in; None: not counted."""
    if len(path) > 1:
        path = path.rstrip("/")
    if path in PROBES or path.startswith(tuple(p + "/" for p in PROBES)):
        return None
    query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    try:
        attrs = request_attributes(method, path, query, ANONYMOUS)
    except RequestInfoError:
        return "readonly"
    if attrs.verb in LONG_RUNNING_VERBS or attrs.subresource in LONG_RUNNING_SUBRESOURCES:
        return None
    return "readonly" if attrs.verb in READ_ONLY_VERBS else "mutating"


def exempt(user: UserInfo | None) -> bool:
    """Whether ``user`` (from the client certificate) is always served."""
    return user is not None and (user.name in EXEMPT_USERS or not EXEMPT_GROUPS.isdisjoint(user.groups))


class MaxInFlight:
    """ASGI middleware counting the requests in flight; a limit of 0 means no limit."""

    def __init__(self, app: Any, max_requests_inflight: int, max_mutating_requests_inflight: int) -> None:
        self.app = app
        self.limits = {"readonly": max_requests_inflight, "mutating": max_mutating_requests_inflight}
        self.inflight = {"readonly": 0, "mutating": 0}
        self._refused = {"readonly": 0, "mutating": 0}
        self._refusals_logged = 0.0

    @classmethod
    def from_config(cls, app: Any, config: Config) -> MaxInFlight:
        """``app`` behind the limits the server's options set; ConfigError for a negative one."""
        values = []
        for name in ("max_requests_inflight", "max_mutating_requests_inflight"):
            value = config.get(name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"invalid value for {name.replace('_', '-')}: {value!r} (a count, 0 for no limit)")
            values.append(value)
        return cls(app, *values)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pool = classify(scope["method"], scope["path"], scope.get("query_string", b""))
        limit = self.limits[pool] if pool else 0
        if not limit:
            await self.app(scope, receive, send)
            return
        if self.inflight[pool] >= limit:
            if exempt(scope.get("extensions", {}).get("k3p.client_cert_user")):
                await self.app(scope, receive, send)
                return
            self._refusal(pool)
            error = APIError(429, MESSAGE, "TooManyRequests", {"retryAfterSeconds": RETRY_AFTER})
            response = status_response(error)
            await response(scope, receive, send)
            return
        self.inflight[pool] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight[pool] -= 1

    def _refusal(self, pool: str) -> None:
        # one summary line every few seconds while requests are being refused, not one per request
        self._refused[pool] += 1
        now = time.monotonic()
        if now - self._refusals_logged >= _REFUSAL_LOG_INTERVAL:
            self._refusals_logged = now
            log.warning("requests refused: too many in flight", refused_readonly=self._refused["readonly"],
                        refused_mutating=self._refused["mutating"], max_requests_inflight=self.limits["readonly"],
                        max_mutating_requests_inflight=self.limits["mutating"])
            self._refused = {"readonly": 0, "mutating": 0}
