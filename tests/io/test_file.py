"""File ports: reads and writes in a worker thread, completions as messages.

Every test runs on both loops (uvloop and asyncio's selector loop). Waits are
bounded polls or blocking receives; nothing depends on timing.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import wait_until

from ioserver.channel import ChannelClosed
from ioserver.drivers.file import DEFAULT_CHUNK_SIZE
from ioserver.messages import Closed, Data, Error, Message
from ioserver.port import Port, PortClosed
from ioserver.server import IOServer

T = 20.0  # a receive that should succeed at once; only a hang hits it


def recv_until_closed(port: Port, timeout: float = T) -> list[Message]:
    out: list[Message] = []
    while True:
        msg = port.recv(timeout)
        out.append(msg)
        if isinstance(msg, Closed):
            return out


def file_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ioserver-file")]


def test_read_1mb_in_chunks(io: IOServer, tmp_path: Path) -> None:
    content = os.urandom(1 << 20)
    path = tmp_path / "blob"
    path.write_bytes(content)
    f = io.open_file(str(path), "rb")
    msgs = recv_until_closed(f)
    assert msgs[-1] == Closed(f, None)
    chunks = [m.data for m in msgs[:-1] if isinstance(m, Data)]
    assert len(chunks) == len(msgs) - 1 == (1 << 20) // DEFAULT_CHUNK_SIZE
    assert all(len(c) == DEFAULT_CHUNK_SIZE for c in chunks)
    assert b"".join(chunks) == content
    with pytest.raises(ChannelClosed):
        f.recv(T)


def test_chunk_size_and_line_framing(io: IOServer, tmp_path: Path) -> None:
    path = tmp_path / "lines"
    lines = [b"line %d\n" % i for i in range(1000)] + [b"no newline at the end"]
    path.write_bytes(b"".join(lines))
    f = io.open_file(path, "rb", chunk_size=100, packet="line")
    msgs = recv_until_closed(f)
    assert [m.data for m in msgs if isinstance(m, Data)] == lines
    assert msgs[-1] == Closed(f, None)

    f = io.open_file(path, "rb", chunk_size=1000)
    msgs = recv_until_closed(f)
    assert [len(m.data) for m in msgs if isinstance(m, Data)][:3] == [1000, 1000, 1000]


def test_empty_file(io: IOServer, tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    f = io.open_file(path, "rb")
    assert recv_until_closed(f) == [Closed(f, None)]


def test_write_then_read_back(io: IOServer, tmp_path: Path) -> None:
    path = tmp_path / "out"
    parts = [os.urandom(n) for n in (1, 100, 70000, 1 << 20, 5)]
    w = io.open_file(str(path), "wb")
    for part in parts:
        w.send(part)
    w.close()
    # Closed comes after the data reached the file and the file was closed.
    assert recv_until_closed(w) == [Closed(w, None)]
    assert path.read_bytes() == b"".join(parts)
    with pytest.raises(PortClosed):
        w.send(b"more")

    a = io.open_file(str(path), "ab")
    a.send(b"appended")
    a.close_stdin()  # on a writer: the same as close()
    assert recv_until_closed(a) == [Closed(a, None)]
    r = io.open_file(str(path), "rb")
    data = b"".join(m.data for m in recv_until_closed(r) if isinstance(m, Data))
    assert data == b"".join(parts) + b"appended"


def test_write_backpressure_blocks_past_high_water(io: IOServer, tmp_path: Path) -> None:
    path = tmp_path / "big"
    block = os.urandom(256 * 1024)
    w = io.open_file(str(path), "wb", high_water=64 * 1024)
    for _ in range(40):  # 10 MiB through a 64 KiB window: send blocks, then resumes
        w.send(block)
        # A send is admitted only while the port is not busy (queue <= high water,
        # unprocessed sends <= high water), so the queue stays far below 10 MiB.
        assert w.info()["queued_bytes"] <= 2 * (64 * 1024 + len(block))
    w.close()
    assert recv_until_closed(w) == [Closed(w, None)]
    assert path.read_bytes() == block * 40


def test_missing_file_raises(io: IOServer, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        io.open_file(str(tmp_path / "nope"), "rb")
    with pytest.raises(FileNotFoundError):
        io.open_file(str(tmp_path / "no-dir" / "f"), "wb")
    with pytest.raises(IsADirectoryError):
        io.open_file(str(tmp_path), "rb")
    with pytest.raises(ValueError, match="mode"):
        io.open_file(str(tmp_path / "x"), "r+")
    with pytest.raises(ValueError, match="chunk_size"):
        io.open_file(str(tmp_path / "x"), "rb", chunk_size=0)
    wait_until(lambda: io.stats()["open_ports"] == 0, what="failed opens leave no port")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_file_raises(io: IOServer, tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.write_bytes(b"x")
    path.chmod(0o444)
    with pytest.raises(PermissionError):
        io.open_file(str(path), "wb")


def test_passive_read(io: IOServer, tmp_path: Path) -> None:
    content = os.urandom(10 * 4096)
    path = tmp_path / "passive"
    path.write_bytes(content)
    f = io.open_file(str(path), "rb", active=False, chunk_size=4096)
    info = f.info()
    assert info["position"] == 0 and not info["reading"]  # nothing read before asked
    got = []
    for i in range(10):
        msg = f.read(T)
        assert isinstance(msg, Data)
        got.append(msg.data)
        info = f.info()
        assert info["position"] == (i + 1) * 4096  # no read-ahead past what was asked
        assert len(f) == 0
    assert f.read(T) == Closed(f, None)
    assert b"".join(got) == content


def test_slow_reader_keeps_the_inbox_bounded(io: IOServer, tmp_path: Path) -> None:
    chunk = 4096
    content = os.urandom(1024 * chunk)
    path = tmp_path / "big"
    path.write_bytes(content)
    f = io.open_file(str(path), "rb", chunk_size=chunk)
    wait_until(lambda: not f.info()["reading"], what="reading paused on a full inbox")
    info = f.info()
    capacity = info["inbox"].capacity
    assert info["inbox"].buffered <= capacity
    assert info["position"] <= (capacity + 2) * chunk  # the inbox plus one read
    data = bytearray()
    while True:
        msg = f.recv(T)
        if not isinstance(msg, Data):
            break
        data += msg.data
        assert len(f) <= capacity
    assert msg == Closed(f, None)
    assert data == content


def test_write_error_gives_error_then_closed(io: IOServer) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    w = io.open_file("/dev/full", "wb")
    w.send(b"no room")
    msgs = recv_until_closed(w)
    assert len(msgs) == 2
    assert isinstance(msgs[0], Error) and isinstance(msgs[0].error, OSError)
    assert msgs[0].error.errno == errno.ENOSPC
    assert msgs[1] == Closed(w, "error")


def test_read_error_gives_error_then_closed(io: IOServer) -> None:
    if not os.path.exists("/proc/self/mem"):
        pytest.skip("no /proc/self/mem")
    f = io.open_file("/proc/self/mem", "rb")  # reading address 0 fails with EIO
    msgs = recv_until_closed(f)
    assert isinstance(msgs[0], Error) and isinstance(msgs[0].error, OSError)
    assert msgs[-1] == Closed(f, "error")


def test_writing_to_a_reader_fails_the_port(io: IOServer, tmp_path: Path) -> None:
    path = tmp_path / "r"
    path.write_bytes(b"x" * 10)
    f = io.open_file(str(path), "rb", active=False)
    f.send(b"nope")
    msg = f.read(T)  # passive: even Error and Closed wait for a read
    assert isinstance(msg, Error) and "reading" in str(msg.error)
    assert f.read(T) == Closed(f, "error")


def test_close_a_reader_midway(io: IOServer, tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(4 << 20))
    f = io.open_file(str(path), "rb", chunk_size=4096)
    assert isinstance(f.recv(T), Data)
    f.close()
    msgs = recv_until_closed(f)  # what was already in the inbox, then Closed
    assert msgs[-1] == Closed(f, None)
    wait_until(lambda: io.stats()["open_ports"] == 0, what="the port is gone")


def test_pool_threads_end_when_files_close_and_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    with IOServer() as io:
        f = io.open_file(str(path), "rb")
        assert recv_until_closed(f)[-1] == Closed(f, None)
        wait_until(lambda: not file_threads(), what="idle pool shut down")
        w = io.open_file(str(tmp_path / "w"), "wb")
        w.send(b"written before the stop")
        r = io.open_file(str(path), "rb", active=False)
    # The stop flushed and closed the writer, closed the reader, ended the pool.
    assert (tmp_path / "w").read_bytes() == b"written before the stop"
    assert recv_until_closed(w)[-1] == Closed(w, "server stopped")
    assert recv_until_closed(r)[-1] == Closed(r, "server stopped")
    wait_until(lambda: not file_threads(), what="pool threads gone after stop")


def test_open_timeout_closes_the_file_later(io: IOServer, tmp_path: Path) -> None:
    """A FIFO's open blocks until a writer comes: the caller's timeout fires, and
    the file opened later is closed by the driver (no leak, pool shut down)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(TimeoutError):
        io.open_file(str(fifo), "rb", timeout=0.05)
    fd = os.open(fifo, os.O_WRONLY)  # unblocks the worker's open
    try:
        wait_until(lambda: not file_threads(), what="the late file closed, pool idle")
    finally:
        os.close(fd)
    assert io.stats()["open_ports"] == 0


def test_the_pool_grows_while_every_worker_is_stuck(tmp_path: Path) -> None:
    """Every worker stuck opening a FIFO that has no writer: a regular file's open
    waits in the queue until the pool grows by one worker, then succeeds (with two
    fixed workers it would wait for its timeout)."""
    from ioserver.drivers import file as file_driver

    plain = tmp_path / "plain"
    plain.write_bytes(b"data")
    fifos = [tmp_path / f"fifo{i}" for i in range(file_driver.POOL_WORKERS)]
    with IOServer() as io:
        stuck = []
        for fifo in fifos:
            os.mkfifo(fifo)
            t = threading.Thread(target=lambda f=fifo: stuck.append(io.open_file(f, "rb")))
            t.start()
            stuck.append(t)
        wait_until(lambda: io.stats()["file_busy"] == file_driver.POOL_WORKERS, what="stuck")
        port = io.open_file(plain, "rb", timeout=30)
        stats = io.stats()
        assert stats["file_grown"] == 1
        assert stats["file_size"] == file_driver.POOL_WORKERS + 1
        assert port.recv(timeout=10).data == b"data"
        for fifo in fifos:  # unblock the stuck opens: a writer end for each FIFO
            for _ in range(1000):
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                    break
                except OSError as exc:
                    assert exc.errno == errno.ENXIO
                    time.sleep(0.01)
        for item in list(stuck):
            if isinstance(item, threading.Thread):
                item.join(10)
        for item in stuck:
            if not isinstance(item, threading.Thread):
                item.close()
        port.close()
