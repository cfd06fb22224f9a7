"""RemoteIOServer's awaitable openers, in asyncio and trio, against a real daemon;
and a greenlet's blocking calls to the daemon park only that greenlet."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import trio
from daemon_support import DaemonProcess, EchoServer

import ioserver_client
from ioserver.messages import Data


@pytest.mark.parametrize("kind", ["asyncio", "trio"])
def test_remote_aconnect_tcp_and_aopen_udp(
    kind: str, daemon: DaemonProcess, echo_server: EchoServer
) -> None:
    remote = ioserver_client.connect(daemon.socket_path)
    try:

        async def main() -> list[Any]:
            conn = await remote.aconnect_tcp(*echo_server.address)
            conn.send(b"ping")
            reply = await conn.arecv(timeout=10)
            conn.close()
            udp = await remote.aopen_udp(("127.0.0.1", 0))
            udp.close()
            return [reply, udp.address[0]]

        reply, host = asyncio.run(main()) if kind == "asyncio" else trio.run(main)
        assert isinstance(reply, Data) and reply.data == b"ping"
        assert host == "127.0.0.1"
    finally:
        remote.close()


def test_remote_calls_from_greenlets(daemon: DaemonProcess) -> None:
    """Blocking calls to the daemon from a greenlet park that greenlet alone: another
    greenlet of the same hub runs meanwhile and ends the wait of the first."""
    import gevent
    from gevent._hub_local import get_hub_if_exists

    remote = ioserver_client.connect(daemon.socket_path)
    released = threading.Event()
    try:

        def first() -> Any:
            port = remote.open_udp(("127.0.0.1", 0))
            port.close()
            return released.wait(0) or "ran before the other greenlet"

        g1 = gevent.spawn(first)
        g2 = gevent.spawn(released.set)
        gevent.joinall([g1, g2], raise_error=True, timeout=30)
        assert g1.value is True
    finally:
        remote.close()
        hub = get_hub_if_exists()
        if hub is not None:
            hub.destroy(destroy_loop=True)
