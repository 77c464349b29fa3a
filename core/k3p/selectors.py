"""Label and field selectors with the syntax, semantics and error messages of Kubernetes v1.32.

Label selectors come as query strings (``?labelSelector=a=b,c in (x,y),!d``) or as metav1
``LabelSelector`` dicts (``matchLabels`` / ``matchExpressions``); both give a
:class:`LabelSelector`. Field selectors (``?fieldSelector=spec.nodeName=n1``) give a
:class:`FieldSelector`, matched against an object through the fields its resource makes
selectable. Malformed input raises :class:`SelectorError` whose text is what kube-apiserver
puts into the 400 BadRequest ``Status``.

Used by the API server (list/watch filtering) and by controllers and the scheduler.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FieldRequirement",
    "FieldSelector",
    "LabelRequirement",
    "LabelSelector",
    "SelectorError",
    "field_values",
    "format_label_selector",
    "format_labels",
    "label_selector_from_dict",
    "label_value_errors",
    "parse_field_selector",
    "parse_label_selector",
    "qualified_name_errors",
    "supported_fields",
]


class SelectorError(ValueError):
    """A selector that cannot be parsed or used; ``str(err)`` is the kube-style message."""


# ---------------------------------------------------------------------------------------------
# Name and value validation (the rules of apimachinery's util/validation)

_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QNAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
)
_QNAME_RE = re.compile(f"^{_QNAME_FMT}$")
_LABEL_VALUE_FMT = f"({_QNAME_FMT})?"
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_LABEL_VALUE_RE = re.compile(f"^{_LABEL_VALUE_FMT}$")
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)
_DNS1123_SUBDOMAIN_RE = re.compile(f"^{_DNS1123_SUBDOMAIN_FMT}$")


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    # kube's wording has a doubled space before each "or" (", " + " or "); kept on purpose.
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def _max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def _dns1123_subdomain_errors(value: str) -> list[str]:
    errs = []
    if len(value) > 253:
        errs.append(_max_len_error(253))
    if not _DNS1123_SUBDOMAIN_RE.match(value):
        errs.append(_regex_error(_DNS1123_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def qualified_name_errors(value: str) -> list[str]:
    """Why ``value`` is not a qualified name (label/annotation key); empty when it is one."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in _dns1123_subdomain_errors(prefix))
    else:
        return [
            "a qualified name "
            + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + _max_len_error(63))
    if not _QNAME_RE.match(name):
        errs.append("name part " + _regex_error(_QNAME_MSG, _QNAME_FMT, "MyName", "my.name", "123-abc"))
    return errs


def label_value_errors(value: str) -> list[str]:
    """Why ``value`` is not a valid label value; empty when it is one."""
    errs = []
    if len(value) > 63:
        errs.append(_max_len_error(63))
    if not _LABEL_VALUE_RE.match(value):
        errs.append(_regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


def go_quote(s: str) -> str:
    """Go's ``%q``: quoted, with quotes, backslashes and unprintable characters escaped."""
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _invalid(path: str, value: Any, detail: str) -> str:
    """The text of a field.Invalid error."""
    if isinstance(value, str):
        shown = go_quote(value)
    elif isinstance(value, list):
        shown = "[]string{" + ", ".join(go_quote(v) for v in value) + "}"
    else:
        shown = str(value)
    return f"{path}: Invalid value: {shown}: {detail}"


def _aggregate(errors: list[str]) -> str:
    """The text of an aggregated error list (one error alone, several in brackets)."""
    unique = list(dict.fromkeys(errors))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


# ---------------------------------------------------------------------------------------------
# Label selectors

_IN, _NOT_IN, _EQ, _DEQ, _NEQ = "in", "notin", "=", "==", "!="
_EXISTS, _NOT_EXISTS, _GT, _LT = "exists", "!", "gt", "lt"
_BINARY_OPERATORS = (_IN, _NOT_IN, _EQ, _DEQ, _NEQ, _GT, _LT)
_INT64 = re.compile(r"^[+-]?[0-9]+$")


def _parse_int64(s: str) -> int | None:
    if not _INT64.match(s):
        return None
    value = int(s)
    return value if -(2**63) <= value < 2**63 else None


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One ``key op values`` term; ``operator`` is one of in, notin, =, ==, !=, exists, !, gt, lt."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    @classmethod
    def new(cls, key: str, operator: str, values: Iterable[str] = (), path: str | None = None) -> LabelRequirement:
        """Build a validated requirement (kube's ``NewRequirement``); ``path`` prefixes error paths."""
        vals = list(values)
        errs: list[str] = []
        base = f"{path}." if path else ""
        key_errs = qualified_name_errors(key)
        if key_errs:
            errs.append(_invalid(f"{base}key", key, "; ".join(key_errs)))
        values_path = f"{base}values"
        if operator in (_IN, _NOT_IN):
            if not vals:
                errs.append(_invalid(values_path, vals, "for 'in', 'notin' operators, values set can't be empty"))
        elif operator in (_EQ, _DEQ, _NEQ):
            if len(vals) != 1:
                errs.append(_invalid(values_path, vals, "exact-match compatibility requires one single value"))
        elif operator in (_EXISTS, _NOT_EXISTS):
            if vals:
                errs.append(_invalid(values_path, vals, "values set must be empty for exists and does not exist"))
        elif operator in (_GT, _LT):
            if len(vals) != 1:
                errs.append(_invalid(values_path, vals, "for 'Gt', 'Lt' operators, exactly one value is required"))
            for i, v in enumerate(vals):
                if _parse_int64(v) is None:
                    errs.append(
                        _invalid(f"{values_path}[{i}]", v, "for 'Gt', 'Lt' operators, the value must be an integer")
                    )
        else:
            supported = ", ".join(go_quote(o) for o in (*_BINARY_OPERATORS, _EXISTS, _NOT_EXISTS))
            errs.append(f"{base}operator: Unsupported value: {go_quote(operator)}: supported values: {supported}")
        for i, v in enumerate(vals):
            value_errs = label_value_errors(v)
            if value_errs:
                errs.append(_invalid(f"{values_path}[{i}][{key}]", v, "; ".join(value_errs)))
        if errs:
            raise SelectorError(_aggregate(errs))
        return cls(key, operator, tuple(vals))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies this requirement."""
        op = self.operator
        if op in (_IN, _EQ, _DEQ):
            return self.key in labels and labels[self.key] in self.values
        if op in (_NOT_IN, _NEQ):
            return self.key not in labels or labels[self.key] not in self.values
        if op == _EXISTS:
            return self.key in labels
        if op == _NOT_EXISTS:
            return self.key not in labels
        if op in (_GT, _LT):
            if self.key not in labels or len(self.values) != 1:
                return False
            have, want = _parse_int64(labels[self.key]), _parse_int64(self.values[0])
            if have is None or want is None:
                return False
            return have > want if op == _GT else have < want
        return False

    def to_string(self) -> str:
        """The canonical string form (values of set operators sorted)."""
        op = self.operator
        if op == _EXISTS:
            return self.key
        if op == _NOT_EXISTS:
            return "!" + self.key
        values = ",".join(sorted(self.values)) if len(self.values) > 1 else "".join(self.values)
        if op in (_IN, _NOT_IN):
            return f"{self.key} {op} ({values})"
        symbol = {_GT: ">", _LT: "<"}.get(op, op)
        return f"{self.key}{symbol}{values}"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """An AND of label requirements; ``nothing`` marks the selector that matches no object."""

    requirements: tuple[LabelRequirement, ...] = ()
    nothing: bool = False

    @classmethod
    def everything(cls) -> LabelSelector:
        """The selector that matches every label set."""
        return cls()

    @classmethod
    def match_nothing(cls) -> LabelSelector:
        """The selector that matches no label set (a nil metav1 LabelSelector)."""
        return cls(nothing=True)

    @classmethod
    def from_set(cls, labels: Mapping[str, str]) -> LabelSelector:
        """``k=v`` for every entry (unvalidated, as kube's SelectorFromSet)."""
        reqs = [LabelRequirement(k, _EQ, (v,)) for k, v in labels.items()]
        return cls(tuple(sorted(reqs, key=lambda r: r.key)))

    @property
    def empty(self) -> bool:
        """True when the selector does not restrict anything."""
        return not self.nothing and not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether a label set (``metadata.labels``; None means no labels) is selected."""
        if self.nothing:
            return False
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def requires_exact_match(self, key: str) -> str | None:
        """The single value the selector requires ``key`` to have, if it pins one."""
        for r in self.requirements:
            if r.key == key:
                if r.operator in (_EQ, _DEQ, _IN) and len(r.values) == 1:
                    return r.values[0]
                return None
        return None

    def to_string(self) -> str:
        """The canonical string form, e.g. for a scale subresource's ``status.selector``."""
        return ",".join(r.to_string() for r in self.requirements)

    __str__ = to_string


# The lexer and parser follow the grammar of apimachinery's labels.Parse, token by token, so
# that error messages name the same tokens kube names.
_TOK_ERROR, _TOK_EOS, _TOK_CLOSE, _TOK_COMMA, _TOK_NOT = range(5)
_TOK_DEQ, _TOK_EQ, _TOK_GT, _TOK_ID, _TOK_IN, _TOK_LT, _TOK_NEQ, _TOK_NOTIN, _TOK_OPEN = range(5, 14)
_TOKENS = {
    ")": _TOK_CLOSE,
    ",": _TOK_COMMA,
    "!": _TOK_NOT,
    "==": _TOK_DEQ,
    "=": _TOK_EQ,
    ">": _TOK_GT,
    "in": _TOK_IN,
    "<": _TOK_LT,
    "!=": _TOK_NEQ,
    "notin": _TOK_NOTIN,
    "(": _TOK_OPEN,
}
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")


def _lex(s: str) -> list[tuple[int, str]]:
    items: list[tuple[int, str]] = []
    i, n = 0, len(s)
    while True:
        while i < n and s[i] in _WHITESPACE:
            i += 1
        if i >= n:
            items.append((_TOK_EOS, ""))
            return items
        if s[i] in _SPECIAL:
            # Longest run of special symbols that still forms a known operator.
            j, best = i, None
            while j < n and s[j] in _SPECIAL:
                if s[i : j + 1] in _TOKENS:
                    best = j + 1
                elif best is not None:
                    break
                j += 1
            if best is None:  # unreachable with the current token set; kept for parity
                items.append((_TOK_ERROR, f"error expected: keyword found '{s[i:j]}'"))
                i = j
                continue
            items.append((_TOKENS[s[i:best]], s[i:best]))
            i = best
        else:
            j = i
            while j < n and s[j] not in _SPECIAL and s[j] not in _WHITESPACE:
                j += 1
            word = s[i:j]
            items.append((_TOKENS.get(word, _TOK_ID), word))
            i = j


class _LabelParser:
    def __init__(self, s: str) -> None:
        self.items = _lex(s)
        self.pos = 0

    def _peek(self, values: bool = True) -> tuple[int, str]:
        tok, lit = self.items[self.pos]
        if values and tok in (_TOK_IN, _TOK_NOTIN):
            tok = _TOK_ID
        return tok, lit

    def _next(self, values: bool = True) -> tuple[int, str]:
        item = self._peek(values)
        self.pos += 1
        return item

    def parse(self) -> list[LabelRequirement]:
        reqs: list[LabelRequirement] = []
        while True:
            tok, lit = self._peek()
            if tok in (_TOK_ID, _TOK_NOT):
                try:
                    reqs.append(self._requirement())
                except SelectorError as err:
                    raise SelectorError(f"unable to parse requirement: {err}") from None
                tok, lit = self._next()
                if tok == _TOK_EOS:
                    return reqs
                if tok == _TOK_COMMA:
                    tok2, lit2 = self._peek()
                    if tok2 not in (_TOK_ID, _TOK_NOT):
                        raise SelectorError(f"found '{lit2}', expected: identifier after ','")
                else:
                    raise SelectorError(f"found '{lit}', expected: ',' or 'end of string'")
            elif tok == _TOK_EOS:
                return reqs
            else:
                raise SelectorError(f"found '{lit}', expected: !, identifier, or 'end of string'")

    def _requirement(self) -> LabelRequirement:
        operator = ""
        tok, lit = self._next()
        if tok == _TOK_NOT:
            operator = _NOT_EXISTS
            tok, lit = self._next()
        if tok != _TOK_ID:
            raise SelectorError(f"found '{lit}', expected: identifier")
        key_errs = qualified_name_errors(lit)
        if key_errs:
            raise SelectorError(_invalid("<nil>", lit, "; ".join(key_errs)))
        key = lit
        if self._peek()[0] in (_TOK_EOS, _TOK_COMMA) and operator != _NOT_EXISTS:
            operator = _EXISTS
        if operator in (_EXISTS, _NOT_EXISTS):
            return LabelRequirement.new(key, operator, ())
        tok, lit = self._next(values=False)
        operator = {
            _TOK_IN: _IN,
            _TOK_EQ: _EQ,
            _TOK_DEQ: _DEQ,
            _TOK_GT: _GT,
            _TOK_LT: _LT,
            _TOK_NOTIN: _NOT_IN,
            _TOK_NEQ: _NEQ,
        }.get(tok, "")
        if not operator:
            raise SelectorError(f"found '{lit}', expected: {', '.join(_BINARY_OPERATORS)}")
        values = self._set_values() if operator in (_IN, _NOT_IN) else self._exact_value()
        return LabelRequirement.new(key, operator, sorted(values))

    def _set_values(self) -> set[str]:
        tok, lit = self._next()
        if tok != _TOK_OPEN:
            raise SelectorError(f"found '{lit}' expected: '('")
        tok, lit = self._peek()
        if tok in (_TOK_ID, _TOK_COMMA):
            values = self._identifiers()
            self._next()  # the ')' that _identifiers stopped at
            return values
        if tok == _TOK_CLOSE:
            self._next()
            return {""}
        raise SelectorError(f"found '{lit}', expected: ',', ')' or identifier")

    def _identifiers(self) -> set[str]:
        values: set[str] = set()
        while True:
            tok, lit = self._next()
            if tok == _TOK_ID:
                values.add(lit)
                tok2, lit2 = self._peek()
                if tok2 == _TOK_COMMA:
                    continue
                if tok2 == _TOK_CLOSE:
                    return values
                raise SelectorError(f"found '{lit2}', expected: ',' or ')'")
            if tok == _TOK_COMMA:
                # An empty element: "(,a)", "(a,)" and "(a,,b)" all select the empty value too.
                if not values:
                    values.add("")
                tok2, _ = self._peek()
                if tok2 == _TOK_CLOSE:
                    values.add("")
                    return values
                if tok2 == _TOK_COMMA:
                    self._next()
                    values.add("")
                continue
            raise SelectorError(f"found '{lit}', expected: ',', or identifier")

    def _exact_value(self) -> set[str]:
        tok, _ = self._peek()
        if tok in (_TOK_EOS, _TOK_COMMA):
            return {""}
        tok, lit = self._next()
        if tok == _TOK_ID:
            return {lit}
        raise SelectorError(f"found '{lit}', expected: identifier")


@functools.lru_cache(maxsize=1024)
def parse_label_selector(selector: str) -> LabelSelector:
    """Parse the ``?labelSelector=`` string form; an empty string selects everything."""
    reqs = _LabelParser(selector).parse()
    return LabelSelector(tuple(sorted(reqs, key=lambda r: r.key)))


_EXPRESSION_OPERATORS = {"In": _IN, "NotIn": _NOT_IN, "Exists": _EXISTS, "DoesNotExist": _NOT_EXISTS}


def label_selector_from_dict(selector: Mapping[str, Any] | None) -> LabelSelector:
    """A metav1 LabelSelector (``matchLabels``, ``matchExpressions``) as a :class:`LabelSelector`.

    None selects nothing and ``{}`` selects everything, as in kube's LabelSelectorAsSelector.
    """
    if selector is None:
        return LabelSelector.match_nothing()
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return LabelSelector.everything()
    reqs = [LabelRequirement.new(k, _EQ, [v]) for k, v in match_labels.items()]
    for expr in expressions:
        op = _EXPRESSION_OPERATORS.get(expr.get("operator", ""))
        if op is None:
            raise SelectorError(f"{go_quote(str(expr.get('operator', '')))} is not a valid label selector operator")
        reqs.append(LabelRequirement.new(expr.get("key", ""), op, list(expr.get("values") or ())))
    return LabelSelector(tuple(sorted(reqs, key=lambda r: r.key)))


def format_labels(labels: Mapping[str, str] | None) -> str:
    """``k1=v1,k2=v2`` sorted by key, or ``<none>`` (kube's labels.FormatLabels)."""
    text = ",".join(f"{k}={labels[k]}" for k in sorted(labels or {}))
    return text or "<none>"


def format_label_selector(selector: Mapping[str, Any] | None) -> str:
    """A metav1 LabelSelector as printed in tables: its string form, ``<none>`` or ``<error>``."""
    try:
        text = label_selector_from_dict(selector).to_string()
    except SelectorError:
        return "<error>"
    return text or "<none>"


# ---------------------------------------------------------------------------------------------
# Field selectors


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    """One ``field=value`` (``operator`` ``=``) or ``field!=value`` (``!=``) term."""

    field: str
    operator: str
    value: str

    def to_string(self) -> str:
        """The term with its value escaped again."""
        escaped = self.value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")
        return f"{self.field}{'!=' if self.operator == '!=' else '='}{escaped}"


def _split_terms(selector: str) -> list[str]:
    """Split on commas that no backslash escapes; escapes stay in the terms."""
    if not selector:
        return []
    terms, start, in_slash = [], 0, False
    for i, ch in enumerate(selector):
        if in_slash:
            in_slash = False
        elif ch == "\\":
            in_slash = True
        elif ch == ",":
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    return terms


def _unescape(value: str) -> str:
    if not any(c in value for c in "\\,="):
        return value
    out, in_slash = [], False
    for ch in value:
        if in_slash:
            if ch not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            in_slash = False
        elif ch == "\\":
            in_slash = True
        elif ch in ",=":
            # Go prints the rune with %v, i.e. as its code point number.
            raise SelectorError(f"invalid field selector: unescaped character in value: {ord(ch)}")
        else:
            out.append(ch)
    if in_slash:
        raise SelectorError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


# ----- what each built-in resource lets a field selector name (pkg/apis/*/conversion.go) and
# the values it matches (pkg/registry/*/strategy.go ToSelectableFields).

_Getter = Callable[[dict[str, Any]], str]


def _path(*keys: str) -> _Getter:
    def get(obj: dict[str, Any]) -> str:
        node: Any = obj
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return "" if node is None else str(node)

    return get


def _int_path(*keys: str) -> _Getter:
    def get(obj: dict[str, Any]) -> str:
        node: Any = obj
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return str(int(node or 0))

    return get


def _bool_path(*keys: str) -> _Getter:
    def get(obj: dict[str, Any]) -> str:
        node: Any = obj
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return "true" if node is True else "false"

    return get


def _pod_ip(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    if status.get("podIP"):
        return status["podIP"]
    ips = status.get("podIPs") or []
    return (ips[0] or {}).get("ip", "") if ips else ""


def _event_source(event: dict[str, Any]) -> str:
    return (event.get("source") or {}).get("component") or event.get("reportingComponent") or ""


@dataclass(frozen=True, slots=True)
class _FieldSet:
    # external label -> internal field name the label converts to
    labels: Mapping[str, str]
    # internal field name -> value of an object (in its external JSON form)
    values: Mapping[str, _Getter]
    # message for a label the kind does not know; {label} is filled in
    unsupported: str = "field label not supported: {label}"


_DEFAULT_UNSUPPORTED = '"{label}" is not a known field selector: only "metadata.name", "metadata.namespace"'
_META = {"metadata.name": "metadata.name", "metadata.namespace": "metadata.namespace"}

_FIELD_SETS: dict[tuple[str, str], _FieldSet] = {
    ("", "pods"): _FieldSet(
        labels={
            **_META,
            **{
                f: f
                for f in (
                    "spec.nodeName",
                    "spec.restartPolicy",
                    "spec.schedulerName",
                    "spec.serviceAccountName",
                    "spec.hostNetwork",
                    "status.phase",
                    "status.podIP",
                    "status.podIPs",
                    "status.nominatedNodeName",
                )
            },
            # old v1 clients send spec.host
            "spec.host": "spec.nodeName",
        },
        values={
            "spec.nodeName": _path("spec", "nodeName"),
            "spec.restartPolicy": _path("spec", "restartPolicy"),
            "spec.schedulerName": _path("spec", "schedulerName"),
            "spec.serviceAccountName": lambda p: (
                (p.get("spec") or {}).get("serviceAccountName") or (p.get("spec") or {}).get("serviceAccount") or ""
            ),
            "spec.hostNetwork": _bool_path("spec", "hostNetwork"),
            "status.phase": _path("status", "phase"),
            "status.podIP": _pod_ip,
            "status.nominatedNodeName": _path("status", "nominatedNodeName"),
        },
    ),
    ("", "events"): _FieldSet(
        labels={
            **_META,
            **{
                f: f
                for f in (
                    "involvedObject.kind",
                    "involvedObject.namespace",
                    "involvedObject.name",
                    "involvedObject.uid",
                    "involvedObject.apiVersion",
                    "involvedObject.resourceVersion",
                    "involvedObject.fieldPath",
                    "reason",
                    "reportingComponent",
                    "source",
                    "type",
                )
            },
        },
        values={
            **{
                f"involvedObject.{k}": _path("involvedObject", k)
                for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
            },
            "reason": _path("reason"),
            "reportingComponent": _path("reportingComponent"),
            "source": _event_source,
            "type": _path("type"),
        },
    ),
    ("events.k8s.io", "events"): _FieldSet(
        labels={
            **_META,
            "reason": "reason",
            "type": "type",
            "reportingController": "reportingComponent",
            **{
                f"regarding.{k}": f"involvedObject.{k}"
                for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
            },
        },
        values={
            **{
                f"involvedObject.{k}": _path("regarding", k)
                for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
            },
            "reason": _path("reason"),
            "reportingComponent": _path("reportingController"),
            "source": lambda e: (
                (e.get("deprecatedSource") or {}).get("component") or e.get("reportingController") or ""
            ),
            "type": _path("type"),
        },
    ),
    ("", "nodes"): _FieldSet(
        labels={"metadata.name": "metadata.name", "spec.unschedulable": "spec.unschedulable"},
        values={"spec.unschedulable": _bool_path("spec", "unschedulable")},
    ),
    ("", "namespaces"): _FieldSet(
        labels={"metadata.name": "metadata.name", "status.phase": "status.phase"},
        values={"status.phase": _path("status", "phase")},
    ),
    ("", "secrets"): _FieldSet(labels={**_META, "type": "type"}, values={"type": _path("type")}),
    ("", "replicationcontrollers"): _FieldSet(
        labels={**_META, "status.replicas": "status.replicas"},
        values={"status.replicas": _int_path("status", "replicas")},
    ),
    ("batch", "jobs"): _FieldSet(
        labels={**_META, "status.successful": "status.successful"},
        values={"status.successful": _int_path("status", "succeeded")},
        unsupported='field label "{label}" not supported for Job',
    ),
    ("certificates.k8s.io", "certificatesigningrequests"): _FieldSet(
        labels={"metadata.name": "metadata.name", "spec.signerName": "spec.signerName"},
        values={"spec.signerName": _path("spec", "signerName")},
    ),
}

# Groups served by kube-apiserver itself (plus the metrics API, which uses the same default
# field conversion); resources of any other group are treated as custom resources (field
# selectors, Table printing).
BUILTIN_GROUPS = frozenset(
    {
        "",
        "admissionregistration.k8s.io",
        "apiextensions.k8s.io",
        "apiregistration.k8s.io",
        "apps",
        "authentication.k8s.io",
        "authorization.k8s.io",
        "autoscaling",
        "batch",
        "certificates.k8s.io",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
        "flowcontrol.apiserver.k8s.io",
        "internal.apiserver.k8s.io",
        "metrics.k8s.io",
        "networking.k8s.io",
        "node.k8s.io",
        "policy",
        "rbac.authorization.k8s.io",
        "resource.k8s.io",
        "scheduling.k8s.io",
        "storage.k8s.io",
        "storagemigration.k8s.io",
    }
)


def _is_custom(group: str, custom: bool | None) -> bool:
    return custom if custom is not None else group not in BUILTIN_GROUPS


def _format_custom_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def supported_fields(
    group: str,
    resource: str,
    *,
    custom: bool | None = None,
    namespaced: bool = True,
    selectable_fields: Iterable[str] = (),
) -> frozenset[str]:
    """The field labels a ``?fieldSelector=`` may name for a resource.

    ``custom`` marks a custom resource (by default: any group kube-apiserver does not serve);
    for those, ``namespaced`` and the CRD's ``selectableFields`` paths (``.spec.color``) count.
    """
    field_set = _FIELD_SETS.get((group, resource))
    if field_set is not None:
        return frozenset(field_set.labels)
    if _is_custom(group, custom):
        labels = {"metadata.name"} | ({"metadata.namespace"} if namespaced else set())
        return frozenset(labels | {p.lstrip(".") for p in selectable_fields})
    return frozenset(_META)


def field_values(
    obj: Mapping[str, Any],
    group: str,
    resource: str,
    *,
    namespaced: bool = True,
    selectable_fields: Iterable[str] = (),
) -> dict[str, str]:
    """The selectable fields of an object, by internal field name, with kube's string values."""
    meta = obj.get("metadata") or {}
    values = {"metadata.name": meta.get("name", "")}
    field_set = _FIELD_SETS.get((group, resource))
    if field_set is not None:
        cluster_scoped = (group, resource) in (
            ("", "nodes"),
            ("", "namespaces"),
            ("certificates.k8s.io", "certificatesigningrequests"),
        )
        if not cluster_scoped:
            values["metadata.namespace"] = meta.get("namespace", "")
        for name, getter in field_set.values.items():
            values[name] = getter(obj)  # type: ignore[arg-type]
        return values
    if namespaced:
        values["metadata.namespace"] = meta.get("namespace", "")
    for path in selectable_fields:
        node: Any = obj
        for key in path.lstrip(".").split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, dict | list):
            values[path.lstrip(".")] = _format_custom_value(node)
    return values


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """An AND of field requirements, as parsed from ``?fieldSelector=``."""

    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the selector does not restrict anything."""
        return not self.requirements

    def to_string(self) -> str:
        """The string form, terms joined with commas."""
        return ",".join(r.to_string() for r in self.requirements)

    __str__ = to_string

    def requires_exact_match(self, field: str) -> str | None:
        """The value an ``=`` term pins ``field`` to, if any (e.g. ``spec.nodeName`` for a kubelet)."""
        for r in self.requirements:
            if r.field == field and r.operator == "=":
                return r.value
        return None

    def check(
        self,
        group: str,
        resource: str,
        *,
        custom: bool | None = None,
        namespaced: bool = True,
        selectable_fields: Iterable[str] = (),
    ) -> FieldSelector:
        """Validate the labels for a resource and return the selector in internal field names.

        Raises :class:`SelectorError` with kube's message for the first label the resource
        does not support (the API answers 400 BadRequest with it).
        """
        return _checked(self, group, resource, custom, namespaced, tuple(selectable_fields))

    def matches(
        self,
        obj: Mapping[str, Any],
        resource: str,
        group: str,
        *,
        custom: bool | None = None,
        namespaced: bool = True,
        selectable_fields: Iterable[str] = (),
    ) -> bool:
        """Whether an object (external JSON form) is selected; unsupported labels raise."""
        if not self.requirements:
            return True
        selectable_fields = tuple(selectable_fields)
        internal = self.check(
            group, resource, custom=custom, namespaced=namespaced, selectable_fields=selectable_fields
        )
        values = field_values(obj, group, resource, namespaced=namespaced, selectable_fields=selectable_fields)
        for r in internal.requirements:
            # A field a kind accepts but does not expose compares as "" (kube's Set.Get).
            have = values.get(r.field, "")
            if (have == r.value) != (r.operator == "="):
                return False
        return True


@functools.lru_cache(maxsize=1024)
def _checked(
    selector: FieldSelector,
    group: str,
    resource: str,
    custom: bool | None,
    namespaced: bool,
    selectable_fields: tuple[str, ...],
) -> FieldSelector:
    field_set = _FIELD_SETS.get((group, resource))
    if field_set is not None:
        labels, unsupported = field_set.labels, field_set.unsupported
    else:
        allowed = supported_fields(
            group, resource, custom=custom, namespaced=namespaced, selectable_fields=selectable_fields
        )
        labels = {label: label for label in allowed}
        unsupported = "field label not supported: {label}" if _is_custom(group, custom) else _DEFAULT_UNSUPPORTED
    converted = []
    for r in selector.requirements:
        internal = labels.get(r.field)
        if internal is None:
            raise SelectorError(unsupported.format(label=r.field))
        converted.append(FieldRequirement(internal, r.operator, r.value))
    return FieldSelector(tuple(converted))


@functools.lru_cache(maxsize=1024)
def parse_field_selector(selector: str) -> FieldSelector:
    """Parse the ``?fieldSelector=`` string form (``=``, ``==``, ``!=``; ``\\,`` ``\\=`` ``\\\\`` escapes)."""
    reqs: list[FieldRequirement] = []
    for part in sorted(_split_terms(selector)):
        if not part:
            continue
        # The first operator occurrence splits; the field name has no escaping.
        for i in range(len(part)):
            rest = part[i:]
            op = "!=" if rest.startswith("!=") else "==" if rest.startswith("==") else "=" if rest[0] == "=" else ""
            if op:
                field, raw = part[:i], part[i + len(op) :]
                break
        else:
            raise SelectorError(f"invalid selector: '{selector}'; can't understand '{part}'")
        reqs.append(FieldRequirement(field, "!=" if op == "!=" else "=", _unescape(raw)))
    return FieldSelector(tuple(reqs))
