"""Slow consumer: a peer pushes a large stream into a daemon port whose client reads
slowly. The daemon must hold no more than its documented buffers (the session's
``limits.pending_bytes``, a batch, one read), push back on the peer through TCP,
and deliver every byte in order (checksummed), raw and with ``packet=4``.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import pytest
from chaos_support import MIB, PingProber, RssSampler, Stream, Tally, mib, proc_status
from daemon_support import DaemonProcess, RawClient

PENDING = 4 * MIB
"""limits.pending_bytes (the default): what the daemon buffers for a slow client."""
BATCH = 1 * MIB
"""FLUSH_NOW in ioserver/daemon/session.py: a batch written at once past this."""
ONE_READ = 256 * 1024
"""The most one socket read of a port brings in."""
SLACK = 16 * MIB
"""Allocator and interpreter slack on top of the documented buffers."""
FRAME = 64 * 1024
"""The peer's frame size with packet=4."""


@pytest.mark.parametrize("packet", [None, 4], ids=["raw", "packet4"])
def test_slow_consumer(form: str, packet: int | None, record: Any, cleanup: list[Any]) -> None:
    total, rate = (64 * MIB, 8 * MIB) if form == "long" else (16 * MIB, 8 * MIB)
    d = DaemonProcess(limits={"pending_bytes": PENDING})
    cleanup.append(d.cleanup)
    d.start()
    assert d.pid is not None
    server = socket.create_server(("127.0.0.1", 0))
    cleanup.append(server.close)
    sent = Stream(seed=42)
    peer_done = threading.Event()
    peer_error: list[str] = []

    def peer() -> None:
        server.settimeout(10)
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(60)
                while sent.count < total:
                    chunk = sent.chunk(FRAME)
                    conn.sendall(struct.pack(">I", len(chunk)) + chunk if packet else chunk)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # until the daemon closes its side
        except OSError as exc:
            peer_error.append(repr(exc))
        peer_done.set()

    thread = threading.Thread(target=peer, daemon=True, name="pusher")
    thread.start()
    sampler = RssSampler(d.pid, kill_above=sampler_cap())
    prober = PingProber(d.socket_path, interval=0.1)
    got = Tally()
    frames_off = 0
    with d_client(d) as c:
        port = c.call("connect_tcp", "127.0.0.1", server.getsockname()[1], {"packet": packet})
        t0 = time.monotonic()
        deadline = t0 + 4 * total / rate + 30
        while True:
            name, params = c.event(timeout=max(0.0, deadline - time.monotonic()))
            if name == "data" and params[0] == port:
                got.add(params[1])
                if packet and len(params[1]) != FRAME:
                    frames_off += 1
                ahead = got.count / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)  # the slow reader
            elif name == "closed" and params[0] == port:
                break
            else:
                pytest.fail(f"unexpected {name} {params}")
        elapsed = time.monotonic() - t0
    thread.join(10)
    latency = prober.stop()
    sampler.stop()
    hwm = proc_status(d.pid, "VmHWM")
    growth = max(sampler.peak, hwm) - sampler.start_rss
    bound = PENDING + BATCH + ONE_READ + SLACK
    record(
        bytes_pushed=sent.count,
        bytes_received=got.count,
        checksum_ok=got.sha.digest() == sent.sha.digest(),
        seconds=round(elapsed, 2),
        rss_start_mib=mib(sampler.start_rss),
        rss_peak_mib=mib(sampler.peak),
        vm_hwm_mib=mib(hwm),
        rss_growth_mib=mib(growth),
        rss_bound_mib=mib(bound),
        ping=latency,
    )
    assert not sampler.killed, "the daemon's RSS ran away (killed by the sampler)"
    assert peer_done.is_set() and not peer_error, peer_error
    assert got.count == sent.count, f"{got.count} of {sent.count} bytes arrived"
    assert got.sha.digest() == sent.sha.digest(), "the bytes differ (order or content)"
    assert frames_off == 0, f"{frames_off} data events were not one {FRAME}-byte frame"
    assert growth <= bound, f"RSS grew {mib(growth)} MiB (> {mib(bound)} MiB)"
    prober.check()
    assert d.ping()


def sampler_cap() -> int:
    """Kill a daemon past this RSS: 1 GiB is far beyond any correct figure here."""
    return 1024 * MIB


def d_client(d: DaemonProcess) -> RawClient:
    """A raw client on the daemon's Unix socket with a 64 KiB receive buffer (a slow
    reader's kernel buffer stays small, so the daemon's own buffers are what's measured)."""

    c = RawClient(d.socket_path, timeout=10)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    return c
