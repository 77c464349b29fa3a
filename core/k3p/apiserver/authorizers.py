"""The API server's authorizer chain: the Node authorizer, then RBAC (``--authorization-mode=Node,RBAC``).

The first authorizer that allows a request decides it; when none does, the request is
refused with every reason given along the way, joined as Kubernetes' union authorizer
joins them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from k3p.apiserver.node_authorizer import NodeAuthorizer, node_identity
from k3p.apiserver.rbac import Decision, RBACAuthorizer, access_review_attributes
from k3p.apiserver.request_info import RequestAttributes, UserInfo

#: what SelfSubjectRulesReview reports for a node: its permissions cannot be listed
NODE_RULES_UNRESOLVABLE = "node authorizer does not support user rule resolution"


class AuthorizerChain:
    """Node authorizer then RBAC, with the review answers (access and rules) of both."""

    def __init__(self, node: NodeAuthorizer, rbac: RBACAuthorizer) -> None:
        self.node = node
        self.rbac = rbac

    def authorize(self, attrs: RequestAttributes) -> Decision:
        """Allow or refuse one request."""
        reasons: list[str] = []
        decision = self.node.authorize(attrs)
        if decision is not None:
            if decision.allowed:
                return decision
            if decision.reason:
                reasons.append(decision.reason)
        decision = self.rbac.authorize(attrs)
        if decision.allowed:
            return decision
        if decision.reason:
            reasons.append(decision.reason)
        return Decision(False, ", ".join(reasons))

    def evaluate_access_review(self, spec: Mapping[str, Any], user: UserInfo | None = None) -> dict[str, Any]:
        """The ``status`` of a (Self|Local)SubjectAccessReview; see :meth:`RBACAuthorizer.evaluate_access_review`."""
        decision = self.authorize(access_review_attributes(spec, user))
        status: dict[str, Any] = {"allowed": decision.allowed}
        if decision.reason:
            status["reason"] = decision.reason
        return status

    def rules_review_status(self, user: UserInfo, namespace: str) -> dict[str, Any]:
        """The ``status`` of a SelfSubjectRulesReview: RBAC's rules, marked incomplete for a node."""
        status = self.rbac.rules_review_status(user, namespace)
        if node_identity(user)[1]:
            status["incomplete"] = True
            errors = [NODE_RULES_UNRESOLVABLE]
            if status.get("evaluationError"):
                errors.append(status["evaluationError"])
            status["evaluationError"] = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        return status
