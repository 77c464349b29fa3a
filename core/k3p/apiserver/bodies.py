"""Reading request bodies and query options, and writing responses, the way Kubernetes does."""

from __future__ import annotations

import json
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import Response

from k3p.apiserver import protobuf
from k3p.apiserver.errors import APIError, bad_request

#: kube-apiserver refuses bodies over 3 MiB
MAX_BODY = 3 * 1024 * 1024

JSON = "application/json"
YAML = "application/yaml"
PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+cbor": None,
}


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request's body; 413 RequestEntityTooLarge, without reading it, when its Content-Length
    says it is larger than ``limit``, and as soon as more than ``limit`` bytes have arrived."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise APIError(413, "the server has received too large of a request body", "RequestEntityTooLarge")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, "the server has received too large of a request body", "RequestEntityTooLarge")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def decode(body: bytes, content_type: str, strict: bool = False) -> Any:
    """Parse a JSON or YAML body; 400 BadRequest for malformed input, 415 for other media types."""
    if not body.strip():
        raise bad_request("the body of the request was empty")
    if content_type in ("", JSON, "application/json-patch+json", "application/merge-patch+json",
                        "application/strategic-merge-patch+json", "*/*"):
        try:
            if strict:
                return json.loads(body, object_pairs_hook=lambda p: _reject_duplicates(p))
            return json.loads(body)
        except _Duplicate as e:
            raise bad_request(f'json: duplicate field "{e.key}"') from None
        except (ValueError, UnicodeDecodeError) as e:
            raise bad_request(f"couldn't get version/kind; json parse error: {e}") from None
    if content_type == protobuf.MEDIA_TYPE:
        try:
            return protobuf.decode_request(body)
        except protobuf.ProtobufUnavailable as e:
            raise APIError(415, f"protobuf request bodies are not available on this server ({e}); send "
                                "application/json", "UnsupportedMediaType") from None
        except protobuf.ProtobufError as e:
            raise bad_request(f"cannot decode the protobuf body: {e}") from None
    if content_type in (YAML, "application/apply-patch+yaml", "application/yml", "text/yaml"):
        try:
            return yaml.safe_load(body)
        except yaml.YAMLError as e:
            raise bad_request(f"error converting YAML to JSON: yaml: {str(e).splitlines()[0]}") from None
    raise APIError(415, f'the body of the request was in an unknown format - accepted media types include: '
                        f'application/json, application/yaml (got "{content_type}")', "UnsupportedMediaType")


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def status_response(error: APIError, headers: dict[str, str] | None = None) -> Response:
    retry_after = (error.details or {}).get("retryAfterSeconds")
    if retry_after and (error.code == 429 or error.code >= 500):
        # as kube-apiserver: clients (client-go) wait this long and retry on their own
        headers = {**(headers or {}), "Retry-After": str(retry_after)}
    return json_response(error.status(), error.code, headers)


def success_status(details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details:
        body["details"] = details
    return body


def query_bool(query: dict[str, str], name: str) -> bool:
    value = query.get(name)
    return value is not None and value.lower() not in ("", "0", "false")


def query_int(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"invalid value for {name}: {raw!r} is not an integer") from None


def dry_run(query: dict[str, str], request: Request) -> bool:
    values = request.query_params.getlist("dryRun")
    for v in values:
        if v != "All":
            raise bad_request(f'dryRun: Unsupported value: "{v}": supported values: "All"')
    return bool(values)


def field_validation(query: dict[str, str]) -> str:
    mode = query.get("fieldValidation", "") or "Warn"
    if mode not in ("Strict", "Warn", "Ignore"):
        raise bad_request(
            f'fieldValidation: Unsupported value: "{mode}": supported values: "Ignore", "Strict", "Warn"'
        )
    return mode
