"""Pod spec -> SandboxConfig / ContainerConfig: env, expansion, downward API, resources, DNS."""

from __future__ import annotations

import base64

import pytest

from k3p.agent import podspec
from k3p.protocols.runtime import (
    ANNOTATION_RESTART_COUNT,
    LABEL_CONTAINER_NAME,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
    DNSConfig,
    Mount,
)


def pod(**spec) -> dict:
    base = {"containers": [{"name": "app", "image": "busybox:1.35"}]}
    base.update(spec)
    return {"metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web", "tier": "fe"},
                         "annotations": {"note": 'say "hi"'}},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa1", **base}}


def test_expand_follows_kube_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert podspec.expand("$(A)-$(B)", env) == "1-two"
    assert podspec.expand("$(MISSING)", env) == "$(MISSING)"
    assert podspec.expand("$$(A)", env) == "$(A)"
    assert podspec.expand("cost $5 $", env) == "cost $5 $"
    assert podspec.expand("$(A", env) == "$(A"


def test_env_precedence_and_expansion() -> None:
    configmaps = {"cfg": {"data": {"COLOR": "blue", "SIZE": "L", "bad=key": "x"}}}
    secrets = {"creds": {"data": {"PASSWORD": base64.b64encode(b"s3cret").decode()}}}
    container = {
        "name": "app",
        "envFrom": [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "creds"}, "prefix": "DB_"}],
        "env": [
            {"name": "COLOR", "value": "red"},  # env wins over envFrom
            {"name": "GREETING", "value": "hello $(COLOR) $(DB_PASSWORD) $(NOPE)"},
            {"name": "KEY", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "SIZE"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "x", "optional": True}}},
        ],
    }
    env = dict(podspec.container_env(pod(), container, configmaps=configmaps, secrets=secrets,
                                     services_env={"COLOR": "svc", "KUBERNETES_SERVICE_HOST": "10.43.0.1"}))
    assert env["COLOR"] == "red"
    assert env["SIZE"] == "L" and "bad=key" not in env
    assert env["DB_PASSWORD"] == "s3cret" and env["PW"] == "s3cret"
    assert env["GREETING"] == "hello red s3cret $(NOPE)"
    assert env["KEY"] == "L"
    assert "OPT" not in env
    assert env["KUBERNETES_SERVICE_HOST"] == "10.43.0.1"


def test_missing_references_are_config_errors_with_kube_messages() -> None:
    ref = {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope"}}}
    with pytest.raises(podspec.ConfigError, match=r"couldn't find key nope in ConfigMap shop/cfg"):
        podspec.container_env(pod(), {"env": [ref]}, configmaps={"cfg": {"data": {}}})
    with pytest.raises(podspec.ConfigError, match=r'secret "s" not found'):
        podspec.container_env(pod(), {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
                              secrets={"s": None})
    with pytest.raises(podspec.ConfigError, match=r'configmap "c" not found'):
        podspec.container_env(pod(), {"envFrom": [{"configMapRef": {"name": "c"}}]}, configmaps={})


def test_downward_api_fields_in_env() -> None:
    container = {"name": "app", "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}, "env": [
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
        {"name": "CPU_LIM", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
    ]}
    env = dict(podspec.container_env(pod(), container, pod_ips=["10.42.0.7"], host_ips=["192.168.1.5"],
                                     allocatable={"cpu": "3500m", "memory": "8Gi"}))
    assert env == {"NAME": "web-1", "NS": "shop", "APP": "web", "NODE": "n1", "SA": "sa1", "IP": "10.42.0.7",
                   "HOST": "192.168.1.5", "MEM": "64", "CPU_REQ": "250", "CPU_LIM": "4"}


def test_labels_and_annotations_are_formatted_like_the_downward_api() -> None:
    assert podspec.field_ref_value(pod(), "metadata.labels") == 'app="web"\ntier="fe"'
    assert podspec.field_ref_value(pod(), "metadata.annotations") == 'note="say \\"hi\\""'


def test_service_links() -> None:
    services = [
        {"metadata": {"name": "kubernetes", "namespace": "default"},
         "spec": {"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}},
        {"metadata": {"name": "redis-main", "namespace": "shop"},
         "spec": {"clusterIP": "10.43.9.9", "ports": [{"port": 6379}]}},
        {"metadata": {"name": "headless", "namespace": "shop"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}},
        {"metadata": {"name": "other", "namespace": "elsewhere"},
         "spec": {"clusterIP": "10.43.1.1", "ports": [{"port": 80}]}},
    ]
    env = podspec.service_env(services, "shop")
    assert env["KUBERNETES_SERVICE_HOST"] == "10.43.0.1" and env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    assert env["REDIS_MAIN_SERVICE_HOST"] == "10.43.9.9"
    assert env["REDIS_MAIN_PORT"] == "tcp://10.43.9.9:6379"
    assert env["REDIS_MAIN_PORT_6379_TCP_ADDR"] == "10.43.9.9"
    assert not any(k.startswith(("HEADLESS", "OTHER")) for k in env)
    no_links = podspec.service_env(services, "shop", enable_service_links=False)
    assert "REDIS_MAIN_SERVICE_HOST" not in no_links and "KUBERNETES_SERVICE_HOST" in no_links


def test_resources_follow_kube_cpu_accounting() -> None:
    r = podspec.container_resources({"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1500m",
                                                                                         "memory": "128Mi"}}})
    assert (r.cpu_shares, r.cpu_quota, r.cpu_period, r.memory_limit_bytes) == (256, 150_000, 100_000, 128 * 2**20)
    best_effort = podspec.container_resources({})
    assert (best_effort.cpu_shares, best_effort.cpu_quota, best_effort.memory_limit_bytes) == (2, 0, 0)
    limit_only = podspec.container_resources({"resources": {"limits": {"cpu": "1m"}}})
    assert limit_only.cpu_shares == 2 and limit_only.cpu_quota == 1000  # floors


def test_security_context_inherits_from_the_pod() -> None:
    p = pod(securityContext={"runAsUser": 1000, "runAsGroup": 3000})
    sec = podspec.container_security(p, {"securityContext": {"runAsUser": 2000, "privileged": True,
                                                             "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                                                             "readOnlyRootFilesystem": True}})
    assert (sec.run_as_user, sec.run_as_group, sec.privileged, sec.readonly_rootfs) == (2000, 3000, True, True)
    assert sec.capabilities_add == ["NET_ADMIN"] and sec.capabilities_drop == ["ALL"]


def test_dns_policies() -> None:
    host = DNSConfig(servers=["192.168.1.1"], searches=["corp.example"], options=["timeout:2"])
    cluster = podspec.dns_config(pod(), ["10.43.0.10"], "cluster.local", host)
    assert cluster.servers == ["10.43.0.10"]
    assert cluster.searches == ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"]
    assert cluster.options == ["ndots:5"]
    host_net = podspec.dns_config(pod(hostNetwork=True), ["10.43.0.10"], "cluster.local", host)
    assert host_net.servers == ["192.168.1.1"]  # ClusterFirst + hostNetwork means Default
    with_net = podspec.dns_config(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), ["10.43.0.10"],
                                  "cluster.local", host)
    assert with_net.servers == ["10.43.0.10"]
    none = podspec.dns_config(pod(dnsPolicy="None", dnsConfig={"nameservers": ["1.1.1.1"], "searches": ["a.b"],
                                                               "options": [{"name": "ndots", "value": "2"},
                                                                           {"name": "edns0"}]}),
                              ["10.43.0.10"], "cluster.local", host)
    assert (none.servers, none.searches, none.options) == (["1.1.1.1"], ["a.b"], ["ndots:2", "edns0"])
    merged = podspec.dns_config(pod(dnsConfig={"options": [{"name": "ndots", "value": "1"}]}), ["10.43.0.10"],
                                "cluster.local", host)
    assert merged.options == ["ndots:1"]


def test_parse_resolv_conf() -> None:
    dns = podspec.parse_resolv_conf("# comment\nnameserver 1.1.1.1\nnameserver 8.8.8.8\nsearch a b\noptions ndots:1\n")
    assert dns.servers == ["1.1.1.1", "8.8.8.8"] and dns.searches == ["a", "b"] and dns.options == ["ndots:1"]


def test_sandbox_config() -> None:
    p = pod(hostname="h" * 70, containers=[{"name": "app", "image": "x", "ports": [
        {"containerPort": 80}, {"containerPort": 53, "protocol": "UDP", "hostPort": 5353, "hostIP": "127.0.0.1"}]}])
    cfg = podspec.sandbox_config(p, attempt=2, log_root="/logs", cluster_dns=["10.43.0.10"])
    assert (cfg.name, cfg.namespace, cfg.uid, cfg.attempt) == ("web-1", "shop", "u-1", 2)
    assert cfg.hostname == "h" * 63
    assert cfg.log_directory == "/logs/shop_web-1_u-1"
    assert cfg.labels[LABEL_POD_UID] == "u-1" and cfg.labels[LABEL_POD_NAME] == "web-1"
    assert cfg.labels[LABEL_POD_NAMESPACE] == "shop" and cfg.labels["app"] == "web"
    assert [(m.container_port, m.host_port, m.protocol) for m in cfg.port_mappings] == [(80, 0, "TCP"),
                                                                                        (53, 5353, "UDP")]
    assert podspec.sandbox_config(pod(hostNetwork=True)).hostname == ""  # containerd wants it empty


def test_container_config() -> None:
    container = {"name": "app", "image": "busybox:1.35", "command": ["sh", "-c"], "args": ["echo $(MSG) $$(MSG)"],
                 "workingDir": "/w", "tty": True, "terminationMessagePath": "/dev/termination-log"}
    p = pod(terminationGracePeriodSeconds=45, containers=[container])
    cfg = podspec.container_config(p, container, podspec.ContainerInputs(
        env=[("MSG", "hi")], mounts=[Mount("/data", "/host/data", True)], attempt=3))
    assert cfg.command == ["sh", "-c"] and cfg.args == ["echo hi $(MSG)"]
    assert cfg.log_path == "app/3.log" and cfg.attempt == 3 and cfg.tty and cfg.working_dir == "/w"
    assert cfg.labels[LABEL_CONTAINER_NAME] == "app" and cfg.labels[LABEL_POD_UID] == "u-1"
    assert cfg.annotations[ANNOTATION_RESTART_COUNT] == "3"
    assert cfg.annotations[podspec.ANNOTATION_GRACE_PERIOD] == "45"
    assert cfg.annotations[podspec.ANNOTATION_CONTAINER_HASH] == podspec.container_hash(container)
    assert cfg.mounts == [Mount("/data", "/host/data", True)]


def test_container_hash_changes_with_the_image() -> None:
    a = {"name": "app", "image": "nginx:1"}
    assert podspec.container_hash(a) == podspec.container_hash(dict(a))
    assert podspec.container_hash(a) != podspec.container_hash({**a, "image": "nginx:2"})


def test_grace_period_prefers_the_deletion_one() -> None:
    p = pod(terminationGracePeriodSeconds=60)
    assert podspec.termination_grace_seconds(p) == 60
    p["metadata"].update(deletionTimestamp="2024-01-01T00:00:00Z", deletionGracePeriodSeconds=5)
    assert podspec.termination_grace_seconds(p) == 5
    assert podspec.termination_grace_seconds(pod()) == 30


def test_referenced_objects_and_ports() -> None:
    p = pod(volumes=[{"name": "v", "configMap": {"name": "cm-vol"}}, {"name": "s", "secret": {"secretName": "sec"}},
                     {"name": "p", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}}],
            containers=[{"name": "app", "ports": [{"name": "http", "containerPort": 8080}],
                         "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-sec", "key": "k"}}}]}])
    configmaps, secrets = podspec.referenced_objects(p)
    assert configmaps == {"cm-vol", "kube-root-ca.crt"} and secrets == {"sec", "env-sec"}
    c = p["spec"]["containers"][0]
    assert podspec.resolve_port("http", c) == 8080 and podspec.resolve_port(81, c) == 81
    assert podspec.resolve_port("82", c) == 82
    with pytest.raises(ValueError):
        podspec.resolve_port("nope", c)
