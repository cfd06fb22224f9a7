"""Awaitable openers (aconnect_tcp, alisten_tcp, aconnect_unix, alisten_unix,
aopen_udp, aspawn, aopen_file) on IOServer and RemoteIOServer, in asyncio and trio:
the caller's loop keeps running during the open, and a cancelled open leaves no
port behind."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from ioserver import IOServer
from ioserver.messages import Accepted, Closed, Data, Datagram, Exited

KINDS = ["asyncio", "trio"]


def run(kind: str, main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(main()) if kind == "asyncio" else trio.run(main)  # type: ignore[arg-type]


async def nap(kind: str, seconds: float) -> None:
    await (asyncio.sleep(seconds) if kind == "asyncio" else trio.sleep(seconds))


@pytest.fixture(scope="module")
def io() -> Iterator[IOServer]:
    with IOServer() as server:
        yield server


async def open_fifo_writer(kind: str, path: Path) -> int:
    """Open the FIFO's write end without blocking: it succeeds once a reader has the
    FIFO open (ENXIO before), so this waits, yielding the loop, for the reader."""
    for _ in range(2000):
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        await nap(kind, 0.005)
    raise AssertionError("no reader opened the FIFO")


@pytest.mark.parametrize("kind", KINDS)
def test_aopen_file_lets_the_loop_run(kind: str, io: IOServer, tmp_path: Path) -> None:
    """Opening a FIFO for reading completes only once a writer opens it, and the
    writer is a task of the caller's own loop: a blocking open would wait for ever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    async def writer() -> None:
        fd = await open_fifo_writer(kind, fifo)
        os.write(fd, b"hello")
        os.close(fd)

    async def main() -> list[Any]:
        if kind == "asyncio":
            port, _ = await asyncio.gather(io.aopen_file(str(fifo), "rb", timeout=20), writer())
        else:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                port = await io.aopen_file(str(fifo), "rb", timeout=20)
        msgs = [await port.arecv(timeout=10)]
        while not isinstance(msgs[-1], Closed):
            msgs.append(await port.arecv(timeout=10))
        return msgs

    msgs = run(kind, main)
    assert b"".join(m.data for m in msgs if isinstance(m, Data)) == b"hello"


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancelled_open_closes_its_port(kind: str, io: IOServer, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = io.stats()["ports"]

    async def main() -> None:
        if kind == "asyncio":
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(io.aopen_file(str(fifo), "rb", timeout=20), 0.1)
        else:
            with trio.move_on_after(0.1) as scope:
                await io.aopen_file(str(fifo), "rb", timeout=20)
            assert scope.cancelled_caught
        fd = await open_fifo_writer(kind, fifo)  # now the abandoned open completes
        os.close(fd)

    run(kind, main)
    for _ in range(2000):  # the helper closes the port nobody owns
        if io.stats()["ports"] == before:
            break
        run(kind, lambda: nap(kind, 0.005))
    assert io.stats()["ports"] == before


@pytest.mark.parametrize("kind", KINDS)
def test_every_opener(kind: str, io: IOServer, tmp_path: Path) -> None:
    sock_path = str(tmp_path / "s.sock")

    async def main() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        listener = await io.alisten_tcp("127.0.0.1", 0)
        conn = await io.aconnect_tcp(*listener.address)
        accepted = await listener.arecv(timeout=10)
        assert isinstance(accepted, Accepted)
        conn.send(b"tcp")
        seen["tcp"] = (await accepted.conn.arecv(timeout=10)).data
        for p in (conn, accepted.conn, listener):
            p.close()

        ulistener = await io.alisten_unix(sock_path)
        uconn = await io.aconnect_unix(sock_path)
        uaccepted = await ulistener.arecv(timeout=10)
        uconn.send(b"unix")
        seen["unix"] = (await uaccepted.conn.arecv(timeout=10)).data
        for p in (uconn, uaccepted.conn, ulistener):
            p.close()

        udp = await io.aopen_udp(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"udp", udp.address)
            msg = await udp.arecv(timeout=10)
        assert isinstance(msg, Datagram)
        seen["udp"] = msg.data
        udp.close()

        proc = await io.aspawn([sys.executable, "-c", "print('spawned')"])
        out = b""
        while True:
            m = await proc.arecv(timeout=20)
            if isinstance(m, Data):
                out += m.data
            elif isinstance(m, Exited):
                seen["exit"] = m.returncode
            elif isinstance(m, Closed):
                break
        seen["spawn"] = out.strip()
        return seen

    assert run(kind, main) == {
        "tcp": b"tcp",
        "unix": b"unix",
        "udp": b"udp",
        "spawn": b"spawned",
        "exit": 0,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_an_open_error_is_raised_in_the_task(kind: str, io: IOServer, tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            await io.aopen_file(str(tmp_path / "missing"), "rb")

    run(kind, main)
