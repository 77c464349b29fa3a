"""Protobuf request bodies: messages built with the protobuf runtime from kubectl's own
descriptors, wrapped as client-go wraps them, decoded into the JSON dicts of their types."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message

from k3p.apiserver import protobuf as pb

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (the descriptor source) is not installed"
)

_META = "k8s.io.apimachinery.pkg.apis.meta.v1"


@pytest.fixture(scope="module")
def decoder() -> pb.ProtobufDecoder:
    return pb.default_decoder()


def new(decoder: pb.ProtobufDecoder, full_name: str) -> Any:
    return decoder.message_class(full_name)()


def envelope(decoder: pb.ProtobufDecoder, api_version: str, kind: str, obj: Message | bytes, **extra: str) -> bytes:
    unknown = new(decoder, "k8s.io.apimachinery.pkg.runtime.Unknown")
    unknown.typeMeta.apiVersion = api_version
    unknown.typeMeta.kind = kind
    unknown.raw = obj if isinstance(obj, bytes) else obj.SerializeToString()
    for name, value in extra.items():
        setattr(unknown, name, value)
    return pb.MAGIC + unknown.SerializeToString()


def test_namespace_drops_the_zero_fields_go_always_writes(decoder: pb.ProtobufDecoder) -> None:
    ns = new(decoder, "k8s.io.api.core.v1.Namespace")
    ns.metadata.name = "x"
    # What gogo-generated Marshal writes for an otherwise empty Namespace.
    ns.metadata.generateName = ""
    ns.metadata.namespace = ""
    ns.metadata.resourceVersion = ""
    ns.metadata.generation = 0
    ns.metadata.creationTimestamp.seconds = 0
    ns.spec.SetInParent()
    ns.status.phase = ""
    ns.metadata.labels["team"] = "a"
    body = envelope(decoder, "v1", "Namespace", ns)
    assert pb.decode_request(body) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "x", "labels": {"team": "a"}},
    }


def test_pointer_fields_keep_a_zero_that_was_sent(decoder: pb.ProtobufDecoder) -> None:
    d = new(decoder, "k8s.io.api.apps.v1.Deployment")
    d.metadata.name = "web"
    d.spec.replicas = 0
    d.spec.minReadySeconds = 0
    d.spec.paused = False
    d.spec.selector.matchLabels["app"] = "web"
    pod = d.spec.template.spec
    pod.terminationGracePeriodSeconds = 0
    pod.automountServiceAccountToken = False
    pod.hostNetwork = False
    c = pod.containers.add()
    c.name = "nginx"
    c.image = "nginx:1"
    c.ports.add().containerPort = 80
    c.resources.SetInParent()
    out = decoder.decode(envelope(decoder, "apps/v1", "Deployment", d))
    assert out["spec"] == {
        "replicas": 0,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "spec": {
                "containers": [{"name": "nginx", "image": "nginx:1", "ports": [{"containerPort": 80}]}],
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": False,
            }
        },
    }


def test_quantities_int_or_string_and_bytes(decoder: pb.ProtobufDecoder) -> None:
    svc = new(decoder, "k8s.io.api.core.v1.Service")
    svc.metadata.name = "s"
    by_number = svc.spec.ports.add()
    by_number.port = 80
    by_number.targetPort.type = 0
    by_number.targetPort.intVal = 8080
    by_name = svc.spec.ports.add()
    by_name.port = 443
    by_name.targetPort.type = 1
    by_name.targetPort.strVal = "https"
    out = decoder.decode(envelope(decoder, "v1", "Service", svc))
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": "https"}]

    quota = new(decoder, "k8s.io.api.core.v1.ResourceQuota")
    quota.spec.hard["cpu"].string = "500m"
    quota.spec.hard["memory"].string = "1Gi"
    out = decoder.decode(envelope(decoder, "v1", "ResourceQuota", quota))
    assert out["spec"] == {"hard": {"cpu": "500m", "memory": "1Gi"}}

    secret = new(decoder, "k8s.io.api.core.v1.Secret")
    secret.data["key"] = b"\x00\xffvalue"
    secret.type = "Opaque"
    out = decoder.decode(envelope(decoder, "v1", "Secret", secret))
    assert out["data"] == {"key": "AP92YWx1ZQ=="}
    assert out["type"] == "Opaque"


def test_times_and_managed_fields(decoder: pb.ProtobufDecoder) -> None:
    lease = new(decoder, "k8s.io.api.coordination.v1.Lease")
    lease.metadata.name = "leader"
    lease.metadata.creationTimestamp.seconds = 1_700_000_000
    lease.metadata.creationTimestamp.nanos = 999_999_999  # JSON keeps whole seconds only
    entry = lease.metadata.managedFields.add()
    entry.manager = "ctl"
    entry.operation = "Apply"
    entry.time.seconds = 1_700_000_001
    entry.fieldsV1.Raw = b'{"f:spec":{"f:holderIdentity":{}}}'
    lease.spec.holderIdentity = "node-1"
    lease.spec.leaseDurationSeconds = 15
    lease.spec.renewTime.seconds = 1_700_000_002
    lease.spec.renewTime.nanos = 123_456_789
    out = decoder.decode(envelope(decoder, "coordination.k8s.io/v1", "Lease", lease))
    assert out["metadata"]["creationTimestamp"] == "2023-11-14T22:13:20Z"
    assert out["metadata"]["managedFields"] == [
        {
            "manager": "ctl",
            "operation": "Apply",
            "time": "2023-11-14T22:13:21Z",
            "fieldsV1": {"f:spec": {"f:holderIdentity": {}}},
        }
    ]
    assert out["spec"] == {
        "holderIdentity": "node-1",
        "leaseDurationSeconds": 15,
        "renewTime": "2023-11-14T22:13:22.123456Z",
    }


def test_embedded_structs_are_inlined_and_empty_pointer_structs_kept(decoder: pb.ProtobufDecoder) -> None:
    pod = new(decoder, "k8s.io.api.core.v1.Pod")
    pod.metadata.name = "p"
    vol = pod.spec.volumes.add()
    vol.name = "scratch"
    vol.volumeSource.emptyDir.SetInParent()
    cm = pod.spec.volumes.add()
    cm.name = "conf"
    cm.volumeSource.configMap.localObjectReference.name = "settings"
    c = pod.spec.containers.add()
    c.name = "app"
    c.readinessProbe.handler.httpGet.path = "/healthz"
    c.readinessProbe.handler.httpGet.port.type = 1
    c.readinessProbe.handler.httpGet.port.strVal = "http"
    c.readinessProbe.periodSeconds = 5
    out = decoder.decode(envelope(decoder, "v1", "Pod", pod))
    assert out["spec"]["volumes"] == [
        {"name": "scratch", "emptyDir": {}},
        {"name": "conf", "configMap": {"name": "settings"}},
    ]
    assert out["spec"]["containers"][0]["readinessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 5,
    }


def test_access_review_extra_values_are_lists(decoder: pb.ProtobufDecoder) -> None:
    review = new(decoder, "k8s.io.api.authorization.v1.SubjectAccessReview")
    review.spec.user = "alice"
    review.spec.groups.append("dev")
    review.spec.extra["scopes"].items.extend(["a", "b"])
    review.spec.resourceAttributes.verb = "get"
    review.spec.resourceAttributes.resource = "pods"
    out = decoder.decode(envelope(decoder, "authorization.k8s.io/v1", "SubjectAccessReview", review))
    assert out["spec"] == {
        "user": "alice",
        "groups": ["dev"],
        "extra": {"scopes": ["a", "b"]},
        "resourceAttributes": {"verb": "get", "resource": "pods"},
    }

    self_review = new(decoder, "k8s.io.api.authorization.v1.SelfSubjectAccessReview")
    self_review.spec.resourceAttributes.namespace = "default"
    self_review.spec.resourceAttributes.verb = "list"
    self_review.spec.resourceAttributes.resource = "secrets"
    out = decoder.decode(envelope(decoder, "authorization.k8s.io/v1", "SelfSubjectAccessReview", self_review))
    assert out["spec"] == {"resourceAttributes": {"namespace": "default", "verb": "list", "resource": "secrets"}}


def test_token_request_uses_the_json_spelling_of_each_field(decoder: pb.ProtobufDecoder) -> None:
    req = new(decoder, "k8s.io.api.authentication.v1.TokenRequest")
    req.spec.audiences.append("api")
    req.spec.expirationSeconds = 3600
    ref = req.spec.boundObjectRef
    ref.kind = "Pod"
    ref.apiVersion = "v1"
    ref.name = "p"
    ref_uid = next(f for f in ref.DESCRIPTOR.fields if f.name.lower() == "uid")
    setattr(ref, ref_uid.name, "1234")
    out = decoder.decode(envelope(decoder, "authentication.k8s.io/v1", "TokenRequest", req))
    assert out == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": ["api"],
            "expirationSeconds": 3600,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "1234"},
        },
    }


def test_eviction_keeps_a_zero_grace_period(decoder: pb.ProtobufDecoder) -> None:
    ev = new(decoder, "k8s.io.api.policy.v1.Eviction")
    ev.metadata.name = "p"
    ev.metadata.namespace = "default"
    ev.deleteOptions.gracePeriodSeconds = 0
    ev.deleteOptions.preconditions.uid = "u-1"
    out = decoder.decode(envelope(decoder, "policy/v1", "Eviction", ev))
    assert out == {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "p", "namespace": "default"},
        "deleteOptions": {"gracePeriodSeconds": 0, "preconditions": {"uid": "u-1"}},
    }


def test_meta_kinds_under_any_group_version(decoder: pb.ProtobufDecoder) -> None:
    opts = new(decoder, f"{_META}.DeleteOptions")
    opts.propagationPolicy = "Foreground"
    opts.dryRun.append("All")
    out = decoder.decode(envelope(decoder, "apps/v1", "DeleteOptions", opts))
    assert out == {
        "apiVersion": "apps/v1",
        "kind": "DeleteOptions",
        "propagationPolicy": "Foreground",
        "dryRun": ["All"],
    }


def test_versions_the_schemas_do_not_serve(decoder: pb.ProtobufDecoder) -> None:
    d = new(decoder, "k8s.io.api.apps.v1beta2.Deployment")
    d.metadata.name = "old"
    d.spec.replicas = 2
    out = decoder.decode(envelope(decoder, "apps/v1beta2", "Deployment", d))
    assert out == {
        "apiVersion": "apps/v1beta2",
        "kind": "Deployment",
        "metadata": {"name": "old"},
        "spec": {"replicas": 2},
    }


def test_raw_extensions_hold_json_or_a_nested_protobuf_object(decoder: pb.ProtobufDecoder) -> None:
    rev = new(decoder, "k8s.io.api.apps.v1.ControllerRevision")
    rev.metadata.name = "r1"
    rev.revision = 3
    rev.data.raw = b'{"spec":{"replicas":1}}'
    out = decoder.decode(envelope(decoder, "apps/v1", "ControllerRevision", rev))
    assert out["data"] == {"spec": {"replicas": 1}}
    assert out["revision"] == 3

    cm = new(decoder, "k8s.io.api.core.v1.ConfigMap")
    cm.metadata.name = "inner"
    cm.data["k"] = "v"
    rev.data.raw = envelope(decoder, "v1", "ConfigMap", cm)
    out = decoder.decode(envelope(decoder, "apps/v1", "ControllerRevision", rev))
    assert out["data"] == {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "inner"}, "data": {"k": "v"}}

    rev.data.raw = b"\x01\x02not json"
    with pytest.raises(pb.ProtobufError):
        decoder.decode(envelope(decoder, "apps/v1", "ControllerRevision", rev))


def test_bad_bodies_are_errors(decoder: pb.ProtobufDecoder) -> None:
    ns = new(decoder, "k8s.io.api.core.v1.Namespace")
    ns.metadata.name = "x"
    good = envelope(decoder, "v1", "Namespace", ns)
    with pytest.raises(pb.ProtobufError, match="prefix"):
        decoder.decode(good[len(pb.MAGIC) :])
    with pytest.raises(pb.ProtobufError, match="malformed"):
        decoder.decode(good[:-3])
    with pytest.raises(pb.ProtobufError, match="no protobuf message"):
        decoder.decode(envelope(decoder, "example.com/v1", "Widget", ns))
    with pytest.raises(pb.ProtobufError, match="Kind"):
        decoder.decode(envelope(decoder, "v1", "", ns))
    with pytest.raises(pb.ProtobufError, match="encoding"):
        decoder.decode(envelope(decoder, "v1", "Namespace", ns, contentEncoding="gzip"))
    with pytest.raises(pb.ProtobufError, match="malformed"):
        decoder.decode(envelope(decoder, "v1", "Namespace", b"\x0a\xff\xff"))


def test_a_binary_without_descriptors_is_unavailable(tmp_path: Path) -> None:
    blob = tmp_path / "tool"
    blob.write_bytes(b"\x7fELF" + b"\x00" * 4096 + b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xffnot gzip")
    assert pb.descriptors_from_binary(blob) == []
    with pytest.raises(pb.ProtobufUnavailable):
        pb.ProtobufDecoder.from_binary(blob)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert pb.descriptors_from_binary(empty) == []


def test_descriptors_cover_the_groups_kubectl_writes(decoder: pb.ProtobufDecoder) -> None:
    for name in (
        "k8s.io.api.core.v1.ConfigMap",
        "k8s.io.api.apps.v1.Deployment",
        "k8s.io.api.batch.v1.CronJob",
        "k8s.io.api.rbac.v1.RoleBinding",
        "k8s.io.api.networking.v1.Ingress",
        "k8s.io.api.scheduling.v1.PriorityClass",
        "k8s.io.api.authentication.v1.TokenRequest",
        "k8s.io.api.authorization.v1.SelfSubjectAccessReview",
        "k8s.io.api.policy.v1.Eviction",
    ):
        assert decoder.message_class(name).DESCRIPTOR.full_name == name


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (0, "0s"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (300_000_000, "300ms"),
        (1_500_000_000, "1.5s"),
        (300 * 10**9, "5m0s"),
        (3600 * 10**9, "1h0m0s"),
        (-(90 * 10**9 + 1), "-1m30.000000001s"),
    ],
)
def test_go_duration(nanoseconds: int, text: str) -> None:
    assert pb.go_duration(nanoseconds) == text


def test_list_wrapper_messages_are_plain_lists(decoder: pb.ProtobufDecoder) -> None:
    resources = new(decoder, f"{_META}.APIResourceList")
    resources.groupVersion = "v1"
    pods = resources.resources.add()
    pods.name = "pods"
    pods.namespaced = True
    pods.kind = "Pod"
    pods.verbs.items.extend(["get", "list"])
    out = decoder.decode(envelope(decoder, "v1", "APIResourceList", resources))
    assert out["resources"] == [{"name": "pods", "namespaced": True, "kind": "Pod", "verbs": ["get", "list"]}]
