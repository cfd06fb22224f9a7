"""Blocking detected on the I/O thread: the watchdog reports a stuck call while it
is stuck, and blocking channel calls made on the I/O thread raise at once."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from ioserver import Channel, IOServer, select


def settled_stats(io: IOServer) -> dict[str, Any]:
    """``io.stats()`` once a stuck section has been counted: the caller may be woken
    while the loop thread is still leaving the section that woke it."""
    deadline = time.monotonic() + 10
    while io.stats()["stalls"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    io.call(lambda: None)  # and nothing more is counted by a later section
    return io.stats()


class Records(logging.Handler):
    """Keeps each ioserver warning, and whether the stuck call had returned then."""

    def __init__(self, returned: threading.Event) -> None:
        super().__init__(logging.WARNING)
        self.returned = returned
        self.seen: list[tuple[str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), self.returned.is_set()))


def test_a_stuck_call_is_reported_once_while_it_is_stuck() -> None:
    returned = threading.Event()
    handler = Records(returned)
    logger = logging.getLogger("ioserver")
    logger.addHandler(handler)
    try:
        with IOServer(slow_callback=0.1) as io:

            def stuck() -> None:
                time.sleep(0.3)  # the line the report names

            io.call(stuck)
            returned.set()
            io.call(lambda: None)  # a quick one: no report
            stats = io.stats()
    finally:
        logger.removeHandler(handler)
    reports = [(m, late) for m, late in handler.seen if "stuck in one callback" in m]
    assert len(reports) == 1, handler.seen
    message, late = reports[0]
    assert not late  # logged while the call was still sleeping
    assert "time.sleep(0.3)  # the line the report names" in message
    assert "test_watchdog.py" in message
    assert stats["stalls"] == 1
    assert stats["longest_stall_ms"] >= 300


def test_no_watchdog_when_disabled() -> None:
    with IOServer(slow_callback=None) as io:
        io.call(time.sleep, 0.15)
        stats = io.stats()
    assert (stats["stalls"], stats["longest_stall_ms"]) == (0, 0.0)


def test_an_idle_server_has_a_parked_watchdog() -> None:
    """No callback ran for a period: the watchdog parks without a timeout (no idle CPU)."""
    with IOServer(slow_callback=0.02) as io:
        io.call(lambda: None)
        watchdog: Any = io._watchdog
        deadline = time.monotonic() + 10
        while not watchdog._parked and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watchdog._parked
        io.call(lambda: None)  # and wakes for the next one
        assert io.call(lambda: 7) == 7


@pytest.mark.parametrize(
    "blocking",
    ["recv", "select", "send_full", "port_iteration"],
)
def test_blocking_calls_on_the_io_thread_raise(blocking: str) -> None:
    """Today's stall (a recv with a timeout inside io.call held every port for that
    long) is now a RuntimeError naming the alternative, raised at once."""
    ch: Channel[int] = Channel()
    full: Channel[int] = Channel(1)
    full.send(0)
    with IOServer() as io:
        calls: dict[str, Any] = {
            "recv": lambda: ch.recv(timeout=5),
            "select": lambda: select(ch, timeout=5),
            "send_full": lambda: full.send(1, timeout=5),
            "port_iteration": lambda: next(iter(ch)),
        }
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="try_recv/try_send"):
            io.call(calls[blocking])
        assert time.monotonic() - t0 < 4  # not after the 5 s timeout
        ch.send(1)
        assert io.call(ch.recv) == 1  # ready: no wait, no error
        assert io.call(full.try_recv) == 0


def test_the_config_key() -> None:
    from ioserver.config import ConfigError, ServerConfig

    assert ServerConfig().slow_callback_ms == 100
    assert ServerConfig(slow_callback_ms=0).slow_callback_ms == 0
    for bad in (-1, 0.5, "100", True):
        with pytest.raises(ConfigError, match="slow_callback_ms"):
            ServerConfig(slow_callback_ms=bad)  # type: ignore[arg-type]


# -- driver callbacks: the loop's own events are watched too ------------------------------


_Bounded: Any = type(Channel(1))  # the bounded flavour of the core in use


class SlowInbox(_Bounded):  # type: ignore[misc]
    """A shared inbox whose ``try_send`` (which the driver calls on the I/O thread,
    inside the transport's callback) sleeps once, on the first data message."""

    __slots__ = ()
    slept = threading.Event()

    def try_send(self, value: Any) -> None:
        if not type(self).slept.is_set() and getattr(value, "data", None):
            type(self).slept.set()
            time.sleep(0.3)  # the driver callback's stuck line
        super().try_send(value)


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_a_stuck_driver_callback_is_reported_once_while_it_is_stuck(kind: str) -> None:
    """Real data on a real port: the transport's callback (data_received, native on
    the native core; datagram_received) delivers into an inbox that sleeps. The
    watchdog reports it while it sleeps, once, and counts one stall."""
    import socket

    class Inbox(SlowInbox):
        __slots__ = ()
        slept = threading.Event()

    returned = threading.Event()
    handler = Records(returned)
    logger = logging.getLogger("ioserver")
    logger.addHandler(handler)
    inbox: Channel[Any] = Inbox(16)
    got: list[bytes] = []
    try:
        with IOServer(slow_callback=0.1) as io:
            if kind == "tcp":
                srv = socket.create_server(("127.0.0.1", 0))
                port = io.connect_tcp("127.0.0.1", srv.getsockname()[1], inbox=inbox)
                peer, _ = srv.accept()
                srv.close()
                peer.sendall(b"hello")
            else:
                port = io.open_udp(("127.0.0.1", 0), inbox=inbox)
                peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                peer.sendto(b"hello", port.address)
            try:
                while len(b"".join(got)) < 5:
                    got.append(inbox.recv(timeout=10).data)
                returned.set()
                stats = settled_stats(io)
            finally:
                peer.close()
                port.close()
    finally:
        logger.removeHandler(handler)
    assert b"".join(got) == b"hello"  # delivered once, whole
    reports = [(m, late) for m, late in handler.seen if "stuck in one callback" in m]
    assert len(reports) == 1, handler.seen
    message, late = reports[0]
    assert not late  # logged while the callback was still sleeping
    assert "time.sleep(0.3)  # the driver callback's stuck line" in message
    assert stats["stalls"] == 1
    assert stats["longest_stall_ms"] >= 300


def test_nested_sections_count_once_from_the_outer_start() -> None:
    """A guarded drain that calls a driver callback (loop_callback) is one section:
    the inner one neither resets the outer start nor counts a second stall."""
    from ioserver.watchdog import Watchdog, loop_callback

    returned = threading.Event()
    handler = Records(returned)
    logger = logging.getLogger("ioserver")
    logger.addHandler(handler)
    watchdog = Watchdog(0.1, "nested")

    class Host:
        _watchdog = watchdog

        @loop_callback
        def callback(self) -> float:
            time.sleep(0.15)
            return watchdog._since

    def drain() -> None:
        time.sleep(0.1)  # the outer section is well under way when the inner starts
        seen.append(Host().callback())

    seen: list[float] = []
    try:
        t0 = time.monotonic()
        watchdog.guard(drain)()
        returned.set()
    finally:
        watchdog.stop()
        logger.removeHandler(handler)
    assert len(seen) == 1 and t0 <= seen[0] < t0 + 0.05  # the outer start stood
    assert watchdog._since == 0.0  # and the outer end cleared it
    assert watchdog.stalls == 1
    assert watchdog.longest_stall >= 0.25  # timed from the outer start
    reports = [m for m, _ in handler.seen if "stuck in one callback" in m]
    assert len(reports) == 1


def test_a_drain_the_loop_schedules_itself_is_watched() -> None:
    """A call_soon made on the I/O thread outside any drain schedules the drain with
    the loop's call_soon (not the pipe): that drain is a section too."""
    returned = threading.Event()
    handler = Records(returned)
    logger = logging.getLogger("ioserver")
    logger.addHandler(handler)
    done = threading.Event()
    try:
        with IOServer(slow_callback=0.1) as io:

            def stuck() -> None:
                time.sleep(0.3)  # the scheduled drain's stuck line
                done.set()

            # From a plain loop callback (no drain running), on the I/O thread.
            io.call(lambda: io.loop.call_soon(io.call_soon, stuck))
            assert done.wait(10)
            returned.set()
            stats = settled_stats(io)
    finally:
        logger.removeHandler(handler)
    reports = [(m, late) for m, late in handler.seen if "stuck in one callback" in m]
    assert len(reports) == 1, handler.seen
    assert not reports[0][1]
    assert "time.sleep(0.3)  # the scheduled drain's stuck line" in reports[0][0]
    assert stats["stalls"] == 1
