"""A BaseException from a ``call_soon`` function is logged; the I/O thread keeps serving."""

from __future__ import annotations

import logging
import sys

import pytest

from ioserver import IOServer
from ioserver.messages import Data


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt("injected on the loop thread")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("fn", "args", "kind"),
    [(sys.exit, (0,), SystemExit), (raise_keyboard_interrupt, (), KeyboardInterrupt)],
    ids=["sys.exit", "KeyboardInterrupt"],
)
def test_call_soon_base_exception_is_logged_and_the_server_serves_on(
    io: IOServer,
    caplog: pytest.LogCaptureFixture,
    fn: object,
    args: tuple[object, ...],
    kind: type[BaseException],
) -> None:
    """``io.call_soon(sys.exit, 0)`` (or a KeyboardInterrupt raised by the function)
    is logged with its traceback; the server stays running, ports keep working."""
    listener = io.listen_tcp("127.0.0.1", 0)
    conn = io.connect_tcp("127.0.0.1", listener.address[1])
    peer = listener.recv(timeout=10).conn
    with caplog.at_level(logging.ERROR, logger="ioserver"):
        io.call_soon(fn, *args)  # type: ignore[arg-type]
        assert io.call(lambda: 42, timeout=10) == 42  # runs after fn: FIFO
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is kind]
    assert len(logged) == 1
    assert io.running and io.failure is None
    conn.send(b"still here")
    message = peer.recv(timeout=10)
    assert message == Data(peer, b"still here")
    assert io.stats()["state"] == "running"
    conn.close()
    peer.close()
    listener.close()
