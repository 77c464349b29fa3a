"""Streaming protocol logic: subprotocol negotiation, options, kubelet paths, SPDY framing, channel codecs."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time

import pytest

from k3p.agent import streaming as kubelet
from k3p.apiserver import streaming as api


def test_the_clients_order_of_preference_wins() -> None:
    assert api.negotiate(["v5.channel.k8s.io", "v4.channel.k8s.io"], api.REMOTECOMMAND_PROTOCOLS) == \
        "v5.channel.k8s.io"
    assert api.negotiate(["v4.channel.k8s.io", "v5.channel.k8s.io"], api.REMOTECOMMAND_PROTOCOLS) == \
        "v4.channel.k8s.io"
    assert api.negotiate(["channel.k8s.io", "v4.base64.channel.k8s.io"], api.REMOTECOMMAND_PROTOCOLS) == \
        "v4.base64.channel.k8s.io"


def test_unsupported_or_missing_protocols() -> None:
    assert api.negotiate(["channel.k8s.io"], api.REMOTECOMMAND_PROTOCOLS) is None
    assert api.negotiate([], api.REMOTECOMMAND_PROTOCOLS) is None
    # a port-forward client that names no protocol gets the binary v4 framing
    assert api.negotiate([], api.PORTFORWARD_PROTOCOLS) == ""
    assert api.negotiate(["SPDY/3.1+portforward.k8s.io"], api.PORTFORWARD_PROTOCOLS) == \
        "SPDY/3.1+portforward.k8s.io"
    assert api.negotiate(["v5.channel.k8s.io", "v4.channel.k8s.io"], api.protocols_for("portforward")) == \
        "v4.channel.k8s.io"
    assert api.negotiate(["SPDY/3.1+portforward.k8s.io"], api.protocols_for("exec")) is None


def test_bearer_token_in_a_subprotocol() -> None:
    encoded = base64.urlsafe_b64encode(b"my-token").decode().rstrip("=")
    token, rest = api.bearer_token_from_protocols(
        ["v4.channel.k8s.io", f"base64url.bearer.authorization.k8s.io.{encoded}"])
    assert token == "my-token"
    assert rest == ["v4.channel.k8s.io"]
    assert api.bearer_token_from_protocols(["v5.channel.k8s.io"]) == (None, ["v5.channel.k8s.io"])


def test_exec_options_defaults_and_kubelet_names() -> None:
    opts = api.StreamOptions.from_query([("command", "sh"), ("command", "-c"), ("command", "exit 3"),
                                         ("container", "web")])
    assert opts.command == ("sh", "-c", "exit 3") and opts.container == "web"
    assert (opts.stdin, opts.stdout, opts.stderr, opts.tty) == (False, True, True, False)
    assert opts.kubelet_query() == [("command", "sh"), ("command", "-c"), ("command", "exit 3"),
                                    ("output", "1"), ("error", "1")]


def test_tty_drops_stderr_and_go_booleans_parse() -> None:
    # kubectl sends "true", the Python client "True"
    opts = api.StreamOptions.from_query([("stdin", "True"), ("tty", "true"), ("stderr", "1"), ("stdout", "t")])
    assert (opts.stdin, opts.stdout, opts.stderr, opts.tty) == (True, True, False, True)
    assert ("error", "1") not in opts.kubelet_query()
    with pytest.raises(ValueError, match="not a boolean"):
        api.StreamOptions.from_query([("stdin", "yes")])
    with pytest.raises(ValueError, match="at least 1 of stdin, stdout, stderr"):
        api.StreamOptions.from_query([("stdout", "false"), ("stderr", "false")])


def test_ports() -> None:
    assert api.portforward_ports([("ports", "8080,9090"), ("port", "81")]) == [8080, 9090, 81]
    with pytest.raises(ValueError):
        api.portforward_ports([("ports", "http")])
    with pytest.raises(ValueError):
        api.portforward_ports([("ports", "70000")])


def test_kubelet_paths() -> None:
    assert api.kubelet_path("exec", "ns", "p", "c", [("command", "ls"), ("command", "/"), ("stdin", "true")]) == \
        "/exec/ns/p/c?command=ls&command=%2F&input=1&output=1&error=1"
    assert api.kubelet_path("attach", "ns", "p", "c", [("stdout", "true"), ("stderr", "false")]) == \
        "/attach/ns/p/c?output=1"
    assert api.kubelet_path("portforward", "ns", "p", "", [("ports", "80,443")]) == \
        "/portForward/ns/p?port=80&port=443"
    assert api.kubelet_path("portforward", "ns", "p", "", []) == "/portForward/ns/p"
    with pytest.raises(ValueError, match="command"):
        api.kubelet_path("exec", "ns", "p", "c", [])


def test_recent_failures_expire_and_are_told_once(monkeypatch: pytest.MonkeyPatch) -> None:
    failures = api.RecentFailures(ttl=5, limit=2)
    failures.remember(("u", "ns", "p", "exec"), "boom")
    assert failures.pop(("u", "ns", "p", "exec")) == "boom"
    assert failures.pop(("u", "ns", "p", "exec")) is None
    failures.remember(("u", "ns", "p", "exec"), "late")
    now = time.monotonic()
    monkeypatch.setattr(api.time, "monotonic", lambda: now + 10)
    assert failures.pop(("u", "ns", "p", "exec")) is None
    for i in range(5):
        failures.remember(("u", "ns", str(i), "exec"), i)
    assert len(failures._items) <= 2


def test_spdy_header_dictionary_is_the_one_of_the_spec() -> None:
    assert len(kubelet.HEADER_DICTIONARY) == 1423
    assert hashlib.sha256(kubelet.HEADER_DICTIONARY).hexdigest() == \
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"


def test_header_blocks_share_one_zlib_stream_per_direction() -> None:
    client, server = kubelet.HeaderCodec(), kubelet.HeaderCodec()
    first = client.encode({"streamType": "error"})
    second = client.encode({"streamtype": "stdout"})
    assert server.decode(first) == {"streamtype": ["error"]}
    # the second block only decodes with the state the first one left behind
    assert server.decode(second) == {"streamtype": ["stdout"]}
    with pytest.raises(kubelet.SpdyError):
        kubelet.HeaderCodec().decode(second)


def test_frames_round_trip() -> None:
    client, server = kubelet.HeaderCodec(), kubelet.HeaderCodec()
    syn = kubelet.control_frame(kubelet.SYN_STREAM, struct.pack(">IIBB", 5, 0, 0, 0) +
                                client.encode({"streamtype": "stdin"}), kubelet.FLAG_FIN)
    frame = kubelet.parse_frame(syn[:8], syn[8:], server)
    assert (frame.kind, frame.stream_id, frame.fin, frame.headers) == \
        (kubelet.SYN_STREAM, 5, True, {"streamtype": ["stdin"]})
    data = kubelet.data_frame(7, b"hello", fin=True)
    frame = kubelet.parse_frame(data[:8], data[8:], server)
    assert (frame.kind, frame.stream_id, frame.data, frame.fin) == (0, 7, b"hello", True)
    goaway = kubelet.control_frame(kubelet.GOAWAY, struct.pack(">II", 3, 0))
    frame = kubelet.parse_frame(goaway[:8], goaway[8:], server)
    assert (frame.kind, frame.stream_id, frame.status) == (kubelet.GOAWAY, 3, 0)
    with pytest.raises(kubelet.SpdyError, match="version"):
        kubelet.parse_frame(struct.pack(">HHI", 0x8002, 1, 0), b"", server)


def test_channel_codecs() -> None:
    binary = kubelet.ChannelCodec("v5.channel.k8s.io")
    assert binary.encode(1, b"out") == {"type": "websocket.send", "bytes": b"\x01out"}
    assert binary.decode({"bytes": b"\x00in"}) == (0, b"in")
    assert binary.decode({"bytes": b""}) is None
    text = kubelet.ChannelCodec("v4.base64.channel.k8s.io")
    assert text.encode(3, b"{}") == {"type": "websocket.send", "text": "3" + base64.b64encode(b"{}").decode()}
    assert text.decode({"text": "0" + base64.b64encode(b"typed").decode()}) == (0, b"typed")


def test_failure_status_is_a_status() -> None:
    status = json.loads(kubelet.failure_status("it broke"))
    assert status["kind"] == "Status" and status["status"] == "Failure" and status["message"] == "it broke"
