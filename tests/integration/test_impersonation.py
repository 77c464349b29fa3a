"""Impersonation (``kubectl --as``, ``Impersonate-*`` headers) is authorized, then acts as the impersonated user."""

from __future__ import annotations

import httpx
import pytest

from k3p.testing import K3pServer

RBAC = "/apis/rbac.authorization.k8s.io/v1"
WHOAMI = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    s = K3pServer(tmp_path_factory.mktemp("impersonation")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server: K3pServer):
    with httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=10) as c:
        yield c


def create(admin: httpx.Client, path: str, obj: dict) -> dict:
    r = admin.post(path, json=obj)
    assert r.status_code == 201, r.text
    return r.json()


def role(admin: httpx.Client, name: str, rules: list[dict], namespace: str | None = "default") -> None:
    kind = "Role" if namespace else "ClusterRole"
    path = f"{RBAC}/namespaces/{namespace}/roles" if namespace else f"{RBAC}/clusterroles"
    create(admin, path, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name},
                         "rules": rules})


def bind(admin: httpx.Client, name: str, role_kind: str, role_name: str, subject: dict,
         namespace: str | None = "default") -> None:
    kind = "RoleBinding" if namespace else "ClusterRoleBinding"
    path = f"{RBAC}/namespaces/{namespace}/rolebindings" if namespace else f"{RBAC}/clusterrolebindings"
    create(admin, path, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name},
                         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
                         "subjects": [subject]})


@pytest.fixture(scope="module")
def bot_token(admin: httpx.Client) -> str:
    create(admin, "/api/v1/namespaces/default/serviceaccounts",
           {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot"}})
    role(admin, "pod-getter", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])
    bind(admin, "bot-gets-pods", "Role", "pod-getter", {"kind": "ServiceAccount", "name": "bot"})
    r = admin.post("/api/v1/namespaces/default/serviceaccounts/bot/token", json={"spec": {}})
    assert r.status_code == 201, r.text
    return r.json()["status"]["token"]


@pytest.fixture(scope="module")
def as_bot(server: K3pServer, bot_token: str):
    import ssl

    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with httpx.Client(base_url=server.url, verify=ctx, timeout=10,
                      headers={"Authorization": f"Bearer {bot_token}"}) as c:
        yield c


def test_kubectl_as_a_user_without_bindings_is_forbidden_until_bound(server: K3pServer, admin: httpx.Client) -> None:
    r = server.kubectl("--as=jane", "get", "pods")
    assert r.returncode != 0
    assert 'pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace ' \
           '"default"' in r.stderr, r.stderr
    assert server.kubectl("auth", "can-i", "list", "pods", "--as=jane").stdout.strip() == "no"
    role(admin, "pod-lister", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}])
    bind(admin, "jane-lists-pods", "Role", "pod-lister", {"kind": "User", "name": "jane",
                                                         "apiGroup": "rbac.authorization.k8s.io"})
    r = server.kubectl("--as=jane", "get", "pods")
    assert r.returncode == 0, r.stderr
    assert server.kubectl("auth", "can-i", "list", "pods", "--as=jane").stdout.strip() == "yes"
    assert server.kubectl("auth", "can-i", "list", "pods", "--as=jane", "-n", "kube-system").stdout.strip() == "no"
    assert server.kubectl("auth", "whoami", "--as=jane", "-o", "jsonpath={.status.userInfo.username}",
                          check=True).stdout == "jane"


def test_can_i_list_answers_for_the_impersonated_service_account(server: K3pServer, bot_token: str) -> None:
    out = server.kubectl("auth", "can-i", "--list", "--as=system:serviceaccount:default:bot", check=True).stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert rows["pods"].split()[-1] == "[get]", out
    # what every authenticated user may do, and nothing of the admin's
    assert "selfsubjectreviews.authentication.k8s.io" in rows, out
    assert "*.*" not in rows and "secrets" not in rows and "deployments.apps" not in rows, out
    assert server.kubectl("auth", "can-i", "get", "pods", "--as=system:serviceaccount:default:bot"
                          ).stdout.strip() == "yes"
    assert server.kubectl("auth", "can-i", "delete", "pods", "--as=system:serviceaccount:default:bot"
                          ).stdout.strip() == "no"


def test_service_account_needs_the_impersonate_verb(admin: httpx.Client, as_bot: httpx.Client) -> None:
    r = as_bot.post(WHOAMI, json={}, headers={"Impersonate-User": "system:admin"})
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["kind"] == "Status" and body["reason"] == "Forbidden"
    assert body["message"] == ('users "system:admin" is forbidden: User "system:serviceaccount:default:bot" cannot '
                               'impersonate resource "users" in API group "" at the cluster scope')
    assert body["details"] == {"name": "system:admin", "kind": "users"}

    role(admin, "impersonate-users", [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]}], None)
    bind(admin, "bot-impersonates", "ClusterRole", "impersonate-users",
         {"kind": "ServiceAccount", "name": "bot", "namespace": "default"}, None)
    r = as_bot.post(WHOAMI, json={}, headers={"Impersonate-User": "system:admin"})
    assert r.status_code == 201, r.text
    assert r.json()["status"]["userInfo"] == {"username": "system:admin", "groups": ["system:authenticated"]}
    # the impersonated user's own permissions apply, not the caller's
    r = as_bot.get("/api/v1/namespaces/default/pods/x", headers={"Impersonate-User": "system:admin"})
    assert r.status_code == 403 and 'User "system:admin" cannot get resource "pods"' in r.json()["message"]

    # every part must be allowed: groups, uid and extras are checked one by one
    r = as_bot.post(WHOAMI, json={},
                    headers={"Impersonate-User": "system:admin", "Impersonate-Group": "system:masters"})
    assert r.status_code == 403
    assert r.json()["message"].startswith('groups "system:masters" is forbidden: User '
                                          '"system:serviceaccount:default:bot" cannot impersonate resource "groups"')
    r = as_bot.post(WHOAMI, json={}, headers={"Impersonate-User": "u", "Impersonate-Extra-Scopes": "view"})
    assert r.status_code == 403
    assert 'cannot impersonate resource "userextras/scopes" in API group "authentication.k8s.io"' \
        in r.json()["message"]


def test_groups_uid_extras_and_service_accounts(admin: httpx.Client, as_bot: httpx.Client) -> None:
    role(admin, "impersonate-all", [
        {"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"], "verbs": ["impersonate"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["uids", "userextras/team.example.com/scope"],
         "verbs": ["impersonate"]}], None)
    bind(admin, "bot-impersonates-all", "ClusterRole", "impersonate-all",
         {"kind": "ServiceAccount", "name": "bot", "namespace": "default"}, None)
    r = as_bot.post(WHOAMI, json={}, headers=[
        ("Impersonate-User", "ann"), ("Impersonate-Group", "devs"), ("Impersonate-Group", "ops"),
        ("Impersonate-Uid", "1234"), ("Impersonate-Extra-Team.example.com%2fscope", "a"),
        ("Impersonate-Extra-Team.example.com%2fscope", "b")])
    assert r.status_code == 201, r.text
    assert r.json()["status"]["userInfo"] == {"username": "ann", "groups": ["devs", "ops", "system:authenticated"],
                                              "uid": "1234", "extra": {"team.example.com/scope": ["a", "b"]}}
    r = as_bot.post(WHOAMI, json={}, headers={"Impersonate-User": "system:serviceaccount:kube-system:other"})
    assert r.status_code == 201, r.text
    assert r.json()["status"]["userInfo"]["groups"] == [
        "system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
    r = as_bot.post(WHOAMI, json={}, headers={"Impersonate-Group": "devs"})
    assert r.status_code == 500 and "without impersonating a user" in r.json()["message"]
