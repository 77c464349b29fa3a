"""The ingress routing table: hosts, path types and precedence, backends, classes, merging."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from k3p_plugins.traefik.certs import CertificateStore, self_signed_certificate
from k3p_plugins.traefik.manifests import manifests
from k3p_plugins.traefik.routes import (
    Backend,
    build_routing_table,
    decode_tls_secret,
    request_host,
)

NS = "default"


def ingress(name: str, rules: list[dict[str, Any]] | None = None, *, cls: str | None = "traefik",
            default: dict[str, Any] | None = None, created: str = "2025-01-01T00:00:00Z",
            tls: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None,
            namespace: str = NS) -> dict[str, Any]:
    spec: dict[str, Any] = {"rules": rules or []}
    if cls:
        spec["ingressClassName"] = cls
    if default:
        spec["defaultBackend"] = default
    if tls:
        spec["tls"] = tls
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created,
                         "annotations": annotations or {}},
            "spec": spec}


def backend(service: str, port: int | str = 80) -> dict[str, Any]:
    ref = {"number": port} if isinstance(port, int) else {"name": port}
    return {"service": {"name": service, "port": ref}}


def rule(host: str | None, *paths: tuple[str, str, str]) -> dict[str, Any]:
    r: dict[str, Any] = {"http": {"paths": [{"path": p, "pathType": t, "backend": backend(s)}
                                            for p, t, s in paths]}}
    if host:
        r["host"] = host
    return r


def service(name: str, ports: list[dict[str, Any]] | None = None, namespace: str = NS,
            **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}], **spec}}


def endpoint_slice(svc: str, addresses: list[str], port: int = 8080, port_name: str = "http",
                   ready: list[bool | None] | None = None, namespace: str = NS, name: str = "") -> dict[str, Any]:
    ready = ready or [True] * len(addresses)
    endpoints = []
    for address, r in zip(addresses, ready, strict=True):
        ep: dict[str, Any] = {"addresses": [address]}
        if r is not None:
            ep["conditions"] = {"ready": r}
        endpoints.append(ep)
    return {"metadata": {"name": name or f"{svc}-abc", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": endpoints}


def world(*names: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A service per name with one ready endpoint 10.0.0.<i>:8080."""
    services = [service(n) for n in names]
    slices = [endpoint_slice(n, [f"10.0.0.{i + 1}"]) for i, n in enumerate(names)]
    return services, slices


def target(table: Any, host: str, path: str) -> str | None:
    found = table.resolve(host, path)
    if found is None:
        return None
    assert isinstance(found, Backend)
    return found.key.split("/", 1)[1].split(":", 1)[0]


def test_exact_host_wildcard_and_hostless_rules() -> None:
    services, slices = world("a", "wild", "any")
    table = build_routing_table(
        [ingress("i", [rule("a.example.com", ("/", "Prefix", "a")),
                       rule("*.example.com", ("/", "Prefix", "wild")),
                       rule(None, ("/", "Prefix", "any"))])],
        services=services, endpoint_slices=slices)
    assert target(table, "a.example.com", "/x") == "a"
    assert target(table, "b.example.com", "/x") == "wild"
    # a wildcard stands for exactly one label
    assert target(table, "c.b.example.com", "/x") == "any"
    assert target(table, "example.com", "/x") == "any"
    assert target(table, "other.org", "/") == "any"


def test_host_header_normalization() -> None:
    assert request_host("Example.COM:8080") == "example.com"
    assert request_host("example.com") == "example.com"
    assert request_host("[::1]:80") == "::1"
    assert request_host("example.com.") == "example.com"
    assert request_host("") == ""


def test_path_types_and_precedence() -> None:
    services, slices = world("root", "foo", "foobar-exact", "foo-exact", "deep", "impl")
    table = build_routing_table([ingress("i", [rule(
        "h",
        ("/", "Prefix", "root"),
        ("/foo", "Prefix", "foo"),
        ("/foo", "Exact", "foo-exact"),
        ("/foobar", "Exact", "foobar-exact"),
        ("/foo/bar/", "Prefix", "deep"),
        ("/impl", "ImplementationSpecific", "impl"),
    )])], services=services, endpoint_slices=slices)
    # exact beats a prefix of the same length
    assert target(table, "h", "/foo") == "foo-exact"
    # element-wise prefix: /foo covers /foo/ and /foo/x but not /foobarbaz
    assert target(table, "h", "/foo/") == "foo"
    assert target(table, "h", "/foo/x") == "foo"
    assert target(table, "h", "/foobar") == "foobar-exact"
    assert target(table, "h", "/foobar/") == "root"
    assert target(table, "h", "/foobarbaz") == "root"
    # the longest prefix wins; a trailing slash in the rule is ignored
    assert target(table, "h", "/foo/bar") == "deep"
    assert target(table, "h", "/foo/bar/baz") == "deep"
    assert target(table, "h", "/foo/barn") == "foo"
    # ImplementationSpecific behaves as Prefix
    assert target(table, "h", "/impl/x") == "impl"
    assert target(table, "h", "/implx") == "root"


def test_exact_only_and_404() -> None:
    services, slices = world("only")
    table = build_routing_table([ingress("i", [rule("h", ("/only", "Exact", "only"))])],
                                services=services, endpoint_slices=slices)
    assert target(table, "h", "/only") == "only"
    assert table.resolve("h", "/only/") is None
    assert table.resolve("h", "/") is None
    assert table.resolve("other", "/only") is None


def test_default_backend() -> None:
    services, slices = world("site", "fallback")
    table = build_routing_table(
        [ingress("i", [rule("h", ("/app", "Prefix", "site"))], default=backend("fallback"))],
        services=services, endpoint_slices=slices)
    assert target(table, "h", "/app/1") == "site"
    assert target(table, "h", "/other") == "fallback"
    assert target(table, "nohost", "/") == "fallback"


def test_host_rule_without_matching_path_falls_through_to_hostless_rules() -> None:
    services, slices = world("api", "web")
    table = build_routing_table(
        [ingress("i", [rule("h", ("/api", "Prefix", "api")), rule(None, ("/", "Prefix", "web"))])],
        services=services, endpoint_slices=slices)
    assert target(table, "h", "/api") == "api"
    assert target(table, "h", "/index.html") == "web"


def test_ports_by_name_and_number_map_to_target_ports() -> None:
    svc = service("multi", [{"name": "http", "port": 80, "targetPort": 8080},
                            {"name": "admin", "port": 9000, "targetPort": "admin"}])
    slices = [{
        "metadata": {"name": "multi-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "multi"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "admin", "port": 9901}],
        "endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": True}}],
    }]
    ing = ingress("i", [{"host": "h", "http": {"paths": [
        {"path": "/n", "pathType": "Prefix", "backend": backend("multi", 80)},
        {"path": "/a", "pathType": "Prefix", "backend": backend("multi", "admin")},
        {"path": "/missing", "pathType": "Prefix", "backend": backend("multi", 81)},
    ]}}])
    table = build_routing_table([ing], services=[svc], endpoint_slices=slices)
    assert table.resolve("h", "/n").targets == ("http://10.1.0.1:8080",)
    assert table.resolve("h", "/a").targets == ("http://10.1.0.1:9901",)
    # a port the Service does not have: the route exists but has no endpoint (503), and it is reported
    assert table.resolve("h", "/missing").targets == ()
    assert any("no port 81" in p for p in table.problems)


def test_unnamed_single_port_service() -> None:
    svc = service("plain", [{"port": 80, "targetPort": 8080}])
    es = endpoint_slice("plain", ["10.2.0.1"], port_name="")
    table = build_routing_table([ingress("i", [rule("h", ("/", "Prefix", "plain"))])], services=[svc],
                                endpoint_slices=[es])
    assert table.resolve("h", "/").targets == ("http://10.2.0.1:8080",)


def test_only_ready_endpoints_and_all_slices() -> None:
    svc = service("s")
    slices = [endpoint_slice("s", ["10.0.0.1", "10.0.0.2", "10.0.0.3"], ready=[True, False, None], name="s-1"),
              endpoint_slice("s", ["10.0.0.4"], name="s-2"),
              endpoint_slice("other", ["10.9.9.9"], name="o-1"),
              endpoint_slice("s", ["10.8.8.8"], namespace="elsewhere", name="s-3")]
    table = build_routing_table([ingress("i", [rule("h", ("/", "Prefix", "s"))])], services=[svc],
                                endpoint_slices=slices)
    # "ready" left out counts as ready; other services and namespaces are not mixed in
    assert table.resolve("h", "/").targets == ("http://10.0.0.1:8080", "http://10.0.0.3:8080",
                                                "http://10.0.0.4:8080")


def test_ipv6_endpoints_are_bracketed() -> None:
    es = endpoint_slice("s", ["fd00::5"])
    table = build_routing_table([ingress("i", [rule("h", ("/", "Prefix", "s"))])], services=[service("s")],
                                endpoint_slices=[es])
    assert table.resolve("h", "/").targets == ("http://[fd00::5]:8080",)


def test_round_robin_order_of_attempts() -> None:
    b = Backend("ns/s:80", ("http://a", "http://b", "http://c"))
    firsts = [b.attempts() for _ in range(4)]
    assert [f[0] for f in firsts] == ["http://a", "http://b", "http://c", "http://a"]
    # every attempt list holds each endpoint once, for retries on another one
    assert all(sorted(f) == ["http://a", "http://b", "http://c"] for f in firsts)


def test_missing_service_has_no_targets() -> None:
    table = build_routing_table([ingress("i", [rule("h", ("/", "Prefix", "ghost"))])])
    assert table.resolve("h", "/").targets == ()
    assert any("ghost" in p for p in table.problems)


def test_external_name_service() -> None:
    svc = {"metadata": {"name": "ext", "namespace": NS},
           "spec": {"type": "ExternalName", "externalName": "backend.internal", "ports": [{"port": 80}]}}
    table = build_routing_table([ingress("i", [rule("h", ("/", "Prefix", "ext"))])], services=[svc])
    assert table.resolve("h", "/").targets == ("http://backend.internal:80",)


CLASSES = [
    {"metadata": {"name": "traefik", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
     "spec": {"controller": "traefik.io/ingress-controller"}},
    {"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}},
]


def test_ingress_class_filtering() -> None:
    services, slices = world("s")
    ings = [
        ingress("mine", [rule("mine", ("/", "Prefix", "s"))], cls="traefik"),
        ingress("theirs", [rule("theirs", ("/", "Prefix", "s"))], cls="nginx"),
        ingress("unset", [rule("unset", ("/", "Prefix", "s"))], cls=None),
        ingress("legacy", [rule("legacy", ("/", "Prefix", "s"))], cls=None,
                annotations={"kubernetes.io/ingress.class": "nginx"}),
    ]
    table = build_routing_table(ings, CLASSES, services, slices)
    assert table.resolve("mine", "/") is not None
    assert table.resolve("theirs", "/") is None
    assert table.resolve("legacy", "/") is None
    # no class: served because our class is the default one
    assert table.resolve("unset", "/") is not None
    assert set(table.ingresses) == {"default/mine", "default/unset"}

    # when another controller's class is the default, Ingresses without a class are not ours
    other_default = [
        {**CLASSES[0], "metadata": {"name": "traefik"}},
        {**CLASSES[1], "metadata": {"name": "nginx",
                                    "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}}},
    ]
    table = build_routing_table(ings, other_default, services, slices)
    assert table.resolve("unset", "/") is None
    assert table.resolve("mine", "/") is not None


def test_merge_of_several_ingresses_older_wins() -> None:
    services, slices = world("old", "new", "extra")
    older = ingress("older", [rule("h", ("/", "Prefix", "old"), ("/shared", "Exact", "old"))],
                    created="2025-01-01T00:00:00Z", default=backend("old"))
    newer = ingress("newer", [rule("h", ("/", "Prefix", "new"), ("/shared", "Exact", "new"),
                                   ("/extra", "Prefix", "extra"))],
                    created="2025-02-01T00:00:00Z", default=backend("new"))
    for order in ([older, newer], [newer, older]):
        table = build_routing_table(order, services=services, endpoint_slices=slices)
        assert target(table, "h", "/") == "old"
        assert target(table, "h", "/shared") == "old"
        # what only the newer one defines is merged in
        assert target(table, "h", "/extra/1") == "extra"
        assert target(table, "x", "/") == "old"
        assert table.ingresses == ("default/older", "default/newer")


def test_backends_are_in_the_ingress_namespace() -> None:
    svc_a = service("s", namespace="a")
    svc_b = service("s", namespace="b")
    slices = [endpoint_slice("s", ["10.0.0.1"], namespace="a"), endpoint_slice("s", ["10.0.0.2"], namespace="b")]
    ings = [ingress("i", [rule("a", ("/", "Prefix", "s"))], namespace="a"),
            ingress("i", [rule("b", ("/", "Prefix", "s"))], namespace="b")]
    table = build_routing_table(ings, services=[svc_a, svc_b], endpoint_slices=slices)
    assert table.resolve("a", "/").targets == ("http://10.0.0.1:8080",)
    assert table.resolve("b", "/").targets == ("http://10.0.0.2:8080",)
    assert table.services == {("a", "s"), ("b", "s")}


def tls_secret(name: str, cert: Any, namespace: str = NS) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64.b64encode(cert.cert_pem).decode(),
                     "tls.key": base64.b64encode(cert.key_pem).decode()}}


@pytest.fixture(scope="module")
def certs() -> dict[str, Any]:
    return {"one": self_signed_certificate("one", ("one.example",)),
            "wild": self_signed_certificate("wild", ("*.wild.example",))}


def test_tls_certificates_by_host_and_sni(certs: dict[str, Any]) -> None:
    ings = [ingress("i", [rule("one.example", ("/", "Prefix", "s"))],
                    tls=[{"hosts": ["one.example"], "secretName": "one"},
                         {"secretName": "wild"},  # no hosts: the certificate's own names
                         {"hosts": ["missing.example"], "secretName": "nope"}])]
    secrets = [tls_secret("one", certs["one"]), tls_secret("wild", certs["wild"])]
    table = build_routing_table(ings, services=[service("s")], secrets=secrets)
    assert table.certificate_for("one.example") == certs["one"]
    assert table.certificate_for("ONE.example.") == certs["one"]
    assert table.certificate_for("a.wild.example") == certs["wild"]
    assert table.certificate_for("a.b.wild.example") is None
    assert table.certificate_for("missing.example") is None
    assert any("nope" in p for p in table.problems)

    store = CertificateStore()
    store.update(table)
    assert store.context_for("one.example") is not store.context
    assert store.context_for("x.wild.example") is not store.context
    assert store.context_for("unknown.example") is store.context
    assert store.context_for(None) is store.context


def test_decode_tls_secret_rejects_other_types(certs: dict[str, Any]) -> None:
    secret = tls_secret("s", certs["one"])
    decoded = decode_tls_secret(secret)
    assert decoded == certs["one"]
    assert decoded is not None and decoded.source == "default/s"
    assert decode_tls_secret({**secret, "type": "Opaque"}) is None
    assert decode_tls_secret({**secret, "data": {"tls.crt": "!!!", "tls.key": "x"}}) is None


def test_manifests() -> None:
    objs = {o["kind"]: o for o in manifests()}
    ic = objs["IngressClass"]
    assert ic["metadata"]["name"] == "traefik"
    assert ic["spec"]["controller"] == "traefik.io/ingress-controller"
    assert ic["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"] == "true"
    rules = objs["ClusterRole"]["rules"]
    granted = {(g, r, v) for rule_ in rules for g in rule_["apiGroups"] for r in rule_["resources"]
               for v in rule_["verbs"]}
    for res in ("services", "endpoints", "secrets", "nodes"):
        assert ("", res, "watch") in granted
    assert ("discovery.k8s.io", "endpointslices", "list") in granted
    assert ("networking.k8s.io", "ingresses/status", "patch") in granted
    binding = objs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == objs["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": "system:k3p:traefik"}]


def test_plugin_hooks() -> None:
    import types

    import k3p_plugins.traefik as plugin
    from k3p.config import OptionSchema

    schema = OptionSchema()
    plugin.k3p_add_options(schema)
    for name, default in (("traefik-http-port", 80), ("traefik-https-port", 443),
                          ("traefik-bind-address", "0.0.0.0")):
        option = schema.get(name)
        assert option is not None and option.default == default
        assert set(option.commands) == {"server", "agent"}

    def ctx(runs_workloads: bool) -> Any:
        return types.SimpleNamespace(runs_workloads=runs_workloads, node_name="n1",
                                     config={"traefik_http_port": 8080, "traefik_https_port": 0},
                                     component_client=lambda component, agent: None)

    # simulated nodes touch no host network
    assert plugin.k3p_agent_components(ctx(False)) == []
    [component] = plugin.k3p_agent_components(ctx(True))
    assert component.name == "traefik-n1"
    assert plugin.k3p_manifests({}) == manifests()
