"""Blocking detected on the I/O thread: the watchdog reports a stuck call while it
is stuck, and blocking channel calls made on the I/O thread raise at once."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from ioserver import Channel, IOServer, select


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
