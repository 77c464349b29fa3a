"""Random requests against the served API: bad input gets a 4xx Status, never a 5xx.

The requests are built from what the server publishes: resources, verbs and subresources
from discovery, field names and types from /openapi/v3. On top of the schema-shaped bodies
go the shapes that broke servers before: deep nesting, lone surrogates, huge and non-finite numbers, wrong
types, YAML anchors, aliases and tags, every patch type and random media types. Each test
is one class of request; a 5xx (other than 503, and kube's 504 for a resourceVersion the
cache has not reached), a request left unanswered (also on a new connection) or a hung one
fails it, printed with the request that caused it. The server must still serve after
every class. The random source is seeded per class: every run sends the same requests.

Writes that would turn every later request into an answer from outside the server
(admission webhooks, API services) and collection deletes of cluster-scoped resources
are not sent: they would end the test's meaning, not find a bug.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from k3p.testing import K3pServer

pytestmark = pytest.mark.slow

NS = "fuzz"
NAMES = ("fuzz-0", "fuzz-1", "keep")
WORKERS = 8
IN_FLIGHT = 24
#: not written to: a random webhook or APIService answers for the server from then on
UNWRITTEN_GROUPS = ("admissionregistration.k8s.io", "apiregistration.k8s.io")
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.fuzz.example.com"},
    "spec": {"group": "fuzz.example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                                                                    "statusReplicasPath": ".status.replicas"}},
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}


@dataclass(frozen=True)
class Resource:
    """One served resource (or subresource) of one group version, from discovery."""

    base: str
    group_version: str
    name: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]
    subresource: str = ""

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]

    def collection(self, ns: str) -> str:
        return f"{self.base}/namespaces/{_quote(ns)}/{self.name}" if self.namespaced else f"{self.base}/{self.name}"

    def item(self, ns: str, name: str) -> str:
        path = f"{self.collection(ns)}/{_quote(name)}"
        return f"{path}/{self.subresource}" if self.subresource else path

    @property
    def writable(self) -> bool:
        return self.group not in UNWRITTEN_GROUPS


def _quote(text: str) -> str:
    # a lone surrogate goes out as the bytes a careless client would send
    return quote(text, safe="", errors="surrogatepass")


@dataclass
class Request:
    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None

    @property
    def url(self) -> str:
        query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in self.params)
        return f"{self.path}?{query}" if query else self.path

    def describe(self) -> str:
        body = "" if self.content is None else f"\n    body ({len(self.content)} bytes): {self.content[:400]!r}"
        return f"{self.method} {self.url}\n    headers: {self.headers}{body}"


@dataclass
class API:
    """What the server serves, and the client and threads that send requests to it."""

    server: K3pServer
    client: httpx.Client
    pool: ThreadPoolExecutor
    resources: list[Resource]
    schemas: dict[str, dict[str, Any]]
    by_kind: dict[tuple[str, str], str]
    sent: int = 0
    #: requests sent again after the server closed their kept-alive connection
    resent: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def schema(self, rt: Resource) -> dict[str, Any]:
        name = self.by_kind.get((rt.group_version, rt.kind))
        return self.schemas.get(name, {}) if name else {}


def _discover(client: httpx.Client) -> list[Resource]:
    versions = [("/api/v1", "v1")]
    for group in client.get("/apis").json()["groups"]:
        versions += [(f"/apis/{v['groupVersion']}", v["groupVersion"]) for v in group["versions"]]
    found = []
    for base, gv in versions:
        for r in client.get(base).json()["resources"]:
            name, _, sub = r["name"].partition("/")
            found.append(Resource(base, gv, name, r["kind"], r["namespaced"], tuple(r["verbs"]), sub))
    return found


def _schemas(client: httpx.Client) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    schemas: dict[str, dict[str, Any]] = {}
    by_kind: dict[tuple[str, str], str] = {}
    for entry in client.get("/openapi/v3").json()["paths"].values():
        doc = client.get(entry["serverRelativeURL"]).json()
        for name, schema in doc.get("components", {}).get("schemas", {}).items():
            schemas[name] = schema
            for gvk in schema.get("x-kubernetes-group-version-kind", ()):
                gv = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
                by_kind.setdefault((gv, gvk["kind"]), name)
    return schemas, by_kind


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[API]:
    server = K3pServer(tmp_path_factory.mktemp("fuzz"))
    pool = ThreadPoolExecutor(WORKERS)
    client = None
    try:
        server.start()
        limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
        client = httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=30, limits=limits)
        seed = [
            ("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CRD),
            (f"/api/v1/namespaces/{NS}/configmaps",
             {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"}, "data": {"a": "b"}}),
            (f"/api/v1/namespaces/{NS}/pods",
             {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fuzz-0"},
              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
            (f"/apis/apps/v1/namespaces/{NS}/deployments",
             {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fuzz-0"},
              "spec": {"selector": {"matchLabels": {"a": "b"}},
                       "template": {"metadata": {"labels": {"a": "b"}},
                                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
        ]
        for path, body in seed:
            client.post(path, json=body).raise_for_status()
        deadline = time.monotonic() + 30
        while client.get("/apis/fuzz.example.com/v1").status_code != 200:
            assert time.monotonic() < deadline, "the custom resource is not served"
            time.sleep(0.2)
        client.post(f"/apis/fuzz.example.com/v1/namespaces/{NS}/widgets", json={
            "apiVersion": "fuzz.example.com/v1", "kind": "Widget", "metadata": {"name": "fuzz-0"},
            "spec": {"replicas": 1}}).raise_for_status()
        schemas, by_kind = _schemas(client)
        yield API(server, client, pool, _discover(client), schemas, by_kind)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if client is not None:
            client.close()
        server.stop()


# --- values --------------------------------------------------------------------------------


class Raw:
    """JSON text written as it is: numbers no encoder writes (1e999, 10**5000, NaN)."""

    def __init__(self, text: str) -> None:
        self.text = text


def dump(value: Any) -> str:
    """JSON with :class:`Raw` pieces; lone surrogates come out as \\udXXX escapes."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + dump(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def plain(value: Any) -> Any:
    """``value`` without :class:`Raw` pieces, for YAML."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


WORDS = ["", "a", "x" * 300, "-", "fuzz-0", "Bad_Name", "a.b", "a/b", "..", "%", " ", "null", "0", "true",
         "\u4e2d\u6587", "na\u00efve", "\U0001f600", "\ud800", "\udfff", "a\nb", "\x00", "\t", '"', "\\", "\u202e",
         "$patch", "*", "~1", "#"]
NUMBERS: list[Any] = [0, -1, 1, 2, 3, 2**31, 2**63, -(2**63) - 1, 2**64, 10**30, 0.5, -0.0, 1e300, 3.14,
                      Raw("1e999"), Raw("-1e999"), Raw("1e-999"), Raw("-0"), Raw("1" + "0" * 400), Raw("NaN"),
                      Raw("Infinity"), Raw("1" * 5000), Raw("0x10"), Raw("01")]
KEYS = ["metadata", "spec", "status", "name", "labels", "data", "items", "$patch", "replicas", "target",
        "selector", "containers", "finalizers", "apiVersion", "kind"]
DEPTHS = [50, 150, 199, 200, 201, 400, 999, 1000, 5000, 20000]

JSON_TYPES = ["application/json", "application/json; charset=utf-8", "application/json;charset=latin-1", "",
              "*/*"]
PATCH_TYPES = ["application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json", "application/apply-patch+yaml",
               "application/apply-patch+cbor"]
OTHER_TYPES = ["application/yaml", "application/vnd.kubernetes.protobuf", "text/plain", "application/xml",
               "multipart/form-data", "application/json-patch+json"]
ACCEPT = ["application/json", "application/json;as=Table;v=v1;g=meta.k8s.io",
          "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
          "application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json", "application/yaml",
          "application/vnd.kubernetes.protobuf", "application/vnd.kubernetes.protobuf;stream=watch", "*/*",
          "text/html", "application/json;as=Nope", ""]
YAML_TRICKS = [
    b"a: &a [*a]\n", b"a: &a {b: *a}\n", b"a: *missing\n", b"a: !!binary aGVsbG8=\n", b"a: 2001-13-45\n",
    b"a: !!timestamp 2001-12-14\n", b"a: !!set {x, y}\n", b"a: !!omap [x: 1, y: 2]\n", b"a: !!float nan\n",
    b"a: .inf\n", b"a: !!python/object/apply:os.system ['true']\n", b"--- a\n--- b\n", b"\ta: 1\n",
    b"? [a]\n: b\n", b"1: x\ntrue: y\nnull: z\n1.5: w\n", b'a: "\\ud800"\n', b"a: 0x_\n", b"a: &x 1\nb: *x\n",
    b"[" * 3000, b"- " * 3000 + b"x\n", b"a:\n" + b"".join(b" " * i + b"b:\n" for i in range(1, 400)),
    b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fuzz-1}\ndata: {a: !!binary aGk=}\n",
]
SELECTORS = ["a=b", "a!=b", "a in (x,y)", "a notin (x)", "!a", "a", "a==b,c", "a in (", "a=b=c", "=", ",",
             "a in ()", "metadata.name=fuzz-0", "metadata.namespace!=x", "spec.nodeName=", "status.phase=Running",
             "x.y=z", "metadata.name", "a" * 70 + "=b"]
INTS = ["-10", "-1", "0", "1", "2", "5", "500", "", "abc", "1.5", "99999999999999999999999", "-9223372036854775809",
        " 3", "0x10"]
QUERY_VALUES: dict[str, list[str]] = {
    "labelSelector": SELECTORS, "fieldSelector": SELECTORS, "limit": INTS, "timeoutSeconds": INTS,
    "gracePeriodSeconds": INTS,
    # a resourceVersion ahead of the cache is waited for (3 s): rare, to keep the rate
    "resourceVersion": ["", "0", "1", "-5", "abc", "1.5"] * 3 + ["99999999999999999999999"],
    "resourceVersionMatch": ["NotOlderThan", "Exact", "", "Nope"], "watch": ["false", "0", "False"],
    "allowWatchBookmarks": ["true", "x"], "sendInitialEvents": ["true", "x"], "pretty": ["true", "x"],
    "includeObject": ["None", "Object", "x"], "fieldManager": ["fuzz", "", "x" * 200, "\u4e2d", "a\nb"],
    "fieldValidation": ["Strict", "Warn", "Ignore", "", "Sometimes"], "dryRun": ["All", "All", "", "Some"],
    "force": ["true", "false", "x"], "propagationPolicy": ["Orphan", "Background", "Foreground", "x"],
    "orphanDependents": ["true", "false"], "continue": [],
}
NAMESPACES = [NS, NS, NS, "default", "ghost"]


def billion_laughs(levels: int) -> bytes:
    lines = [b'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [".encode() + b",".join([f"*a{i - 1}".encode()] * 9) + b"]")
    return b"\n".join(lines) + b"\n"


class Generator:
    """Requests of every class, from a seeded random source (the same requests on every run).

    Bodies follow the served OpenAPI schema of the resource, with wrong types, odd values
    and damage mixed in at every level.
    """

    def __init__(self, api: API, seed: int) -> None:
        self.api = api
        self.rng = random.Random(seed)
        self.targets: dict[tuple[str, bool], list[Resource]] = {}

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, seq: Any) -> Any:
        return self.rng.choice(seq)

    def text(self) -> str:
        if self.chance(0.5):
            return self.pick(WORDS)
        # any code point, lone surrogates and control characters included
        return "".join(chr(self.rng.choice([self.rng.randrange(0x80), self.rng.randrange(0x110000)]))
                       for _ in range(self.rng.randrange(12)))

    def name(self) -> str:
        return self.pick(NAMES) if self.chance(0.7) else (self.text() or "x")

    def scalar(self) -> Any:
        return self.pick([None, True, False, self.pick(NUMBERS), self.rng.randint(-(2**70), 2**70),
                          self.rng.uniform(-1e6, 1e6), self.text(), self.text()])

    def value(self, depth: int = 0) -> Any:
        """Any JSON value, a few levels deep."""
        roll = self.rng.random()
        if depth > 3 or roll < 0.5:
            return self.scalar()
        if roll < 0.75:
            return [self.value(depth + 1) for _ in range(self.rng.randrange(4))]
        return {self.pick(KEYS) if self.chance(0.5) else self.text(): self.value(depth + 1)
                for _ in range(self.rng.randrange(4))}

    def deep(self) -> Raw:
        depth = self.pick(DEPTHS)
        if self.chance(0.5):
            return Raw("[" * depth + "]" * depth)
        return Raw('{"a":' * depth + "1" + "}" * depth)

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        for _ in range(10):
            ref = node.get("$ref") or (node.get("allOf") or [{}])[0].get("$ref")
            if not ref:
                return node
            node = self.api.schemas.get(ref.rsplit("/", 1)[-1], {})
        return node

    def shaped(self, schema: dict[str, Any], depth: int = 0) -> Any:
        """A value of the schema's shape; one time in five of another."""
        node = self._resolve(schema)
        if depth > 5 or node.get("x-kubernetes-preserve-unknown-fields") or self.chance(0.2):
            return self.value(3) if self.chance(0.5) else self.value(depth)
        kind = node.get("type")
        if node.get("x-kubernetes-int-or-string"):
            return self.pick([self.rng.randint(-5, 70000), self.text(), "50%"])
        if kind == "object" or "properties" in node:
            props = node.get("properties") or {}
            if props:
                chosen = self.rng.sample(sorted(props), min(len(props), self.rng.randrange(5)))
                return {k: self.shaped(props[k], depth + 1) for k in chosen}
            extra = node.get("additionalProperties")
            sub = extra if isinstance(extra, dict) else {}
            return {self.text(): self.shaped(sub, depth + 1) for _ in range(self.rng.randrange(3))}
        if kind == "array":
            return [self.shaped(node.get("items") or {}, depth + 1) for _ in range(self.rng.randrange(3))]
        if kind == "integer":
            return self.pick([self.rng.randint(-3, 10), self.pick(NUMBERS)])
        if kind == "number":
            return self.pick(NUMBERS)
        if kind == "boolean":
            return self.chance(0.5)
        if kind == "string":
            if node.get("enum") and self.chance(0.7):
                return self.pick(node["enum"])
            return self.pick([self.text(), "2024-01-01T00:00:00Z", "1Gi", "100m", "TCP", "Always"])
        return self.value(depth)

    def meta(self, name: str | None) -> Any:
        if self.chance(0.1):
            return self.value()
        out: dict[str, Any] = {} if name is None else {"name": name}
        options = {
            "generateName": lambda: self.pick(["fuzz-", "", "Bad_", "x" * 300]),
            "namespace": lambda: self.pick([*NAMESPACES, ""]),
            "labels": lambda: {self.text(): self.text() for _ in range(self.rng.randrange(3))},
            "annotations": lambda: {self.text(): self.text() for _ in range(self.rng.randrange(2))},
            "resourceVersion": lambda: self.pick(["1", "0", "-1", "abc", "99999999999"]),
            "finalizers": lambda: [self.text() for _ in range(self.rng.randrange(2))],
            "ownerReferences": lambda: [self.value(1) for _ in range(self.rng.randrange(2))],
            "uid": self.text, "deletionTimestamp": lambda: "2024-01-01T00:00:00Z",
            "managedFields": lambda: [self.value(1) for _ in range(self.rng.randrange(2))],
        }
        for key in self.rng.sample(sorted(options), self.rng.randrange(3)):
            out[key] = options[key]()
        return out

    def obj(self, rt: Resource, name: str | None) -> Any:
        """An object of the resource's kind (mostly: the wrong kinds and shapes are part of it)."""
        scale = rt.subresource == "scale"
        schema = self.api.schemas.get("io.k8s.api.autoscaling.v1.Scale", {}) if scale else self.api.schema(rt)
        body = self.shaped(schema) if schema else self.value()
        if not isinstance(body, dict) or self.chance(0.1):
            return body
        kind, version = ("Scale", "autoscaling/v1") if scale else (rt.kind, rt.group_version)
        body["apiVersion"] = self.pick([version] * 4 + ["v1", "nope/v9", ""])
        body["kind"] = self.pick([kind] * 4 + ["Secret", ""])
        body["metadata"] = self.meta(name)
        if self.chance(0.15):
            body[self.text()] = self.value()  # an unknown field, named anything
        return body

    def json_patch(self) -> Any:
        paths = ["", "/", "/metadata", "/metadata/labels", "/metadata/labels/a", "/metadata/name", "/spec",
                 "/spec/replicas", "/spec/containers/0", "/spec/containers/-", "/data/a", "/status",
                 "/metadata/finalizers/0", "/a~1b", "/~2", "/0", "/metadata/managedFields"]

        def path() -> str:
            return self.pick(paths) if self.chance(0.8) else "/" + self.text()

        ops = []
        for _ in range(self.rng.randrange(4)):
            if self.chance(0.1):
                ops.append(self.value())
                continue
            op: dict[str, Any] = {"op": self.pick(["add", "remove", "replace", "move", "copy", "test", "nope"]),
                                  "path": path()}
            if self.chance(0.7):
                op["value"] = self.value(1)
            if self.chance(0.3):
                op["from"] = path()
            ops.append(op)
        return ops if self.chance(0.9) else self.value()

    def encoded(self, value: Any, yaml_ok: bool = True) -> bytes:
        """``value`` as request body bytes, sometimes damaged."""
        how = self.pick(["json"] * 10 + ["ascii", "deep", "truncated", "garbage", "raw", "empty", "bom"] * 2
                        + (["yaml", "yaml", "yaml", "trick", "trick", "laughs"] if yaml_ok else []))
        text = dump(value)
        if how == "json":
            return utf8(text)
        if how == "ascii":
            return json.dumps(plain(value), ensure_ascii=True).encode()
        if how == "deep":
            inner = self.deep().text
            return utf8('{"deep":' + inner + "," + text[1:]) if text.startswith("{") and len(text) > 2 else \
                inner.encode()
        if how == "truncated":
            return utf8(text)[: self.rng.randrange(max(len(text), 1))]
        if how == "garbage":
            return utf8(text) + self.rng.randbytes(self.rng.randint(1, 8))
        if how == "yaml":
            return utf8(yaml.safe_dump(plain(value), allow_unicode=True, default_flow_style=self.chance(0.3)))
        if how == "raw":
            return self.rng.randbytes(self.rng.randrange(64))
        if how == "trick":
            return self.pick(YAML_TRICKS)
        if how == "laughs":
            return billion_laughs(self.rng.randint(2, 9))
        if how == "bom":
            return b"\xef\xbb\xbf" + utf8(text)
        return self.pick([b"", b" ", b"null", b"[]", b"{}", b'""', b"0"])

    def continue_token(self) -> str:
        if self.chance(0.3):
            return self.text()
        raw = utf8(dump({"v": self.pick(["meta.k8s.io/v1", "x"]), "rv": self.value(2), "start": self.value(2)})) \
            if self.chance(0.7) else self.rng.randbytes(self.rng.randrange(40))
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def query(self, manager: bool = False) -> list[tuple[str, str]]:
        params = [("fieldManager", "fuzz")] if manager and self.chance(0.7) else []
        for key in self.rng.sample(sorted(QUERY_VALUES), self.rng.randrange(5)):
            if key == "continue":
                params.append((key, self.continue_token()))
            else:
                # any other watch value starts a watch (as in kube), which holds the request open
                odd = key != "watch" and self.chance(0.1)
                params.append((key, self.text() if odd else self.pick(QUERY_VALUES[key])))
        return params

    def where(self, verb: str, subresource: bool = False) -> Resource:
        if (verb, subresource) not in self.targets:
            self.targets[(verb, subresource)] = [
                r for r in self.api.resources if verb in r.verbs and bool(r.subresource) == subresource
                and (verb in ("get", "list") or r.writable)]
        return self.pick(self.targets[(verb, subresource)])

    # --- the request classes ---

    def reads(self) -> Request:
        headers = {"accept": self.pick(ACCEPT)}
        if self.chance(0.5):
            return Request("GET", self.where("list").collection(self.pick(NAMESPACES)), self.query(), headers)
        rt = self.where("get", subresource=self.chance(0.3))
        return Request("GET", rt.item(self.pick(NAMESPACES), self.name()), self.query(), headers)

    def creates(self) -> Request:
        rt = self.where("create", subresource=self.chance(0.2))
        ns = self.pick(NAMESPACES)
        body = self.encoded(self.obj(rt, self.name() if self.chance(0.8) else None))
        path = rt.item(ns, self.name()) if rt.subresource else rt.collection(ns)
        ctype = self.pick(JSON_TYPES * 3 + ["application/yaml", *OTHER_TYPES])
        return Request("POST", path, self.query(), {"content-type": ctype}, body)

    def updates(self) -> Request:
        rt = self.where("update", subresource=self.chance(0.3))
        name = self.name()
        body = self.encoded(self.obj(rt, self.pick([name, name, name, self.name(), None])))
        ctype = self.pick(JSON_TYPES * 3 + ["application/yaml", *OTHER_TYPES])
        return Request("PUT", rt.item(self.pick(NAMESPACES), name), self.query(), {"content-type": ctype}, body)

    def patches(self) -> Request:
        rt = self.where("patch", subresource=self.chance(0.3))
        name = self.name()
        ctype = self.pick(PATCH_TYPES * 3 + OTHER_TYPES)
        if ctype == "application/json-patch+json":
            doc = self.json_patch()
        else:
            doc = self.obj(rt, name if self.chance(0.7) else None)
            if isinstance(doc, dict) and self.chance(0.25):
                doc[self.pick(["$patch", "$retainKeys", "$setElementOrder/containers",
                               "$deleteFromPrimitiveList/finalizers"])] = self.value(1)
        return Request("PATCH", rt.item(self.pick(NAMESPACES), name), self.query(manager=True),
                       {"content-type": ctype}, self.encoded(doc, yaml_ok=ctype.endswith("yaml")))

    def deletes(self) -> Request:
        if self.chance(0.2):
            rt = self.where("deletecollection")
            if rt.namespaced:
                return Request("DELETE", rt.collection(NS), self.query())
        rt = self.where("delete")
        body = headers = None
        if self.chance(0.6):
            keys = ["kind", "apiVersion", "gracePeriodSeconds", "propagationPolicy", "preconditions",
                    "orphanDependents", "dryRun"]
            options = {k: self.value(1) for k in self.rng.sample(keys, self.rng.randrange(4))} \
                if self.chance(0.8) else self.value()
            body = self.encoded(options)
            headers = {"content-type": self.pick(JSON_TYPES + OTHER_TYPES)}
        return Request("DELETE", rt.item(self.pick(NAMESPACES), self.name()), self.query(), headers or {}, body)

    def yaml_bodies(self) -> Request:
        rt = self.where("create")
        roll = self.rng.random()
        if roll < 0.3:
            body = self.pick(YAML_TRICKS)
        elif roll < 0.35:
            body = billion_laughs(self.rng.randint(2, 9))
        else:
            text = yaml.safe_dump(plain(self.obj(rt, self.name())), allow_unicode=True,
                                  default_flow_style=self.chance(0.3))
            body = utf8(text + self.pick(["", "", "x: &a [*a]\n", "y: !!binary aGk=\n", "z: *nope\n"]))
        method = self.pick(["POST", "PUT", "PATCH"])
        ns = self.pick(NAMESPACES)
        ctype = "application/apply-patch+yaml" if method == "PATCH" else \
            self.pick(["application/yaml", "application/yml", "text/yaml"])
        path = rt.collection(ns) if method == "POST" else rt.item(ns, self.name())
        return Request(method, path, [("fieldManager", "fuzz")], {"content-type": ctype}, body)

    def odd_paths(self) -> Request:
        rt = self.pick(self.api.resources)
        # no "watch" segment: /api/v1/watch/... opens a watch (as in kube), which holds the request open
        parts = ["namespaces", NS, "status", "scale", "..", "%2F", "", "proxy", "log", "exec", "binding", "fuzz-0"]
        segments = [self.pick(parts) if self.chance(0.6) else _quote(self.text())
                    for _ in range(self.rng.randrange(6))]
        method = self.pick(["GET", "POST", "PUT", "PATCH", "DELETE"]) if rt.writable else "GET"
        body = self.encoded(self.value()) if method != "GET" else None
        return Request(method, rt.base + "/" + "/".join(segments), self.query(),
                       {"content-type": self.pick(JSON_TYPES + PATCH_TYPES)}, body)


# --- running -------------------------------------------------------------------------------


def _acceptable(response: httpx.Response) -> bool:
    if response.status_code < 500 or response.status_code == 503:
        return True
    if response.status_code == 504:
        # kube's answer for a resourceVersion the cache has not reached
        try:
            causes = response.json().get("details", {}).get("causes", [])
        except ValueError:
            return False
        return any(c.get("reason") == "ResourceVersionTooLarge" for c in causes)
    return False


def _exchange(client: httpx.Client, request: Request) -> httpx.Response:
    with client.stream(request.method, request.url, headers=request.headers, content=request.content) as response:
        response.read()
    return response


def _send(api: API, request: Request) -> None:
    problem = None
    try:
        response = _exchange(api.client, request)
    except httpx.RemoteProtocolError as e:
        # A kept-alive connection the server closed as this request went out on it: sent
        # again on a new connection, as clients do. A repeat answered with "already there"
        # means the first was stored and its answer lost: that is a failure.
        with api.lock:
            api.resent += 1
        try:
            with httpx.Client(base_url=api.server.url, verify=api.server.ssl_context(), timeout=30) as fresh:
                response = _exchange(fresh, request)
        except httpx.TransportError as again:
            problem = f"no answer: {type(e).__name__}: {e}; sent again: {type(again).__name__}: {again}"
        else:
            reason = response.json().get("reason") if response.headers.get("content-type") == "application/json" \
                else None
            if request.method != "GET" and reason in ("AlreadyExists", "Conflict"):
                problem = f"no answer ({e}), and sent again: {response.status_code} {response.text[:300]}"
    except httpx.TransportError as e:
        problem = f"no answer: {type(e).__name__}: {e}"
    if problem is None and not _acceptable(response):
        problem = f"answered {response.status_code}: {response.text[:600]}"
    with api.lock:
        api.sent += 1
        if problem is not None:
            api.failures.append(f"{request.describe()}\n  {problem}")


def _alive(api: API) -> None:
    assert api.server.proc is not None and api.server.proc.poll() is None, api.server.logs()[-3000:]
    assert api.client.get("/readyz").status_code == 200
    assert api.client.get(f"/api/v1/namespaces/{NS}/configmaps/keep").status_code in (200, 404)


def run(api: API, kind: str, count: int, capsys: pytest.CaptureFixture[str]) -> None:
    """Send ``count`` requests of one class, IN_FLIGHT at a time; then the server must still serve."""
    sent_before, failures_before = api.sent, len(api.failures)
    generator = Generator(api, seed=zlib.crc32(kind.encode()))
    make = getattr(generator, kind)
    in_flight: deque[Future[None]] = deque()
    started = time.monotonic()
    for _ in range(count):
        while len(in_flight) >= IN_FLIGHT:
            in_flight.popleft().result()
        in_flight.append(api.pool.submit(_send, api, make()))
    for f in in_flight:
        f.result()
    sent = api.sent - sent_before
    with capsys.disabled():
        print(f"\n{kind}: {sent} requests in {time.monotonic() - started:.1f}s (all classes so far: {api.sent}, "
              f"sent again on a new connection: {api.resent})")
    _alive(api)
    failures = api.failures[failures_before:]
    assert not failures, f"{len(failures)} of {sent} {kind} requests failed:\n" + "\n".join(failures[:15])


def test_reads(api: API, capsys: pytest.CaptureFixture[str]) -> None:
    run(api, "reads", 5000, capsys)


def test_creates(api: API, capsys: pytest.CaptureFixture[str]) -> None:
    run(api, "creates", 4000, capsys)


def test_updates(api: API, capsys: pytest.CaptureFixture[str]) -> None:
    run(api, "updates", 3000, capsys)


def test_patches(api: API, capsys: pytest.CaptureFixture[str]) -> None:
    run(api, "patches", 4400, capsys)


def test_yaml_bodies(api: API, capsys: pytest.CaptureFixture[str]) -> None:
    run(api, "yaml_bodies", 1000, capsys)


def test_deletes(api: API, capsys: pytest.CaptureFixture[str]) -> None:
    run(api, "deletes", 1600, capsys)


def test_odd_paths(api: API, capsys: pytest.CaptureFixture[str]) -> None:
    run(api, "odd_paths", 1200, capsys)
