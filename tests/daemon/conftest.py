"""Fixtures for the daemon tests: the real ``ioserver serve`` as a subprocess.

Each daemon fixture writes a config, starts ``python -m ioserver serve --config
<toml> --socket <path>`` on a fresh socket under /tmp, waits (bounded) until
``ping`` answers there, yields a :class:`~daemon_support.DaemonProcess` (its
``socket_path``, ``tcp_address``, ``token``, ``stderr()``, ``pid``...), and at
teardown sends SIGTERM and asserts that the daemon exited 0 and removed its
socket. The variants: ``daemon`` (defaults), ``tcp_daemon`` (token file 0600,
TCP on a free port), ``spawn_daemon`` (``[spawn] allow = ["cat",
sys.executable]``), ``limited_daemon`` (5 sessions, 3 ports per session,
8 KiB messages); ``daemon_factory`` starts others.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from daemon_support import DaemonProcess, EchoServer, stop_and_check

SMALL_LIMITS = {"sessions": 5, "ports_per_session": 3, "max_message_bytes": 8192}


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., DaemonProcess]]:
    """``start(**options)`` -> a running DaemonProcess (options as DaemonProcess takes);
    every daemon started is stopped and checked at teardown."""
    started: list[DaemonProcess] = []

    def start(**options: Any) -> DaemonProcess:
        d = DaemonProcess(**options)
        started.append(d)
        return d.start()

    yield start
    errors = []
    for d in started:
        try:
            stop_and_check(d)
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def daemon(daemon_factory: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A daemon with the default config, on a Unix socket only."""
    return daemon_factory()


@pytest.fixture
def tcp_daemon(daemon_factory: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A daemon with a token file (0600) and TCP on 127.0.0.1:<free port>."""
    return daemon_factory(tcp=True, token=True)


@pytest.fixture
def spawn_daemon(daemon_factory: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A daemon that allows spawning ``cat`` and this Python."""
    return daemon_factory(spawn_allow=["cat", sys.executable])


@pytest.fixture
def limited_daemon(daemon_factory: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A daemon with small limits: :data:`SMALL_LIMITS`."""
    return daemon_factory(limits=SMALL_LIMITS)


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    """A plain-socket TCP echo server on 127.0.0.1 (threads of the test process)."""
    server = EchoServer()
    yield server
    server.close()
