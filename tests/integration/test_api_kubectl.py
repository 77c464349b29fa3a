"""The real kubectl 1.32 against a k3p server: what everyday kubectl use needs."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

from k3p.testing import K3pServer, wait_for

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.35
        ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
"""

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = K3pServer(tmp_path_factory.mktemp("kubectl")).start()
    yield s
    s.stop()


def ok(server: K3pServer, *args: str, input: str | None = None) -> str:
    return server.kubectl(*args, input=input, check=True).stdout


def test_version_and_discovery(server: K3pServer) -> None:
    version = json.loads(ok(server, "version", "-o", "json"))
    assert version["serverVersion"]["major"] == "1" and version["serverVersion"]["minor"] == "32"
    resources = ok(server, "api-resources")
    header = resources.splitlines()[0].split()
    assert header == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    lines = {line.split()[0]: line.split() for line in resources.splitlines()[1:]}
    assert lines["deployments"][1:] == ["deploy", "apps/v1", "true", "Deployment"]
    assert lines["namespaces"][1:] == ["ns", "v1", "false", "Namespace"]
    versions = ok(server, "api-versions").split()
    assert {"v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1"} <= set(versions)


def test_system_namespaces_exist(server: K3pServer) -> None:
    names = ok(server, "get", "ns", "-o", "name").split()
    assert {"namespace/default", "namespace/kube-system", "namespace/kube-public",
            "namespace/kube-node-lease"} <= set(names)


def test_apply_create_update_unchanged_and_server_side(server: K3pServer) -> None:
    out = ok(server, "apply", "-f", "-", input=DEPLOYMENT)
    assert "deployment.apps/web created" in out and "service/web created" in out
    assert "deployment.apps/web unchanged" in ok(server, "apply", "-f", "-", input=DEPLOYMENT)
    changed = DEPLOYMENT.replace("replicas: 2", "replicas: 3")
    assert "deployment.apps/web configured" in ok(server, "apply", "-f", "-", input=changed)
    assert ok(server, "get", "deploy", "web", "-o", "jsonpath={.spec.replicas}") == "3"
    out = ok(server, "apply", "--server-side", "--force-conflicts", "-f", "-", input=DEPLOYMENT)
    assert "serverside-applied" in out
    live = json.loads(ok(server, "get", "deploy", "web", "-o", "json", "--show-managed-fields"))
    managers = live["metadata"]["managedFields"]
    assert any(m["manager"] == "kubectl" and m["operation"] == "Apply" for m in managers)
    # diff: exit code 0 when nothing would change, 1 with a diff when something would
    assert server.kubectl("diff", "-f", "-", input=DEPLOYMENT).returncode == 0
    diff = server.kubectl("diff", "-f", "-", input=changed)
    assert diff.returncode == 1 and "+  replicas: 3" in diff.stdout


def test_create_twice_is_already_exists_and_stale_replace_conflicts(server: K3pServer) -> None:
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: twice}\ndata: {a: b}\n"
    ok(server, "create", "-f", "-", input=cm)
    again = server.kubectl("create", "-f", "-", input=cm)
    assert again.returncode != 0 and "AlreadyExists" in again.stderr and '"twice" already exists' in again.stderr
    stale = ok(server, "get", "cm", "twice", "-o", "yaml")
    ok(server, "patch", "cm", "twice", "--type", "merge", "-p", '{"data":{"a":"c"}}')
    replaced = server.kubectl("replace", "-f", "-", input=stale)
    assert replaced.returncode != 0 and "Conflict" in replaced.stderr


def test_get_formats(server: K3pServer) -> None:
    ok(server, "apply", "-f", "-", input=DEPLOYMENT)
    table = ok(server, "get", "deploy", "-o", "wide").splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES",
                                "SELECTOR"]
    assert table[1].split()[0] == "web"
    assert yaml.safe_load(ok(server, "get", "deploy", "web", "-o", "yaml"))["kind"] == "Deployment"
    assert json.loads(ok(server, "get", "svc", "web", "-o", "json"))["spec"]["clusterIP"].startswith("10.43.")
    assert ok(server, "get", "deploy", "-o", "name").split() == ["deployment.apps/web"]
    pods = ok(server, "get", "pods", "-A", "-o", "wide")
    assert pods.strip() == "" or pods.startswith("NAME") or "No resources" in pods


def test_label_annotate_patch_scale(server: K3pServer) -> None:
    ok(server, "apply", "-f", "-", input=DEPLOYMENT)
    ok(server, "label", "deploy", "web", "tier=front", "--overwrite")
    ok(server, "annotate", "deploy", "web", "note=hello", "--overwrite")
    ok(server, "patch", "deploy", "web", "--type", "json",
       "-p", '[{"op":"replace","path":"/spec/replicas","value":4}]')
    ok(server, "patch", "deploy", "web", "--type", "merge", "-p", '{"metadata":{"labels":{"m":"1"}}}')
    ok(server, "patch", "svc", "web", "--type", "strategic",
       "-p", '{"spec":{"ports":[{"name":"https","port":443,"targetPort":443}]}}')
    ok(server, "scale", "deploy", "web", "--replicas", "5")
    obj = json.loads(ok(server, "get", "deploy", "web", "-o", "json"))
    assert obj["spec"]["replicas"] == 5
    assert obj["metadata"]["labels"]["tier"] == "front" and obj["metadata"]["labels"]["m"] == "1"
    assert obj["metadata"]["annotations"]["note"] == "hello"
    ports = json.loads(ok(server, "get", "svc", "web", "-o", "json"))["spec"]["ports"]
    assert sorted(p["port"] for p in ports) == [80, 443]


def test_watch_streams_changes(server: K3pServer) -> None:
    ok(server, "create", "-f", "-",
       input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {v: '0'}\n")
    env_cmd = ["kubectl", "get", "cm", "watched", "-w", "-o", "jsonpath={.data.v}{\"\\n\"}"]
    import os

    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig), "KUBECACHEDIR": str(server.workdir / "kube-cache")}
    proc = subprocess.Popen(env_cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "0"
        for v in ("1", "2"):
            ok(server, "patch", "cm", "watched", "--type", "merge", "-p", json.dumps({"data": {"v": v}}))
            assert proc.stdout.readline().strip() == v
    finally:
        proc.kill()
        proc.wait()


def test_delete_and_namespace_deletion_removes_contents(server: K3pServer) -> None:
    ok(server, "create", "-f", "-", input="apiVersion: v1\nkind: Namespace\nmetadata: {name: doomed}\n")
    ok(server, "create", "-n", "doomed", "-f", "-",
       input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\ndata: {a: b}\n")
    ok(server, "delete", "ns", "doomed", "--wait", "--timeout=30s")
    assert "doomed" not in ok(server, "get", "ns", "-o", "name")
    # the namespace went only after its contents: a namespace of the same name starts empty
    ok(server, "create", "-f", "-", input="apiVersion: v1\nkind: Namespace\nmetadata: {name: doomed}\n")
    assert "configmap/c1" not in ok(server, "get", "cm", "-n", "doomed", "-o", "name")
    ok(server, "create", "-f", "-", input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: gone}\n")
    ok(server, "delete", "cm", "gone", "--wait")
    missing = server.kubectl("get", "cm", "gone")
    assert missing.returncode != 0 and 'configmaps "gone" not found' in missing.stderr


def test_explain_auth_events_describe(server: K3pServer) -> None:
    ok(server, "apply", "-f", "-", input=DEPLOYMENT)
    explain = ok(server, "explain", "deployment.spec.strategy")
    assert "KIND:       Deployment" in explain and "rollingUpdate" in explain
    assert ok(server, "auth", "can-i", "create", "pods").strip() == "yes"
    ok(server, "get", "events")
    assert ok(server, "create", "namespace", "made-by-generator").strip() == "namespace/made-by-generator created"
    ok(server, "create", "configmap", "gen", "--from-literal=a=b")
    assert ok(server, "get", "cm", "gen", "-o", "jsonpath={.data.a}") == "b"
    described = ok(server, "describe", "deploy", "web")
    assert "Name:" in described and "web" in described and "RollingUpdateStrategy" in described


def test_crd_and_custom_resources_with_printer_columns(server: K3pServer) -> None:
    ok(server, "apply", "-f", "-", input=CRD)
    ok(server, "wait", "--for", "condition=established", "crd/widgets.example.com", "--timeout=20s")
    widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n"

    def applied() -> str:
        return ok(server, "apply", "-f", "-", input=widget)

    assert "created" in wait_for(applied, 20, 0.5, "the widgets resource to be served")
    assert "unchanged" in ok(server, "apply", "-f", "-", input=widget)
    lines = ok(server, "get", "wd").splitlines()
    assert lines[0].split() == ["NAME", "SIZE"] and lines[1].split() == ["w1", "3"]
    ok(server, "delete", "crd", "widgets.example.com", "--wait", "--timeout=30s")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.kubectl("get", "wd").returncode == 0:
        time.sleep(0.5)
    assert server.kubectl("get", "wd").returncode != 0


LIST = """apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: listed, labels: {app: listed}}
  spec:
    replicas: 2
    selector: {matchLabels: {app: listed}}
    strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: "25%"}}
    template:
      metadata: {labels: {app: listed}}
      spec:
        containers:
        - name: c
          image: busybox
          ports: [{containerPort: 8080}]
          resources: {limits: {cpu: 1, memory: 64Mi}, requests: {cpu: 100m}}
          livenessProbe: {httpGet: {path: /, port: 8080}}
- apiVersion: v1
  kind: Service
  metadata: {name: listed}
  spec: {selector: {app: listed}, ports: [{port: 80, targetPort: 8080}]}
"""


def test_apply_of_a_list_validates_each_item_against_openapi_v2(server: K3pServer) -> None:
    # kubectl checks a kind: List on the client, item by item, with the /openapi/v2 protobuf document
    assert "deployment.apps/listed created" in ok(server, "apply", "-f", "-", input=LIST)
    bad = server.kubectl("apply", "-f", "-", input=LIST.replace("replicas: 2", "replicas: 2\n    replicaz: 3"))
    assert bad.returncode == 1
    assert 'unknown field "replicaz" in io.k8s.api.apps.v1.DeploymentSpec' in bad.stderr
    # what `kubectl get -o yaml` prints for several objects applies again as it is
    listed = ok(server, "get", "deployment/listed", "service/listed", "-o", "yaml")
    assert listed.startswith("apiVersion: v1\nitems:")
    again = server.kubectl("apply", "-f", "-", input=listed)
    assert again.returncode == 0, again.stderr
    status, body = server.get("/openapi/v2")
    assert status == 200 and json.loads(body)["swagger"] == "2.0"
    assert "io.k8s.api.apps.v1.Deployment" in json.loads(body)["definitions"]
