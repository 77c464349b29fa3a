"""Translating a pod's spec into what the runtime is given: SandboxConfig and ContainerConfig.

Pure functions over plain dicts: everything that needs the API (ConfigMaps, Secrets,
Services) is fetched by the caller and handed in, so the rules here are testable alone.
The rules follow the kubelet's: environment precedence (service links < envFrom < env),
``$(VAR)`` expansion, the downward API's field and resource references, CPU shares and
quota from requests and limits, the DNS policies, and the labels the kubelet finds its
sandboxes and containers by after a restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from k3p.protocols.runtime import (
    ANNOTATION_RESTART_COUNT,
    LABEL_CONTAINER_NAME,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
    ContainerConfig,
    DNSConfig,
    Mount,
    PortMapping,
    Resources,
    SandboxConfig,
    Security,
)
from k3p.quantity import milli_value, parse_quantity

Obj = dict[str, Any]

#: annotations the kubelet keeps on containers (names as kube's kubelet uses them)
ANNOTATION_CONTAINER_HASH = "io.kubernetes.container.hash"
ANNOTATION_GRACE_PERIOD = "io.kubernetes.pod.terminationGracePeriod"
ANNOTATION_TERMINATION_MESSAGE_PATH = "io.kubernetes.container.terminationMessagePath"

#: kube's CPU accounting constants (cgroup shares per core, CFS period, floors)
SHARES_PER_CPU = 1024
MIN_SHARES = 2
QUOTA_PERIOD = 100_000
MIN_QUOTA_PERIOD = 1000



class ConfigError(Exception):
    """A container cannot be configured (missing ConfigMap/Secret or key): kube's CreateContainerConfigError."""


def milli_cpu(value: Any) -> int:
    """CPU quantity in millicores, rounded up as kube does."""
    return milli_value(value)


# --- small helpers over the pod dict -------------------------------------------------------


def meta(pod: Mapping[str, Any]) -> Obj:
    return pod.get("metadata") or {}


def spec(pod: Mapping[str, Any]) -> Obj:
    return pod.get("spec") or {}


def pod_full_name(pod: Mapping[str, Any]) -> str:
    """``name_namespace(uid)``: how kube's kubelet names a pod in messages."""
    m = meta(pod)
    return f"{m.get('name')}_{m.get('namespace')}({m.get('uid')})"


def is_restartable_init(container: Mapping[str, Any]) -> bool:
    """A sidecar: an init container with ``restartPolicy: Always``."""
    return container.get("restartPolicy") == "Always"


#: the container fields whose change means a new container (probes, hooks and pull policy do not)
HASHED_FIELDS = ("name", "image", "command", "args", "workingDir", "env", "envFrom", "ports", "volumeMounts",
                 "securityContext", "stdin", "stdinOnce", "tty")


def container_hash(container: Mapping[str, Any]) -> str:
    """A stable hash of what defines a container: a change means it must be recreated."""
    # Only the image of a pod's container may change in place; leaving fields that new
    # defaults could appear in (probes, hooks) out keeps an upgrade from restarting pods.
    picked = {k: container[k] for k in HASHED_FIELDS if container.get(k) not in (None, [], {}, "", False)}
    data = json.dumps(picked, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def termination_grace_seconds(pod: Mapping[str, Any]) -> int:
    """The pod's grace period: the deletion's own when it is being deleted, else the spec's."""
    m = meta(pod)
    if m.get("deletionTimestamp") and m.get("deletionGracePeriodSeconds") is not None:
        return int(m["deletionGracePeriodSeconds"])
    value = spec(pod).get("terminationGracePeriodSeconds")
    return 30 if value is None else int(value)


# --- environment ---------------------------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """kube's ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, the rest stays."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append(text[i:])
                break
            name = text[i + 2:end]
            out.append(env[name] if name in env else text[i:end + 1])
            i = end + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _selected_path(path: str) -> tuple[str, str | None]:
    """``metadata.labels['app']`` -> ("metadata.labels", "app")."""
    m = re.match(r"^(metadata\.(?:labels|annotations))\[['\"](.+)['\"]\]$", path)
    return (m.group(1), m.group(2)) if m else (path, None)


def format_map(values: Mapping[str, str]) -> str:
    """Labels or annotations as the downward API writes them: ``key="value"`` lines, sorted."""
    return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(values.items()))


def field_ref_value(pod: Mapping[str, Any], path: str, *, pod_ips: Iterable[str] = (),
                    host_ips: Iterable[str] = ()) -> str:
    """The value of a downward-API ``fieldRef`` (env or volume)."""
    m, s = meta(pod), spec(pod)
    base, key = _selected_path(path)
    pod_ips, host_ips = list(pod_ips), list(host_ips)
    if key is not None:
        source = m.get("labels" if base == "metadata.labels" else "annotations") or {}
        return str(source.get(key, ""))
    simple = {
        "metadata.name": m.get("name", ""),
        "metadata.namespace": m.get("namespace", ""),
        "metadata.uid": m.get("uid", ""),
        "spec.nodeName": s.get("nodeName", ""),
        "spec.serviceAccountName": s.get("serviceAccountName", ""),
        "status.podIP": pod_ips[0] if pod_ips else "",
        "status.podIPs": ",".join(pod_ips),
        "status.hostIP": host_ips[0] if host_ips else "",
        "status.hostIPs": ",".join(host_ips),
    }
    if path in simple:
        return str(simple[path])
    if path == "metadata.labels":
        return format_map(m.get("labels") or {})
    if path == "metadata.annotations":
        return format_map(m.get("annotations") or {})
    raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")


def resource_field_value(container: Mapping[str, Any], resource: str, divisor: Any = None,
                         allocatable: Mapping[str, Any] | None = None) -> str:
    """The value of a ``resourceFieldRef``: a limit falls back to the node's allocatable, as in kube."""
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise ConfigError(f"unsupported resourceFieldRef resource {resource!r}")
    res = container.get("resources") or {}
    raw = (res.get(kind) or {}).get(name)
    if raw is None and kind == "requests":
        raw = (res.get("limits") or {}).get(name)  # requests default to limits
    if raw is None and kind == "limits":
        raw = (allocatable or {}).get(name)
    value = parse_quantity(raw) if raw is not None else 0
    div = parse_quantity(divisor) if divisor not in (None, "", 0, "0") else 1
    if div <= 0:
        raise ConfigError(f"invalid divisor {divisor!r}")
    return str(math.ceil(value / div))


def _decode_secret(value: str) -> str:
    return base64.b64decode(value).decode(errors="replace")


def _key_ref(kind: str, ref: Mapping[str, Any], namespace: str, objects: Mapping[str, Obj | None]) -> str | None:
    name, key = ref.get("name", ""), ref.get("key", "")
    obj = objects.get(name)
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise ConfigError(f'{kind.lower()} "{name}" not found')
    if kind == "Secret":
        data = obj.get("data") or {}
        if key in data:
            return _decode_secret(data[key])
        if key in (obj.get("stringData") or {}):
            return str(obj["stringData"][key])
    else:
        data = obj.get("data") or {}
        if key in data:
            return str(data[key])
    if optional:
        return None
    raise ConfigError(f"couldn't find key {key} in {kind} {namespace}/{name}")


def referenced_objects(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and Secrets the pod's env, envFrom and volumes read."""
    configmaps: set[str] = set()
    secrets: set[str] = set()
    s = spec(pod)
    for c in [*(s.get("initContainers") or []), *(s.get("containers") or [])]:
        for e in c.get("env") or []:
            src = e.get("valueFrom") or {}
            if "configMapKeyRef" in src:
                configmaps.add(src["configMapKeyRef"].get("name", ""))
            if "secretKeyRef" in src:
                secrets.add(src["secretKeyRef"].get("name", ""))
        for ef in c.get("envFrom") or []:
            if "configMapRef" in ef:
                configmaps.add(ef["configMapRef"].get("name", ""))
            if "secretRef" in ef:
                secrets.add(ef["secretRef"].get("name", ""))
    for v in s.get("volumes") or []:
        if "configMap" in v:
            configmaps.add(v["configMap"].get("name", ""))
        if "secret" in v:
            secrets.add(v["secret"].get("secretName", ""))
        for p in (v.get("projected") or {}).get("sources") or []:
            if "configMap" in p:
                configmaps.add(p["configMap"].get("name", ""))
            if "secret" in p:
                secrets.add(p["secret"].get("name", ""))
    return configmaps, secrets


_SERVICE_NAME = re.compile(r"[^A-Z0-9_]")


def service_env(services: Iterable[Mapping[str, Any]], namespace: str, enable_service_links: bool = True,
                master_namespace: str = "default") -> dict[str, str]:
    """Docker-links style variables for Services (``<NAME>_SERVICE_HOST`` ...), as the kubelet sets them.

    The ``kubernetes`` Service of the default namespace is always included; the pod's own
    namespace's Services only with ``enableServiceLinks`` (the default).
    """
    env: dict[str, str] = {}
    chosen = []
    for svc in services:
        m, s = svc.get("metadata") or {}, svc.get("spec") or {}
        ip = s.get("clusterIP")
        if not ip or ip == "None":
            continue
        ns, name = m.get("namespace"), m.get("name", "")
        if (ns == namespace and enable_service_links) or (ns == master_namespace and name == "kubernetes"):
            chosen.append((ns == namespace, name, s))
    # Services of the pod's own namespace win over the kubernetes service of another one.
    for _own, name, s in sorted(chosen, key=lambda t: t[0]):
        prefix = _SERVICE_NAME.sub("_", name.upper().replace("-", "_"))
        ip = s["clusterIP"]
        ports = s.get("ports") or []
        if not ports:
            continue
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0].get("port"))
        for p in ports:
            if p.get("name"):
                pname = _SERVICE_NAME.sub("_", p["name"].upper().replace("-", "_"))
                env[f"{prefix}_SERVICE_PORT_{pname}"] = str(p.get("port"))
        first = ports[0]
        proto = (first.get("protocol") or "TCP").lower()
        env[f"{prefix}_PORT"] = f"{proto}://{ip}:{first.get('port')}"
        for p in ports:
            proto = (p.get("protocol") or "TCP").lower()
            base = f"{prefix}_PORT_{p.get('port')}_{proto.upper()}"
            env[base] = f"{proto}://{ip}:{p.get('port')}"
            env[f"{base}_PROTO"] = proto
            env[f"{base}_PORT"] = str(p.get("port"))
            env[f"{base}_ADDR"] = ip
    return env


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], *,
                  configmaps: Mapping[str, Obj | None] | None = None,
                  secrets: Mapping[str, Obj | None] | None = None,
                  services_env: Mapping[str, str] | None = None,
                  pod_ips: Iterable[str] = (), host_ips: Iterable[str] = (),
                  allocatable: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """The container's environment in kube's precedence: service links, then envFrom, then env.

    ``configmaps``/``secrets`` map names to the objects (None when missing). Raises
    :class:`ConfigError` for a missing non-optional reference.
    """
    configmaps = configmaps or {}
    secrets = secrets or {}
    ns = meta(pod).get("namespace", "")
    env: dict[str, str] = dict(services_env or {})
    for ef in container.get("envFrom") or []:
        prefix = ef.get("prefix") or ""
        if "configMapRef" in ef:
            ref = ef["configMapRef"]
            obj = configmaps.get(ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'configmap "{ref.get("name")}" not found')
            values = {k: str(v) for k, v in (obj.get("data") or {}).items()}
        elif "secretRef" in ef:
            ref = ef["secretRef"]
            obj = secrets.get(ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'secret "{ref.get("name")}" not found')
            values = {k: _decode_secret(v) for k, v in (obj.get("data") or {}).items()}
        else:
            continue
        for k, v in values.items():
            if "=" in prefix + k:  # not a possible variable name: kube skips it
                continue
            env[prefix + k] = v
    for e in container.get("env") or []:
        name = e.get("name", "")
        src = e.get("valueFrom")
        if src is None:
            env[name] = expand(str(e.get("value") or ""), env)
            continue
        value: str | None
        if "fieldRef" in src:
            value = field_ref_value(pod, src["fieldRef"].get("fieldPath", ""), pod_ips=pod_ips, host_ips=host_ips)
        elif "resourceFieldRef" in src:
            ref = src["resourceFieldRef"]
            target = container
            if ref.get("containerName"):
                target = find_container(pod, ref["containerName"]) or container
            value = resource_field_value(target, ref.get("resource", ""), ref.get("divisor"), allocatable)
        elif "configMapKeyRef" in src:
            value = _key_ref("ConfigMap", src["configMapKeyRef"], ns, configmaps)
        elif "secretKeyRef" in src:
            value = _key_ref("Secret", src["secretKeyRef"], ns, secrets)
        else:
            value = None
        if value is not None:
            env[name] = value
    return list(env.items())


def find_container(pod: Mapping[str, Any], name: str) -> Obj | None:
    s = spec(pod)
    for c in [*(s.get("initContainers") or []), *(s.get("containers") or [])]:
        if c.get("name") == name:
            return c
    return None


# --- resources and security ---------------------------------------------------------------


def container_resources(container: Mapping[str, Any]) -> Resources:
    """cgroup settings from requests and limits (kube's shares, CFS quota and memory limit)."""
    res = container.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    cpu_request = requests.get("cpu", limits.get("cpu"))
    shares = MIN_SHARES
    if cpu_request is not None:
        shares = max(MIN_SHARES, milli_cpu(cpu_request) * SHARES_PER_CPU // 1000)
    quota = period = 0
    if limits.get("cpu") is not None:
        period = QUOTA_PERIOD
        quota = max(MIN_QUOTA_PERIOD, milli_cpu(limits["cpu"]) * QUOTA_PERIOD // 1000)
    memory = int(parse_quantity(limits["memory"])) if limits.get("memory") is not None else 0
    return Resources(cpu_shares=shares, cpu_quota=quota, cpu_period=period, memory_limit_bytes=memory)


def container_security(pod: Mapping[str, Any], container: Mapping[str, Any]) -> Security:
    """The container's securityContext over the pod's (runAsUser, runAsGroup are inherited)."""
    pod_sc = spec(pod).get("securityContext") or {}
    sc = container.get("securityContext") or {}
    caps = sc.get("capabilities") or {}

    def pick(key: str) -> Any:
        return sc[key] if sc.get(key) is not None else pod_sc.get(key)

    return Security(
        run_as_user=pick("runAsUser"),
        run_as_group=pick("runAsGroup"),
        privileged=bool(sc.get("privileged")),
        capabilities_add=list(caps.get("add") or []),
        capabilities_drop=list(caps.get("drop") or []),
        readonly_rootfs=bool(sc.get("readOnlyRootFilesystem")),
    )


def port_mappings(pod: Mapping[str, Any]) -> list[PortMapping]:
    """Every declared container port (the runtime maps those with a hostPort)."""
    out = []
    for c in spec(pod).get("containers") or []:
        for p in c.get("ports") or []:
            if not p.get("containerPort"):
                continue
            out.append(PortMapping(container_port=int(p["containerPort"]), host_port=int(p.get("hostPort") or 0),
                                   protocol=p.get("protocol") or "TCP", host_ip=p.get("hostIP") or ""))
    return out


# --- DNS and the sandbox ------------------------------------------------------------------


def parse_resolv_conf(text: str) -> DNSConfig:
    """nameserver / search / options lines of a resolv.conf."""
    dns = DNSConfig()
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if parts[0] == "nameserver" and len(parts) > 1:
            dns.servers.append(parts[1])
        elif parts[0] in ("search", "domain"):
            dns.searches = parts[1:]
        elif parts[0] == "options":
            dns.options.extend(parts[1:])
    return dns


def _merge_options(base: list[str], extra: Iterable[Mapping[str, Any]]) -> list[str]:
    by_name: dict[str, str] = {}
    for opt in base:
        by_name[opt.split(":", 1)[0]] = opt
    for opt in extra:
        name = opt.get("name", "")
        by_name[name] = f"{name}:{opt['value']}" if opt.get("value") not in (None, "") else name
    return list(by_name.values())


def dns_config(pod: Mapping[str, Any], cluster_dns: Iterable[str], cluster_domain: str,
               host_dns: DNSConfig | None = None) -> DNSConfig:
    """The pod's resolv.conf per its dnsPolicy (ClusterFirst, ClusterFirstWithHostNet, Default, None)."""
    s = spec(pod)
    policy = s.get("dnsPolicy") or "ClusterFirst"
    host = host_dns or DNSConfig()
    servers = [ip for ip in cluster_dns if ip]
    if policy == "ClusterFirst" and s.get("hostNetwork"):
        policy = "Default"
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet") and not servers:
        policy = "Default"  # no cluster DNS configured: kube falls back to the node's resolver
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        ns = meta(pod).get("namespace", "default")
        searches = [f"{ns}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain, *host.searches]
        dns = DNSConfig(servers=servers, searches=searches, options=["ndots:5"])
    elif policy == "Default":
        dns = DNSConfig(servers=list(host.servers), searches=list(host.searches), options=list(host.options))
    else:  # "None": only what dnsConfig says
        dns = DNSConfig()
    extra = s.get("dnsConfig") or {}
    for ip in extra.get("nameservers") or []:
        if ip not in dns.servers:
            dns.servers.append(ip)
    for domain in extra.get("searches") or []:
        if domain not in dns.searches:
            dns.searches.append(domain)
    dns.options = _merge_options(dns.options, extra.get("options") or [])
    # glibc reads at most 3 nameservers and 32 search domains
    dns.servers = dns.servers[:3]
    dns.searches = dns.searches[:32]
    return dns


def pod_hostname(pod: Mapping[str, Any]) -> str:
    """spec.hostname or the pod's name, cut to 63 characters as kube does."""
    name = spec(pod).get("hostname") or meta(pod).get("name", "")
    return name[:63].rstrip("-.")


def kubelet_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    m = meta(pod)
    return {LABEL_POD_NAME: m.get("name", ""), LABEL_POD_NAMESPACE: m.get("namespace", ""),
            LABEL_POD_UID: m.get("uid", "")}


def pod_log_directory(log_root: str, pod: Mapping[str, Any]) -> str:
    """``<root>/<namespace>_<name>_<uid>``: the layout of kube's /var/log/pods."""
    m = meta(pod)
    return f"{log_root.rstrip('/')}/{m.get('namespace')}_{m.get('name')}_{m.get('uid')}"


def sandbox_config(pod: Mapping[str, Any], *, attempt: int = 0, log_root: str = "",
                   cluster_dns: Iterable[str] = (), cluster_domain: str = "cluster.local",
                   host_dns: DNSConfig | None = None) -> SandboxConfig:
    """The SandboxConfig of a pod (its network namespace and pause process)."""
    m, s = meta(pod), spec(pod)
    host_network = bool(s.get("hostNetwork"))
    labels = {**(m.get("labels") or {}), **kubelet_labels(pod)}
    return SandboxConfig(
        name=m.get("name", ""),
        namespace=m.get("namespace", ""),
        uid=m.get("uid", ""),
        attempt=attempt,
        # containerd's hostNetwork sandboxes keep the node's hostname and need an empty one here
        hostname="" if host_network else pod_hostname(pod),
        log_directory=pod_log_directory(log_root, pod) if log_root else "",
        dns=dns_config(pod, cluster_dns, cluster_domain, host_dns),
        port_mappings=port_mappings(pod),
        labels=labels,
        annotations=dict(m.get("annotations") or {}),
        host_network=host_network,
    )


@dataclass
class ContainerInputs:
    """What a container's config is made from besides the spec: resolved env and mounts."""

    env: list[tuple[str, str]] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    attempt: int = 0


def container_config(pod: Mapping[str, Any], container: Mapping[str, Any], inputs: ContainerInputs) -> ContainerConfig:
    """The ContainerConfig of one container of ``pod`` (``inputs.attempt`` is its restart count)."""
    env_map = dict(inputs.env)
    name = container.get("name", "")
    annotations = {
        ANNOTATION_RESTART_COUNT: str(inputs.attempt),
        ANNOTATION_CONTAINER_HASH: container_hash(container),
        ANNOTATION_GRACE_PERIOD: str(termination_grace_seconds(pod)),
    }
    if container.get("terminationMessagePath"):
        annotations[ANNOTATION_TERMINATION_MESSAGE_PATH] = container["terminationMessagePath"]
    return ContainerConfig(
        name=name,
        image=container.get("image", ""),
        command=[expand(str(a), env_map) for a in container.get("command") or []],
        args=[expand(str(a), env_map) for a in container.get("args") or []],
        working_dir=container.get("workingDir") or "",
        env=list(inputs.env),
        mounts=list(inputs.mounts),
        log_path=f"{name}/{inputs.attempt}.log",
        stdin=bool(container.get("stdin")),
        stdin_once=bool(container.get("stdinOnce")),
        tty=bool(container.get("tty")),
        attempt=inputs.attempt,
        labels={**kubelet_labels(pod), LABEL_CONTAINER_NAME: name},
        annotations=annotations,
        resources=container_resources(container),
        security=container_security(pod, container),
    )


def resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    """A probe's or hook's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    text = str(port)
    if text.isdigit():
        return int(text)
    for p in container.get("ports") or []:
        if p.get("name") == text:
            return int(p["containerPort"])
    raise ValueError(f"port {text!r} is not a number nor the name of a container port")
