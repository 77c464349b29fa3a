"""Which nodes a pod may run on: node selectors, required node affinity, taints and tolerations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from k3p.client.api import Obj


def _expression_matches(expr: Mapping[str, Any], value: str | None) -> bool:
    op = expr.get("operator")
    values = expr.get("values") or []
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt"):
        try:
            have, want = int(value or ""), int(values[0])
        except (ValueError, IndexError):
            return False
        return have > want if op == "Gt" else have < want
    return False


def node_selector_term_matches(term: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """A NodeSelectorTerm: all expressions and field requirements hold; an empty term matches nothing."""
    exprs = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not exprs and not fields:
        return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    for expr in exprs:
        if not _expression_matches(expr, labels.get(expr.get("key", ""))):
            return False
    for expr in fields:
        if expr.get("key") != "metadata.name":
            return False
        if not _expression_matches(expr, (node.get("metadata") or {}).get("name")):
            return False
    return True


def node_selector_matches(selector: Mapping[str, Any] | None, node: Mapping[str, Any]) -> bool:
    """A NodeSelector (ORed terms); None allows every node."""
    if selector is None:
        return True
    return any(node_selector_term_matches(t, node) for t in selector.get("nodeSelectorTerms") or [])


def pod_fits_node(pod_spec: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """spec.nodeSelector and required node affinity both allow ``node`` (and spec.nodeName, if set)."""
    name = (node.get("metadata") or {}).get("name")
    if pod_spec.get("nodeName") and pod_spec["nodeName"] != name:
        return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    for k, v in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    return node_selector_matches(required, node)


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Whether one toleration covers one taint (kube's ToleratesTaint)."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    op = toleration.get("operator") or "Equal"
    if not key:
        return op == "Exists"
    if key != taint.get("key"):
        return False
    if op == "Exists":
        return True
    return (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated_taints(taints: Iterable[Obj], tolerations: Iterable[Obj], effects: Iterable[str]) -> list[Obj]:
    """The taints with one of ``effects`` that no toleration covers."""
    tols = list(tolerations)
    wanted = set(effects)
    return [t for t in taints if t.get("effect") in wanted and not any(tolerates(tol, t) for tol in tols)]
