"""Kubernetes ``Status`` errors: every failure the API returns is one of these."""

from __future__ import annotations

from typing import Any

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
    507: "InsufficientStorage",
}


class APIError(Exception):
    """An error the API server answers with a ``Status`` object."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        """The ``Status`` body, its fields in the order and with the omissions of kube-apiserver's
        (Go's struct order, empty strings left out), which clients show their users verbatim."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        details = _ordered(self.details or {}, _DETAILS_ORDER)
        if "causes" in details:
            details["causes"] = [_ordered(c, _CAUSE_ORDER) if isinstance(c, dict) else c for c in details["causes"]]
        if details:
            body["details"] = details
        body["code"] = self.code
        return body


#: metav1.StatusDetails and StatusCause fields in their Go order
_DETAILS_ORDER = ("name", "group", "kind", "uid", "causes", "retryAfterSeconds")
_CAUSE_ORDER = ("reason", "message", "field")


def _ordered(fields: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    """``fields`` in ``order`` (others after), without the empty ones Go's omitempty drops."""
    rank = {k: i for i, k in enumerate(order)}
    return {k: v for k, v in sorted(fields.items(), key=lambda kv: rank.get(kv[0], len(order)))
            if v not in ("", None, 0, [], {})}


def _qualified(group: str, resource: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(group: str, resource: str, name: str) -> APIError:
    return APIError(404, f'{_qualified(group, resource)} "{name}" not found', "NotFound",
                    {"name": name, "group": group, "kind": resource})


def already_exists(group: str, resource: str, name: str) -> APIError:
    return APIError(409, f'{_qualified(group, resource)} "{name}" already exists', "AlreadyExists",
                    {"name": name, "group": group, "kind": resource})


def conflict(group: str, resource: str, name: str, why: str) -> APIError:
    return APIError(
        409,
        f'Operation cannot be fulfilled on {_qualified(group, resource)} "{name}": {why}',
        "Conflict",
        {"name": name, "group": group, "kind": resource},
    )


def invalid(group: str, kind: str, name: str, causes: list[dict[str, str]]) -> APIError:
    """422 Invalid; ``causes`` are ``{"reason", "message", "field"}`` dicts."""
    parts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    qualified = f"{kind}.{group}" if group else kind
    return APIError(422, f'{qualified} "{name}" is invalid: {summary}', "Invalid",
                    {"name": name, "group": group, "kind": kind, "causes": causes})


def bad_request(message: str) -> APIError:
    return APIError(400, message, "BadRequest")


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> APIError:
    return APIError(405, message, "MethodNotAllowed")


def expired(message: str) -> APIError:
    return APIError(410, message, "Expired")


def insufficient_storage(message: str) -> APIError:
    """507: the datastore has no room for the write; nothing was stored.

    Kubernetes has no status of its own for this: on etcd's quota ("mvcc: database space
    exceeded") kube-apiserver answers 500 InternalError. A 500 reads as a server bug and
    clients retry it; 507 Insufficient Storage (RFC 4918) says what is wrong and that
    retrying will not help until space is freed. Clients that only know the code classes
    still see a 5xx server error.
    """
    return APIError(507, message, "InsufficientStorage")
