"""Reading request bodies and query options, and writing responses, the way Kubernetes does."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import yaml
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from k3p.apiserver import protobuf
from k3p.apiserver.errors import APIError, bad_request

#: kube-apiserver refuses bodies over 3 MiB
MAX_BODY = 3 * 1024 * 1024
#: how deep a body may nest: Go's decoders allow 10000, but every recursive step here
#: (copies, patches, validation, encoding) spends Python stack on each level
MAX_DEPTH = 200
#: values a YAML body may expand to through aliases, beyond one per byte of the body
_ALIAS_ALLOWANCE = 100_000
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

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


def _declared_length(request: Request) -> int | None:
    length = request.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def _too_large() -> APIError:
    return APIError(413, "the server has received too large of a request body", "RequestEntityTooLarge")


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request's body; 413 RequestEntityTooLarge, without reading it, when its Content-Length
    says it is larger than ``limit``, and as soon as more than ``limit`` bytes have arrived."""
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large()
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


async def drain(request: Request) -> None:
    """Read (and drop) what is left of the request body, up to MAX_BODY.

    An answer sent before the client has sent all of its body, on a connection closed with
    that body still unread, is lost: the close resets the connection and the client's TCP
    stack throws the answer away. Go's server reads what is left for the same reason."""
    declared = _declared_length(request)
    if declared is not None and declared > MAX_BODY:
        return  # too big to wait for: answered at once, and the connection is closed unread
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > MAX_BODY:
                return
    except (RuntimeError, ClientDisconnect):
        # RuntimeError: the whole body was read already
        return


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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


def _yaml_scalar(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return loader.construct_scalar(node)  # type: ignore[arg-type]


def _yaml_binary(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return loader.construct_yaml_binary(node).decode("utf-8", "replace")  # type: ignore[arg-type]


class _YAMLLoader(yaml.SafeLoader):
    """Safe YAML read as Kubernetes reads it (into JSON values): timestamps stay strings,
    sets are maps of nulls, an anchor may not contain an alias of itself, and nesting
    stops at MAX_DEPTH before the recursive composer runs out of stack."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._open_anchors: list[str] = []

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # PyYAML scans all of a flow collection's nesting before the composer sees any of
        # it, in time quadratic in the depth: stop before that gets expensive.
        if self.flow_level >= MAX_DEPTH:
            raise _Unusable(f"exceeded max depth of {MAX_DEPTH}")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            if anchor in self._open_anchors:
                raise yaml.YAMLError(f"anchor '{anchor}' value contains itself")
            return super().compose_node(parent, index)
        if len(self._open_anchors) > MAX_DEPTH:
            raise _Unusable(f"exceeded max depth of {MAX_DEPTH}")
        anchor = getattr(self.peek_event(), "anchor", None)
        self._open_anchors.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.pop()


_YAMLLoader.add_constructor("tag:yaml.org,2002:timestamp", _yaml_scalar)
_YAMLLoader.add_constructor("tag:yaml.org,2002:binary", _yaml_binary)
_YAMLLoader.add_constructor("tag:yaml.org,2002:set", lambda loader, node: loader.construct_mapping(node))
_YAMLLoader.add_constructor("tag:yaml.org,2002:omap", lambda loader, node: loader.construct_sequence(node, True))
_YAMLLoader.add_constructor("tag:yaml.org,2002:pairs", lambda loader, node: loader.construct_sequence(node, True))


class _Unusable(ValueError):
    """A decoded body that no JSON value could be: too deep, too many aliases, NaN."""


def _key(key: Any) -> str:
    # YAML keys may be any scalar; JSON (and kube's YAML-to-JSON) has string keys only
    if isinstance(key, str):
        return _LONE_SURROGATE.sub("\ufffd", key)
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


def _key_ok(key: Any) -> bool:
    return type(key) is str and (key.isascii() or not _LONE_SURROGATE.search(key))


def _json_values(doc: Any, max_nodes: int) -> Any:
    """``doc`` as plain JSON values: lone UTF-16 surrogates become U+FFFD (as Go's decoder
    does), keys become strings; :class:`_Unusable` when it nests deeper than MAX_DEPTH,
    has more than ``max_nodes`` values or holds a non-finite number. Iterative: a body
    nested too deep for recursion is found without recursing."""
    holder = [doc]
    stack: list[tuple[Any, Any, int]] = [(holder, 0, 0)]
    seen = 0
    while stack:
        parent, at, depth = stack.pop()
        value = parent[at]
        seen += 1
        if seen > max_nodes:
            raise _Unusable("document contains excessive aliasing")
        if isinstance(value, str):
            if not value.isascii() and _LONE_SURROGATE.search(value):
                parent[at] = _LONE_SURROGATE.sub("\ufffd", value)
        elif isinstance(value, dict):
            if depth >= MAX_DEPTH:
                raise _Unusable(f"exceeded max depth of {MAX_DEPTH}")
            if not all(_key_ok(k) for k in value):
                value = parent[at] = {_key(k): v for k, v in value.items()}
            stack.extend((value, k, depth + 1) for k in value)
        elif isinstance(value, list):
            if depth >= MAX_DEPTH:
                raise _Unusable(f"exceeded max depth of {MAX_DEPTH}")
            stack.extend((value, i, depth + 1) for i in range(len(value)))
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _Unusable(f"json: unsupported value: {'NaN' if math.isnan(value) else value}")
        elif not (value is None or isinstance(value, int)):
            raise _Unusable(f"json: unsupported value of type {type(value).__name__}")
    return holder[0]


def decode(body: bytes, content_type: str, strict: bool = False) -> Any:
    """Parse a JSON or YAML body; 400 BadRequest for malformed input, 415 for other media types.

    What comes back is plain JSON values however the body was written (see :func:`_json_values`).
    """
    if not body.strip():
        raise bad_request("the body of the request was empty")
    if content_type in ("", JSON, "application/json-patch+json", "application/merge-patch+json",
                        "application/strategic-merge-patch+json", "*/*"):
        try:
            hook = (lambda p: _reject_duplicates(p)) if strict else None
            doc = json.loads(body, object_pairs_hook=hook, parse_constant=_reject_constant,
                             parse_float=_finite_float)
            return _json_values(doc, len(body))
        except _Duplicate as e:
            raise bad_request(f'json: duplicate field "{e.key}"') from None
        except RecursionError:
            raise bad_request(f"couldn't get version/kind; json parse error: exceeded max depth of "
                              f"{MAX_DEPTH}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise bad_request(f"couldn't get version/kind; json parse error: {e}") from None
    if content_type == protobuf.MEDIA_TYPE:
        try:
            return _json_values(protobuf.decode_request(body), len(body))
        except protobuf.ProtobufUnavailable as e:
            raise APIError(415, f"protobuf request bodies are not available on this server ({e}); send "
                                "application/json", "UnsupportedMediaType") from None
        except (protobuf.ProtobufError, _Unusable) as e:
            raise bad_request(f"cannot decode the protobuf body: {e}") from None
    if content_type in (YAML, "application/apply-patch+yaml", "application/yml", "text/yaml"):
        try:
            doc = yaml.load(body, Loader=_YAMLLoader)  # a SafeLoader underneath
            return _json_values(doc, len(body) + _ALIAS_ALLOWANCE)
        except RecursionError:
            raise bad_request(f"error converting YAML to JSON: yaml: exceeded max depth of {MAX_DEPTH}") from None
        except _Unusable as e:
            raise bad_request(f"error converting YAML to JSON: yaml: {e}") from None
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
            # PyYAML raises plain ValueErrors for some bad scalars (a timestamp's month 13)
            raise bad_request(f"error converting YAML to JSON: yaml: {str(e).splitlines()[0]}") from None
    raise APIError(415, f'the body of the request was in an unknown format - accepted media types include: '
                        f'application/json, application/yaml (got "{content_type}")', "UnsupportedMediaType")


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # kube-apiserver's JSON encoder ends every body with a newline; clients print it as is
    body = doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode() + b"\n"
    return Response(body, status_code=status, media_type=JSON, headers=headers)


#: what Go's encoding/json escapes in strings (its HTML-safe default); everything else
#: non-ASCII it writes as UTF-8
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                             "\u2028": "\\u2028", "\u2029": "\\u2029"})


def go_json(doc: Any) -> bytes:
    """``doc`` encoded byte for byte as kube-apiserver's JSON encoder writes it.

    Used for Status bodies, which clients show their users verbatim; other bodies differ
    from it only in the escaping of non-ASCII and HTML characters, which no client sees.
    """
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).translate(_GO_ESCAPES)
    return text.encode() + b"\n"


def status_response(error: APIError, headers: dict[str, str] | None = None) -> Response:
    retry_after = (error.details or {}).get("retryAfterSeconds")
    if retry_after and (error.code == 429 or error.code >= 500):
        # as kube-apiserver: clients (client-go) wait this long and retry on their own
        headers = {**(headers or {}), "Retry-After": str(retry_after)}
    return json_response(go_json(error.status()), error.code, headers)


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
        value = int(raw)
    except ValueError:
        raise bad_request(f"invalid value for {name}: {raw!r} is not an integer") from None
    if not -(1 << 63) <= value < 1 << 63:
        # Go parses these options as int64
        raise bad_request(f'invalid value for {name}: strconv.ParseInt: parsing "{raw}": value out of range')
    return value


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
