"""Conversion between versions that share storage.

Two built-in pairs need real field mapping: ``autoscaling/v1`` <-> ``autoscaling/v2``
HorizontalPodAutoscaler (stored as v2) and ``v1`` <-> ``events.k8s.io/v1`` Event (stored as
core v1). Every other kind converts by relabelling its ``apiVersion`` (what a CRD with
``conversion.strategy: None`` does).

autoscaling/v1 cannot express everything v2 can; like kube, the rest travels in annotations
so that a v2 -> v1 -> v2 round trip loses nothing.
"""

from __future__ import annotations

import copy
import json
from typing import Any

METRICS_ANNOTATION = "autoscaling.alpha.kubernetes.io/metrics"
CURRENT_METRICS_ANNOTATION = "autoscaling.alpha.kubernetes.io/current-metrics"
CONDITIONS_ANNOTATION = "autoscaling.alpha.kubernetes.io/conditions"
BEHAVIOR_ANNOTATION = "autoscaling.alpha.kubernetes.io/behavior"
_ROUND_TRIP_ANNOTATIONS = (METRICS_ANNOTATION, CURRENT_METRICS_ANNOTATION, CONDITIONS_ANNOTATION,
                           BEHAVIOR_ANNOTATION)
# What an autoscaling/v1 HPA without a CPU target means.
DEFAULT_CPU_UTILIZATION = 80

Obj = dict[str, Any]


class ConversionError(ValueError):
    """The object cannot be converted to the requested version."""


def convert(obj: Obj, to_api_version: str) -> Obj:
    """Return a copy of ``obj`` as ``to_api_version`` (the input is left untouched)."""
    src = obj.get("apiVersion", "")
    kind = obj.get("kind", "")
    if src == to_api_version:
        return copy.deepcopy(obj)
    pair = (src, to_api_version)
    if kind == "HorizontalPodAutoscaler":
        if pair == ("autoscaling/v2", "autoscaling/v1"):
            return _hpa_v2_to_v1(obj)
        if pair == ("autoscaling/v1", "autoscaling/v2"):
            return _hpa_v1_to_v2(obj)
    elif kind == "Event":
        if pair == ("v1", "events.k8s.io/v1"):
            return _event_core_to_events(obj)
        if pair == ("events.k8s.io/v1", "v1"):
            return _event_events_to_core(obj)
    if src.rpartition("/")[0] != to_api_version.rpartition("/")[0]:
        raise ConversionError(f"cannot convert {kind} from {src!r} to {to_api_version!r}")
    out = copy.deepcopy(obj)
    out["apiVersion"] = to_api_version
    return out


def _put(d: Obj, key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


def _metadata_without(obj: Obj, drop: tuple[str, ...]) -> Obj:
    meta = copy.deepcopy(obj.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in drop}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return meta


# --- HorizontalPodAutoscaler ---------------------------------------------------------------

def _is_cpu_utilization(metric: Obj) -> bool:
    res = metric.get("resource") or {}
    target = res.get("target") or {}
    return (metric.get("type") == "Resource" and res.get("name") == "cpu"
            and target.get("averageUtilization") is not None)


def _v2_target_to_v1(target: Obj, utilization: str, average: str, value: str | None) -> Obj:
    out: Obj = {}
    _put(out, utilization, target.get("averageUtilization"))
    _put(out, average, target.get("averageValue"))
    if value:
        _put(out, value, target.get("value"))
    return out


def _metric_spec_v2_to_v1(m: Obj) -> Obj:
    kind = m.get("type")
    out: Obj = {"type": kind}
    if kind in ("Resource", "ContainerResource"):
        src = m.get("resource" if kind == "Resource" else "containerResource") or {}
        body = {"name": src.get("name")}
        _put(body, "container", src.get("container"))
        body.update(_v2_target_to_v1(src.get("target") or {}, "targetAverageUtilization",
                                     "targetAverageValue", None))
        out["resource" if kind == "Resource" else "containerResource"] = body
    elif kind == "Pods":
        src = m.get("pods") or {}
        ident = src.get("metric") or {}
        body = {"metricName": ident.get("name")}
        _put(body, "selector", ident.get("selector"))
        _put(body, "targetAverageValue", (src.get("target") or {}).get("averageValue"))
        out["pods"] = body
    elif kind == "Object":
        src = m.get("object") or {}
        ident = src.get("metric") or {}
        target = src.get("target") or {}
        body = {"target": src.get("describedObject"), "metricName": ident.get("name")}
        _put(body, "targetValue", target.get("value"))
        _put(body, "averageValue", target.get("averageValue"))
        _put(body, "selector", ident.get("selector"))
        out["object"] = body
    elif kind == "External":
        src = m.get("external") or {}
        ident = src.get("metric") or {}
        target = src.get("target") or {}
        body = {"metricName": ident.get("name")}
        _put(body, "metricSelector", ident.get("selector"))
        _put(body, "targetValue", target.get("value"))
        _put(body, "targetAverageValue", target.get("averageValue"))
        out["external"] = body
    return out


def _metric_spec_v1_to_v2(m: Obj) -> Obj:
    kind = m.get("type")
    out: Obj = {"type": kind}
    if kind in ("Resource", "ContainerResource"):
        key = "resource" if kind == "Resource" else "containerResource"
        src = m.get(key) or {}
        body: Obj = {"name": src.get("name")}
        _put(body, "container", src.get("container"))
        if src.get("targetAverageUtilization") is not None:
            body["target"] = {"type": "Utilization", "averageUtilization": src["targetAverageUtilization"]}
        else:
            body["target"] = {"type": "AverageValue", "averageValue": src.get("targetAverageValue")}
        out[key] = body
    elif kind == "Pods":
        src = m.get("pods") or {}
        ident: Obj = {"name": src.get("metricName")}
        _put(ident, "selector", src.get("selector"))
        out["pods"] = {"metric": ident,
                       "target": {"type": "AverageValue", "averageValue": src.get("targetAverageValue")}}
    elif kind == "Object":
        src = m.get("object") or {}
        ident = {"name": src.get("metricName")}
        _put(ident, "selector", src.get("selector"))
        if src.get("averageValue") is not None:
            target: Obj = {"type": "AverageValue", "averageValue": src["averageValue"]}
            _put(target, "value", src.get("targetValue"))
        else:
            target = {"type": "Value", "value": src.get("targetValue")}
        out["object"] = {"describedObject": src.get("target"), "metric": ident, "target": target}
    elif kind == "External":
        src = m.get("external") or {}
        ident = {"name": src.get("metricName")}
        _put(ident, "selector", src.get("metricSelector"))
        if src.get("targetAverageValue") is not None:
            target = {"type": "AverageValue", "averageValue": src["targetAverageValue"]}
        else:
            target = {"type": "Value", "value": src.get("targetValue")}
        out["external"] = {"metric": ident, "target": target}
    return out


def _metric_status_v2_to_v1(m: Obj) -> Obj:
    kind = m.get("type")
    out: Obj = {"type": kind}
    if kind in ("Resource", "ContainerResource"):
        key = "resource" if kind == "Resource" else "containerResource"
        src = m.get(key) or {}
        current = src.get("current") or {}
        body: Obj = {"name": src.get("name")}
        _put(body, "container", src.get("container"))
        _put(body, "currentAverageUtilization", current.get("averageUtilization"))
        _put(body, "currentAverageValue", current.get("averageValue"))
        out[key] = body
    elif kind == "Pods":
        src = m.get("pods") or {}
        ident = src.get("metric") or {}
        body = {"metricName": ident.get("name")}
        _put(body, "selector", ident.get("selector"))
        _put(body, "currentAverageValue", (src.get("current") or {}).get("averageValue"))
        out["pods"] = body
    elif kind == "Object":
        src = m.get("object") or {}
        ident = src.get("metric") or {}
        current = src.get("current") or {}
        body = {"target": src.get("describedObject"), "metricName": ident.get("name")}
        _put(body, "currentValue", current.get("value"))
        _put(body, "averageValue", current.get("averageValue"))
        _put(body, "selector", ident.get("selector"))
        out["object"] = body
    elif kind == "External":
        src = m.get("external") or {}
        ident = src.get("metric") or {}
        current = src.get("current") or {}
        body = {"metricName": ident.get("name")}
        _put(body, "metricSelector", ident.get("selector"))
        _put(body, "currentValue", current.get("value"))
        _put(body, "currentAverageValue", current.get("averageValue"))
        out["external"] = body
    return out


def _metric_status_v1_to_v2(m: Obj) -> Obj:
    kind = m.get("type")
    out: Obj = {"type": kind}
    if kind in ("Resource", "ContainerResource"):
        key = "resource" if kind == "Resource" else "containerResource"
        src = m.get(key) or {}
        current: Obj = {}
        _put(current, "averageUtilization", src.get("currentAverageUtilization"))
        _put(current, "averageValue", src.get("currentAverageValue"))
        body: Obj = {"name": src.get("name"), "current": current}
        _put(body, "container", src.get("container"))
        out[key] = body
    elif kind == "Pods":
        src = m.get("pods") or {}
        ident: Obj = {"name": src.get("metricName")}
        _put(ident, "selector", src.get("selector"))
        current = {}
        _put(current, "averageValue", src.get("currentAverageValue"))
        out["pods"] = {"metric": ident, "current": current}
    elif kind == "Object":
        src = m.get("object") or {}
        ident = {"name": src.get("metricName")}
        _put(ident, "selector", src.get("selector"))
        current = {}
        _put(current, "value", src.get("currentValue"))
        _put(current, "averageValue", src.get("averageValue"))
        out["object"] = {"describedObject": src.get("target"), "metric": ident, "current": current}
    elif kind == "External":
        src = m.get("external") or {}
        ident = {"name": src.get("metricName")}
        _put(ident, "selector", src.get("metricSelector"))
        current = {}
        _put(current, "value", src.get("currentValue"))
        _put(current, "averageValue", src.get("currentAverageValue"))
        out["external"] = {"metric": ident, "current": current}
    return out


def _hpa_v2_to_v1(obj: Obj) -> Obj:
    spec = obj.get("spec") or {}
    status = obj.get("status")
    meta = _metadata_without(obj, _ROUND_TRIP_ANNOTATIONS)
    annotations: dict[str, str] = {}

    out_spec: Obj = {}
    _put(out_spec, "scaleTargetRef", copy.deepcopy(spec.get("scaleTargetRef")))
    _put(out_spec, "minReplicas", spec.get("minReplicas"))
    _put(out_spec, "maxReplicas", spec.get("maxReplicas"))
    others = []
    for metric in spec.get("metrics") or ():
        if _is_cpu_utilization(metric):
            out_spec.setdefault("targetCPUUtilizationPercentage",
                                metric["resource"]["target"]["averageUtilization"])
        else:
            others.append(_metric_spec_v2_to_v1(metric))
    if others:
        annotations[METRICS_ANNOTATION] = json.dumps(others, separators=(",", ":"))
    if spec.get("behavior") is not None:
        annotations[BEHAVIOR_ANNOTATION] = json.dumps(spec["behavior"], separators=(",", ":"))

    out: Obj = {"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": meta,
                "spec": out_spec}
    if status is not None:
        out_status: Obj = {}
        for key in ("observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"):
            _put(out_status, key, status.get(key))
        current = status.get("currentMetrics") or []
        for metric in current:
            res = metric.get("resource") or {}
            if metric.get("type") == "Resource" and res.get("name") == "cpu":
                _put(out_status, "currentCPUUtilizationPercentage",
                     (res.get("current") or {}).get("averageUtilization"))
        if current:
            annotations[CURRENT_METRICS_ANNOTATION] = json.dumps(
                [_metric_status_v2_to_v1(m) for m in current], separators=(",", ":"))
        if status.get("conditions"):
            annotations[CONDITIONS_ANNOTATION] = json.dumps(status["conditions"], separators=(",", ":"))
        out["status"] = out_status
    if annotations:
        meta["annotations"] = {**meta.get("annotations", {}), **annotations}
    return out


def _hpa_v1_to_v2(obj: Obj) -> Obj:
    spec = obj.get("spec") or {}
    status = obj.get("status")
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    meta = _metadata_without(obj, _ROUND_TRIP_ANNOTATIONS)

    def decoded(key: str) -> Any:
        raw = annotations.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ConversionError(f"annotation {key} is not valid JSON: {exc}") from None

    out_spec: Obj = {}
    _put(out_spec, "scaleTargetRef", copy.deepcopy(spec.get("scaleTargetRef")))
    _put(out_spec, "minReplicas", spec.get("minReplicas"))
    _put(out_spec, "maxReplicas", spec.get("maxReplicas"))
    metrics = [_metric_spec_v1_to_v2(m) for m in decoded(METRICS_ANNOTATION) or ()]
    cpu = spec.get("targetCPUUtilizationPercentage")
    if cpu is None and not metrics:
        cpu = DEFAULT_CPU_UTILIZATION
    if cpu is not None:
        metrics.append({"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}})
    out_spec["metrics"] = metrics
    _put(out_spec, "behavior", decoded(BEHAVIOR_ANNOTATION))

    out: Obj = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
                "spec": out_spec}
    if status is not None:
        out_status: Obj = {}
        for key in ("observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"):
            _put(out_status, key, status.get(key))
        current = decoded(CURRENT_METRICS_ANNOTATION)
        if current is not None:
            out_status["currentMetrics"] = [_metric_status_v1_to_v2(m) for m in current]
        elif status.get("currentCPUUtilizationPercentage") is not None:
            out_status["currentMetrics"] = [{"type": "Resource", "resource": {
                "name": "cpu", "current": {"averageUtilization": status["currentCPUUtilizationPercentage"]}}}]
        _put(out_status, "conditions", decoded(CONDITIONS_ANNOTATION))
        out["status"] = out_status
    return out


# --- Event ---------------------------------------------------------------------------------

# (core v1 field, events.k8s.io/v1 field)
_EVENT_FIELDS = (
    ("involvedObject", "regarding"),
    ("related", "related"),
    ("message", "note"),
    ("reason", "reason"),
    ("type", "type"),
    ("action", "action"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
)


def _event_core_to_events(obj: Obj) -> Obj:
    out: Obj = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": copy.deepcopy(obj.get("metadata") or {})}
    for core, new in _EVENT_FIELDS:
        _put(out, new, copy.deepcopy(obj.get(core)))
    return out


def _event_events_to_core(obj: Obj) -> Obj:
    out: Obj = {"apiVersion": "v1", "kind": "Event", "metadata": copy.deepcopy(obj.get("metadata") or {})}
    for core, new in _EVENT_FIELDS:
        _put(out, core, copy.deepcopy(obj.get(new)))
    return out
