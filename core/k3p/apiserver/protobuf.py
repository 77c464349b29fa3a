"""Decoding of ``application/vnd.kubernetes.protobuf`` request bodies into JSON dicts.

client-go based clients (kubectl's typed commands among them) send objects as protobuf
and do not retry with JSON after a 415, so the server has to read them. The envelope is
the magic ``k8s\\x00`` followed by a ``runtime.Unknown`` message whose ``raw`` bytes hold
the object's own message.

No message layout is written down in k3p. The field numbers come, at run time, from the
compiled descriptors that a Kubernetes Go binary on the machine carries: each generated
API package of Kubernetes embeds its gzipped ``FileDescriptorProto``, and kubectl links
all of them. The descriptors' gogoproto options tell which Go fields are pointers (so a
zero that was really sent is kept, and the zeros that Go always writes for plain fields
are dropped, as ``omitempty`` would). The JSON spelling of each field, which embedded
structs are inlined in JSON, and which messages are only list wrappers come from the
v1.32 JSON schemas in :mod:`k3p.apiserver.schemas`.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import mmap
import os
import re
import shutil
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from k3p.client.objects import format_micro_time, format_time

from . import schemas

log = structlog.get_logger(__name__)

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# Go's compress/gzip writes no name and a zero mtime; XFL is 0, 2 or 4 by level; OS 255.
_GZIP_HEADER = re.compile(rb"\x1f\x8b\x08\x00\x00\x00\x00\x00[\x00\x02\x04]\xff")
_MAX_DESCRIPTOR = 16 << 20
# Binaries built from the main Kubernetes tree name their files under its vendor folder.
_VENDOR_PREFIX = "k8s.io/kubernetes/vendor/"
# gogoproto's FieldOptions extension ``nullable``; false marks a Go field that is not a pointer.
_GOGO_NULLABLE = 65001

_UNKNOWN = "k8s.io.apimachinery.pkg.runtime.Unknown"
_RAW_EXTENSION = "k8s.io.apimachinery.pkg.runtime.RawExtension"
_TIME = "k8s.io.apimachinery.pkg.apis.meta.v1.Time"
_MICRO_TIME = "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime"
_DURATION = "k8s.io.apimachinery.pkg.apis.meta.v1.Duration"
_FIELDS_V1 = "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1"
_QUANTITY = "k8s.io.apimachinery.pkg.api.resource.Quantity"
_INT_OR_STRING = "k8s.io.apimachinery.pkg.util.intstr.IntOrString"
_INT_OR_STRING_IS_STRING = 1


class ProtobufError(ValueError):
    """The body is not a protobuf-encoded Kubernetes object this server can read."""


class ProtobufUnavailable(ProtobufError):
    """No Kubernetes descriptors could be loaded, so no protobuf body can be read."""


def descriptors_from_binary(path: str | os.PathLike[str]) -> list[descriptor_pb2.FileDescriptorProto]:
    """The Kubernetes ``.proto`` file descriptors embedded in a Go binary such as kubectl.

    Files are named as in their own repositories (``k8s.io/api/core/v1/generated.proto``).
    Returns an empty list for a file that has none.
    """
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    with open(path, "rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            return []
        with data:
            for match in _GZIP_HEADER.finditer(data):
                raw = _gunzip(data, match.start())
                if raw is None:
                    continue
                try:
                    fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
                except DecodeError:
                    continue
                if not fd.package.startswith("k8s.io.") or not fd.name.endswith(".proto"):
                    continue
                fd.name = fd.name.removeprefix(_VENDOR_PREFIX)
                deps = [d.removeprefix(_VENDOR_PREFIX) for d in fd.dependency]
                del fd.dependency[:]
                fd.dependency.extend(deps)
                files.setdefault(fd.name, fd)
    return list(files.values())


def _gunzip(data: mmap.mmap, start: int) -> bytes | None:
    stream = zlib.decompressobj(wbits=31)
    out: list[bytes] = []
    pos, size = start, 0
    try:
        while not stream.eof and pos < len(data) and size < _MAX_DESCRIPTOR:
            chunk = stream.decompress(data[pos : pos + 65536])
            out.append(chunk)
            size += len(chunk)
            pos += 65536
    except zlib.error:
        return None
    return b"".join(out) if stream.eof else None


def _build_pool(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    by_name = {f.name: f for f in files}
    pool = descriptor_pool.DescriptorPool()
    state: dict[str, bool] = {}

    def add(name: str) -> bool:
        if name in state:
            return state[name]
        state[name] = False  # guards against cycles
        fd = descriptor_pb2.FileDescriptorProto()
        fd.CopyFrom(by_name[name])
        # Option-only imports (gogo.proto) are not in the binary; their options stay unknown fields.
        deps = [d for d in fd.dependency if d in by_name]
        if not all(add(d) for d in deps):
            log.warning("protobuf descriptor skipped: missing import", file=name)
            return False
        del fd.dependency[:]
        fd.dependency.extend(deps)
        del fd.public_dependency[:]
        del fd.weak_dependency[:]
        try:
            pool.Add(fd)
        except (TypeError, ValueError) as e:
            log.warning("protobuf descriptor skipped", file=name, error=str(e))
            return False
        state[name] = True
        return True

    for name in sorted(by_name):
        add(name)
    return pool


@dataclass(frozen=True)
class _Field:
    json_name: str
    inline: bool  # an embedded Go struct whose fields JSON shows in the parent
    pointer: bool  # a Go pointer (or list/map): a zero value on the wire was really set
    unwrap: bool  # a message that JSON shows as a plain list (value type for maps)
    is_map: bool


def _is_array(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "array" or (isinstance(kind, list) and "array" in kind)


def _single_list(message: Descriptor | None) -> bool:
    return message is not None and len(message.fields) == 1 and message.fields[0].is_repeated


@functools.cache
def _sibling_definitions() -> dict[tuple[str, str], dict[str, Any]]:
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for name, definition in schemas.definitions().items():
        package, _, kind = name.rpartition(".")
        group = package.rpartition(".")[0]
        index.setdefault((group, kind), definition)
    return index


def _definition(full_name: str) -> dict[str, Any] | None:
    name = "io.k8s." + full_name.removeprefix("k8s.io.")
    found = schemas.definitions().get(name)
    if found is not None:
        return found
    # The schemas hold the served versions only: take the same kind's shape from another
    # version of the group (v1beta1 types spell their fields as v1 does).
    package, _, kind = name.rpartition(".")
    return _sibling_definitions().get((package.rpartition(".")[0], kind))


class ProtobufDecoder:
    """Turns protobuf-encoded Kubernetes objects into the dicts their JSON form gives."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto], source: str = "") -> None:
        files = list(files)
        self.source = source
        self.file_count = len(files)
        self._pool = _build_pool(files)
        self._nullable: dict[tuple[str, str], bool] = {}
        for fd in files:
            self._index_options(fd.package, fd.message_type)
        self._fields: dict[str, dict[int, _Field]] = {}
        self._classes: dict[str, type[Message]] = {}
        self._lock = threading.Lock()
        try:
            self._unknown = self.message_class(_UNKNOWN)
        except KeyError:
            raise ProtobufUnavailable(f"no {_UNKNOWN} descriptor in {source or 'the given files'}") from None

    @classmethod
    def from_binary(cls, path: str | os.PathLike[str]) -> ProtobufDecoder:
        """A decoder whose descriptors come from a Go binary such as kubectl."""
        files = descriptors_from_binary(path)
        if not files:
            raise ProtobufUnavailable(f"{path} carries no Kubernetes protobuf descriptors")
        return cls(files, source=str(path))

    def _index_options(self, prefix: str, messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}"
            for field in message.field:
                for option in unknown_fields.UnknownFieldSet(field.options):
                    if option.field_number == _GOGO_NULLABLE:
                        self._nullable[(name, field.name)] = bool(option.data)
            self._index_options(name, message.nested_type)

    def message_class(self, full_name: str) -> type[Message]:
        """The message class of a full proto name, e.g. ``k8s.io.api.core.v1.Pod``; KeyError if unknown."""
        cls = self._classes.get(full_name)
        if cls is None:
            cls = message_factory.GetMessageClass(self._pool.FindMessageTypeByName(full_name))
            self._classes[full_name] = cls
        return cls

    def class_for(self, api_version: str, kind: str) -> type[Message]:
        """The message class for an apiVersion and kind; ProtobufError if there is none."""
        group, _, version = api_version.rpartition("/")
        candidates = []
        definition = schemas.definition_name_for(group, version, kind)
        if definition:
            candidates.append("k8s.io." + definition.removeprefix("io.k8s."))
        # Kinds the schemas do not list (unserved versions, options types): the package
        # naming convention of k8s.io/api, then the meta types every group version carries.
        candidates.append(f"k8s.io.api.{group.split('.')[0] or 'core'}.{version}.{kind}")
        candidates.append(f"k8s.io.apimachinery.pkg.apis.meta.{version}.{kind}")
        candidates.append(f"k8s.io.apimachinery.pkg.apis.meta.v1.{kind}")
        for name in candidates:
            try:
                return self.message_class(name)
            except KeyError:
                continue
        raise ProtobufError(f"no protobuf message is known for {api_version}, Kind={kind}")

    def decode(self, body: bytes) -> dict[str, Any]:
        """Decode a ``k8s\\x00``-prefixed body into the object's JSON dict (with apiVersion and kind)."""
        if not body.startswith(MAGIC):
            raise ProtobufError("provided data does not appear to be a protobuf message, expected prefix k8s\\x00")
        envelope = self._parse(self._unknown, body[len(MAGIC) :])
        encoding, content_type = envelope.contentEncoding, envelope.contentType
        if encoding:
            raise ProtobufError(f"unsupported protobuf content encoding {encoding!r}")
        if content_type not in ("", MEDIA_TYPE):
            raise ProtobufError(f"unsupported embedded content type {content_type!r}")
        api_version, kind = envelope.typeMeta.apiVersion, envelope.typeMeta.kind
        if not kind:
            raise ProtobufError("Object 'Kind' is missing in the protobuf envelope")
        obj = self._parse(self.class_for(api_version, kind), envelope.raw)
        out: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
        out.update(self.to_dict(obj))
        return out

    @staticmethod
    def _parse(cls: type[Message], data: bytes) -> Message:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            raise ProtobufError(f"malformed protobuf {cls.DESCRIPTOR.full_name}: {e}") from None

    def to_dict(self, message: Message) -> dict[str, Any]:
        """A message's fields in their JSON form (no apiVersion/kind: those live in the envelope)."""
        fields = self._fields_of(message.DESCRIPTOR)
        out: dict[str, Any] = {}
        for fd, value in message.ListFields():
            info = fields[fd.number]
            if info.is_map:
                value_fd = fd.message_type.fields_by_name["value"]
                converted: Any = {k: self._value(value_fd, v, info.unwrap) for k, v in value.items()}
            elif fd.is_repeated:
                converted = [self._value(fd, v, False) for v in value]
            else:
                converted = self._value(fd, value, info.unwrap)
                # Go writes plain (non-pointer) fields even when zero; JSON omits them.
                if not info.pointer and _is_zero(converted):
                    continue
            if info.inline and isinstance(converted, dict):
                out.update(converted)
            else:
                out[info.json_name] = converted
        return out

    def _fields_of(self, message: Descriptor) -> dict[int, _Field]:
        found = self._fields.get(message.full_name)
        if found is not None:
            return found
        with self._lock:
            found = {fd.number: self._describe(message, fd) for fd in message.fields}
            self._fields[message.full_name] = found
        return found

    def _describe(self, message: Descriptor, fd: FieldDescriptor) -> _Field:
        definition = _definition(message.full_name) or {}
        props: dict[str, Any] = definition.get("properties") or {}
        by_lower = {k.lower(): k for k in props}
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        inline = False
        if fd.name in props:
            json_name = fd.name
        elif fd.name.lower() in by_lower:
            json_name = by_lower[fd.name.lower()]  # e.g. proto "uID" for JSON "uid"
        else:
            json_name = fd.name
            inline = bool(props) and fd.message_type is not None and not fd.is_repeated
        node = schemas.resolve(props[json_name]) if json_name in props else {}
        if is_map:
            value_node = node.get("additionalProperties")
            value_type = fd.message_type.fields_by_name["value"].message_type
            unwrap = (
                isinstance(value_node, dict) and _is_array(schemas.resolve(value_node)) and _single_list(value_type)
            )
        else:
            unwrap = not fd.is_repeated and _is_array(node) and _single_list(fd.message_type)
        pointer = fd.is_repeated or self._nullable.get((message.full_name, fd.name), True)
        return _Field(json_name, inline, pointer, unwrap, is_map)

    def _value(self, fd: FieldDescriptor, value: Any, unwrap: bool) -> Any:
        if fd.type == FieldDescriptor.TYPE_BYTES:
            return base64.b64encode(value).decode("ascii")
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            return value
        name = fd.message_type.full_name
        if name == _TIME:
            return _time(value.seconds, value.nanos, micro=False)
        if name == _MICRO_TIME:
            return _time(value.seconds, value.nanos, micro=True)
        if name == _DURATION:
            return go_duration(value.duration)
        if name == _QUANTITY:
            return value.string
        if name == _INT_OR_STRING:
            return value.strVal if value.type == _INT_OR_STRING_IS_STRING else value.intVal
        if name == _RAW_EXTENSION:
            return self._raw_object(value.raw)
        if name == _FIELDS_V1:
            return self._raw_object(value.Raw)
        if unwrap:
            inner = value.DESCRIPTOR.fields[0]
            return [self._value(inner, v, False) for v in getattr(value, inner.name)]
        return self.to_dict(value)

    def _raw_object(self, raw: bytes) -> Any:
        if not raw:
            return None
        if raw.startswith(MAGIC):
            return self.decode(raw)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ProtobufError(f"embedded object is neither JSON nor protobuf: {e}") from None


def _is_zero(value: Any) -> bool:
    return value is None or value in ("", {}, []) or (type(value) in (int, bool, float) and not value)


def _time(seconds: int, nanos: int, *, micro: bool) -> str | None:
    if seconds == 0 and nanos == 0:
        return None  # Go's zero time, which JSON writes as null
    try:
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise ProtobufError(f"timestamp out of range: {seconds}") from None
    if micro:
        return format_micro_time(moment.replace(microsecond=nanos // 1000))
    return format_time(moment)


def go_duration(nanoseconds: int) -> str:
    """A duration as Go's ``time.Duration.String`` writes it (``1h0m0s``, ``1.5s``, ``300ms``)."""
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    n = abs(nanoseconds)
    if n < 1_000:
        return f"{sign}{n}ns"
    if n < 1_000_000:
        return f"{sign}{_decimal(n, 3)}µs"
    if n < 1_000_000_000:
        return f"{sign}{_decimal(n, 6)}ms"
    seconds = _decimal(n % 60_000_000_000, 9)
    minutes_total = n // 60_000_000_000
    hours, minutes = divmod(minutes_total, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{sign}{minutes}m{seconds}s"
    return f"{sign}{seconds}s"


def _decimal(value: int, places: int) -> str:
    whole, fraction = divmod(value, 10**places)
    if not fraction:
        return str(whole)
    return f"{whole}." + f"{fraction:0{places}d}".rstrip("0")


_default_lock = threading.Lock()
_default: ProtobufDecoder | ProtobufUnavailable | None = None


def default_decoder() -> ProtobufDecoder:
    """The decoder built from the kubectl on PATH, loaded once (a few hundred ms) and kept.

    Raises ProtobufUnavailable (also on later calls) when there is no usable kubectl.
    """
    global _default
    with _default_lock:
        if _default is None:
            path = shutil.which("kubectl")
            if path is None:
                _default = ProtobufUnavailable("kubectl is not installed: no Kubernetes protobuf descriptors")
            else:
                try:
                    _default = ProtobufDecoder.from_binary(os.path.realpath(path))
                    log.info("protobuf descriptors loaded", source=_default.source, files=_default.file_count)
                except (OSError, ProtobufUnavailable) as e:
                    _default = e if isinstance(e, ProtobufUnavailable) else ProtobufUnavailable(str(e))
            if isinstance(_default, ProtobufUnavailable):
                log.warning("protobuf request bodies cannot be decoded", reason=str(_default))
        if isinstance(_default, ProtobufUnavailable):
            raise ProtobufUnavailable(str(_default))
        return _default


def available() -> bool:
    """Whether protobuf bodies can be decoded on this machine."""
    try:
        default_decoder()
    except ProtobufUnavailable:
        return False
    return True


def decode_request(body: bytes) -> dict[str, Any]:
    """Decode an ``application/vnd.kubernetes.protobuf`` request body into its JSON dict.

    Raises ProtobufUnavailable when no descriptors can be loaded (answer 415 as before) and
    ProtobufError for a body that is not a readable Kubernetes object (answer 400).
    """
    return default_decoder().decode(body)
