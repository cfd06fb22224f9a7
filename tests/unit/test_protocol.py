"""Tests for ioserver.protocol: the codec fed the h11 way (whole, byte by byte, random
splits, trailing bytes), every malformed case of the bad-input table
(docs/architecture.md), limits, EOF, the method table, the error encoding, the event
mapping, and hypothesis fuzzing."""

from __future__ import annotations

import errno
import itertools
import math
import random
import socket
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioserver import protocol as P
from ioserver.messages import (
    Accepted,
    Closed,
    Data,
    Datagram,
    Error,
    Exited,
    Message,
    Passive,
    Readable,
    Stderr,
    Tick,
    Writable,
)
from ioserver.protocol import (
    CLOSED,
    NEED_DATA,
    Connection,
    Notification,
    ProtocolError,
    Request,
    Response,
    RpcError,
    State,
    TimerFired,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def drain(conn: Connection) -> list[Any]:
    """Every event ``conn`` has now (stops at NEED_DATA or CLOSED, not included)."""
    out: list[Any] = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA or ev is CLOSED:
            return out
        out.append(ev)


def splits(data: bytes, rng: random.Random) -> list[bytes]:
    """Cut ``data`` at random points (empty pieces included)."""
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 8)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def feed(conn: Connection, chunks: list[bytes]) -> list[Any]:
    events: list[Any] = []
    for chunk in chunks:
        if chunk:  # b"" would mean EOF
            conn.receive_data(chunk)
        events += drain(conn)
    return events


def tr(data: bytes, expected: list[Any], trailing: bytes = b"\x94\x00") -> None:
    """h11's tr(): ``data`` gives ``expected`` fed whole, byte by byte and in random
    splits, then EOF gives CLOSED; with ``trailing`` (the start of another message)
    appended, the same events come out, the rest stays buffered, and EOF is fatal."""
    rng = random.Random(data)
    ways = [
        [data],
        [data[i : i + 1] for i in range(len(data))],
        *(splits(data, rng) for _ in range(10)),
    ]
    for chunks in ways:
        conn = Connection()
        assert feed(conn, chunks) == expected, chunks
        assert conn.next_event() is NEED_DATA
        assert conn.buffered == 0
        conn.receive_data(b"")
        assert conn.next_event() is CLOSED
        assert conn.next_event() is CLOSED
        assert conn.state is State.CLOSED
    for chunks in ([data + trailing], splits(data + trailing, rng)):
        conn = Connection()
        assert feed(conn, chunks) == expected
        assert conn.buffered == len(trailing)
        conn.receive_data(b"")
        with pytest.raises(ProtocolError, match="stream ended inside a message") as info:
            conn.next_event()
        assert info.value.fatal


# --- the h11 way ------------------------------------------------------------------------


def test_request_notification_response() -> None:
    tr(pack([0, 1, "ping", []]), [Request(1, "ping", [])])
    tr(pack([2, "send", [3, b"hi"]]), [Notification("send", [3, b"hi"])])
    tr(pack([1, 9, None, "pong"]), [Response(9, None, "pong")])
    tr(pack([1, 9, [2, "unknown method"], None]), [Response(9, [2, "unknown method"], None)])


def test_several_messages_in_one_stream() -> None:
    msgs = [[0, 5, "connect_tcp", ["h", 80, {"packet": "line"}]], [2, "send", [1, b"x" * 300]]]
    msgs += [[1, 6, None, {"a": [1, 2.5, None, True]}], [0, 4294967295, "ping", []]]
    expected = [
        Request(5, "connect_tcp", ["h", 80, {"packet": "line"}]),
        Notification("send", [1, b"x" * 300]),
        Response(6, None, {"a": [1, 2.5, None, True]}),
        Request(4294967295, "ping", []),
    ]
    tr(b"".join(pack(m) for m in msgs), expected)


def test_method_name_str_or_bin() -> None:
    tr(pack([0, 1, b"ping", []]), [Request(1, "ping", [])])
    tr(pack([2, b"send", [1, b""]]), [Notification("send", [1, b""])])


@pytest.mark.parametrize("msgid", [0, 1, 7, 123456789, 2**31, 2**32 - 1])
def test_msgid_is_echoed_as_given(msgid: int) -> None:
    server, client = Connection(), Connection()
    server.receive_data(client.request(msgid, "ping", []))
    (req,) = drain(server)
    assert req == Request(msgid, "ping", [])
    client.receive_data(server.response(req.msgid, None, "pong"))
    assert drain(client) == [Response(msgid, None, "pong")]


def test_out_of_order_responses_parse() -> None:
    """A pair of connections over a fake link (h11's ConnectionPair): pipelined
    requests, answered in another order."""
    client, server = Connection(), Connection()
    ids = [client.new_msgid() for _ in range(3)]
    assert ids == [1, 2, 3]
    server.receive_data(b"".join(client.request(i, "ping", []) for i in ids))
    requests = drain(server)
    assert [r.msgid for r in requests] == ids
    out = b"".join(server.response(r.msgid, None, f"pong {r.msgid}") for r in reversed(requests))
    client.receive_data(out)
    assert drain(client) == [Response(i, None, f"pong {i}") for i in (3, 2, 1)]


def test_new_msgid_wraps_as_uint32() -> None:
    conn = Connection()
    conn._next_msgid = 2**32 - 2
    assert [conn.new_msgid() for _ in range(3)] == [2**32 - 1, 0, 1]


def test_events_are_frozen() -> None:
    ev = Request(1, "ping", [])
    with pytest.raises(FrozenInstanceError):
        ev.msgid = 2  # type: ignore[misc]


# --- sending ----------------------------------------------------------------------------


def test_bytes_out_decode_with_plain_msgpack() -> None:
    conn = Connection()
    assert msgpack.unpackb(conn.request(3, "spawn", [["cat"], {}])) == [
        0,
        3,
        "spawn",
        [["cat"], {}],
    ]
    assert msgpack.unpackb(conn.response(3, None, [1, 99])) == [1, 3, None, [1, 99]]
    assert msgpack.unpackb(conn.notification("data", (1, b"x"))) == [2, "data", [1, b"x"]]
    assert msgpack.unpackb(conn.error_response(3, P.NO_SUCH_PORT, "no such port 9")) == [
        1,
        3,
        [4, "no such port 9"],
        None,
    ]
    assert msgpack.unpackb(conn.error_response(3, P.LIMIT, "x", {"limit": "sessions"})) == [
        1,
        3,
        [5, "x", {"limit": "sessions"}],
        None,
    ]


def test_ping_bytes_match_the_docs() -> None:
    conn = Connection()
    req = conn.request(1, "ping", [])
    resp = conn.response(1, None, "pong")
    assert req.hex(" ") == "94 00 01 a4 70 69 6e 67 90"
    assert resp.hex(" ") == "94 01 01 c0 a4 70 6f 6e 67"
    text = DOCS.read_text()
    assert req.hex(" ") in text
    assert resp.hex(" ") in text


@pytest.mark.parametrize("msgid", [-1, 2**32, 1.0, True, "1", None])
def test_local_bad_msgid_is_a_caller_bug(msgid: Any) -> None:
    conn = Connection()
    with pytest.raises(ValueError, match="msgid"):
        conn.request(msgid, "ping", [])
    with pytest.raises(ValueError, match="msgid"):
        conn.response(msgid, None, None)


def test_local_bad_method_or_params_is_a_caller_bug() -> None:
    conn = Connection()
    with pytest.raises(TypeError, match="method"):
        conn.request(1, b"ping", [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="params"):
        conn.notification("send", {"a": 1})  # type: ignore[arg-type]


def test_unpackable_value_raises_type_error() -> None:
    with pytest.raises(TypeError):
        Connection().response(1, None, object())


# --- malformed input ----------------------------------------------------------------------

GOOD = pack([0, 77, "ping", []])

# (message, msgid readable, type code) -> a non-fatal INVALID_REQUEST
RECOVERABLE: list[tuple[Any, int | None, int | None]] = [
    (5, None, None),
    ("hello", None, None),
    (None, None, None),
    ({"a": 1}, None, None),
    (b"\x00", None, None),
    ([], None, None),
    (["0", 1, "m", []], None, None),
    ([True, 1, "m", []], None, None),
    ([None], None, None),
    ([0.0, 1, "m", []], None, None),
    ([0, 7, "m"], 7, 0),
    ([0, 7, "m", [], 1], 7, 0),
    ([0], None, 0),
    ([0, -1, "m", []], None, 0),
    ([0, 2**32, "m", []], None, 0),
    ([0, "7", "m", []], None, 0),
    ([0, 7.0, "m", []], None, 0),
    ([0, True, "m", []], None, 0),
    ([0, None, "m", []], None, 0),
    ([0, 7, 5, []], 7, 0),
    ([0, 7, None, []], 7, 0),
    ([0, 7, ["m"], []], 7, 0),
    ([0, 7, "m", {}], 7, 0),
    ([0, 7, "m", "x"], 7, 0),
    ([0, 7, "m", None], 7, 0),
    ([3, 7, "m", []], 7, 3),
    ([-1, 7], 7, -1),
    ([9], None, 9),
    ([2, "m"], None, 2),
    ([2, "m", [], 1], None, 2),
    ([2, 5, []], None, 2),
    ([2, "m", {}], None, 2),
    ([1, 7, None], 7, 1),
    ([1, 7, None, None, None], 7, 1),
    ([1, -1, None, None], None, 1),
    ([1, "7", None, None], None, 1),
]


@pytest.mark.parametrize(("message", "msgid", "kind"), RECOVERABLE)
def test_bad_message_is_recoverable(message: Any, msgid: int | None, kind: int | None) -> None:
    """A valid msgpack value that isn't a valid message: a non-fatal error with the
    msgid when readable; the stream stays in sync (fed whole and byte by byte)."""
    data = pack(message) + GOOD
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        conn = Connection()
        for chunk in chunks:
            conn.receive_data(chunk)
        with pytest.raises(ProtocolError) as info:
            conn.next_event()
        err = info.value
        assert err.code == P.INVALID_REQUEST
        assert not err.fatal
        assert err.msgid == msgid
        assert err.type == kind
        assert err.message
        assert conn.state is State.OPEN
        assert drain(conn) == [Request(77, "ping", [])]
        # The error can be answered (it is msgpack-able, even quoting odd values).
        if err.msgid is not None:
            reply = msgpack.unpackb(conn.error_response(err.msgid, err.code, err.message))
            assert reply == [1, err.msgid, [1, err.message], None]


def test_messages_name_the_problem() -> None:
    cases: list[tuple[Any, str]] = [
        (5, "must be an array, got int 5"),
        ([0, 7, "m"], "has 4 elements, got 3"),
        ([0, -1, "m", []], "msgid must be a uint32, got int -1"),
        ([0, 7, 5, []], "method name must be a str or bin, got int 5"),
        ([0, 7, "m", {}], "params of 'm' must be an array, got map of 0"),
        ([3, 7, "m", []], "unknown message type 3"),
        ([], "must start with its type 0, 1 or 2, got an empty array"),
    ]
    for message, text in cases:
        conn = Connection()
        conn.receive_data(pack(message))
        with pytest.raises(ProtocolError) as info:
            conn.next_event()
        assert text in info.value.message


FATAL: list[bytes] = [
    b"\xc1",  # never used in msgpack
    b"\x94\x00\x01\xc1",  # inside a message
    b"\x81\x92\x01\x02\x03",  # a map keyed by an array: unhashable
    b"\x91" * 2000 + b"\x90",  # nested deeper than msgpack's stack
    b"\x94\x00\x01\xa1m\x91\xd5\xff\x00\x00",  # a timestamp ext of a bad length
]


@pytest.mark.parametrize("data", FATAL)
def test_undecodable_stream_is_fatal(data: bytes) -> None:
    conn = Connection()
    conn.receive_data(GOOD + data + GOOD)
    assert conn.next_event() == Request(77, "ping", [])
    with pytest.raises(ProtocolError) as info:
        conn.next_event()
    assert info.value.fatal
    assert info.value.msgid is None
    assert info.value.code == P.INVALID_REQUEST
    assert conn.state is State.ERROR
    with pytest.raises(ProtocolError, match="failed earlier") as again:
        conn.next_event()
    assert again.value.fatal
    conn.receive_data(GOOD)  # dropped, no error
    conn.receive_data(b"")
    with pytest.raises(ProtocolError):
        conn.next_event()
    assert conn.buffered == 0


def test_truncated_message_at_eof_is_fatal() -> None:
    data = pack([0, 1, "ping", ["a" * 100]])
    for cut in (1, 5, len(data) - 1):
        conn = Connection()
        conn.receive_data(data[:cut])
        assert conn.next_event() is NEED_DATA
        conn.receive_data(b"")
        with pytest.raises(ProtocolError, match=f"{cut} bytes") as info:
            conn.next_event()
        assert info.value.fatal
        assert conn.state is State.ERROR


def test_eof_states() -> None:
    conn = Connection()
    assert conn.state is State.OPEN
    conn.receive_data(GOOD)
    conn.receive_data(b"")
    assert conn.state is State.EOF
    conn.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(RuntimeError, match="after EOF"):
        conn.receive_data(b"x")
    assert conn.next_event() == Request(77, "ping", [])
    assert conn.next_event() is CLOSED
    assert conn.state is State.CLOSED
    assert conn.next_event() is CLOSED


def test_receive_data_copies_reused_buffers() -> None:
    buf = bytearray(GOOD)
    conn = Connection()
    conn.receive_data(buf)
    buf[:] = b"\xc1" * len(buf)
    conn.receive_data(memoryview(GOOD))
    assert drain(conn) == [Request(77, "ping", [])] * 2


# --- limits -------------------------------------------------------------------------------


def message_of(size: int, msgid: int = 1) -> bytes:
    """A request of exactly ``size`` bytes (its one param is a bin)."""
    for pad in range(max(0, size - 16), size):
        data = pack([0, msgid, "m", [b"x" * pad]])
        if len(data) == size:
            return data
    raise AssertionError(f"no request of {size} bytes")


@pytest.mark.parametrize("limit", [64, 300, 70000])
def test_message_at_the_limit_passes(limit: int) -> None:
    one = message_of(limit)
    data = one * 5
    rng = random.Random(limit)
    ways = [[data], splits(data, rng)]
    if limit < 1000:
        ways.append([data[i : i + 1] for i in range(len(data))])
    for chunks in ways:
        conn = Connection(max_message_bytes=limit)
        events = feed(conn, chunks)
        assert len(events) == 5
        assert all(isinstance(e, Request) for e in events)


@pytest.mark.parametrize("limit", [64, 300, 70000])
def test_message_over_the_limit_is_fatal(limit: int) -> None:
    data = GOOD + message_of(limit + 1) + GOOD
    ways = [[data], splits(data, random.Random(limit))]
    if limit < 1000:
        ways.append([data[i : i + 1] for i in range(len(data))])
    for chunks in ways:
        conn = Connection(max_message_bytes=limit)
        with pytest.raises(ProtocolError, match=f"limit max_message_bytes={limit}") as info:
            feed(conn, chunks)
        assert info.value.code == P.LIMIT
        assert info.value.fatal
        assert conn.state is State.ERROR


def test_oversize_is_refused_after_limit_bytes_not_buffered() -> None:
    """A header announcing 1 GiB: refused once the limit is reached, having
    buffered no more than the limit."""
    conn = Connection(max_message_bytes=1000)
    conn.receive_data(b"\x94\x00\x01\xa1m\x91\xc6" + (1 << 30).to_bytes(4, "big"))
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"x" * 900)
    assert conn.next_event() is NEED_DATA
    assert conn.buffered < 1000
    conn.receive_data(b"x" * 10_000_000)
    with pytest.raises(ProtocolError, match="max_message_bytes=1000"):
        conn.next_event()
    assert conn.buffered == 0


def test_many_small_messages_in_one_big_read() -> None:
    conn = Connection(max_message_bytes=100)
    conn.receive_data(GOOD * 10_000)  # 90 KB in one read, 9 bytes a message
    assert len(drain(conn)) == 10_000


def test_max_message_bytes_is_checked() -> None:
    for bad in (0, -1, 1.5, None):
        with pytest.raises(ValueError, match="max_message_bytes"):
            Connection(max_message_bytes=bad)  # type: ignore[arg-type]


# --- invalid UTF-8 ------------------------------------------------------------------------


def test_invalid_utf8_survives_and_round_trips() -> None:
    bad = b"\xff\xfeab"
    raw_str = b"\xa4" + bad  # a fixstr whose bytes are not UTF-8
    # method name, a param, a map key: all as str with invalid UTF-8
    data = b"\x94\x00\x05" + raw_str + b"\x92" + raw_str + b"\x81" + raw_str + b"\x01"
    conn = Connection()
    conn.receive_data(data)
    (req,) = drain(conn)
    name = bad.decode("utf-8", "surrogateescape")
    assert req == Request(5, name, [name, {name: 1}])
    # A reply quoting it encodes back to the same bytes.
    reply = conn.error_response(5, P.UNKNOWN_METHOD, f"unknown method {req.method}")
    assert b"unknown method " + bad in reply
    with pytest.raises(RpcError, match="unknown method"):
        P.check_params(req.method, req.params)


def test_bin_method_with_invalid_utf8() -> None:
    conn = Connection()
    conn.receive_data(pack([2, b"\xffsend", []]))
    (ev,) = drain(conn)
    assert ev == Notification("\udcffsend", [])


# --- the method table ---------------------------------------------------------------------

VALID_CALLS: dict[str, list[Any]] = {
    "hello": [1, "t" * 16],
    "ping": [],
    "stats": [],
    "reload": [],
    "get_api_info": [],
    "connect_tcp": ["127.0.0.1", 80, {"packet": "line", "active": "once", "timeout": 1.5}],
    "listen_tcp": ["127.0.0.1", 0, {"backlog": 10, "high_water": 1000}],
    "connect_unix": ["/tmp/s", {"packet": 4}],
    "listen_unix": ["/tmp/s", {}],
    "open_udp": ["0.0.0.0", 0, {"remote_addr": ["127.0.0.1", 53]}],
    "spawn": [["cat", "-"], {"cwd": "/", "env": {"A": "b"}, "stderr": "merge"}],
    "send_after": [0.5, {"any": ["thing"]}],
    "cancel_timer": [3],
    "interval": [0.1, {"active": 5}],
    "open_file": ["/tmp/f", "rb", {"max_frame_bytes": 10}],
    "setopts": [3, {"active": True}],
    "read": [3],
    "close": [3],
    "close_stdin": [3],
}


def test_method_table_is_complete() -> None:
    assert set(P.METHODS) == set(VALID_CALLS)
    assert set(P.NOTIFICATIONS) == {"send", "send_to"}
    assert set(P.EVENTS) == {
        "data",
        "stderr",
        "closed",
        "error",
        "accepted",
        "datagram",
        "exited",
        "tick",
        "passive",
        "timer",
    }


@pytest.mark.parametrize("method", sorted(VALID_CALLS))
def test_valid_calls_pass(method: str) -> None:
    params = VALID_CALLS[method]
    assert len(P.check_params(method, params)) == len(P.METHODS[method].params)


def test_optional_params_are_filled_in() -> None:
    assert P.check_params("hello", [1]) == [1, None]
    assert P.check_params("connect_tcp", ["h", 1]) == ["h", 1, {}]
    assert P.check_params("connect_tcp", ["h", 1, None]) == ["h", 1, {}]
    assert P.check_params("open_file", ["/f"]) == ["/f", "rb", {}]
    a = P.check_params("interval", [1])
    b = P.check_params("interval", [1])
    assert a[1] == {} and a[1] is not b[1]  # a fresh map per call
    assert a[0] == 1.0 and type(a[0]) is float


def test_params_are_normalized() -> None:
    assert P.check_params("connect_tcp", [b"host", 80, {b"packet": b"line"}])[:2] == ["host", 80]
    assert P.check_params("spawn", [[b"cat"]]) == [["cat"], {}]
    assert P.NOTIFICATIONS["send"].check([1, "h\xe9"]) == [1, "h\xe9".encode()]
    assert P.NOTIFICATIONS["send_to"].check([1, b"x", ["::1", 53]]) == [1, b"x", ("::1", 53)]


def test_unknown_method() -> None:
    with pytest.raises(RpcError) as info:
        P.check_params("nope", [])
    assert info.value.code == P.UNKNOWN_METHOD
    assert "'nope'" in info.value.message


BAD_CALLS: list[tuple[str, list[Any], str]] = [
    ("ping", [1], "ping takes 0 params (), got 1"),
    ("connect_tcp", ["h"], "connect_tcp takes 2 to 3 params (host, port, opts), got 1"),
    ("connect_tcp", ["h", 1, {}, 4], "got 4"),
    ("connect_tcp", [5, 80], "host must be a str, got int 5"),
    ("connect_tcp", ["h", "80"], "port must be an int in 0..65535, got str '80'"),
    ("connect_tcp", ["h", 70000], "port must be an int in 0..65535"),
    ("connect_tcp", ["h", True], "port must be an int in 0..65535, got bool true"),
    ("connect_tcp", ["h", 1, []], "opts must be a map of options, got array of 0"),
    ("connect_tcp", ["h", 1, {"foo": 1}], "unknown option 'foo'"),
    ("connect_tcp", ["h", 1, {"backlog": 1}], "unknown option 'backlog'"),
    ("connect_tcp", ["h", 1, {"inbox": 1}], "unknown option 'inbox'"),
    ("connect_tcp", ["h", 1, {5: 1}], "unknown option int 5"),
    ("connect_tcp", ["h", 1, {"packet": 3}], "opts.packet must be one of"),
    ("connect_tcp", ["h", 1, {"packet": True}], "opts.packet must be one of"),
    ("connect_tcp", ["h", 1, {"active": "twice"}], "opts.active must be"),
    ("connect_tcp", ["h", 1, {"active": 40000}], "opts.active must be"),
    ("connect_tcp", ["h", 1, {"high_water": 0}], "opts.high_water must be an int >= 1"),
    ("connect_tcp", ["h", 1, {"max_frame_bytes": 1.5}], "opts.max_frame_bytes must be"),
    ("connect_tcp", ["h", 1, {"timeout": -1}], "opts.timeout must be a number > 0"),
    ("hello", ["1"], "version must be an int"),
    ("hello", [1, 5], "token must be a str"),
    ("spawn", [[]], "argv must be a non-empty array of str"),
    ("spawn", ["cat"], "argv must be a non-empty array of str"),
    ("spawn", [["cat", 1]], "argv must be a non-empty array of str"),
    ("spawn", [["cat"], {"env": {"A": 1}}], "opts.env must be a map of str to str"),
    ("spawn", [["cat"], {"stderr": "pipe"}], "opts.stderr must be one of"),
    ("open_udp", ["h", 0, {"remote_addr": ["h"]}], "opts.remote_addr must be an array"),
    ("send_after", [-1, 1], "delay must be a number >= 0"),
    ("send_after", [math.nan, 1], "delay must be a number >= 0"),
    ("interval", [0], "period must be a number > 0"),
    ("interval", [math.inf], "period must be a number > 0"),
    ("setopts", [1, {"packet": "line"}], "unknown option 'packet'"),
    ("setopts", [1], "setopts takes 2 params"),
    ("close", [-1], "port_id must be a uint32"),
    ("close", [2**32], "port_id must be a uint32"),
    ("read", ["1"], "port_id must be a uint32"),
]


@pytest.mark.parametrize(("method", "params", "text"), BAD_CALLS)
def test_bad_params_name_the_problem(method: str, params: list[Any], text: str) -> None:
    with pytest.raises(RpcError) as info:
        P.check_params(method, params)
    err = info.value
    assert err.code == P.INVALID_PARAMS
    assert text in err.message
    assert err.message.startswith(method)
    assert err.details["type"] in ("TypeError", "ValueError")
    pack(err.to_wire())  # sendable


def test_notification_params_are_checked() -> None:
    with pytest.raises(RpcError, match="data must be bin"):
        P.NOTIFICATIONS["send"].check([1, 5])
    with pytest.raises(RpcError, match="addr must be an array"):
        P.NOTIFICATIONS["send_to"].check([1, b"x", "h:1"])


def test_api_info() -> None:
    info = P.api_info()
    assert msgpack.unpackb(pack(info), strict_map_key=False) == info
    assert info["version"] == P.PROTOCOL_VERSION == 1
    assert set(info["methods"]) == set(P.METHODS)
    assert set(info["events"]) == set(P.EVENTS)
    assert set(info["notifications"]) == set(P.NOTIFICATIONS)
    assert info["error_codes"] == dict(P.ERROR_CODES)
    ct = info["methods"]["connect_tcp"]
    assert [p["name"] for p in ct["params"]] == ["host", "port", "opts"]
    assert ct["params"][2]["optional"] is True
    assert set(ct["options"]["opts"]) == {
        "packet",
        "active",
        "high_water",
        "max_frame_bytes",
        "timeout",
    }
    assert ct["result"] == "id"
    for entry in info["methods"].values():
        assert entry["doc"]
        for name in entry.get("errors", []):
            assert name in P.ERROR_CODES


def test_error_codes() -> None:
    codes = P.ERROR_CODES
    assert len(set(codes.values())) == len(codes)
    assert codes["INVALID_REQUEST"] == 1
    assert codes["UNKNOWN_METHOD"] == 2
    assert codes["INVALID_PARAMS"] == 3
    assert codes["NO_SUCH_PORT"] == 4
    assert codes["LIMIT"] == 5
    assert codes["NOT_ALLOWED"] == 6
    assert codes["OS_ERROR"] == 7
    assert codes["SERVER_ERROR"] == 8
    assert codes["PROTOCOL_VERSION"] == 9
    text = DOCS.read_text()
    for name, code in codes.items():
        assert f"| {code} | `{name}` |" in text, name


def test_docs_mention_every_method_and_event() -> None:
    text = DOCS.read_text()
    for name in [*P.METHODS, *P.NOTIFICATIONS, *P.EVENTS]:
        assert f"`{name}" in text, name


# --- errors on the wire ---------------------------------------------------------------------


def wire_round_trip(exc: BaseException, **kw: Any) -> BaseException:
    err = P.exception_to_wire(exc)
    return P.wire_to_exception(msgpack.unpackb(pack(err), strict_map_key=False), **kw)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope"),
        PermissionError(errno.EACCES, "Permission denied", "/root/x"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        OSError(errno.EADDRINUSE, "Address already in use"),
        TimeoutError("timed out"),
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    ],
)
def test_os_errors_come_back_as_the_same_type(exc: OSError) -> None:
    err = P.exception_to_wire(exc)
    assert err[0] == P.OS_ERROR
    assert err[1] == f"{type(exc).__name__}: {exc}"
    assert err[2]["type"] == type(exc).__name__
    back = wire_round_trip(exc)
    assert type(back) is type(exc)
    assert back.errno == exc.errno
    assert back.strerror == exc.strerror
    assert back.filename == exc.filename
    assert str(back) == str(exc)


def test_errno_name_wins_over_the_number() -> None:
    """The server's errno numbers may differ from the client's: the name is portable."""
    err = [7, "ConnectionRefusedError: [Errno 61] Connection refused"]
    err.append({"type": "ConnectionRefusedError", "errno": 61, "errno_name": "ECONNREFUSED"})
    back = P.wire_to_exception(err)
    assert type(back) is ConnectionRefusedError
    assert back.errno == errno.ECONNREFUSED
    # An errno name unknown here: the number is kept, the named type too.
    err[2] = {"type": "ConnectionRefusedError", "errno": 9999, "errno_name": "EMARS"}
    back = P.wire_to_exception(err)
    assert type(back) is ConnectionRefusedError and back.errno == 9999


def test_other_exceptions() -> None:
    back = wire_round_trip(ValueError("packet must be ..."))
    assert type(back) is ValueError and str(back) == "packet must be ..."
    assert P.exception_to_wire(ValueError("x"))[0] == P.SERVER_ERROR
    assert P.exception_to_wire(ValueError("x"), P.INVALID_PARAMS)[0] == P.INVALID_PARAMS
    assert P.exception_to_wire(KeyError("k")) == [8, "KeyError: 'k'", {"type": "KeyError"}]
    assert P.exception_to_wire(RuntimeError()) == [8, "RuntimeError", {"type": "RuntimeError"}]


def test_caller_types_and_unknown_types() -> None:
    class FrameError(ValueError):
        pass

    class Strange(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(a, b)

    back = wire_round_trip(FrameError("frame too big"), types={"FrameError": FrameError})
    assert type(back) is FrameError and str(back) == "frame too big"
    back = wire_round_trip(FrameError("frame too big"))
    assert type(back) is RpcError
    assert back.code == P.SERVER_ERROR and back.message == "FrameError: frame too big"
    assert back.details == {"type": "FrameError"}
    back = wire_round_trip(Strange(1, 2), types={"Strange": Strange})
    assert type(back) is RpcError


def test_rpc_errors_pass_through() -> None:
    err = RpcError(P.LIMIT, "too many ports: limit ports_per_session=1000")
    assert P.exception_to_wire(err) == [5, "too many ports: limit ports_per_session=1000"]
    back = P.wire_to_exception(P.exception_to_wire(err))
    assert type(back) is RpcError and back.code == P.LIMIT and back.message == err.message
    assert P.wire_to_exception([4, "no such port 3"]).code == 4  # type: ignore[attr-defined]
    assert P.wire_to_exception([6, "spawn not allowed", {"type": 5}]).code == 6  # type: ignore[attr-defined]


def test_error_value_and_os_error_details() -> None:
    assert P.error_value(P.NO_SUCH_PORT, "no such port: 9") == [4, "no such port: 9"]
    assert P.error_value(P.LIMIT, "x", {"limit": 1}) == [5, "x", {"limit": 1}]
    exc = FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope")
    assert P.os_error_details(exc) == {
        "type": "FileNotFoundError",
        "errno": errno.ENOENT,
        "errno_name": "ENOENT",
        "strerror": "No such file or directory",
        "filename": "/nope",
    }
    assert P.os_error_details(TimeoutError()) == {"type": "TimeoutError"}
    # A session may send str(exc) as the message, without the type prefix.
    back = P.wire_to_exception(P.error_value(P.OS_ERROR, str(exc), P.os_error_details(exc)))
    assert type(back) is FileNotFoundError and str(back) == str(exc)


@pytest.mark.parametrize("junk", [None, "boom", 5, [], ["x", "y"], [1], {"code": 1}])
def test_unreadable_errors(junk: Any) -> None:
    back = P.wire_to_exception(junk)
    assert type(back) is RpcError
    assert back.code == P.SERVER_ERROR


def test_unreadable_message_field() -> None:
    back = P.wire_to_exception([3, b"bytes message"])
    assert type(back) is RpcError and back.code == 3 and "bytes message" in back.message


# --- events -------------------------------------------------------------------------------


class FakePort:
    def __init__(self, id: int, peer: Any = None) -> None:
        self.id = id
        self.peer = peer

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakePort) and other.id == self.id

    def __hash__(self) -> int:
        return self.id


def through_the_wire(message: Message, **kw: Any) -> Message | None:
    """event_to_wire, bytes over a Connection, wire_to_event."""
    name, params = P.event_to_wire(message, lambda p: p.id)
    server, client = Connection(), Connection()
    client.receive_data(server.notification(name, params))
    (ev,) = drain(client)
    assert isinstance(ev, Notification)
    return P.wire_to_event(ev.method, ev.params, FakePort, **kw)


A, B = FakePort(1), FakePort(2, peer=("127.0.0.1", 4242))

ROUND_TRIP: list[Message] = [
    Data(A, b"hello\n"),
    Data(A, b""),
    Data(A, {"decoded": ["msgpack", 1]}),  # packet="msgpack"
    Stderr(A, b"warning\n"),
    Closed(A),
    Closed(A, "reset"),
    Accepted(A, B),
    Datagram(A, b"dgram", ("10.0.0.1", 53)),
    Exited(A, 0),
    Exited(A, -9),
    Tick(A, 3),
    Passive(A),
    TimerFired(A, ["any", {"thing": 1}]),
]


@pytest.mark.parametrize("message", ROUND_TRIP, ids=repr)
def test_event_round_trip(message: Message) -> None:
    assert through_the_wire(message) == message


def test_event_names() -> None:
    names = {P.event_to_wire(m, lambda p: p.id)[0] for m in ROUND_TRIP}
    names.add(P.event_to_wire(Error(A, OSError()), lambda p: p.id)[0])
    assert names == set(P.EVENTS)


def test_error_events() -> None:
    exc = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    back = through_the_wire(Error(A, exc))
    assert isinstance(back, Error) and back.port == A
    assert type(back.error) is ConnectionResetError and back.error.errno == errno.ECONNRESET
    _, params = P.event_to_wire(Error(A, exc), lambda p: p.id)
    assert params[1][0] == P.OS_ERROR

    class FrameError(ValueError):
        pass

    _, params = P.event_to_wire(Error(A, FrameError("too big")), lambda p: p.id)
    assert params == [1, [P.PORT_ERROR, "FrameError: too big", {"type": "FrameError"}]]
    back = through_the_wire(Error(A, FrameError("too big")), error_types={"FrameError": FrameError})
    assert isinstance(back, Error) and type(back.error) is FrameError

    # A session-level error: no port.
    limit = RpcError(P.LIMIT, "message over max_message_bytes")
    assert P.event_to_wire(Error(None, limit), lambda p: p.id) == ("error", [None, limit.to_wire()])
    back = through_the_wire(Error(None, limit))
    assert isinstance(back, Error) and back.port is None
    assert isinstance(back.error, RpcError) and back.error.code == P.LIMIT


def test_accepted_peer_and_accept_hook() -> None:
    name, params = P.event_to_wire(Accepted(A, B), lambda p: p.id)
    assert (name, params) == ("accepted", [1, 2, ["127.0.0.1", 4242]])
    unix = FakePort(3, peer="")
    assert P.event_to_wire(Accepted(A, unix), lambda p: p.id)[1] == [1, 3, ""]
    v6 = FakePort(4, peer=("::1", 80, 0, 0))
    assert P.event_to_wire(Accepted(A, v6), lambda p: p.id)[1] == [1, 4, ["::1", 80]]
    seen: list[Any] = []

    def accept(listener: Any, new_id: int, peer: Any) -> Any:
        seen.append((listener, new_id, peer))
        return FakePort(new_id, peer)

    back = through_the_wire(Accepted(A, B), accept=accept)
    assert seen == [(A, 2, ("127.0.0.1", 4242))]
    assert isinstance(back, Accepted) and back.conn.peer == ("127.0.0.1", 4242)


def test_datagram_ipv6_address() -> None:
    msg = Datagram(A, b"x", ("fe80::1", 53, 0, 2))
    assert P.event_to_wire(msg, lambda p: p.id)[1] == [1, b"x", ["fe80::1", 53]]


def test_local_only_messages_have_no_wire_form() -> None:
    for msg in (Readable(A, 3), Writable(A, 3), Message(A)):
        with pytest.raises(ValueError, match="no wire event"):
            P.event_to_wire(msg, lambda p: p.id)


def test_unknown_and_bad_events() -> None:
    assert P.wire_to_event("brand_new_event", [1, 2], FakePort) is None
    with pytest.raises(ProtocolError, match="bad event: data takes 2 params") as info:
        P.wire_to_event("data", [1], FakePort)
    assert not info.value.fatal
    with pytest.raises(ProtocolError, match="port_id must be a uint32"):
        P.wire_to_event("tick", ["1", 2], FakePort)


# --- hypothesis ---------------------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(-(2**63), 2**64 - 1), inner, max_size=4)
    ),
    max_leaves=12,
)
msgids = st.integers(min_value=0, max_value=2**32 - 1)
names = st.text(max_size=12)
messages = st.one_of(
    st.builds(Request, msgids, names, st.lists(values, max_size=4)),
    st.builds(Notification, names, st.lists(values, max_size=4)),
    st.builds(Response, msgids, values, values),
)


def encode(conn: Connection, ev: Any) -> bytes:
    if isinstance(ev, Request):
        return conn.request(ev.msgid, ev.method, ev.params)
    if isinstance(ev, Notification):
        return conn.notification(ev.method, ev.params)
    return conn.response(ev.msgid, ev.error, ev.result)


@FAST
@given(st.lists(messages, max_size=6), st.randoms(use_true_random=False))
def test_round_trip_split_at_random_points(evs: list[Any], rng: random.Random) -> None:
    sender, receiver = Connection(), Connection()
    data = b"".join(encode(sender, ev) for ev in evs)
    assert feed(receiver, splits(data, rng)) == evs
    receiver.receive_data(b"")
    assert receiver.next_event() is CLOSED


def run_garbage(chunks: list[bytes]) -> None:
    """Feed chunks; only events and ProtocolErrors may come out, and a fatal one
    must leave the connection in ERROR."""
    conn = Connection(max_message_bytes=4096)
    for chunk in [*(c for c in chunks if c), b""]:  # b"" is EOF, last
        conn.receive_data(chunk)
        while True:
            try:
                ev = conn.next_event()
            except ProtocolError as exc:
                if exc.fatal:
                    assert conn.state is State.ERROR
                    return
                continue
            if ev is NEED_DATA or ev is CLOSED:
                break
            assert isinstance(ev, Request | Notification | Response)


@MANY
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_random_bytes(chunks: list[bytes]) -> None:
    run_garbage(chunks)


@FAST
@given(st.lists(values, max_size=6), st.randoms(use_true_random=False))
def test_fuzz_valid_msgpack_is_never_fatal(objs: list[Any], rng: random.Random) -> None:
    """Any msgpack value (with hashable map keys) is an event or a recoverable error."""
    objs = [
        [rng.choice([0, 1, 2, 3]), *o] if isinstance(o, list) and rng.random() < 0.7 else o
        for o in objs
    ]
    conn = Connection()
    conn.receive_data(b"".join(pack(o) for o in objs) + GOOD)
    objs.append("the final ping")
    seen = 0
    while True:
        try:
            ev = conn.next_event()
        except ProtocolError as exc:
            assert not exc.fatal
            seen += 1
            continue
        if ev is NEED_DATA or ev is CLOSED:
            break
        seen += 1
    assert seen == len(objs)
    assert conn.state is State.OPEN


@FAST
@given(st.lists(messages, min_size=1, max_size=4), st.binary(max_size=16), st.integers(0, 100))
def test_fuzz_garbage_after_valid_messages(evs: list[Any], junk: bytes, cut: int) -> None:
    sender = Connection()
    data = b"".join(encode(sender, ev) for ev in evs)
    data = data[: len(data) * cut // 100] + junk
    run_garbage([data])
