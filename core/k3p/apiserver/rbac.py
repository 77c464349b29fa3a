"""Role-based access control with the semantics of Kubernetes' RBAC authorizer.

- ClusterRoleBindings grant their role's rules everywhere; RoleBindings grant them in
  their own namespace, whether the roleRef names a Role there or a ClusterRole.
- Subjects are Users, Groups and ServiceAccounts; a service account is the user
  ``system:serviceaccount:<ns>:<name>`` (its groups ``system:serviceaccounts`` and
  ``system:serviceaccounts:<ns>`` come from authentication and match as Groups). A
  ServiceAccount subject without a namespace in a RoleBinding means the binding's one.
- A rule allows a resource request when verb, API group, resource (``pods/log`` for a
  subresource, ``*/scale`` for a subresource of anything, ``*`` for all) and, if it lists
  any, resourceNames all match; a non-resource request when verb and one of the
  nonResourceURLs match (exactly, ``*``, or by prefix for an entry ending in ``*``).
- Members of ``system:masters`` are allowed everything before RBAC is consulted.
- Nothing is ever denied explicitly: without an allowing rule the answer is "no opinion",
  which the API server turns into 403.

The authorizer reads roles and bindings from an :class:`RBACSource` the API server backs
with its watch cache. When the source has a ``version()`` method, bindings are indexed by
subject and roles' rules are resolved once per version; every change to an RBAC object
must change the version.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from k3p.apiserver.bootstrap_policy import SYSTEM_MASTERS, aggregate_cluster_role
from k3p.apiserver.request_info import RequestAttributes, UserInfo

log = structlog.get_logger(__name__)

SERVICE_ACCOUNT_USERNAME_PREFIX = "system:serviceaccount:"

Rule = Mapping[str, Any]


def service_account_username(namespace: str, name: str) -> str:
    """The user name a service account authenticates as."""
    return f"{SERVICE_ACCOUNT_USERNAME_PREFIX}{namespace}:{name}"


class RBACSource(Protocol):
    """Where the authorizer reads the current RBAC objects (plain Kubernetes dicts).

    A source may also define ``version() -> Hashable``, a value that changes whenever any
    ClusterRole, ClusterRoleBinding, Role or RoleBinding changes (for example the tuple of
    the four watch caches' resourceVersions). With it the authorizer caches its indexes
    until the value changes; without it every decision reads the source afresh.
    """

    def cluster_roles(self) -> Iterable[dict[str, Any]]:
        """Every ClusterRole."""
        ...

    def cluster_role_bindings(self) -> Iterable[dict[str, Any]]:
        """Every ClusterRoleBinding."""
        ...

    def roles(self, namespace: str) -> Iterable[dict[str, Any]]:
        """The Roles in ``namespace``."""
        ...

    def role_bindings(self, namespace: str) -> Iterable[dict[str, Any]]:
        """The RoleBindings in ``namespace``."""
        ...

    def cluster_role(self, name: str) -> dict[str, Any] | None:
        """The ClusterRole ``name``, or None."""
        ...

    def role(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Role ``namespace/name``, or None."""
        ...


@dataclass(frozen=True)
class Decision:
    """An authorization answer; ``reason`` is Kubernetes' authorizer reason text."""

    allowed: bool
    reason: str = ""


# --- rule matching -------------------------------------------------------------------


def verb_matches(rule: Rule, verb: str) -> bool:
    """Whether the rule's verbs include ``verb`` (or ``*``)."""
    verbs = rule.get("verbs") or ()
    return "*" in verbs or verb in verbs


def api_group_matches(rule: Rule, group: str) -> bool:
    """Whether the rule's apiGroups include ``group`` (or ``*``)."""
    groups = rule.get("apiGroups") or ()
    return "*" in groups or group in groups


def resource_matches(rule: Rule, combined_resource: str, subresource: str) -> bool:
    """Whether the rule covers ``resource[/subresource]``; ``*/sub`` covers any resource's ``sub``."""
    for ruled in rule.get("resources") or ():
        if ruled == "*" or ruled == combined_resource:
            return True
        if subresource and ruled.startswith("*/") and ruled[2:] == subresource:
            return True
    return False


def resource_name_matches(rule: Rule, name: str) -> bool:
    """Whether the rule has no resourceNames or lists ``name``."""
    names = rule.get("resourceNames") or ()
    return not names or name in names


def non_resource_url_matches(rule: Rule, path: str) -> bool:
    """Whether one of the rule's nonResourceURLs is ``*``, ``path``, or a ``prefix*`` of it."""
    for url in rule.get("nonResourceURLs") or ():
        if url == "*" or url == path:
            return True
        if url.endswith("*") and path.startswith(url.rstrip("*")):
            return True
    return False


def rule_allows(attrs: RequestAttributes, rule: Rule) -> bool:
    """Whether a single PolicyRule allows the request."""
    if attrs.is_resource_request:
        combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        return (
            verb_matches(rule, attrs.verb)
            and api_group_matches(rule, attrs.api_group)
            and resource_matches(rule, combined, attrs.subresource)
            and resource_name_matches(rule, attrs.name)
        )
    return verb_matches(rule, attrs.verb) and non_resource_url_matches(rule, attrs.path)


# --- forbidden messages ------------------------------------------------------------


def forbidden_message(attrs: RequestAttributes) -> str:
    """Kubernetes' description of what was refused, e.g.
    ``User "x" cannot list resource "pods" in API group "" in the namespace "default"``."""
    user = attrs.user.name
    if not attrs.is_resource_request:
        return f"User {_q(user)} cannot {attrs.verb} path {_q(attrs.path)}"
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    head = f"User {_q(user)} cannot {attrs.verb} resource {_q(resource)} in API group {_q(attrs.api_group)}"
    if attrs.namespace:
        return f"{head} in the namespace {_q(attrs.namespace)}"
    return f"{head} at the cluster scope"


def forbidden_status_message(attrs: RequestAttributes, reason: str = "") -> str:
    """The whole message of the 403 Status, e.g. ``pods "p" is forbidden: User ...: <reason>``."""
    detail = forbidden_message(attrs)
    if reason:
        detail = f"{detail}: {reason}"
    qualified = _qualified_resource(attrs)
    if not qualified:
        return f"forbidden: {detail}"
    if attrs.name:
        return f"{qualified} {_q(attrs.name)} is forbidden: {detail}"
    return f"{qualified} is forbidden: {detail}"


def forbidden_status(attrs: RequestAttributes, reason: str = "") -> dict[str, Any]:
    """The ``Status`` object Kubernetes answers a refused request with (code 403)."""
    details: dict[str, str] = {}
    if attrs.name:
        details["name"] = attrs.name
    if attrs.api_group:
        details["group"] = attrs.api_group
    if attrs.resource:
        details["kind"] = attrs.resource
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": forbidden_status_message(attrs, reason),
        "reason": "Forbidden",
        "details": details,
        "code": 403,
    }


def _qualified_resource(attrs: RequestAttributes) -> str:
    if attrs.api_group:
        return f"{attrs.resource}.{attrs.api_group}"
    return attrs.resource


def _q(text: str) -> str:
    """Go's %q for the plain strings that appear in names and paths."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


# --- the authorizer ----------------------------------------------------------------


@dataclass
class _Grant:
    """One binding that applies to a user, with the subject that made it apply."""

    kind: str  # "ClusterRoleBinding" or "RoleBinding"
    binding: Mapping[str, Any]
    subject: Mapping[str, Any]

    def describe(self) -> str:
        meta = self.binding.get("metadata", {})
        ref = self.binding.get("roleRef", {})
        namespace = meta.get("namespace", "")
        name = meta.get("name", "")
        if self.kind == "RoleBinding":
            name = f"{name}/{namespace}"
        else:
            namespace = ""
        return (
            f"{self.kind} {_q(name)} of {ref.get('kind', '')} {_q(ref.get('name', ''))} "
            f"to {_describe_subject(self.subject, namespace)}"
        )


def _describe_subject(subject: Mapping[str, Any], binding_namespace: str) -> str:
    kind = subject.get("kind", "")
    name = subject.get("name", "")
    if kind == "ServiceAccount":
        return f"{kind} {_q(name + '/' + (subject.get('namespace') or binding_namespace))}"
    return f"{kind} {_q(name)}"


def _subject_key(subject: Mapping[str, Any], binding_namespace: str) -> tuple[str, str] | None:
    """The index key a user must present for ``subject`` to apply to them."""
    kind = subject.get("kind")
    name = subject.get("name", "")
    if kind in ("User", "Group"):
        return (kind, name)
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        if not namespace:
            return None
        return ("ServiceAccount", service_account_username(namespace, name))
    return None


def _user_keys(user: UserInfo) -> list[tuple[str, str]]:
    keys = [("User", user.name)]
    keys.extend(("Group", g) for g in user.groups)
    if user.name.startswith(SERVICE_ACCOUNT_USERNAME_PREFIX):
        keys.append(("ServiceAccount", user.name))
    return keys


def _applies(subject: Mapping[str, Any], user: UserInfo, binding_namespace: str) -> bool:
    key = _subject_key(subject, binding_namespace)
    if key is None:
        return False
    kind, value = key
    if kind == "Group":
        return value in user.groups
    return value == user.name


class _BindingIndex:
    """Bindings of one scope indexed by the subject keys that make them apply."""

    def __init__(self, kind: str, bindings: Iterable[Mapping[str, Any]], namespace: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.bindings = list(bindings)
        self.by_key: dict[tuple[str, str], list[int]] = {}
        for position, binding in enumerate(self.bindings):
            for subject in binding.get("subjects") or ():
                key = _subject_key(subject, namespace)
                if key is None:
                    continue
                positions = self.by_key.setdefault(key, [])
                if not positions or positions[-1] != position:
                    positions.append(position)

    def grants(self, user: UserInfo) -> list[_Grant]:
        """The bindings that apply to ``user``, in source order, each with its first matching subject."""
        positions: set[int] = set()
        for key in _user_keys(user):
            positions.update(self.by_key.get(key, ()))
        grants = []
        for position in sorted(positions):
            binding = self.bindings[position]
            for subject in binding.get("subjects") or ():
                if _applies(subject, user, self.namespace):
                    grants.append(_Grant(self.kind, binding, subject))
                    break
        return grants


@dataclass
class _State:
    """What the authorizer derived from one version of the source."""

    version: Hashable
    cluster_index: _BindingIndex | None = None
    namespace_indexes: dict[str, _BindingIndex] = field(default_factory=dict)
    role_rules: dict[tuple[str, str, str], tuple[list[Rule], str]] = field(default_factory=dict)
    all_cluster_roles: list[dict[str, Any]] | None = None


_NO_VERSION = object()


class RBACAuthorizer:
    """Decides requests from the RBAC objects of an :class:`RBACSource`.

    ``resolve_aggregation``: compute the rules of ClusterRoles that have an
    ``aggregationRule`` from the roles their selectors match, instead of trusting their
    stored ``rules``; this keeps ``admin``/``edit``/``view`` complete even before (or
    without) a controller that writes the aggregated rules back.
    """

    def __init__(self, source: RBACSource, *, resolve_aggregation: bool = True) -> None:
        self._source = source
        self._resolve_aggregation = resolve_aggregation
        self._state: _State | None = None

    # -- decisions

    def authorize(self, attrs: RequestAttributes) -> Decision:
        """Allow or refuse one request; the reason follows Kubernetes' RBAC wording."""
        if SYSTEM_MASTERS in attrs.user.groups:
            return Decision(True, "")
        state = self._current_state()
        errors: list[str] = []
        for grant in self._grants(state, attrs.user, attrs.namespace):
            rules, error = self._rules_of(state, grant)
            if error:
                errors.append(error)
                continue
            for rule in rules:
                if rule_allows(attrs, rule):
                    return Decision(True, f"RBAC: allowed by {grant.describe()}")
        reason = f"RBAC: {_aggregate_errors(errors)}" if errors else ""
        log.debug(
            "rbac denied",
            user=attrs.user.name,
            verb=attrs.verb,
            resource=attrs.resource,
            subresource=attrs.subresource,
            namespace=attrs.namespace,
            name=attrs.name,
            path=None if attrs.is_resource_request else attrs.path,
            reason=reason,
        )
        return Decision(False, reason)

    def rules_for(self, user: UserInfo, namespace: str) -> tuple[list[dict], list[dict], bool]:
        """The rules ``user`` holds in ``namespace`` (cluster-wide ones included), for
        SelfSubjectRulesReview: ``(resource_rules, non_resource_rules, incomplete)``.

        Rules are in SubjectRulesReviewStatus form (``verbs``, ``apiGroups``, ``resources``,
        ``resourceNames`` / ``verbs``, ``nonResourceURLs``). RBAC can always enumerate its
        rules, so ``incomplete`` is False; references to missing roles are reported by
        :meth:`rules_review_status` as ``evaluationError``.
        """
        resource_rules, non_resource_rules, incomplete, _ = self._rules_for(user, namespace)
        return resource_rules, non_resource_rules, incomplete

    def rules_review_status(self, user: UserInfo, namespace: str) -> dict[str, Any]:
        """The ``status`` of a SelfSubjectRulesReview for ``user`` in ``namespace``."""
        resource_rules, non_resource_rules, incomplete, errors = self._rules_for(user, namespace)
        status: dict[str, Any] = {
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": incomplete,
        }
        if errors:
            status["evaluationError"] = _aggregate_errors(errors)
        return status

    def evaluate_access_review(self, spec: Mapping[str, Any], user: UserInfo | None = None) -> dict[str, Any]:
        """The ``status`` of a SubjectAccessReview, LocalSubjectAccessReview or
        SelfSubjectAccessReview with this ``spec``.

        ``user`` is the requester for a SelfSubjectAccessReview (its spec names no user);
        otherwise the subject is ``spec.user``/``groups``/``uid``/``extra`` as given (no
        groups are added). Keys follow the API's JSON: ``allowed`` always, ``denied`` and
        ``reason`` only when set. Raises ValueError when the spec has neither
        ``resourceAttributes`` nor ``nonResourceAttributes``.
        """
        decision = self.authorize(access_review_attributes(spec, user))
        status: dict[str, Any] = {"allowed": decision.allowed}
        if decision.reason:
            status["reason"] = decision.reason
        return status

    # -- internals

    def _rules_for(self, user: UserInfo, namespace: str) -> tuple[list[dict], list[dict], bool, list[str]]:
        resource_rules: list[dict] = []
        non_resource_rules: list[dict] = []
        if SYSTEM_MASTERS in user.groups:
            # What the superuser authorizer reports, ahead of RBAC's own rules.
            resource_rules.append({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})
            non_resource_rules.append({"verbs": ["*"], "nonResourceURLs": ["*"]})
        state = self._current_state()
        errors: list[str] = []
        for grant in self._grants(state, user, namespace):
            rules, error = self._rules_of(state, grant)
            if error:
                errors.append(error)
                continue
            for rule in rules:
                if rule.get("resources"):
                    out: dict[str, Any] = {"verbs": list(rule.get("verbs") or [])}
                    if rule.get("apiGroups"):
                        out["apiGroups"] = list(rule["apiGroups"])
                    out["resources"] = list(rule["resources"])
                    if rule.get("resourceNames"):
                        out["resourceNames"] = list(rule["resourceNames"])
                    resource_rules.append(out)
                if rule.get("nonResourceURLs"):
                    non_resource_rules.append(
                        {"verbs": list(rule.get("verbs") or []), "nonResourceURLs": list(rule["nonResourceURLs"])}
                    )
        return resource_rules, non_resource_rules, False, errors

    def _current_state(self) -> _State:
        version_of = getattr(self._source, "version", None)
        version = version_of() if callable(version_of) else _NO_VERSION
        if version is _NO_VERSION or version is None:
            return _State(_NO_VERSION)
        if self._state is None or self._state.version != version:
            self._state = _State(version)
        return self._state

    def _grants(self, state: _State, user: UserInfo, namespace: str) -> list[_Grant]:
        if state.cluster_index is None:
            state.cluster_index = _BindingIndex(
                "ClusterRoleBinding", self._source.cluster_role_bindings(), namespace=""
            )
        grants = state.cluster_index.grants(user)
        if namespace:
            index = state.namespace_indexes.get(namespace)
            if index is None:
                index = _BindingIndex("RoleBinding", self._source.role_bindings(namespace), namespace)
                state.namespace_indexes[namespace] = index
            grants.extend(index.grants(user))
        return grants

    def _rules_of(self, state: _State, grant: _Grant) -> tuple[list[Rule], str]:
        """The rules a binding's roleRef grants, or an error text when it cannot be resolved."""
        ref = grant.binding.get("roleRef") or {}
        kind, name = ref.get("kind", ""), ref.get("name", "")
        namespace = grant.binding.get("metadata", {}).get("namespace", "") if grant.kind == "RoleBinding" else ""
        key = (kind, namespace if kind == "Role" else "", name)
        cached = state.role_rules.get(key)
        if cached is not None:
            return cached
        if kind == "ClusterRole":
            role = self._source.cluster_role(name)
            if role is None:
                result: tuple[list[Rule], str] = ([], f"clusterrole.rbac.authorization.k8s.io {_q(name)} not found")
            elif self._resolve_aggregation and role.get("aggregationRule") is not None:
                result = (aggregate_cluster_role(role, self._cluster_roles(state)), "")
            else:
                result = (list(role.get("rules") or []), "")
        elif kind == "Role":
            role = self._source.role(namespace, name)
            if role is None:
                result = ([], f"role.rbac.authorization.k8s.io {_q(name)} not found")
            else:
                result = (list(role.get("rules") or []), "")
        else:
            result = ([], f"unsupported role reference kind: {_q(kind)}")
        state.role_rules[key] = result
        return result

    def _cluster_roles(self, state: _State) -> list[dict[str, Any]]:
        if state.all_cluster_roles is None:
            state.all_cluster_roles = list(self._source.cluster_roles())
        return state.all_cluster_roles


def _aggregate_errors(errors: list[str]) -> str:
    """Kubernetes' aggregate error text: one error alone, several distinct ones in brackets."""
    distinct = list(dict.fromkeys(errors))
    if len(distinct) == 1:
        return distinct[0]
    return "[" + ", ".join(distinct) + "]"


def access_review_attributes(spec: Mapping[str, Any], user: UserInfo | None = None) -> RequestAttributes:
    """The request attributes an access review's ``spec`` asks about.

    ``user`` overrides the spec's subject (SelfSubjectAccessReview). An empty
    ``resourceAttributes.version`` means every version (``*``).
    """
    if user is None:
        extra = {k: list(v) for k, v in (spec.get("extra") or {}).items()}
        user = UserInfo(
            name=spec.get("user") or "",
            groups=tuple(spec.get("groups") or ()),
            uid=spec.get("uid") or "",
            extra=extra,
        )
    resource = spec.get("resourceAttributes")
    if resource is not None:
        return RequestAttributes(
            user=user,
            verb=resource.get("verb") or "",
            api_group=resource.get("group") or "",
            api_version=resource.get("version") or "*",
            resource=resource.get("resource") or "",
            subresource=resource.get("subresource") or "",
            namespace=resource.get("namespace") or "",
            name=resource.get("name") or "",
            is_resource_request=True,
        )
    non_resource = spec.get("nonResourceAttributes")
    if non_resource is not None:
        return RequestAttributes(
            user=user,
            verb=non_resource.get("verb") or "",
            path=non_resource.get("path") or "",
            is_resource_request=False,
        )
    raise ValueError("exactly one of nonResourceAttributes or resourceAttributes must be specified")


class InMemoryRBACSource:
    """An :class:`RBACSource` over a set of RBAC objects held in memory, with a version
    that changes on every write. Handy before the watch cache exists and in tests."""

    def __init__(self, objects: Iterable[Mapping[str, Any]] = ()) -> None:
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._version = 0
        for obj in objects:
            self.put(obj)

    def put(self, obj: Mapping[str, Any]) -> None:
        """Create or replace a ClusterRole, ClusterRoleBinding, Role or RoleBinding."""
        meta = obj.get("metadata", {})
        kind = obj.get("kind", "")
        if kind not in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            raise ValueError(f"not an RBAC object: kind {kind!r}")
        namespace = meta.get("namespace", "") if kind in ("Role", "RoleBinding") else ""
        self._objects[(kind, namespace, meta.get("name", ""))] = dict(obj)
        self._version += 1

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        """Remove an object if present."""
        if self._objects.pop((kind, namespace, name), None) is not None:
            self._version += 1

    def version(self) -> int:
        """A counter that changes on every write."""
        return self._version

    def _of_kind(self, kind: str, namespace: str = "") -> list[dict[str, Any]]:
        return [obj for (k, ns, _), obj in self._objects.items() if k == kind and ns == namespace]

    def cluster_roles(self) -> list[dict[str, Any]]:
        return self._of_kind("ClusterRole")

    def cluster_role_bindings(self) -> list[dict[str, Any]]:
        return self._of_kind("ClusterRoleBinding")

    def roles(self, namespace: str) -> list[dict[str, Any]]:
        return self._of_kind("Role", namespace)

    def role_bindings(self, namespace: str) -> list[dict[str, Any]]:
        return self._of_kind("RoleBinding", namespace)

    def cluster_role(self, name: str) -> dict[str, Any] | None:
        return self._objects.get(("ClusterRole", "", name))

    def role(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._objects.get(("Role", namespace, name))
