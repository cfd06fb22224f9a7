"""Every daemon row of the "Bad input and faults" table (docs/architecture.md),
against the real daemon.

The clients here are raw sockets speaking msgpack (``RawClient``): nothing of ours
but the bytes. The module shares one daemon; alongside it, for the whole module,
a well-behaved client (``Witness``) echoes numbered lines through the daemon with
the ``client`` package and checks every one. After each test,
``assert_no_trace`` waits (bounded) until the daemon is back where it started:
it answers ping on a new connection, has the baseline's sessions and open ports,
no more fds (/proc/<pid>/fd) and no more threads, and the witness has lost
nothing and is still moving.

Rows covered elsewhere: TCP without a token, spawn not allowed, socket mode
(test_security.py); the protocol decoder fuzz test (tests/unit/test_protocol.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from daemon_support import (
    DaemonProcess,
    EchoServer,
    PeerClosed,
    RawClient,
    T,
    read_until_eof,
    stop_and_check,
    wait_for,
)

import ioserver_client
from ioserver import ChannelClosed
from ioserver.messages import Closed, Data

MAX_MESSAGE = 65536
PENDING = 256 * 1024
LIMITS = {"max_message_bytes": MAX_MESSAGE, "pending_bytes": PENDING, "max_frame_bytes": 65536}

pytestmark = pytest.mark.timeout(30)


# -- the module's daemon and its well-behaved witness -------------------------------------


class Witness:
    """A well-behaved client for the whole module: numbered lines through a daemon
    port to an echo server and back, every echo checked in order."""

    def __init__(self, d: DaemonProcess, echo: EchoServer) -> None:
        self.remote = ioserver_client.connect(d.socket_path)
        self.port = self.remote.connect_tcp(*echo.address, packet="line")
        self.sent = 0
        self.received = 0
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="witness")
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                for _ in range(10):
                    self.port.send(b"%d\n" % self.sent, timeout=T)
                    self.sent += 1
                for _ in range(10):
                    msg = self.port.recv(timeout=T)
                    expected = Data(self.port, b"%d\n" % self.received)
                    assert msg == expected, f"witness expected {expected!r}, got {msg!r}"
                    self.received += 1
                self.stopping.wait(0.002)  # a steady trickle, not a flood
        except BaseException as exc:
            self.errors.append(exc)

    def check(self) -> None:
        """Nothing lost so far, and still moving (bounded wait for one more round)."""
        assert not self.errors, f"the well-behaved client failed: {self.errors[0]!r}"
        before = self.received
        wait_for(
            lambda: self.received > before or self.errors,
            what="the well-behaved client to get another echo",
        )
        assert not self.errors, f"the well-behaved client failed: {self.errors[0]!r}"

    def finish(self) -> int:
        self.stopping.set()
        self.thread.join(T)
        assert not self.thread.is_alive(), "the well-behaved client is stuck"
        assert not self.errors, f"the well-behaved client failed: {self.errors[0]!r}"
        assert self.received == self.sent > 0
        self.port.close()
        assert self.port.recv(timeout=T) == Closed(self.port)
        self.remote.close()
        return self.sent


class Baseline:
    def __init__(self, d: DaemonProcess) -> None:
        stats = d.stats()  # its own session counts: every later look is made the same way
        self.sessions = stats["sessions"]
        self.open_ports = stats["open_ports"]
        self.fds = d.fd_count()
        self.threads = d.thread_count()


def warm_up(d: DaemonProcess, echo: EchoServer) -> None:
    """Make the daemon start the threads it keeps for good: its 8 opening workers
    (20 connects at once) and the resolver's pool (a name to resolve)."""
    with RawClient(d.socket_path) as c:
        ids = [c.request("connect_tcp", *echo.address) for _ in range(20)]
        ids.append(c.request("connect_tcp", "localhost", echo.address[1]))
        for msgid in ids:
            error, _ = c.response(msgid)
            assert error is None, error


@pytest.fixture(scope="module")
def module_daemon() -> Iterator[tuple[DaemonProcess, Witness, Baseline]]:
    d = DaemonProcess(limits=LIMITS).start()
    echo = EchoServer()
    try:
        warm_up(d, echo)
        wait_for(lambda: echo.open_count() == 0, what="the warm-up's ports to close")
        witness = Witness(d, echo)
        witness.check()
        baseline = Baseline(d)
        yield d, witness, baseline
        sent = witness.finish()
        assert sent > 0
    finally:
        echo.close()
        stop_and_check(d)


class Env:
    """What a test of this module gets: the daemon, a fresh echo server, and raw
    clients that are closed for it (even when it fails, so the next test's
    baseline holds)."""

    def __init__(self, d: DaemonProcess) -> None:
        self.d = d
        self.echo = EchoServer()
        self.clients: list[RawClient] = []

    def raw(self, address: str | tuple[str, int] | None = None) -> RawClient:
        c = RawClient(address or self.d.socket_path)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()


@pytest.fixture
def env(module_daemon: tuple[DaemonProcess, Witness, Baseline]) -> Iterator[Env]:
    """The module's daemon and a fresh echo server; afterwards, no trace left."""
    d, witness, baseline = module_daemon
    e = Env(d)
    try:
        yield e
        e.close()
        assert_no_trace(d, witness, baseline)
        wait_for(lambda: e.echo.open_count() == 0, what="every port to the echo server to close")
    finally:
        e.close()
        e.echo.close()


def assert_no_trace(d: DaemonProcess, witness: Witness, baseline: Baseline) -> None:
    assert d.proc is not None and d.proc.poll() is None, f"the daemon died:\n{d.stderr()}"
    assert d.ping(), "the daemon does not answer ping"
    wait_for(
        lambda: (
            (s := d.stats())["sessions"] == baseline.sessions
            and s["open_ports"] == baseline.open_ports
        ),
        what=f"sessions back to {baseline.sessions} and ports to {baseline.open_ports}",
    )
    wait_for(
        lambda: d.fd_count() <= baseline.fds,
        what=f"the daemon's fds back to {baseline.fds} (now {d.fd_count()})",
    )
    wait_for(
        lambda: d.thread_count() <= baseline.threads,
        what=f"the daemon's threads back to {baseline.threads} (now {d.thread_count()})",
    )
    witness.check()


def open_echo_port(c: RawClient, echo: EchoServer, opts: dict[str, Any] | None = None) -> int:
    port_id = c.call("connect_tcp", *echo.address, opts or {})
    assert isinstance(port_id, int)
    return int(port_id)


def echo_through(c: RawClient, port_id: int, data: bytes) -> bytes:
    """Send ``data`` on a raw-mode port to the echo server; the bytes that come back."""
    c.notify("send", port_id, data)
    return recv_data(c, port_id, len(data))


def recv_data(c: RawClient, port_id: int, n: int) -> bytes:
    """``n`` bytes of ``data`` events of a raw-mode port, however they were cut."""
    got = b""
    while len(got) < n:
        name, params = c.event()
        assert name == "data" and params[0] == port_id, (name, params)
        got += params[1]
    assert len(got) == n, got
    return got


def session_error(c: RawClient) -> list[Any]:
    """The next event, which must be a session-level error: its ``[code, message...]``."""
    name, params = c.event()
    assert name == "error" and params[0] is None, (name, params)
    return list(params[1])


# -- malformed input ----------------------------------------------------------------------


def test_bytes_that_are_not_msgpack_end_the_session_with_a_final_error(
    env: Env,
) -> None:
    """0xc1 is never msgpack: one final error event (code 1, port nil), then the
    daemon closes the connection and the session's ports."""
    echo = env.echo
    c = env.raw()
    open_echo_port(c, echo)
    offset = c.bytes_sent
    c.send_raw(b"\xc1" + random.Random(1).randbytes(4096))
    assert c.read_until_closed() == [
        [2, "error", [None, [1, f"not msgpack at byte {offset}: FormatError"]]]
    ]
    c.close()
    wait_for(lambda: echo.open_count() == 0, what="the session's port to close")


@pytest.mark.parametrize("seed", range(12))
def test_random_bytes_never_hurt_the_daemon(env: Env, seed: int) -> None:
    """4 KiB of random bytes, then our end of the stream: whatever they decode to,
    every answer is a well-formed message, the daemon ends the session, and it is
    fine afterwards (assert_no_trace)."""
    echo = env.echo
    c = env.raw()
    open_echo_port(c, echo)
    c.send_raw(random.Random(seed).randbytes(4096))
    c.sock.shutdown(socket.SHUT_WR)
    messages = c.read_until_closed()  # RawClient asserts each is a msgpack-rpc message
    errors = [m for m in messages if m[0] == 2 and m[1] == "error"] + [
        m for m in messages if m[0] == 1 and m[2] is not None
    ]
    assert errors, f"random bytes gave no error at all: {messages!r}"
    c.close()


def test_a_stream_ending_inside_a_message_gets_a_final_error(
    env: Env,
) -> None:
    """Half a request, then EOF (our write side shut): docs/protocol.md section 10
    promises a final error event (code 1) before the daemon closes."""
    c = env.raw()
    c.send_raw(msgpack.packb([0, 12345, "ping", []])[:5])
    c.sock.shutdown(socket.SHUT_WR)
    messages = c.read_until_closed()
    assert len(messages) == 1, messages
    assert messages[0][:2] == [2, "error"] and messages[0][2][0] is None
    code, message = messages[0][2][1][:2]
    assert code == 1 and "ended inside a message" in message
    c.close()


def test_a_whole_request_then_eof_is_still_answered(
    env: Env,
) -> None:
    """``printf <ping> | socat - UNIX-CONNECT:...`` (docs section 12) works: the answer
    to a request that arrived before EOF goes out before the daemon closes."""
    c = env.raw()
    c.send_raw(bytes.fromhex("940001a470696e6790"))  # [0, 1, "ping", []]
    c.sock.shutdown(socket.SHUT_WR)
    assert c.read_until_closed() == [[1, 1, None, "pong"]]
    c.close()


def test_truncated_message_then_disconnect_closes_the_sessions_ports(
    env: Env,
) -> None:
    echo = env.echo
    for cut in (1, 3, 9):
        c = env.raw()
        open_echo_port(c, echo)
        open_echo_port(c, echo)
        c.send_raw(msgpack.packb([0, 1, "connect_tcp", ["127.0.0.1", 1, {}]])[:cut])
        c.close()
    wait_for(
        lambda: len(echo.connections()) == 6 and echo.open_count() == 0,
        what="the sessions' 6 ports to be accepted, then closed",
    )


BAD_ENVELOPES: list[tuple[Any, int | None, str]] = [
    # (message, msgid the error answers or None for an error event, words in the message)
    ([0, 12345, "ping"], 12345, "4 elements, got 3"),
    ([0, 12346, "ping", {}], 12346, "params of 'ping' must be an array"),
    ([0, 12347, 42, []], 12347, "method name must be a str or bin"),
    ([9, 12348, 1], 12348, "unknown message type 9"),
    ([0, "x", "ping", []], None, "msgid must be a uint32"),
    ([0, 2**32, "ping", []], None, "msgid must be a uint32"),
    ("hello", None, "must be an array"),
    ([], None, "empty array"),
    ({"a": 1}, None, "must be an array"),
    ([2, "send"], None, "3 elements"),
    ([1, 12349, None], None, "4 elements, got 3"),  # a bad *response*: never answered
]


@pytest.mark.parametrize(
    ("message", "msgid", "words"), BAD_ENVELOPES, ids=[repr(m[0])[:30] for m in BAD_ENVELOPES]
)
def test_malformed_message_is_answered_and_the_session_goes_on(
    env: Env, message: Any, msgid: int | None, words: str
) -> None:
    """A msgpack value that is not a valid message: an error naming the problem
    (a response when it was a request with a readable msgid, else an error event
    with port nil); the stream is in sync, so the session and its ports go on."""
    echo = env.echo
    c = env.raw()
    port_id = open_echo_port(c, echo)
    c.send(message)
    if msgid is not None:
        error, result = c.response(msgid)
        assert result is None and error[0] == 1 and words in error[1], error
    else:
        error = session_error(c)
        assert error[0] == 1 and words in error[1], error
    assert c.call("ping") == "pong"
    assert echo_through(c, port_id, b"still here") == b"still here"
    assert not c.events and not c.responses, (c.events, c.responses)
    c.close()


BAD_REQUESTS: list[tuple[str, list[Any], int, str]] = [
    ("connect_tcp", ["127.0.0.1"], 3, "connect_tcp takes 2 to 3 params (host, port, opts), got 1"),
    ("connect_tcp", [5, "x"], 3, "connect_tcp: host must be a str, got int 5"),
    ("connect_tcp", ["127.0.0.1", 70000], 3, "port must be an int in 0..65535"),
    ("connect_tcp", ["127.0.0.1", 1, {"pakcet": "line"}], 3, "unknown option 'pakcet'"),
    ("connect_tcp", ["127.0.0.1", 1, {"packet": "bogus"}], 3, "opts.packet must be one of"),
    ("connect_tcp", ["127.0.0.1", 1, {"active": "twice"}], 3, "opts.active must be"),
    ("connect_tcp", ["127.0.0.1", 1, []], 3, "opts must be a map of options"),
    ("listen_tcp", ["127.0.0.1", 0, {"backlog": 0}], 3, "opts.backlog must be an int in 1..65535"),
    ("setopts", [1.5, {}], 3, "setopts: port_id must be a uint32, got float 1.5"),
    ("setopts", [1, {"packet": "line"}], 3, "unknown option 'packet'"),
    ("send_after", [-1, "x"], 3, "delay must be a number >= 0"),
    ("send_after", [float("nan"), "x"], 3, "delay must be a number >= 0"),
    ("interval", [0], 3, "period must be a number > 0"),
    ("ping", [1], 3, "ping takes 0 params"),
    ("hello", [2], 9, "protocol version 2 not supported"),
    ("hello", ["1"], 3, "version must be an int"),
    ("pnig", [], 2, "unknown method 'pnig'"),
    ("__init__", [], 2, "unknown method '__init__'"),
    ("rpc_ping", [], 2, "unknown method 'rpc_ping'"),
]


@pytest.mark.parametrize(
    ("method", "params", "code", "words"),
    BAD_REQUESTS,
    ids=[f"{m}{p!r}"[:40] for m, p, _, _ in BAD_REQUESTS],
)
def test_wrong_method_arity_or_types_is_an_error_naming_it(
    env: Env, method: str, params: list[Any], code: int, words: str
) -> None:
    echo = env.echo
    c = env.raw()
    port_id = open_echo_port(c, echo)
    failure = c.error_of(method, *params)
    assert failure.code == code and words in failure.message, failure.error
    assert c.call("ping") == "pong"
    assert echo_through(c, port_id, b"ok") == b"ok"
    c.close()


def test_malformed_send_notifications_are_error_events_and_write_nothing(
    env: Env,
) -> None:
    """``send`` with the wrong arity or a data that is neither bin nor str: an error
    event with port nil (docs section 6), nothing written, the port still open.
    A str is written as its UTF-8 bytes (docs section 1)."""
    echo = env.echo
    c = env.raw()
    port_id = open_echo_port(c, echo)
    for params in ([port_id], [port_id, b"a", b"b"], [port_id, 5], [port_id, [1, 2]]):
        c.notify("send", *params)
        code, message = session_error(c)[:2]
        assert code == 3 and "send" in message, message
    c.notify("send", port_id, "text é")
    c.notify("send", port_id, b"!")
    assert recv_data(c, port_id, len("text é!".encode())) == "text é!".encode()
    wait_for(lambda: sum(x["bytes"] for x in echo.connections()) == len("text é!".encode()))
    assert not c.events
    c.close()


def test_unknown_notifications_are_ignored(env: Env) -> None:
    """Never answered, never an error (stock clients send their own, e.g. Neovim's)."""
    c = env.raw()
    c.notify("bogus", 1, 2)
    c.notify("nvim_set_client_info", "client", {}, "remote", {}, {})
    c.notify(b"\xff\xfe", None)
    c.send([2, "ping", []])  # a method name, but as a notification: no answer either
    assert c.call("ping") == "pong"
    assert not c.events and not c.responses
    c.close()


def test_invalid_utf8_in_a_str_does_not_kill_the_session(
    env: Env,
) -> None:
    c = env.raw()
    bad = b"p\xffng".decode("utf-8", "surrogateescape")
    c.send_raw(b"\x94\x00\xcd\x30\x39\xa4p\xffng\x90")  # [0, 12345, <str 'p\xffng'>, []]
    error, _ = c.response(12345)
    assert error[0] == 2 and repr(bad) in error[1], error  # named, escaped
    assert c.call("send_after", 0, bad) is not None
    name, params = c.event()
    assert name == "timer" and params[1] == bad
    failure = c.error_of("connect_unix", "/nonexistent/\udcff")
    assert failure.code == 7 and failure.error[2]["type"] == "FileNotFoundError", failure.error
    assert c.call("ping") == "pong"
    c.close()


def test_method_names_and_option_keys_as_bin(env: Env) -> None:
    echo = env.echo
    c = env.raw()
    assert c.call(b"ping") == "pong"
    assert c.call(b"get_api_info")["version"] == 1
    port_id = c.call(b"connect_tcp", b"127.0.0.1", echo.address[1], {b"packet": b"line"})
    c.notify(b"send", port_id, b"a\nb\n")
    assert [c.event(), c.event()] == [("data", [port_id, b"a\n"]), ("data", [port_id, b"b\n"])]
    c.close()


def test_msgids_are_echoed_as_given_and_replies_may_come_out_of_order(
    env: Env,
) -> None:
    """Pipelined requests with msgids that don't start at 0 or grow; each answer
    carries its request's msgid, matched whatever the order they arrive in."""
    echo = env.echo
    c = env.raw()
    calls = [
        (12345, "connect_tcp", [*echo.address]),
        (4294967295, "ping", []),
        (0, "get_api_info", []),
        (7, "stats", []),
        (12346, "connect_tcp", [*echo.address]),
        (12344, "ping", []),
    ]
    c.send_raw(b"".join(c.packer.pack([0, i, m, p]) for i, m, p in calls))
    deadline = time.monotonic() + T
    while len(c.responses) < len(calls):
        c._pump(deadline)
    arrived = list(c.responses)
    assert sorted(arrived) == sorted(i for i, _, _ in calls)
    answers = {i: c.responses[i] for i in arrived}
    assert all(error is None for error, _ in answers.values()), answers
    assert answers[4294967295][1] == answers[12344][1] == "pong"
    assert answers[0][1]["version"] == 1 and "ping" in answers[0][1]["methods"]
    assert answers[7][1]["sessions"] >= 1
    assert {answers[12345][1], answers[12346][1]} == {1, 2}  # ids in order of completion
    c.close()


def test_a_connect_reply_comes_before_the_ports_first_event(env: Env) -> None:
    """docs/protocol.md section 7: the answer to connect_tcp precedes the port's
    first data, even when the peer writes the moment it accepts (the port then
    reads before the daemon has announced its id)."""
    server = socket.create_server(("127.0.0.1", 0))
    peers: list[socket.socket] = []

    def greet() -> None:
        for _ in range(5):
            conn, _ = server.accept()
            peers.append(conn)
            conn.sendall(b"hello at once\n")

    greeter = threading.Thread(target=greet, daemon=True)
    greeter.start()
    try:
        for _ in range(5):
            c = env.raw()
            msgid = c.request("connect_tcp", *server.getsockname(), {"packet": "line"})
            error, port_id = c.response(msgid)
            assert error is None, error
            assert not c.events, f"events before the reply: {list(c.events)}"
            assert c.event() == ("data", [port_id, b"hello at once\n"])
            c.close()
        greeter.join(T)
    finally:
        server.close()
        for peer in peers:
            peer.close()


# -- ports of others, closed ports, limits ------------------------------------------------


PORT_METHODS: list[tuple[str, list[Any]]] = [
    ("close", []),
    ("setopts", [{"active": True}]),
    ("read", []),
    ("close_stdin", []),
]


def test_another_sessions_port_is_no_such_port(env: Env) -> None:
    """B names A's port id: every method answers "no such port", a send is an error
    event; A's port is untouched (the echo server gets A's bytes only)."""
    echo = env.echo
    a = env.raw()
    b = env.raw()
    port_id = open_echo_port(a, echo)
    for method, extra in PORT_METHODS:
        failure = b.error_of(method, port_id, *extra)
        assert failure.code == 4 and f"no such port: {port_id}" in failure.message, failure.error
    b.notify("send", port_id, b"intruder")
    name, params = b.event()
    assert name == "error" and params[0] == port_id and params[1][0] == 4, params
    assert b.call("cancel_timer", port_id) is False
    assert echo_through(a, port_id, b"mine") == b"mine"
    assert sum(x["bytes"] for x in echo.connections()) == 4
    assert not a.events
    a.close()
    b.close()


def test_a_closed_port_is_no_such_port(env: Env) -> None:
    echo = env.echo
    c = env.raw()
    port_id = open_echo_port(c, echo)
    assert c.call("close", port_id) is None
    assert c.event() == ("closed", [port_id, None])
    for method, extra in PORT_METHODS:
        failure = c.error_of(method, port_id, *extra)
        assert failure.code == 4 and "no such port" in failure.message, failure.error
    c.notify("send", port_id, b"late")
    name, params = c.event()
    assert name == "error" and params[0] == port_id and params[1][0] == 4, params
    assert c.call("connect_tcp", *echo.address) == port_id + 1  # ids are never reused
    assert not c.events
    c.close()


def test_a_message_over_max_message_bytes_closes_only_that_connection(
    env: Env,
) -> None:
    """A final error event naming the limit, then the connection (and its ports) is
    closed; another connection sends a message just under the limit and is fine."""
    echo = env.echo
    big = env.raw()
    open_echo_port(big, echo)
    big.request("ping", b"x" * (MAX_MESSAGE + 1))
    messages = big.read_until_closed()
    assert len(messages) == 1 and messages[0][:2] == [2, "error"], messages
    assert messages[0][2][0] is None
    code, text = messages[0][2][1][:2]
    assert code == 5 and f"max_message_bytes={MAX_MESSAGE}" in text, text
    big.close()
    wait_for(lambda: echo.open_count() == 0, what="the big client's port to close")

    ok = env.raw()
    port_id = open_echo_port(ok, echo)
    payload = random.Random(3).randbytes(MAX_MESSAGE - 64)
    assert echo_through(ok, port_id, payload) == payload
    ok.close()


def test_too_many_sessions_is_an_error_naming_the_limit(limited_daemon: DaemonProcess) -> None:
    d = limited_daemon
    wait_for(lambda: d.stats()["sessions"] == 1, what="the start-up pings' sessions to end")
    clients = [RawClient(d.socket_path) for _ in range(5)]
    for c in clients:
        assert c.call("ping") == "pong"
    extra = RawClient(d.socket_path)
    messages = extra.read_until_closed()
    assert messages == [[2, "error", [None, [5, "too many sessions: limit sessions=5"]]]]
    extra.close()
    clients.pop().close()
    again = wait_for(lambda: _admitted(d), what="a session slot to free up")
    assert again.call("stats")["sessions"] == 5
    for c in [*clients, again]:
        assert c.call("ping") == "pong"
        c.close()


def _admitted(d: DaemonProcess) -> RawClient | None:
    c = RawClient(d.socket_path)
    try:
        c.call("ping")
    except PeerClosed:
        c.close()
        return None
    return c


def test_too_many_ports_is_an_error_naming_the_limit(limited_daemon: DaemonProcess) -> None:
    """Ports and timers share ports_per_session; the limit is per session; a closed
    port frees its slot."""
    d = limited_daemon
    c = RawClient(d.socket_path)
    ticks = [c.call("interval", 30), c.call("interval", 30)]
    c.call("send_after", 30, "t")
    for method, params in (
        ("interval", [30]),
        ("send_after", [30, "u"]),
        ("listen_tcp", ["127.0.0.1", 0]),
    ):
        failure = c.error_of(method, *params)
        assert failure.code == 5, failure.error
        assert failure.message == "too many ports: limit ports_per_session=3", failure.error
    other = RawClient(d.socket_path)
    for _ in range(3):
        other.call("interval", 30)
    c.call("close", ticks[0])
    assert c.event() == ("closed", [ticks[0], None])
    assert isinstance(c.call("interval", 30), int)
    assert c.error_of("interval", 30).code == 5
    c.close()
    other.close()


def test_high_water_and_max_frame_bytes_over_the_limits_are_errors(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """docs/protocol.md section 9: opts.high_water over limits.pending_bytes and
    opts.max_frame_bytes over limits.max_frame_bytes are error 5 naming the limit."""
    d = daemon_factory(limits={"pending_bytes": 65536, "max_frame_bytes": 4096})
    echo = EchoServer()
    try:
        c = RawClient(d.socket_path)
        failure = c.error_of("connect_tcp", *echo.address, {"high_water": 65537})
        assert failure.code == 5 and "pending_bytes=65536" in failure.message, failure.error
        failure = c.error_of("connect_tcp", *echo.address, {"max_frame_bytes": 4097})
        assert failure.code == 5 and "max_frame_bytes=4096" in failure.message, failure.error
        opts = {"high_water": 65536, "max_frame_bytes": 4096}
        port_id = c.call("connect_tcp", *echo.address, opts)
        assert echo_through(c, port_id, b"at the limits") == b"at the limits"
        c.close()
    finally:
        echo.close()


# -- clients that misbehave at the socket level -------------------------------------------

KILLED_CLIENT = textwrap.dedent(
    """
    import socket, sys
    import msgpack

    path, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    unpacker = msgpack.Unpacker(raw=False)

    def call(msgid, method, *params):
        sock.sendall(msgpack.packb([0, msgid, method, list(params)]))
        while True:
            for msg in unpacker:
                if msg[0] == 1 and msg[1] == msgid:
                    assert msg[2] is None, msg
                    return msg[3]
            unpacker.feed(sock.recv(65536))

    ports = [call(100 + k, "connect_tcp", host, port) for k in range(3)]
    listener = call(200, "listen_tcp", "127.0.0.1", 0)
    call(201, "interval", 0.01)
    call(202, "send_after", 60, "never")
    print(listener[1][1], flush=True)
    chunk = b"x" * 1024
    k = 0
    while True:  # write and never read, until the test kills us mid-stream
        sock.sendall(msgpack.packb([2, "send", [ports[k % 3], chunk]]))
        k += 1
    """
)


def test_a_client_killed_mid_stream_leaves_nothing_behind(
    env: Env,
) -> None:
    """A client process opens connections, a listener, an interval and a timer,
    writes without reading, and is SIGKILLed while the bytes flow: the daemon
    closes all of them (the echo server sees every connection end, the listener's
    port refuses), and assert_no_trace finds no fd or thread left."""
    d, echo = env.d, env.echo
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, d.socket_path, *map(str, echo.address)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        listen_port = int(proc.stdout.readline())
        wait_for(
            lambda: sum(c["bytes"] for c in echo.connections()) >= 256 * 1024,
            what="the client's writes to flow",
        )
        wait_for(lambda: len(echo.connections()) == 3, what="its 3 connections")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(T)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: echo.open_count() == 0, what="the killed client's connections to close")
    wait_for(lambda: _refused(("127.0.0.1", listen_port)), what="its listener to close")


def _refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=T).close()
    except ConnectionRefusedError:
        return True
    return False


def test_200_sessions_connecting_and_vanishing(env: Env) -> None:
    """Sessions that close at once, after a request, with a port opening (the
    connect finishes after the session is gone), inside a message, after an
    answer; half of them with a reset. Nothing may stay behind."""
    d, echo = env.d, env.echo
    ping = msgpack.packb([0, 1, "ping", []])
    opening = msgpack.packb([0, 1, "connect_tcp", [*echo.address]])
    opening += msgpack.packb([2, "send", [1, b"x" * 100]])
    for i in range(200):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(T)
        s.connect(d.socket_path)
        kind = i % 5
        if kind == 1:
            s.sendall(ping)
        elif kind == 2:
            s.sendall(opening)
        elif kind == 3:
            s.sendall(ping[:4])
        elif kind == 4:
            s.sendall(ping)
            assert s.recv(100) == msgpack.packb([1, 1, None, "pong"])
        if i % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    wait_for(lambda: echo.open_count() == 0, what="the vanished sessions' ports to close")


def _rss(d: DaemonProcess) -> int:
    with open(f"/proc/{d.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


BOUNDED = 16 * 1024 * 1024
"""How much the daemon's memory may grow while a client or a peer stalls (it would
grow by the whole FLOOD if it buffered without bound)."""
SESSION_BUFFER = 4 * 1024 * 1024
"""The most a session may have handed to its socket for a client that reads nothing:
its write buffer's high-water mark (1 MiB), one batch of events, the kernel's share."""
FLOOD = 128 * 1024 * 1024
STALL = 2.0
"""Seconds without progress that count as "blocked" (only ever makes a check pass
when a slow machine stalls the daemon; it cannot make a correct daemon fail)."""


def test_a_client_that_stops_reading_pauses_its_ports(
    env: Env,
) -> None:
    """A peer floods a port whose client never reads its socket: the daemon stops
    reading the peer (the peer's send blocks, far short of the flood) and its
    memory stays bounded; when the client reads, every byte arrives once."""
    d = env.d
    server = socket.create_server(("127.0.0.1", 0))
    written: list[int] = []
    announced = threading.Event()

    def flood() -> None:
        conn, _ = server.accept()
        announced.wait(T)  # flood the open port, not the window before its reply
        conn.settimeout(STALL)
        chunk = b"y" * 65536
        total = 0
        try:
            while total < FLOOD:
                total += conn.send(chunk)
        except TimeoutError:
            pass
        written.append(total)
        conn.close()

    producer = threading.Thread(target=flood, daemon=True)
    producer.start()
    rss_before = _rss(d)
    c = env.raw()
    session_id = c.call("hello", 1, None)["session_id"]
    port_id = open_echo_port_to(c, server.getsockname())
    announced.set()
    producer.join(FLOOD / 1e6 + 30)
    assert not producer.is_alive()
    server.close()
    # The kernel may hold a lot (tcp_rmem's max is 32 MiB here); the daemon may not.
    assert written[0] < FLOOD // 2, f"the flood was never stopped ({written[0]} bytes)"
    (mine,) = [s for s in d.stats()["session_list"] if s["id"] == session_id]
    queued = mine["bytes_out"] - c.bytes_received
    assert queued < SESSION_BUFFER, f"{queued} bytes queued for a client that reads nothing"
    assert _rss(d) - rss_before < BOUNDED, f"the daemon grew by {_rss(d) - rss_before} bytes"
    got = 0
    while True:
        name, params = c.event()
        assert params[0] == port_id, (name, params)
        if name == "closed":
            break
        assert name == "data", (name, params)
        got += len(params[1])
    assert got == written[0]
    c.close()


def open_echo_port_to(c: RawClient, address: tuple[str, int]) -> int:
    return int(c.call("connect_tcp", *address))


def test_a_client_writing_to_a_slow_peer_is_slowed_down(
    env: Env,
) -> None:
    """A peer that doesn't read: the daemon stops reading our client, whose socket
    send blocks far short of the flood; the daemon's memory stays bounded and it
    serves others meanwhile. When the peer reads, every byte arrives exactly once."""
    d = env.d
    server = socket.create_server(("127.0.0.1", 0))
    c = env.raw()
    port_id = open_echo_port_to(c, server.getsockname())
    peer, _ = server.accept()
    server.close()
    rss_before = _rss(d)
    chunk = b"z" * 32768  # a message stays under max_message_bytes
    message = memoryview(c.packer.pack([2, "send", [port_id, chunk]]))
    c.sock.settimeout(STALL)
    complete, offset = 0, 0
    try:
        while complete * len(chunk) < FLOOD:
            offset += c.sock.send(message[offset:])
            if offset == len(message):
                complete, offset = complete + 1, 0
    except TimeoutError:
        pass
    assert complete * len(chunk) < FLOOD // 2, "the daemon took everything we wrote"
    assert _rss(d) - rss_before < BOUNDED, f"the daemon grew by {_rss(d) - rss_before} bytes"
    assert d.ping()  # others are served meanwhile
    received: list[int] = []
    reader = threading.Thread(
        target=lambda: received.append(len(read_until_eof(peer, timeout=60))), daemon=True
    )
    reader.start()
    c.sock.settimeout(T)
    if offset:
        c.sock.sendall(message[offset:])
        complete += 1
    assert c.call("close", port_id) is None
    reader.join(60)
    assert not reader.is_alive()
    assert received == [complete * len(chunk)]
    peer.close()
    c.close()


def test_a_peer_flooding_before_the_connect_reply_is_bounded_too(env: Env) -> None:
    """A peer that writes 16 MiB the moment it accepts, to a client that reads nothing
    after the connect reply: the daemon may not queue more than SESSION_BUFFER for it.
    The port reads before its id is announced; whether much arrives in that window is
    a race (about one connect in three here), so the test tries 20 times."""
    d = env.d
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(T)
    flood = b"f" * (16 << 20)
    worst = 0
    try:
        for _ in range(20):
            c = env.raw()
            session_id = c.call("hello", 1, None)["session_id"]
            msgid = c.request("connect_tcp", *server.getsockname())
            peer, _ = server.accept()
            peer.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                peer.sendall(flood)  # as much as the daemon takes
            error, _ = c.response(msgid)
            assert error is None, error
            (mine,) = [s for s in d.stats()["session_list"] if s["id"] == session_id]
            worst = max(worst, mine["bytes_out"] - c.bytes_received)
            c.close()
            env.clients.remove(c)
            peer.close()
            if worst >= SESSION_BUFFER:
                break
    finally:
        server.close()
    assert worst < SESSION_BUFFER, f"{worst} bytes queued for a client that reads nothing"


# -- ports failing ------------------------------------------------------------------------


def test_refused_connect_and_peer_reset_are_errors_with_errno_names(
    env: Env,
) -> None:
    c = env.raw()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    try:
        failure = c.error_of("connect_tcp", *dead.getsockname())
    finally:
        dead.close()
    assert failure.code == 7, failure.error
    assert failure.error[2]["type"] == "ConnectionRefusedError"
    assert failure.error[2]["errno_name"] == "ECONNREFUSED"
    assert failure.message.startswith("ConnectionRefusedError: ")

    listener_id, address = c.call("listen_tcp", "127.0.0.1", 0)
    peer = socket.create_connection(tuple(address), timeout=T)
    name, params = c.event()
    assert name == "accepted" and params[0] == listener_id, (name, params)
    conn_id = params[1]
    assert params[2] == list(peer.getsockname())
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    (name, params), closed = c.event(), c.event()
    assert name == "error" and params[0] == conn_id, (name, params)
    assert params[1][0] == 7 and params[1][2]["errno_name"] == "ECONNRESET", params
    assert closed == ("closed", [conn_id, "error"])
    assert c.call("close", listener_id) is None
    assert c.event() == ("closed", [listener_id, None])
    c.close()


def test_a_failing_port_gets_error_and_closed_and_the_session_goes_on(
    env: Env,
) -> None:
    """A write its driver can't do (a 300-byte frame on a 1-byte length prefix):
    that port gets error (code 10, FrameError) then closed; the others go on."""
    echo = env.echo
    c = env.raw()
    bad = open_echo_port(c, echo, {"packet": 1})
    good = open_echo_port(c, echo)
    c.notify("send", bad, b"q" * 300)
    (name, params), closed = c.event(), c.event()
    assert name == "error" and params[0] == bad, (name, params)
    assert params[1][0] == 10 and params[1][2]["type"] == "FrameError", params
    assert closed == ("closed", [bad, "error"])
    assert echo_through(c, good, b"fine") == b"fine"
    c.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_daemon_going_away_wakes_every_blocked_receiver(sig: int) -> None:
    """Threads blocked in recv() on remote ports each get one Closed and then
    ChannelClosed; later calls raise ConnectionError. Nobody hangs."""
    d = DaemonProcess().start()
    echo = EchoServer()
    try:
        remote = ioserver_client.connect(d.socket_path)
        ports = [remote.connect_tcp(*echo.address) for _ in range(3)]
        got: dict[int, list[Any]] = {}

        def receive(i: int) -> None:
            msgs: list[Any] = []
            try:
                while True:
                    msgs.append(ports[i].recv(timeout=30))
            except ChannelClosed:
                msgs.append("ChannelClosed")
            except BaseException as exc:
                msgs.append(exc)
            got[i] = msgs

        threads = [threading.Thread(target=receive, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        wait_for(
            lambda: all(p.inbox.statistics().waiting_receivers == 1 for p in ports),
            what="the receivers to block",
        )
        code = d.stop(sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), d.stderr()
        for t in threads:
            t.join(T)
            assert not t.is_alive()
        for i, port in enumerate(ports):
            assert len(got[i]) == 2 and got[i][1] == "ChannelClosed", got[i]
            assert isinstance(got[i][0], Closed) and got[i][0].port is port, got[i]
        with pytest.raises(ConnectionError):
            remote.ping()
        remote.close()
        if sig == signal.SIGTERM:
            assert not os.path.exists(d.socket_path)
    finally:
        echo.close()
        d.cleanup()
