"""The ingress routing table: which backend answers a (host, path), built from cluster objects.

Pure functions of Ingresses, IngressClasses, Services, EndpointSlices and TLS Secrets: no
I/O, so the rules of the Ingress API (host wildcards, path types and their precedence,
default backends, service ports by name or number) are tested without a cluster. A table
is never changed once built; the proxy swaps in a new one when the cluster changes.

Matching follows the Ingress specification:

* hosts: an exact host first, then a ``*.`` wildcard (which stands for exactly one DNS
  label), then the rules without a host; the first of these whose paths match wins.
* paths: ``Exact`` is a case-sensitive comparison; ``Prefix`` compares whole path elements
  (``/foo`` matches ``/foo`` and ``/foo/bar``, never ``/foobar``; a trailing slash is
  ignored); ``ImplementationSpecific`` is treated as ``Prefix``. The longest match wins
  and an exact path beats a prefix of the same length.
* then the ``spec.defaultBackend`` of a served Ingress, else no backend (404).

When several Ingresses claim the same host and path (or a default backend, or a TLS host),
the one created first wins, as in other controllers.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = Mapping[str, Any]

#: the IngressClass ``spec.controller`` this proxy implements
CONTROLLER = "traefik.io/ingress-controller"
#: the IngressClass the plugin installs
CLASS_NAME = "traefik"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
#: the annotation Ingresses used before ``spec.ingressClassName`` existed
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TLS_SECRET_TYPE = "kubernetes.io/tls"


@dataclass(frozen=True)
class TlsCertificate:
    """A PEM certificate chain and its private key, as a ``kubernetes.io/tls`` Secret holds them."""

    cert_pem: bytes
    key_pem: bytes
    #: ``namespace/name`` of the Secret, for messages (not part of equality)
    source: str = field(default="", compare=False)


class Backend:
    """One Service port and the ready endpoints behind it, picked in turn (round robin).

    ``targets`` are base URLs (``http://10.42.0.5:8080``); empty when no endpoint is ready.
    The turn counter is the only state that changes, and only the order of tries
    depends on it.
    """

    __slots__ = ("_turn", "key", "targets")

    def __init__(self, key: str, targets: tuple[str, ...]) -> None:
        self.key = key
        self.targets = targets
        self._turn = itertools.count()

    def attempts(self) -> list[str]:
        """Every target once, starting with the next one in round-robin order."""
        targets = self.targets
        n = len(targets)
        if n < 2:
            return list(targets)
        start = next(self._turn) % n
        return [*targets[start:], *targets[:start]]

    def __repr__(self) -> str:
        return f"Backend({self.key!r}, {self.targets!r})"


@dataclass(frozen=True)
class HostRoutes:
    """The paths of one host (or of the rules without a host)."""

    exact: dict[str, Backend] = field(default_factory=dict)
    #: normalized prefix ("" for "/", no trailing slash otherwise) -> backend
    prefixes: dict[str, Backend] = field(default_factory=dict)

    def match(self, path: str) -> Backend | None:
        """The backend of the longest matching path; an exact path before a prefix."""
        backend = self.exact.get(path)
        if backend is not None:
            return backend
        prefixes = self.prefixes
        if not prefixes:
            return None
        # Try the path's element-wise prefixes from the longest: "/a/b/c", "/a/b", "/a", "".
        candidate = path
        while True:
            backend = prefixes.get(candidate)
            if backend is not None:
                return backend
            if not candidate:
                return None
            candidate = candidate[: candidate.rfind("/")]


@dataclass(frozen=True)
class RoutingTable:
    """Where each request goes, and which certificate each TLS server name gets. Never mutated."""

    hosts: dict[str, HostRoutes] = field(default_factory=dict)
    #: ".example.com" -> routes of "*.example.com"
    wildcards: dict[str, HostRoutes] = field(default_factory=dict)
    #: rules without a host (match every host)
    any_host: HostRoutes | None = None
    default_backend: Backend | None = None
    #: "host" or "*.domain" -> certificate
    tls: dict[str, TlsCertificate] = field(default_factory=dict)
    #: ``namespace/name`` of every Ingress this table serves
    ingresses: tuple[str, ...] = ()
    #: what could not be used (missing Secret, unknown port ...), for the controller's log
    problems: tuple[str, ...] = ()
    #: (namespace, name) of every Service the served Ingresses name: changes to others move no route
    services: frozenset[tuple[str, str]] = frozenset()

    def resolve(self, host: str, path: str) -> Backend | None:
        """The backend for a request to ``host`` (lower case, no port) and ``path``; None means 404."""
        routes = self.hosts.get(host)
        if routes is not None:
            backend = routes.match(path)
            if backend is not None:
                return backend
        if self.wildcards:
            dot = host.find(".")
            if dot > 0:
                routes = self.wildcards.get(host[dot:])
                if routes is not None:
                    backend = routes.match(path)
                    if backend is not None:
                        return backend
        if self.any_host is not None:
            backend = self.any_host.match(path)
            if backend is not None:
                return backend
        return self.default_backend

    def certificate_for(self, server_name: str) -> TlsCertificate | None:
        """The certificate for a TLS server name (SNI): exact host first, then a one-label wildcard."""
        name = server_name.lower().rstrip(".")
        cert = self.tls.get(name)
        if cert is None:
            dot = name.find(".")
            if dot > 0:
                cert = self.tls.get("*" + name[dot:])
        return cert


EMPTY_TABLE = RoutingTable()


def request_host(header: str) -> str:
    """The host of a ``Host`` header value: lower case, without port or IPv6 brackets."""
    if not header:
        return ""
    if header[0] == "[":
        end = header.find("]")
        return header[1:end].lower() if end > 0 else header.lower()
    colon = header.rfind(":")
    if colon >= 0 and header.find(":") == colon:
        header = header[:colon]
    return header.lower().rstrip(".")


def normalize_prefix(path: str) -> str:
    """The lookup key of a Prefix path: without trailing slashes, "" for "/"."""
    return path.rstrip("/")


# --- which Ingresses are ours -------------------------------------------------------------


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _spec(obj: Obj) -> Obj:
    return obj.get("spec") or {}


def served_class_names(ingress_classes: Iterable[Obj], controller: str = CONTROLLER,
                       class_name: str = CLASS_NAME) -> tuple[set[str], bool]:
    """(names of the classes this controller serves, whether the cluster's default class is one of them).

    ``class_name`` counts as ours even before its IngressClass object exists.
    """
    ours = {class_name}
    default_ours = False
    for ic in ingress_classes:
        name = _meta(ic).get("name", "")
        is_ours = _spec(ic).get("controller") == controller or name == class_name
        if is_ours:
            ours.add(name)
        if str((_meta(ic).get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION, "")).lower() == "true" and is_ours:
            default_ours = True
    return ours, default_ours


def is_served(ingress: Obj, ours: set[str], default_ours: bool) -> bool:
    """Whether this controller serves ``ingress``: its class is ours, or it has none and ours is the default."""
    name = _spec(ingress).get("ingressClassName")
    if name:
        return name in ours
    legacy = (_meta(ingress).get("annotations") or {}).get(LEGACY_CLASS_ANNOTATION)
    if legacy:
        return legacy in ours
    return default_ours


def _age_key(obj: Obj) -> tuple[str, str, str]:
    meta = _meta(obj)
    # RFC 3339 timestamps in UTC sort as strings; the name breaks ties so the order is stable
    return meta.get("creationTimestamp") or "", meta.get("namespace") or "", meta.get("name") or ""


# --- backends -----------------------------------------------------------------------------


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class _Resolver:
    """Turns Ingress backends into :class:`Backend` objects, one per (service, port), shared."""

    def __init__(self, services: Iterable[Obj], endpoint_slices: Iterable[Obj]) -> None:
        self.services = {(_meta(s).get("namespace"), _meta(s).get("name")): s for s in services}
        self.slices: dict[tuple[str, str], list[Obj]] = {}
        for es in endpoint_slices:
            meta = _meta(es)
            svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
            if svc:
                self.slices.setdefault((meta.get("namespace"), svc), []).append(es)
        self.backends: dict[tuple[str, str, str], Backend] = {}
        self.problems: list[str] = []

    def backend(self, namespace: str, spec: Obj, where: str) -> Backend | None:
        service = spec.get("service")
        if not service:
            if spec.get("resource"):
                self.problems.append(f"{where}: resource backends are not supported")
            return None
        name = service.get("name", "")
        port = service.get("port") or {}
        port_ref = str(port["number"]) if port.get("number") else port.get("name", "")
        key = (namespace, name, port_ref)
        found = self.backends.get(key)
        if found is None:
            found = self.backends[key] = Backend(f"{namespace}/{name}:{port_ref}",
                                                 self._targets(namespace, name, port, where))
        return found

    def _targets(self, namespace: str, name: str, port: Obj, where: str) -> tuple[str, ...]:
        svc = self.services.get((namespace, name))
        if svc is None:
            self.problems.append(f"{where}: service {namespace}/{name} not found")
            return ()
        number, port_name = port.get("number"), port.get("name")
        svc_port = None
        for p in _spec(svc).get("ports") or []:
            if (number and p.get("port") == number) or (port_name and p.get("name") == port_name):
                svc_port = p
                break
        if _spec(svc).get("type") == "ExternalName":
            external = _spec(svc).get("externalName")
            target_port = (svc_port or {}).get("port") or number
            if not external or not target_port:
                self.problems.append(f"{where}: ExternalName service {namespace}/{name} has no usable port")
                return ()
            return (f"http://{_url_host(external)}:{target_port}",)
        if svc_port is None:
            self.problems.append(f"{where}: service {namespace}/{name} has no port {number or port_name!r}")
            return ()
        wanted = svc_port.get("name") or ""
        protocol = svc_port.get("protocol") or "TCP"
        targets: list[str] = []
        seen: set[str] = set()
        for es in self.slices.get((namespace, name), ()):
            slice_port = next((p for p in es.get("ports") or []
                               if (p.get("name") or "") == wanted and (p.get("protocol") or "TCP") == protocol), None)
            if slice_port is None or not slice_port.get("port"):
                continue
            for ep in es.get("endpoints") or []:
                # an absent "ready" condition means ready (EndpointSlice API)
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                for address in ep.get("addresses") or []:
                    url = f"http://{_url_host(address)}:{slice_port['port']}"
                    if url not in seen:
                        seen.add(url)
                        targets.append(url)
        return tuple(sorted(targets))


# --- TLS ----------------------------------------------------------------------------------


def decode_tls_secret(secret: Obj) -> TlsCertificate | None:
    """The certificate and key of a ``kubernetes.io/tls`` Secret, or None when it is not one."""
    if secret.get("type") != TLS_SECRET_TYPE:
        return None
    data = secret.get("data") or {}
    try:
        cert = base64.b64decode(data.get("tls.crt") or "", validate=True)
        key = base64.b64decode(data.get("tls.key") or "", validate=True)
    except (binascii.Error, ValueError):
        return None
    if not cert or not key:
        return None
    meta = _meta(secret)
    return TlsCertificate(cert, key, f"{meta.get('namespace')}/{meta.get('name')}")


def certificate_names(cert_pem: bytes) -> list[str]:
    """The DNS names a PEM certificate is for (its SANs, else its common name), lower case."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [n.lower() for n in names]


# --- building -----------------------------------------------------------------------------


def _paths(rule: Obj) -> Iterator[tuple[str, str, Obj]]:
    for p in ((rule.get("http") or {}).get("paths") or []):
        yield p.get("path") or "/", p.get("pathType") or "ImplementationSpecific", p.get("backend") or {}


def build_routing_table(
    ingresses: Iterable[Obj],
    ingress_classes: Iterable[Obj] = (),
    services: Iterable[Obj] = (),
    endpoint_slices: Iterable[Obj] = (),
    secrets: Iterable[Obj] = (),
    *,
    controller: str = CONTROLLER,
    class_name: str = CLASS_NAME,
) -> RoutingTable:
    """A new routing table from the cluster's objects (lists of API dicts).

    Only Ingresses of this controller's classes are served (see :func:`is_served`);
    backends resolve to the ready endpoints of the Service port they name.
    """
    ours, default_ours = served_class_names(ingress_classes, controller, class_name)
    served = sorted((i for i in ingresses if is_served(i, ours, default_ours)), key=_age_key)
    resolver = _Resolver(services, endpoint_slices)
    secret_index = {(_meta(s).get("namespace"), _meta(s).get("name")): s for s in secrets}

    exact: dict[str | None, dict[str, Backend]] = {}
    prefix: dict[str | None, dict[str, Backend]] = {}
    default_backend: Backend | None = None
    tls: dict[str, TlsCertificate] = {}
    problems = resolver.problems

    for ing in served:
        meta = _meta(ing)
        namespace = meta.get("namespace") or "default"
        where = f"ingress {namespace}/{meta.get('name')}"
        spec = _spec(ing)
        if default_backend is None and spec.get("defaultBackend"):
            default_backend = resolver.backend(namespace, spec["defaultBackend"], where)
        for rule in spec.get("rules") or []:
            host = (rule.get("host") or "").lower() or None
            for path, path_type, backend_spec in _paths(rule):
                if path_type == "Exact":
                    table, key = exact.setdefault(host, {}), path
                else:
                    table, key = prefix.setdefault(host, {}), normalize_prefix(path)
                if key in table:
                    continue  # an older Ingress has this host and path
                backend = resolver.backend(namespace, backend_spec, where)
                if backend is not None:
                    table[key] = backend
        for entry in spec.get("tls") or []:
            secret_name = entry.get("secretName")
            if not secret_name:
                continue
            secret = secret_index.get((namespace, secret_name))
            cert = decode_tls_secret(secret) if secret else None
            if cert is None:
                problems.append(f"{where}: TLS secret {namespace}/{secret_name} is missing or not of type "
                                f"{TLS_SECRET_TYPE}")
                continue
            names = [h.lower() for h in entry.get("hosts") or []] or certificate_names(cert.cert_pem)
            for name in names:
                tls.setdefault(name, cert)

    def routes(host: str | None) -> HostRoutes:
        return HostRoutes(exact.get(host, {}), prefix.get(host, {}))

    named = {h for h in (*exact, *prefix) if h is not None}
    return RoutingTable(
        hosts={h: routes(h) for h in named if not h.startswith("*.")},
        wildcards={h[1:]: routes(h) for h in named if h.startswith("*.")},
        any_host=routes(None) if None in exact or None in prefix else None,
        default_backend=default_backend,
        tls=tls,
        ingresses=tuple(f"{_meta(i).get('namespace') or 'default'}/{_meta(i).get('name')}" for i in served),
        problems=tuple(problems),
        services=frozenset((ns, name) for ns, name, _port in resolver.backends),
    )
