"""Label and field selectors: syntax, matching and kube's error messages."""

from __future__ import annotations

import pytest

from k3p.selectors import (
    FieldSelector,
    LabelRequirement,
    LabelSelector,
    SelectorError,
    field_values,
    format_label_selector,
    format_labels,
    label_selector_from_dict,
    label_value_errors,
    parse_field_selector,
    parse_label_selector,
    qualified_name_errors,
    supported_fields,
)

NAME_PART_ERR = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
LABEL_VALUE_ERR = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used "
    "for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
BINARY_OPS = "in, notin, =, ==, !=, gt, lt"


# ----- label selector strings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("   ", ""),
        ("a=b", "a=b"),
        ("a==b", "a==b"),
        ("a!=b", "a!=b"),
        ("a", "a"),
        ("!a", "!a"),
        ("a=", "a="),
        ("a==,b", "a==,b"),
        ("a in (x,y)", "a in (x,y)"),
        ("a in (y,x,y)", "a in (x,y)"),
        ("a notin (x)", "a notin (x)"),
        ("a in ()", "a in ()"),
        ("x in (foo,,baz),y,z notin ()", "x in (,baz,foo),y,z notin ()"),
        ("a in (x,)", "a in (,x)"),
        ("  a  =  b  ,  c  ", "a=b,c"),
        ("a\t=\tb\n,c", "a=b,c"),
        ("z=1,a=2,m", "a=2,m,z=1"),
        ("example.com/app=web", "example.com/app=web"),
        ("a>5", "a>5"),
        ("a<5", "a<5"),
        # "in" and "notin" are values (and keys) where a value is expected
        ("a in (in,notin)", "a in (in,notin)"),
        ("a=in", "a=in"),
        ("in", "in"),
        ("!in", "!in"),
        ("a!=,b in (c)", "a!=,b in (c)"),
    ],
)
def test_label_selector_parses_to_canonical_string(text: str, canonical: str) -> None:
    assert parse_label_selector(text).to_string() == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a b", f"unable to parse requirement: found 'b', expected: {BINARY_OPS}"),
        ("a in b", "unable to parse requirement: found 'b' expected: '('"),
        ("a in (x", "unable to parse requirement: found '', expected: ',' or ')'"),
        ("a in (x y)", "unable to parse requirement: found 'y', expected: ',' or ')'"),
        ("a in (=)", "unable to parse requirement: found '=', expected: ',', ')' or identifier"),
        ("a in (x,=)", "unable to parse requirement: found '=', expected: ',', or identifier"),
        ("a in", "unable to parse requirement: found '' expected: '('"),
        ("a=(", "unable to parse requirement: found '(', expected: identifier"),
        ("!", "unable to parse requirement: found '', expected: identifier"),
        ("! =a", "unable to parse requirement: found '=', expected: identifier"),
        ("!!a", "unable to parse requirement: found '!', expected: identifier"),
        # "!=" lexes as one operator token
        ("!=a", "found '!=', expected: !, identifier, or 'end of string'"),
        ("a,", "found '', expected: identifier after ','"),
        ("a,,b", "found ',', expected: identifier after ','"),
        (",a", "found ',', expected: !, identifier, or 'end of string'"),
        ("=a", "found '=', expected: !, identifier, or 'end of string'"),
        ("(a)", "found '(', expected: !, identifier, or 'end of string'"),
        ("a=b c", "found 'c', expected: ',' or 'end of string'"),
        ("!a=b", "found '=', expected: ',' or 'end of string'"),
        ("a=b)", "found ')', expected: ',' or 'end of string'"),
        ("-a=b", f'unable to parse requirement: <nil>: Invalid value: "-a": {NAME_PART_ERR}'),
        ("a=-b", f'unable to parse requirement: values[0][a]: Invalid value: "-b": {LABEL_VALUE_ERR}'),
        (
            "a in (ok,-bad)",
            f'unable to parse requirement: values[0][a]: Invalid value: "-bad": {LABEL_VALUE_ERR}',
        ),
        (
            "a>b",
            "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, "
            "the value must be an integer",
        ),
        # a negative bound parses as an integer but is no valid label value
        ("a<-5", f'unable to parse requirement: values[0][a]: Invalid value: "-5": {LABEL_VALUE_ERR}'),
        (
            "a/b/c",
            'unable to parse requirement: <nil>: Invalid value: "a/b/c": a qualified name must consist of '
            "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character "
            "(e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
            "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')",
        ),
        (
            "/a",
            'unable to parse requirement: <nil>: Invalid value: "/a": prefix part must be non-empty',
        ),
        (
            "Example.com/a",
            'unable to parse requirement: <nil>: Invalid value: "Example.com/a": prefix part a lowercase '
            "RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start "
            "and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ),
        (
            "a/",
            'unable to parse requirement: <nil>: Invalid value: "a/": name part must be non-empty; ' + NAME_PART_ERR,
        ),
        (
            "k" * 64,
            f'unable to parse requirement: <nil>: Invalid value: "{"k" * 64}": name part must be no more '
            "than 63 characters",
        ),
        (
            "a=" + "v" * 64,
            f'unable to parse requirement: values[0][a]: Invalid value: "{"v" * 64}": must be no more than '
            "63 characters",
        ),
    ],
)
def test_label_selector_errors_use_kube_wording(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as err:
        parse_label_selector(text)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {}, True),
        ("", {"a": "b"}, True),
        ("a=b", {"a": "b"}, True),
        ("a=b", {"a": "c"}, False),
        ("a=b", {}, False),
        ("a==b", {"a": "b", "x": "y"}, True),
        ("a!=b", {"a": "c"}, True),
        ("a!=b", {}, True),
        ("a!=b", {"a": "b"}, False),
        ("a", {"a": ""}, True),
        ("a", {"b": "a"}, False),
        ("!a", {}, True),
        ("!a", {"a": ""}, False),
        ("a in (x,y)", {"a": "y"}, True),
        ("a in (x,y)", {"a": "z"}, False),
        ("a in (x,y)", {}, False),
        ("a notin (x,y)", {"a": "z"}, True),
        ("a notin (x,y)", {}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("a in (,x)", {"a": ""}, True),
        ("a=", {"a": ""}, True),
        ("a=", {}, False),
        ("a=b,c", {"a": "b"}, False),
        ("a=b,c", {"a": "b", "c": "d"}, True),
        ("a>5", {"a": "6"}, True),
        ("a>5", {"a": "5"}, False),
        ("a>5", {"a": "x"}, False),
        ("a>5", {}, False),
        ("a<5", {"a": "-1"}, True),
    ],
)
def test_label_selector_matching(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(text).matches(labels) is expected


def test_label_selector_none_labels_are_no_labels() -> None:
    assert parse_label_selector("!a").matches(None)
    assert not parse_label_selector("a").matches(None)


def test_requires_exact_match() -> None:
    sel = parse_label_selector("a=b,c in (d),e in (f,g),h!=i")
    assert sel.requires_exact_match("a") == "b"
    assert sel.requires_exact_match("c") == "d"
    assert sel.requires_exact_match("e") is None
    assert sel.requires_exact_match("h") is None
    assert sel.requires_exact_match("zz") is None


# ----- metav1 LabelSelector dicts ---------------------------------------------------------------


def test_label_selector_from_dict_round_trips_to_canonical_string() -> None:
    sel = label_selector_from_dict(
        {
            "matchLabels": {"app": "web", "tier": "front"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "dev"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["b"]},
                {"key": "owner", "operator": "Exists"},
            ],
        }
    )
    text = sel.to_string()
    assert text == "app=web,!canary,env in (dev,prod),owner,tier=front,zone notin (b)"
    assert parse_label_selector(text).to_string() == text
    assert sel.matches({"app": "web", "tier": "front", "env": "dev", "owner": "x"})
    assert not sel.matches({"app": "web", "tier": "front", "env": "dev", "owner": "x", "canary": "1"})
    assert not sel.matches({"app": "web", "tier": "front", "env": "qa", "owner": "x"})


def test_nil_selector_matches_nothing_and_empty_matches_everything() -> None:
    assert not label_selector_from_dict(None).matches({})
    assert not label_selector_from_dict(None).matches({"a": "b"})
    assert label_selector_from_dict({}).matches({"a": "b"})
    assert label_selector_from_dict({"matchLabels": {}, "matchExpressions": []}).empty
    assert label_selector_from_dict(None).to_string() == ""


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (
            {"matchExpressions": [{"key": "a", "operator": "Foo"}]},
            '"Foo" is not a valid label selector operator',
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
            "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            'values: Invalid value: []string{"x"}: values set must be empty for exists and does not exist',
        ),
        ({"matchLabels": {"-a": "b"}}, f'key: Invalid value: "-a": {NAME_PART_ERR}'),
        ({"matchLabels": {"a": "-b"}}, f'values[0][a]: Invalid value: "-b": {LABEL_VALUE_ERR}'),
    ],
)
def test_label_selector_from_dict_errors(selector: dict, message: str) -> None:
    with pytest.raises(SelectorError) as err:
        label_selector_from_dict(selector)
    assert str(err.value) == message


def test_requirement_aggregates_several_errors() -> None:
    with pytest.raises(SelectorError) as err:
        LabelRequirement.new("a", "gt", ["x", "y"])
    assert str(err.value) == (
        "[values: Invalid value: []string{\"x\", \"y\"}: for 'Gt', 'Lt' operators, exactly one value is required, "
        "values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value must be an integer, "
        "values[1]: Invalid value: \"y\": for 'Gt', 'Lt' operators, the value must be an integer]"
    )


def test_format_helpers() -> None:
    assert format_labels({"b": "2", "a": "1"}) == "a=1,b=2"
    assert format_labels({}) == "<none>"
    assert format_labels(None) == "<none>"
    assert format_label_selector({"matchLabels": {"app": "x"}}) == "app=x"
    assert format_label_selector({}) == "<none>"
    assert format_label_selector(None) == "<none>"
    assert format_label_selector({"matchExpressions": [{"key": "a", "operator": "Nope"}]}) == "<error>"
    assert LabelSelector.from_set({"b": "2", "a": "1"}).to_string() == "a=1,b=2"


def test_validation_helpers() -> None:
    assert qualified_name_errors("app.kubernetes.io/name") == []
    assert qualified_name_errors("a" * 63) == []
    assert label_value_errors("") == []
    assert label_value_errors("My_value-1.2") == []
    assert label_value_errors("bad value") != []


# ----- field selectors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "terms", "canonical"),
    [
        ("", [], ""),
        ("a=b", [("a", "=", "b")], "a=b"),
        ("a==b", [("a", "=", "b")], "a=b"),
        ("a!=b", [("a", "!=", "b")], "a!=b"),
        ("a=", [("a", "=", "")], "a="),
        ("b=1,a=2", [("a", "=", "2"), ("b", "=", "1")], "a=2,b=1"),
        ("a=b,,c=d", [("a", "=", "b"), ("c", "=", "d")], "a=b,c=d"),
        ("a=x\\,y", [("a", "=", "x,y")], "a=x\\,y"),
        ("a=x\\=y", [("a", "=", "x=y")], "a=x\\=y"),
        ("a=x\\\\y", [("a", "=", "x\\y")], "a=x\\\\y"),
        ("a=!b", [("a", "=", "!b")], "a=!b"),
        # the first operator splits; spaces belong to the names and values
        ("a = b", [("a ", "=", " b")], "a = b"),
    ],
)
def test_field_selector_parsing(text: str, terms: list[tuple[str, str, str]], canonical: str) -> None:
    sel = parse_field_selector(text)
    assert [(r.field, r.operator, r.value) for r in sel.requirements] == terms
    assert sel.to_string() == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a", "invalid selector: 'a'; can't understand 'a'"),
        ("a=b,c", "invalid selector: 'a=b,c'; can't understand 'c'"),
        ("a=b=c", "invalid field selector: unescaped character in value: 61"),
        ("a=b\\x", "invalid field selector: invalid escape sequence: \\x"),
        ("a=b\\", "invalid field selector: invalid escape sequence: \\"),
    ],
)
def test_field_selector_errors(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as err:
        parse_field_selector(text)
    assert str(err.value) == message


POD = {
    "metadata": {"name": "web-1", "namespace": "prod"},
    "spec": {
        "nodeName": "node-a",
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "serviceAccountName": "builder",
        "hostNetwork": True,
    },
    "status": {"phase": "Running", "podIPs": [{"ip": "10.42.0.7"}], "nominatedNodeName": "node-b"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metadata.name=web-1", True),
        ("metadata.name=web-2", False),
        ("metadata.namespace=prod", True),
        ("metadata.namespace!=prod", False),
        ("spec.nodeName=node-a", True),
        ("spec.host=node-a", True),
        ("spec.nodeName=", False),
        ("spec.restartPolicy=Always", True),
        ("spec.schedulerName=default-scheduler", True),
        ("spec.serviceAccountName=builder", True),
        ("spec.hostNetwork=true", True),
        ("spec.hostNetwork=false", False),
        ("status.phase=Running", True),
        ("status.phase!=Running", False),
        ("status.phase!=Pending,spec.nodeName=node-a", True),
        ("status.podIP=10.42.0.7", True),
        ("status.nominatedNodeName=node-b", True),
        # accepted by kube but never filled in: compares as the empty string
        ("status.podIPs=", True),
    ],
)
def test_pod_field_selectors(text: str, expected: bool) -> None:
    assert parse_field_selector(text).matches(POD, "pods", "") is expected


def test_pod_defaults_as_kube_sees_them() -> None:
    bare = {"metadata": {"name": "p", "namespace": "d"}, "spec": {}, "status": {}}
    assert parse_field_selector("spec.hostNetwork=false").matches(bare, "pods", "")
    assert parse_field_selector("spec.nodeName=").matches(bare, "pods", "")
    legacy = {"metadata": {"name": "p"}, "spec": {"serviceAccount": "old"}, "status": {"podIP": "10.0.0.1"}}
    assert parse_field_selector("spec.serviceAccountName=old,status.podIP=10.0.0.1").matches(legacy, "pods", "")


EVENT = {
    "metadata": {"name": "web-1.17a", "namespace": "prod"},
    "involvedObject": {
        "kind": "Pod",
        "namespace": "prod",
        "name": "web-1",
        "uid": "u-1",
        "apiVersion": "v1",
        "resourceVersion": "42",
        "fieldPath": "spec.containers{web}",
    },
    "reason": "Pulled",
    "type": "Normal",
    "reportingComponent": "kubelet",
    "source": {},
}


@pytest.mark.parametrize(
    "text",
    [
        "involvedObject.kind=Pod",
        "involvedObject.namespace=prod",
        "involvedObject.name=web-1",
        "involvedObject.uid=u-1",
        "involvedObject.apiVersion=v1",
        "involvedObject.resourceVersion=42",
        "involvedObject.fieldPath=spec.containers{web}",
        "reason=Pulled",
        "type=Normal",
        "reportingComponent=kubelet",
        # source.component is empty, so the reporting controller stands in for it
        "source=kubelet",
        "metadata.name=web-1.17a",
        "metadata.namespace=prod",
    ],
)
def test_event_field_selectors(text: str) -> None:
    assert parse_field_selector(text).matches(EVENT, "events", "")
    negated = text.replace("=", "!=", 1)
    assert not parse_field_selector(negated).matches(EVENT, "events", "")


def test_events_k8s_io_field_selectors_use_their_own_names() -> None:
    event = {
        "metadata": {"name": "e", "namespace": "prod"},
        "regarding": {"kind": "Pod", "name": "web-1"},
        "reason": "Pulled",
        "reportingController": "kubelet",
        "type": "Warning",
    }
    sel = parse_field_selector("regarding.kind=Pod,regarding.name=web-1,reportingController=kubelet,type=Warning")
    assert sel.matches(event, "events", "events.k8s.io")
    with pytest.raises(SelectorError, match=r"^field label not supported: involvedObject\.kind$"):
        parse_field_selector("involvedObject.kind=Pod").matches(event, "events", "events.k8s.io")


@pytest.mark.parametrize(
    ("group", "resource", "obj", "text"),
    [
        ("", "secrets", {"metadata": {"name": "s"}, "type": "kubernetes.io/tls"}, "type=kubernetes.io/tls"),
        ("", "nodes", {"metadata": {"name": "n"}, "spec": {"unschedulable": True}}, "spec.unschedulable=true"),
        ("", "nodes", {"metadata": {"name": "n"}, "spec": {}}, "spec.unschedulable=false"),
        (
            "",
            "namespaces",
            {"metadata": {"name": "ns"}, "status": {"phase": "Terminating"}},
            "status.phase=Terminating",
        ),
        ("", "replicationcontrollers", {"metadata": {"name": "r"}, "status": {"replicas": 3}}, "status.replicas=3"),
        ("batch", "jobs", {"metadata": {"name": "j"}, "status": {"succeeded": 1}}, "status.successful=1"),
        ("batch", "jobs", {"metadata": {"name": "j"}, "status": {}}, "status.successful=0"),
        (
            "certificates.k8s.io",
            "certificatesigningrequests",
            {"metadata": {"name": "c"}, "spec": {"signerName": "kubernetes.io/kubelet-serving"}},
            "spec.signerName=kubernetes.io/kubelet-serving",
        ),
        ("apps", "deployments", {"metadata": {"name": "d", "namespace": "x"}}, "metadata.name=d,metadata.namespace=x"),
        # cluster-scoped kinds without their own conversion still accept (and miss) a namespace
        ("", "persistentvolumes", {"metadata": {"name": "pv"}}, "metadata.namespace="),
    ],
)
def test_field_selectors_of_other_kinds(group: str, resource: str, obj: dict, text: str) -> None:
    assert parse_field_selector(text).matches(obj, resource, group)


@pytest.mark.parametrize(
    ("group", "resource", "text", "message"),
    [
        ("", "pods", "spec.containers=x", "field label not supported: spec.containers"),
        ("", "events", "message=x", "field label not supported: message"),
        ("", "nodes", "metadata.namespace=x", "field label not supported: metadata.namespace"),
        ("", "namespaces", "metadata.namespace=x", "field label not supported: metadata.namespace"),
        ("", "secrets", "data=x", "field label not supported: data"),
        ("batch", "jobs", "status.active=1", 'field label "status.active" not supported for Job'),
        (
            "networking.k8s.io",
            "ingresses",
            "foo.bar=baz",
            '"foo.bar" is not a known field selector: only "metadata.name", "metadata.namespace"',
        ),
        # apps/v1 registers no conversion for ReplicaSets, so status.replicas is refused there
        (
            "apps",
            "replicasets",
            "status.replicas=0",
            '"status.replicas" is not a known field selector: only "metadata.name", "metadata.namespace"',
        ),
        ("example.com", "widgets", "spec.color=red", "field label not supported: spec.color"),
    ],
)
def test_unsupported_field_labels(group: str, resource: str, text: str, message: str) -> None:
    sel = parse_field_selector(text)
    with pytest.raises(SelectorError) as err:
        sel.check(group, resource)
    assert str(err.value) == message
    with pytest.raises(SelectorError):
        sel.matches({"metadata": {"name": "x"}}, resource, group)


def test_custom_resources_honour_scope_and_selectable_fields() -> None:
    obj = {"metadata": {"name": "w", "namespace": "ns"}, "spec": {"color": "red", "size": 3, "on": True}}
    fields = [".spec.color", ".spec.size", ".spec.on"]
    sel = parse_field_selector("spec.color=red,spec.size=3,spec.on=true,metadata.namespace=ns")
    assert sel.matches(obj, "widgets", "example.com", selectable_fields=fields)
    assert not parse_field_selector("spec.color=blue").matches(obj, "widgets", "example.com", selectable_fields=fields)
    with pytest.raises(SelectorError, match=r"^field label not supported: metadata\.namespace$"):
        parse_field_selector("metadata.namespace=ns").check("example.com", "gizmos", namespaced=False)
    assert supported_fields("example.com", "gizmos", namespaced=False) == {"metadata.name"}
    assert supported_fields("example.com", "widgets", selectable_fields=fields) == {
        "metadata.name",
        "metadata.namespace",
        "spec.color",
        "spec.size",
        "spec.on",
    }


def test_supported_fields_of_built_ins() -> None:
    assert supported_fields("", "services") == {"metadata.name", "metadata.namespace"}
    assert supported_fields("", "nodes") == {"metadata.name", "spec.unschedulable"}
    assert "status.nominatedNodeName" in supported_fields("", "pods")
    assert "reportingComponent" in supported_fields("", "events")


def test_check_converts_legacy_labels_and_empty_selector_matches() -> None:
    assert parse_field_selector("spec.host=n1").check("", "pods").to_string() == "spec.nodeName=n1"
    assert FieldSelector().matches({"metadata": {"name": "x"}}, "pods", "")
    assert parse_field_selector("metadata.name=a").requires_exact_match("metadata.name") == "a"
    assert parse_field_selector("metadata.name!=a").requires_exact_match("metadata.name") is None
    assert field_values(POD, "", "pods")["status.podIP"] == "10.42.0.7"
