"""The systemd variables as ``daemon/systemd.py`` reads them, without a daemon: who they
are for, what is refused, when the watchdog runs, and that they never stay behind.

(The daemon serving passed sockets and notifying is tested against the real process
in tests/daemon/test_systemd.py.)
"""

from __future__ import annotations

import os
import socket

import pytest

from ioserver.daemon.systemd import (
    Activation,
    ActivationError,
    Notifier,
    _watchdog_interval,
    listen_fds,
)

ME = str(os.getpid())


def test_variables_for_another_process_are_ignored_and_removed() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "HOME": "/h"}
    assert listen_fds(env) == []
    assert env == {"HOME": "/h"}  # nothing for a spawned program to inherit


def test_no_variables_no_sockets() -> None:
    assert listen_fds({}) == []


@pytest.mark.parametrize("count", ["0", "-1", "x", "65"])
def test_a_bad_count_for_us_is_refused_naming_it(count: str) -> None:
    env = {"LISTEN_PID": ME, "LISTEN_FDS": count}
    with pytest.raises(ActivationError, match=f"LISTEN_FDS='{count}'"):
        listen_fds(env)
    assert env == {}


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("2000000", None, 1.0),  # half of WATCHDOG_USEC
        ("2000000", ME, 1.0),
        ("2000000", "1", None),  # for another process
        ("0", None, None),
        (None, None, None),
        ("soon", None, None),
    ],
)
def test_the_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    assert _watchdog_interval(usec, pid) == expected


def test_notification_variables_are_removed_and_abstract_names_understood() -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"ioserver-unit-{os.getpid()}"
    server.bind("\0" + name)
    server.settimeout(5)
    try:
        env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": ME}
        activation = Activation.from_environ(env)
        assert env == {}
        assert activation.watchdog == 0.5 and activation.sockets == []
        assert activation.notifier is not None
        assert activation.notifier.send("READY=1")
        assert server.recv(100) == b"READY=1"
        activation.close()
    finally:
        server.close()


def test_a_notify_socket_nobody_reads_never_blocks_or_raises() -> None:
    notifier = Notifier("@ioserver-nobody-listens-here")
    try:
        assert notifier.send("READY=1") is False  # refused: logged once, not raised
        assert notifier.send("WATCHDOG=1") is False
    finally:
        notifier.close()
