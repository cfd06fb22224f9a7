"""Pipelined requests never read: a client writes megabytes of requests and never
reads a reply. ``get_api_info`` answers ~6 KiB to a 17-byte request (x370), a
``send`` to a port that doesn't exist answers an ``error`` event to each. The daemon
must stop reading such a client once its buffer for it (``limits.pending_bytes``)
is full, so the client's writes block and RSS stays bounded; another session's
``ping`` keeps answering fast meanwhile.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import msgpack
import pytest
from chaos_support import MIB, PingProber, RssSampler, mib, proc_status
from daemon_support import DaemonProcess

PENDING = 4 * MIB
"""limits.pending_bytes (the default)."""
ALLOWANCE = PENDING + 1 * MIB + 16 * MIB
"""The documented buffer, a batch written at once (FLUSH_NOW), and 16 MiB of slack for
one read's worth of decoded requests, the allocator and the interpreter."""
RUNAWAY = 1024 * MIB
"""RSS at which the sampler kills the daemon: an unbounded one must not take the
shared machine down."""

REQUESTS = {
    "get_api_info": lambda i: [0, i % 2**32, "get_api_info", []],
    "send_bad_port": lambda i: [2, "send", [999_999, b""]],
}


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_pipelined_requests_never_read(
    form: str, kind: str, record: Any, cleanup: list[Any]
) -> None:
    offered, seconds = (128 * MIB, 20.0) if form == "long" else (16 * MIB, 5.0)
    d = DaemonProcess(limits={"pending_bytes": PENDING})
    cleanup.append(d.cleanup)
    d.start()
    assert d.pid is not None
    pack = msgpack.Packer(use_bin_type=True).pack
    make = REQUESTS[kind]
    block = b"".join(pack(make(i)) for i in range(4096))
    flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cleanup.append(flood.close)
    flood.connect(d.socket_path)
    written = 0
    blocked = threading.Event()

    def writer() -> None:
        """Write until ``offered`` bytes, or a write blocks for 2 s, or time is up."""
        nonlocal written
        flood.settimeout(2.0)
        deadline = time.monotonic() + seconds
        try:
            while written < offered and time.monotonic() < deadline:
                written += flood.send(block)
        except TimeoutError:
            blocked.set()
        except OSError:
            pass

    sampler = RssSampler(d.pid, kill_above=RUNAWAY)
    prober = PingProber(d.socket_path, interval=0.05)
    thread = threading.Thread(target=writer, daemon=True, name="flood")
    t0 = time.monotonic()
    thread.start()
    thread.join(seconds + 10)
    # Hold the flood (unread) a little longer while the other session pings.
    time.sleep(1.0 if form == "bounded" else 5.0)
    latency = prober.stop()
    sampler.stop()
    hwm = proc_status(d.pid, "VmHWM") if not sampler.killed else sampler.peak
    growth = max(sampler.peak, hwm) - sampler.start_rss
    record(
        request=kind,
        request_bytes=len(block) // 4096,
        bytes_offered=offered,
        bytes_written=written,
        writer_blocked=blocked.is_set(),
        seconds=round(time.monotonic() - t0, 2),
        rss_start_mib=mib(sampler.start_rss),
        rss_peak_mib=mib(sampler.peak),
        rss_growth_mib=mib(growth),
        rss_bound_mib=mib(ALLOWANCE),
        daemon_killed_as_runaway=sampler.killed,
        ping=latency,
    )
    assert not sampler.killed, f"the daemon's RSS passed {mib(RUNAWAY)} MiB: killed"
    assert growth <= ALLOWANCE, f"RSS grew {mib(growth)} MiB (> {mib(ALLOWANCE)} MiB)"
    assert blocked.is_set(), f"the daemon read all {mib(written)} MiB from a client reading nothing"
    prober.check()
    flood.close()
    assert d.ping()
