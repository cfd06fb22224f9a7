"""``with``/``async with`` close channels and ports on the way out, also on an error."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from ioserver import Channel, IOServer
from ioserver.channel import PyChannel
from ioserver.messages import Closed
from ioserver.port import PortClosed


@pytest.mark.parametrize("make", [Channel, PyChannel], ids=["current core", "pure"])
def test_with_a_channel_closes_it(make: Any) -> None:
    with make(4) as ch:
        ch.send(1)
        assert ch.recv(timeout=1) == 1
    assert ch.closed
    with pytest.raises(ValueError), make() as failing:
        raise ValueError("inside")
    assert failing.closed


@pytest.mark.parametrize("make", [Channel, PyChannel], ids=["current core", "pure"])
def test_async_with_a_channel_closes_it(make: Any) -> None:
    async def main() -> Any:
        async with make() as ch:
            await ch.asend("x")
            assert await ch.arecv(timeout=1) == "x"
        return ch

    assert asyncio.run(main()).closed


@pytest.mark.timeout(30)
def test_with_a_port_closes_it_and_delivers_closed() -> None:
    with IOServer() as io, socket.create_server(("127.0.0.1", 0)) as server:
        with io.connect_tcp(*server.getsockname()[:2]) as conn:
            peer, _ = server.accept()
            conn.send(b"hi")
            assert peer.recv(2) == b"hi"
        assert conn.closed
        with pytest.raises(PortClosed):
            conn.send(b"again")
        assert conn.recv(timeout=10) == Closed(conn)
        assert peer.recv(10) == b""  # the peer sees the end
        peer.close()


@pytest.mark.timeout(30)
def test_async_with_a_port_closes_it() -> None:
    with IOServer() as io:

        async def main() -> Any:
            async with io.interval(0.01) as tick:
                await tick.arecv(timeout=10)
            return tick

        tick = asyncio.run(main())
        assert tick.closed
        while not isinstance(tick.recv(timeout=10), Closed):
            pass
