"""Regression tests for the daemon defects an adversarial probe found (issue 7).

Each test drives the real ``ioserver serve`` process with raw sockets and msgpack
(``RawClient``), and each failed on the daemon before the fix: bytes of early
connections lost, ports_per_session bypassed by accepted connections, unbounded
replies to a client that does not read, decode amplification, unauthenticated
TCP taking every session, grandchildren surviving, and the minor ones (backlog,
spawn env, oversized str/bin headers). Memory is the daemon's VmRSS from
/proc/<pid>/status; the bounds are loose (a busy machine) but far below what the
old code took.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from daemon_support import (
    TOKEN,
    DaemonProcess,
    PeerClosed,
    RawClient,
    T,
    free_port,
    short_tmpdir,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024


def rss(d: DaemonProcess) -> int:
    """The daemon's resident memory in bytes."""
    with open(f"/proc/{d.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def connect_retrying(address: tuple[str, int], timeout: float = T) -> socket.socket:
    """A connection to ``address``, retried while it is refused (not listening yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(address, timeout=timeout)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def send_until_blocked(
    sock: socket.socket, message: bytes, most: int, idle: float = 0.5, timeout: float = 20.0
) -> int:
    """Send ``message`` again and again without reading, until the peer has stopped
    reading for ``idle`` seconds (the socket stays full), ``most`` bytes went, or
    ``timeout``; the bytes sent (whole messages and maybe part of one)."""
    sock.setblocking(False)
    chunk = message * max(1, 65536 // len(message))
    view = memoryview(chunk)
    sent = offset = 0
    blocked_since: float | None = None
    deadline = time.monotonic() + timeout
    while sent < most and time.monotonic() < deadline:
        try:
            n = sock.send(view[offset:])
        except BlockingIOError:
            now = time.monotonic()
            if blocked_since is None:
                blocked_since = now
            elif now - blocked_since >= idle:
                break
            time.sleep(0.01)
            continue
        blocked_since = None
        sent += n
        offset = (offset + n) % len(chunk)
    sock.setblocking(True)
    return sent


def ping_ok(d: DaemonProcess) -> bool:
    with RawClient(d.socket_path) as c:
        return bool(c.call("ping") == "pong")


# -- 2. what a closed session leaves behind ------------------------------------------------


def test_a_closed_session_is_freed_at_once_not_left_to_the_cycle_collector(
    daemon: DaemonProcess,
) -> None:
    """Sessions that each decoded a 1 MiB message, then closed, one after another: each
    is freed when it closes (no reference cycle waits for a full collection with its
    buffers), so the daemon's memory does not grow with the number of dead sessions."""
    assert ping_ok(daemon)
    big = msgpack.packb([0, 1, "ping", [b"x" * MIB]])
    for _ in range(5):  # warm up: the allocator's first high-water mark
        with RawClient(daemon.socket_path) as c:
            c.send_raw(big)
            c.response(1)
    before = rss(daemon)
    for _ in range(120):
        with RawClient(daemon.socket_path) as c:
            c.send_raw(big)
            c.response(1)  # error 3 (ping takes no params): the message was decoded
    wait_for(lambda: daemon.stats()["sessions"] <= 1, what="every session closed")  # stats: 1
    grown = rss(daemon) - before
    assert grown < 16 * MIB, f"120 closed sessions grew the daemon by {grown / MIB:.0f} MiB"
    assert ping_ok(daemon)


# -- 1. bytes of connections accepted before the listen reply -----------------------------


def early_peer(port: int, data: bytes, pieces: int, errors: list[BaseException]) -> None:
    """Connect as soon as ``port`` listens, write ``data`` in ``pieces`` writes (so
    the daemon reads it in several reads), end it, wait for the daemon's end."""
    try:
        with connect_retrying(("127.0.0.1", port)) as s:
            step = len(data) // pieces
            for k in range(0, len(data), step):
                s.sendall(data[k : k + step])
                time.sleep(0.001)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(T)
            s.recv(1)
    except BaseException as exc:
        errors.append(exc)


def test_connections_accepted_before_the_listen_reply_lose_no_bytes(
    daemon: DaemonProcess,
) -> None:
    """Peers connect and write while ``listen_tcp`` is still being answered: every
    byte of every connection reaches the client, in order, after its ``accepted``."""
    rounds, conns, pieces = 4, 12, 6
    with RawClient(daemon.socket_path) as c:
        for r in range(rounds):
            port = free_port()
            payloads = {
                i: b"".join(b"<r%d c%d p%d>" % (r, i, k) + b"." * 200 for k in range(pieces))
                for i in range(conns)
            }
            errors: list[BaseException] = []
            msgid = c.request("listen_tcp", "127.0.0.1", port)
            threads = [
                threading.Thread(target=early_peer, args=(port, payloads[i], pieces, errors))
                for i in range(conns)
            ]
            for t in threads:
                t.start()
            error, result = c.response(msgid)
            assert error is None, error
            listener = result[0]
            received: dict[int, bytearray] = {}
            accepted_order: list[int] = []
            closed: set[int] = set()
            deadline = time.monotonic() + 3 * T
            while len(closed) < conns:
                name, params = c.event(max(0.01, deadline - time.monotonic()))
                if name == "accepted":
                    assert params[0] == listener
                    accepted_order.append(params[1])
                    received[params[1]] = bytearray()
                elif name == "data":
                    assert params[0] in received, f"data before accepted: {params[0]}"
                    received[params[0]] += params[1]
                elif name == "closed" and params[0] in received:
                    closed.add(params[0])
                    c.request("close", params[0])  # the peer's EOF: close our side
                else:
                    assert name != "error", params
            got = sorted(bytes(v) for v in received.values())
            lost = sum(len(p) for p in payloads.values()) - sum(len(g) for g in got)
            assert got == sorted(payloads.values()), f"round {r}: {lost} bytes lost"
            for t in threads:
                t.join(T)
            assert not errors, errors
            c.call("close", listener)


# -- 3. accepted connections count against ports_per_session ------------------------------


def peer_ended(s: socket.socket) -> bool:
    """Whether the daemon closed (or reset) this connection: EOF within a moment."""
    s.settimeout(0.3)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_accepted_connections_count_against_ports_per_session(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(limits={"ports_per_session": 10})
    peers: list[socket.socket] = []
    try:
        with RawClient(d.socket_path) as c:
            listener, (host, port) = c.call("listen_tcp", "127.0.0.1", 0)
            for _ in range(30):
                peers.append(socket.create_connection((host, port), timeout=T))
            accepted: list[int] = []
            refusals: list[Any] = []
            while len(accepted) + len(refusals) < 30:
                name, params = c.event()
                if name == "accepted":
                    accepted.append(params[1])
                else:
                    assert name == "error" and params[0] == listener, (name, params)
                    refusals.append(params[1])
            assert len(accepted) == 9  # the listener is the 10th port
            assert all(e[0] == 5 and "ports_per_session=10" in e[1] for e in refusals), refusals
            stats = c.call("stats")
            mine = [s for s in stats["session_list"] if s["ports"] > 1]
            assert [s["ports"] for s in mine] == [10], stats["session_list"]
            # The refused peers were closed at once; the accepted ones are open.
            ended = sum(1 for s in peers if peer_ended(s))
            assert ended == 21
            # The listener stays open: after closing one, a new peer is accepted.
            c.call("close", accepted[0])
            late = socket.create_connection((host, port), timeout=T)
            peers.append(late)
            names = [n for n, _ in c.events_until(lambda n, p: n == "accepted")]
            assert names[-1] == "accepted"
    finally:
        for s in peers:
            s.close()


# -- 4. a client that does not read its answers -------------------------------------------


def test_a_client_that_does_not_read_its_replies_stays_bounded(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """512 KB of pipelined get_api_info requests (17 bytes in, 6 KB out each), never
    read: the daemon stops reading the client instead of buffering ~190 MB of answers."""
    d = daemon_factory(limits={"pending_bytes": MIB})
    assert ping_ok(d)
    before = peak = rss(d)
    c = RawClient(d.socket_path)
    try:
        requests = msgpack.packb([0, 1, "get_api_info", []]) * (512 * 1024 // 17)
        c.sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 4.0  # a fixed window: send what goes, watch RSS
        while time.monotonic() < deadline:
            if sent < len(requests):
                with contextlib.suppress(BlockingIOError):
                    sent += c.sock.send(requests[sent : sent + 65536])
            peak = max(peak, rss(d))
            time.sleep(0.02)
        c.sock.setblocking(True)
        grown = peak - before
        assert grown < 48 * MIB, f"the daemon grew by {grown / MIB:.0f} MiB ({sent} bytes sent)"
        assert ping_ok(d)  # another session is served meanwhile
        # Reading resumes the session: the answers come, in order.
        for i in range(200):
            error, result = c.response(1)
            assert error is None and result["version"] == 1, (i, error)
    finally:
        c.close()


def test_error_events_for_a_client_that_does_not_read_are_bounded_and_complete(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """``send`` to a port that does not exist, pipelined and never read: each is
    answered by an error event; the daemon stops reading instead of buffering them,
    and once the client reads, every one of them arrives."""
    d = daemon_factory(limits={"pending_bytes": 256 * 1024})
    with RawClient(d.socket_path) as c:
        message = msgpack.packb([2, "send", [999, b""]])
        sent = send_until_blocked(c.sock, message, most=32 * MIB)
        assert sent < 8 * MIB, f"the daemon read {sent} bytes without a reader"
        expected = sent // len(message)
        c.sock.shutdown(socket.SHUT_WR)  # the partial message at the end is cut here
        got = 0
        with contextlib.suppress(PeerClosed):
            while True:
                name, params = c.event(timeout=T)
                if name == "error" and params[0] == 999:
                    assert params[1][0] == 4, params
                    got += 1
                else:
                    assert name == "error" and params[0] is None, (name, params)  # the cut
        assert got == expected


# -- 5. what a message may decode to -------------------------------------------------------


def test_a_message_of_empty_arrays_is_refused_not_decoded(daemon: DaemonProcess) -> None:
    """8 MiB of ``[[], [], ...]`` (within max_message_bytes) is 8 million lists: it
    is refused with error 5 naming max_elements, and the daemon stays small."""
    assert ping_ok(daemon)
    before = rss(daemon)
    n = 8 * MIB
    message = b"\x94\x00\x01\xa4ping\xdd" + struct.pack(">I", n) + b"\x90" * n
    with RawClient(daemon.socket_path) as c:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            c.send_raw(message)
        messages = c.read_until_closed(timeout=3 * T)
    grown = rss(daemon) - before
    assert any(m[:2] == [2, "error"] and m[2][1][0] == 5 for m in messages), messages
    assert "max_elements" in str(messages)
    assert grown < 64 * MIB, f"the daemon grew by {grown / MIB:.0f} MiB"
    with RawClient(daemon.socket_path) as c:
        nested: Any = []
        for _ in range(100):
            nested = [nested]
        c.request("ping", nested)
        messages = c.read_until_closed()
        assert "limit max_depth=64" in str(messages), messages
    assert ping_ok(daemon)


def msgpack_port_fed(
    c: RawClient, data: bytes, opts: dict[str, Any] | None = None
) -> list[tuple[str, list[Any]]]:
    """A ``packet="msgpack"`` port connected to a socket of ours that writes ``data``
    (and nothing more): the port's events up to ``closed`` (or T seconds)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = c.call(
            "connect_tcp", *server.getsockname()[:2], {"packet": "msgpack", **(opts or {})}
        )
        peer, _ = server.accept()
        with peer:
            peer.sendall(msgpack.packb({"fine": [1, 2]}) + data)
            events = c.events_until(lambda name, params: name == "closed" and params[0] == port)
    assert events[0] == ("data", [port, {"fine": [1, 2]}]), events[0]
    return events[1:]


def test_a_msgpack_port_frame_of_empty_arrays_is_refused(daemon: DaemonProcess) -> None:
    """A 1 MiB frame of empty arrays from a peer: an error event naming max_elements
    and ``closed``, not a million lists."""
    n = MIB
    with RawClient(daemon.socket_path) as c:
        events = msgpack_port_fed(c, b"\xdd" + struct.pack(">I", n) + b"\x90" * n)
    assert [name for name, _ in events] == ["error", "closed"], str(events)[:300]
    assert events[0][1][1][0] == 10 and "max_elements" in events[0][1][1][1], events[0]


def test_a_msgpack_port_decodes_within_the_configured_limits(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """A ``packet="msgpack"`` port takes [limits] max_elements and max_depth from the
    daemon's config, not the library's defaults."""
    d = daemon_factory(limits={"max_elements": 1000, "max_depth": 8})
    with RawClient(d.socket_path) as c:
        events = msgpack_port_fed(c, msgpack.packb([0] * 5000))
        assert [name for name, _ in events] == ["error", "closed"], str(events)[:300]
        assert "max_elements=1000" in events[0][1][1][1], events[0]
        nested: Any = []
        for _ in range(10):
            nested = [nested]
        events = msgpack_port_fed(c, msgpack.packb(nested))
        assert [name for name, _ in events] == ["error", "closed"], str(events)[:300]
        assert "max_depth=8" in events[0][1][1][1], events[0]


# -- the minor ones -------------------------------------------------------------------------


def test_listen_with_a_backlog_over_the_range_is_invalid_params(daemon: DaemonProcess) -> None:
    path = os.path.join(short_tmpdir(), "l.sock")
    with RawClient(daemon.socket_path) as c:
        failure = c.error_of("listen_tcp", "127.0.0.1", 0, {"backlog": 2**32})
        assert failure.code == 3 and "backlog" in failure.message, failure.error
        failure = c.error_of("listen_unix", path, {"backlog": 2**32})
        assert failure.code == 3 and "backlog" in failure.message, failure.error
        assert not os.path.exists(path)
        listener = c.call("listen_unix", path, {"backlog": 65535})
        c.call("close", listener)


def test_spawn_env_replaces_the_environment_and_env_add_merges(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(spawn_allow=[sys.executable])
    show = [sys.executable, "-c", "import os, sys; sys.stdout.write(repr(sorted(os.environ)))"]

    def child_env(opts: dict[str, Any]) -> list[str]:
        with RawClient(d.socket_path) as c:
            port, _ = c.call("spawn", show, opts)
            events = c.events_until(lambda name, params: name == "closed" and params[0] == port)
        out = b"".join(params[1] for name, params in events if name == "data")
        names: list[str] = eval(out)  # a repr of a list of str from our own child
        return names

    assert "PATH" in os.environ  # the daemon has it too (it inherits ours)
    only = child_env({"env": {"IOS_ONLY": "1"}})
    assert "IOS_ONLY" in only and "PATH" not in only, only  # the whole environment
    added = child_env({"env_add": {"IOS_ADDED": "2"}})
    assert "IOS_ADDED" in added and "PATH" in added, added  # merged into the daemon's
    both = child_env({"env": {"IOS_ONLY": "1"}, "env_add": {"IOS_ADDED": "2"}})
    assert "IOS_ONLY" in both and "IOS_ADDED" in both and "PATH" not in both, both


def test_a_message_with_an_oversized_bin_or_str_header_is_refused_at_the_header(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """Five bytes that promise more than max_message_bytes: error 5 at once, not after
    that many bytes arrived."""
    d = daemon_factory(limits={"max_message_bytes": 65536})
    for header in (b"\xc6" + struct.pack(">I", 2**31), b"\xdb" + struct.pack(">I", 70000)):
        with RawClient(d.socket_path) as c:
            c.send_raw(header)
            messages = c.read_until_closed(timeout=5.0)
        assert messages and messages[0][:2] == [2, "error"], messages
        assert messages[0][2][1][0] == 5 and "max_message_bytes=65536" in messages[0][2][1][1]


def test_a_msgpack_port_refuses_an_oversized_bin_header_at_once(daemon: DaemonProcess) -> None:
    with RawClient(daemon.socket_path) as c:
        events = msgpack_port_fed(c, b"\xc6" + struct.pack(">I", 2**31), {"max_frame_bytes": 65536})
    assert [name for name, _ in events] == ["error", "closed"], events
    assert events[0][1][1][0] == 10 and "max_frame_bytes=65536" in events[0][1][1][1]


# -- 6. unauthenticated TCP connections ------------------------------------------------------


def closed_within(c: RawClient, timeout: float) -> list[Any] | None:
    """Every message until the daemon closed the connection, or None if it is still
    open after ``timeout`` seconds."""
    try:
        return c.read_until_closed(timeout=timeout)
    except TimeoutError:
        return None


def test_unauthenticated_tcp_connections_cannot_lock_out_the_owner(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    # The defaults: hello_timeout 5 s, 64 unauthenticated; no new key, so that the
    # daemon before the fix runs this config too.
    d = daemon_factory(tcp=True, token=True, limits={"sessions": 70})
    assert d.tcp is not None
    idle: list[RawClient] = []
    try:
        for _ in range(75):  # more than sessions; none sends hello
            idle.append(RawClient(d.tcp))
        # Once 5 were answered (refused), the daemon has accepted all the others.
        wait_for(
            lambda: len(select.select([c.sock for c in idle], [], [], 0)[0]) >= 5,
            what="the daemon to refuse the connections over its limit",
        )
        # The owner is never refused because of them, nor is `stats`.
        with RawClient(d.socket_path) as owner:
            assert owner.call("ping") == "pong"
            stats = owner.call("stats")
            assert stats["unauthenticated"] <= 64, stats
        # 11 were refused at once, 64 are closed after hello_timeout: each with an
        # error event saying why (nothing expired before the fix).
        why = [str(closed_within(c, T)) for c in idle]
        assert sum("limit unauthenticated=64" in w for w in why) == 11, why
        assert sum("hello_timeout=5" in w for w in why) == 64, why
        # A slow hello (1 byte / 0.2 s) is not let in after the timeout.
        slow = RawClient(d.tcp)
        idle.append(slow)
        hello = msgpack.packb([0, 1, "hello", [1, TOKEN]])
        closed_early = False
        for b in hello:
            try:
                slow.send_raw(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                closed_early = True
                break
            time.sleep(0.2)
        messages = closed_within(slow, T)
        assert messages is not None
        assert closed_early or not any(m[0] == 1 and m[2] is None for m in messages), messages
        # A client with the token still gets in.
        good = RawClient(d.tcp)
        idle.append(good)
        assert good.call("hello", 1, TOKEN)["version"] == 1
        assert good.call("ping") == "pong"
    finally:
        for c in idle:
            c.close()
    assert "authentication failed from 127.0.0.1:" in d.stderr()


# -- 7. spawned grandchildren -----------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def spawn_shell_with_child(c: RawClient) -> tuple[int, int]:
    """``sh -c 'sleep 999 & echo $!; wait'``: the port and the sleep's pid."""
    port, _ = c.call("spawn", ["/bin/sh", "-c", "sleep 999 & echo $!; wait; :"])
    out = b""
    while not out.endswith(b"\n"):
        name, params = c.event()
        if params[0] == port:  # (the events of an earlier port may come first)
            assert name == "data", (name, params)
            out += params[1]
    return port, int(out)


def test_closing_a_spawned_shell_ends_its_children_too(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(spawn_allow=["/bin/sh"])
    pids: list[int] = []
    try:
        with RawClient(d.socket_path) as c:
            port, pid = spawn_shell_with_child(c)
            pids.append(pid)
            assert alive(pid)
            c.call("close", port)
            wait_for(lambda: not alive(pid), timeout=T, what=f"the shell's child {pid} to end")
            _, pid = spawn_shell_with_child(c)  # left open: the daemon's stop ends it
            pids.append(pid)
            assert alive(pid)
            assert d.stop() == 0
        wait_for(lambda: not alive(pid), timeout=T, what=f"the shell's child {pid} to end")
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
