"""Watch ports: one-shot and level-triggered readiness, re-arming, closing, closed fds.

"Nothing arrives" is proved, not slept on: the loop turns several times (each
``io.call`` is at least one poll of the watched fds) and then sends a marker
into the same inbox from the loop thread; a Readable that a still-armed
interest produced would come before it (FIFO). Every test runs on uvloop and on
asyncio's selector loop.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_until

from ioserver import Channel
from ioserver.messages import Closed, Error, Passive, Readable, Writable
from ioserver.port import Port
from ioserver.server import IOServer

MARK = object()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def until_mark(io: IOServer, inbox: Channel[Any]) -> list[Any]:
    """Everything ``inbox`` receives before a marker the loop sends after a few turns."""
    for _ in range(5):
        io.call(lambda: None)
    io.call(inbox.try_send, MARK)
    got = []
    while (msg := inbox.recv(timeout=10)) is not MARK:
        got.append(msg)
    return got


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def assert_loop_not_spinning(io: IOServer) -> None:
    """The I/O thread burns little CPU while nothing happens (a spinning loop burns
    all it gets). Only a spin can fail this: an idle loop uses ~0 however long."""
    cpu0 = io.call(time.thread_time)
    t0 = time.monotonic()
    time.sleep(0.3)  # a measuring interval, not a synchronisation
    cpu = io.call(time.thread_time) - cpu0
    wall = time.monotonic() - t0
    assert cpu < wall / 2, f"the I/O thread used {cpu:.3f} s CPU in {wall:.3f} s"


def drain_until_closed(port: Port) -> list[Any]:
    rest = list(port)
    assert sum(isinstance(m, Closed) for m in rest) == 1 and isinstance(rest[-1], Closed)
    return rest


def test_readable_after_the_peer_writes(io: IOServer, pair: Any) -> None:
    """Nothing while the socket is empty; Readable(port, fd) once the peer writes."""
    a, b = pair
    inbox: Channel[Any] = Channel(64)
    w = io.watch(a, inbox=inbox)
    assert w.kind == "watch"
    assert until_mark(io, inbox) == []
    b.send(b"x")
    assert inbox.recv(timeout=10) == Readable(w, a.fileno())
    assert a.recv(1) == b"x"  # the caller's socket is untouched by the watch
    w.close()
    assert until_mark(io, inbox) == [Closed(w)]


def test_send_on_a_watch_port_refuses_at_once(io: IOServer, pair: Any) -> None:
    """A watch port writes nothing: send raises TypeError (write to the fd itself) and
    the watch goes on, where a write on the loop would have failed and closed it."""
    a, b = pair
    inbox: Channel[Any] = Channel(64)
    w = io.watch(a, inbox=inbox)
    with pytest.raises(TypeError, match=r"cannot be written to \(a watch port"):
        w.send(b"x")
    assert type(w).__name__ == "Port" and not w.closed
    b.send(b"x")
    assert inbox.recv(timeout=10) == Readable(w, a.fileno())
    w.close()
    assert until_mark(io, inbox) == [Closed(w)]


def test_once_is_one_shot_until_rearmed(io: IOServer, pair: Any) -> None:
    """Default active="once": one Readable per arm although the socket stays
    readable; setopts(active="once") and read() each re-arm for one more."""
    a, b = pair
    inbox: Channel[Any] = Channel(64)
    w = io.watch(a, inbox=inbox)
    assert w.info()["active"] == 1
    b.send(b"stays unread")
    assert inbox.recv(timeout=10) == Readable(w, a.fileno())
    assert until_mark(io, inbox) == []  # still readable, but disarmed
    info = w.info()
    assert info["armed"] is False and info["messages_in"] == 1
    w.setopts(active="once")
    assert inbox.recv(timeout=10) == Readable(w, a.fileno())
    assert until_mark(io, inbox) == []
    assert w.read(timeout=10) == Readable(w, a.fileno())
    assert until_mark(io, inbox) == []
    assert w.info()["messages_in"] == 3
    w.close()
    assert until_mark(io, inbox) == [Closed(w)]


def test_active_true_is_level_triggered_and_bounded_by_the_inbox(io: IOServer, pair: Any) -> None:
    """active=True repeats Readable while readable, up to the inbox capacity (plus
    one pending); draining the inbox re-arms it."""
    a, b = pair
    capacity = 4
    inbox: Channel[Any] = Channel(capacity)
    w = io.watch(a, inbox=inbox, active=True)
    b.send(b"x")
    wait_until(lambda: len(inbox) == capacity, what="a full inbox")
    for _ in range(5):
        io.call(lambda: None)
    info = w.info()
    assert len(inbox) == capacity
    assert info["armed"] is False
    assert info["pending_messages"] <= 1
    assert info["messages_in"] <= capacity + 1
    first = [inbox.recv(timeout=10) for _ in range(capacity)]
    assert first == [Readable(w, a.fileno())] * capacity
    wait_until(lambda: len(inbox) == capacity, what="the inbox refilled after a drain")
    assert w.info()["messages_in"] <= 2 * capacity + 1
    a.recv(1)  # no longer readable: the Readables stop
    w.close()
    rest = []
    while not isinstance(msg := inbox.recv(timeout=10), Closed):
        rest.append(msg)
    assert msg == Closed(w)
    assert set(rest) <= {Readable(w, a.fileno())}
    assert until_mark(io, inbox) == []


def test_writable_interest_fires_on_a_writable_socket(io: IOServer, pair: Any) -> None:
    """writable=True alone: Writable(port, fd) on a socket with buffer room."""
    a, _ = pair
    w = io.watch(a, readable=False, writable=True)
    assert w.recv(timeout=10) == Writable(w, a.fileno())
    assert w.info()["interest"] == "w"
    w.close()
    assert drain_until_closed(w) == [Closed(w)]


def test_readable_and_writable_both_delivered(io: IOServer, pair: Any) -> None:
    """Both interests on a readable and writable socket: each re-arm alternates, so
    neither kind starves; level-triggered gives both kinds too."""
    a, b = pair
    b.send(b"x")
    w = io.watch(a, readable=True, writable=True)
    kinds = [type(w.recv(timeout=10))]
    for _ in range(3):
        kinds.append(type(w.read(timeout=10)))
    assert kinds in ([Readable, Writable] * 2, [Writable, Readable] * 2)
    w.close()
    drain_until_closed(w)
    inbox: Channel[Any] = Channel(8)
    w2 = io.watch(a, readable=True, writable=True, inbox=inbox, active=True)
    wait_until(lambda: len(inbox) == 8, what="a full inbox")
    got = {type(inbox.recv(timeout=10)) for _ in range(8)}
    assert got == {Readable, Writable}
    w2.close()


def test_active_n_then_passive(io: IOServer, pair: Any) -> None:
    """active=N: N Readables, then Passive, then nothing (Erlang's counter)."""
    a, b = pair
    b.send(b"x")
    w = io.watch(a, active=3)
    msgs = [w.recv(timeout=10) for _ in range(4)]
    assert msgs == [Readable(w, a.fileno())] * 3 + [Passive(w)]
    w.close()
    assert drain_until_closed(w) == [Closed(w)]


def test_passive_watch_reads_on_demand(io: IOServer, pair: Any) -> None:
    """active=False: nothing until read(), which arms for exactly one message."""
    a, b = pair
    inbox: Channel[Any] = Channel(64)
    w = io.watch(a, inbox=inbox, active=False)
    b.send(b"x")
    assert until_mark(io, inbox) == []
    assert w.read(timeout=10) == Readable(w, a.fileno())
    assert until_mark(io, inbox) == []
    w.close()


def test_close_removes_interest_and_keeps_the_callers_fd(io: IOServer, pair: Any) -> None:
    """After Closed, the peer's writes produce nothing, the loop is fine, our dup of
    the fd is closed and the caller's socket still works."""
    a, b = pair
    fds = open_fds()
    inbox: Channel[Any] = Channel(64)
    w = io.watch(a, inbox=inbox, active=True)
    assert open_fds() == fds + 1  # the driver's private dup
    w.close()
    assert until_mark(io, inbox) == [Closed(w)]
    b.send(b"after close")
    assert until_mark(io, inbox) == []
    assert io.call(lambda: 1) == 1
    assert open_fds() == fds
    assert a.fileno() >= 0 and a.recv(100) == b"after close"
    assert io.stats()["ports"].get("watch", 0) == 0
    assert_loop_not_spinning(io)


def test_caller_closing_a_watched_socket_ends_the_port(io: IOServer) -> None:
    """Closing the socket object under an armed watch: the next event finds it closed,
    the port ends with Error(EBADF) + Closed, and the loop neither crashes nor spins."""
    a, b = socket.socketpair()
    fds = open_fds()
    w = io.watch(a, active=True)
    a.close()
    b.send(b"x")  # our dup keeps the socket open, so this is an event
    msgs = drain_until_closed(w)
    assert len(msgs) == 2 and isinstance(msgs[0], Error)
    assert isinstance(msgs[0].error, OSError) and msgs[0].error.errno == errno.EBADF
    assert io.call(lambda: 1) == 1
    assert open_fds() == fds - 1  # a and our dup are gone
    assert_loop_not_spinning(io)
    b.close()


def test_caller_closing_a_disarmed_socket_is_noticed_on_rearm(io: IOServer) -> None:
    """Closed between a one-shot and its re-arm: the re-arm ends the port (EBADF)."""
    a, b = socket.socketpair()
    w = io.watch(a)
    b.send(b"x")
    assert w.recv(timeout=10) == Readable(w, a.fileno())
    a.close()
    w.setopts(active="once")
    msgs = drain_until_closed(w)
    assert isinstance(msgs[0], Error) and isinstance(msgs[0].error, OSError)
    assert msgs[0].error.errno == errno.EBADF
    assert io.call(lambda: 1) == 1
    b.close()


def test_caller_closing_a_watched_int_fd_does_not_break_the_loop(io: IOServer) -> None:
    """An int fd closed under the watch (which cannot notice): no crash, no spin, a
    new socket that may reuse the number is watched independently, close is clean."""
    a, b = socket.socketpair()
    fd = os.dup(a.fileno())
    fds = open_fds()
    w = io.watch(fd, active=True)
    os.close(fd)
    a.close()
    assert io.call(lambda: 1) == 1
    assert_loop_not_spinning(io)
    c, d = socket.socketpair()  # may reuse fd's number
    inbox: Channel[Any] = Channel(64)
    w2 = io.watch(c, inbox=inbox)
    d.send(b"y")
    assert inbox.recv(timeout=10) == Readable(w2, c.fileno())
    w.close()
    w2.close()
    assert until_mark(io, inbox) == [Closed(w2)]
    assert [m for m in drain_until_closed(w) if not isinstance(m, Readable)] == [Closed(w)]
    io.call(lambda: None)
    assert open_fds() == fds  # fd and a closed, c and d opened
    assert_loop_not_spinning(io)
    for s in (b, c, d):
        s.close()


def test_invalid_watches_are_rejected(io: IOServer, pair: Any) -> None:
    """Bad arguments raise before anything opens; an fd the loop cannot poll raises
    its OSError; nothing leaks."""
    a, _ = pair
    fds = open_fds()
    opened = io.stats()["ports_opened"]
    with pytest.raises(ValueError, match="packet"):
        io.watch(a, packet="line")
    with pytest.raises(ValueError, match="readable"):
        io.watch(a, readable=False, writable=False)
    with pytest.raises(TypeError):
        io.watch("not a file")
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError, match="invalid fd"):
        io.watch(closed)
    with tempfile.TemporaryFile() as f, pytest.raises(PermissionError):
        io.watch(f)  # epoll cannot poll a regular file
    assert io.stats()["ports_opened"] == opened + 1  # only the regular file got that far
    assert io.stats()["ports"].get("watch", 0) == 0
    assert open_fds() == fds


def test_server_stop_closes_watch_ports(pair: Any) -> None:
    """Stopping the server delivers Closed("server stopped"), closes the driver's dup
    and leaves the caller's socket open."""
    a, b = pair
    IOServer().start().stop()  # libuv makes a per-process signal pipe on first use
    fds = open_fds()
    with IOServer() as io:
        w = io.watch(a, readable=True, writable=True, active=True)
    assert drain_until_closed(w)[-1] == Closed(w, "server stopped")
    assert open_fds() == fds
    b.send(b"x")
    assert a.recv(1) == b"x"
