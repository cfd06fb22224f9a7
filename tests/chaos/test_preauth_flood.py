"""Pre-auth floods over TCP: hundreds of connections that never send ``hello``, and
slowloris clients that send a valid ``hello`` one byte every 0.2 s.

Meanwhile the owner's Unix-socket session keeps answering ``ping``, a new Unix
session can be opened, and ``ioserver stats`` works. Every unauthenticated
connection is closed by the daemon within ``limits.hello_timeout`` (those over
``limits.unauthenticated`` at once), after which sessions and fds are back at the
baseline and a client with the token still gets in.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from typing import Any

import msgpack
from chaos_support import PingProber, limit_keys, snapshot, wait_true
from daemon_support import DaemonProcess, RawClient, rpc_ping, run_cli

DEFAULT_HELLO_TIMEOUT = 5.0
"""limits.hello_timeout's default (the daemon closes a TCP connection without hello)."""
CLOSE_SLACK = 5.0
"""Seconds past hello_timeout a connection may take to be seen closed (busy machine)."""


def watch_closes(
    socks: list[socket.socket], t0: float, timeout: float, refused: list[int]
) -> dict[int, float]:
    """Seconds after ``t0`` at which the daemon closed each socket (by index); the
    ones still open after ``timeout`` are missing. ``refused`` gets the indexes of
    those whose last words were an ``error`` event with code 5 (over a limit)."""
    closed: dict[int, float] = {}
    got: dict[int, bytes] = {}
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    deadline = t0 + timeout
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(0.1):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                got[key.data] = got.get(key.data, b"") + data
                continue
            closed[key.data] = time.monotonic() - t0
            sel.unregister(s)
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
            unpacker.feed(got.get(key.data, b""))
            for m in unpacker:
                if m[:2] == [2, "error"] and m[2][1][0] == 5:
                    refused.append(key.data)
    sel.close()
    return closed


def test_preauth_flood_and_slowloris(form: str, record: Any, cleanup: list[Any]) -> None:
    floods, loris = (800, 20) if form == "long" else (200, 5)
    keys = limit_keys()
    limits: dict[str, Any] = {}
    hello_timeout: float = DEFAULT_HELLO_TIMEOUT
    if "hello_timeout" in keys and form == "bounded":
        hello_timeout = 2  # an int: config_text writes no floats
        limits["hello_timeout"] = hello_timeout
    d = DaemonProcess(tcp=True, token=True, limits=limits)
    cleanup.append(d.cleanup)
    d.start()
    assert d.pid is not None and d.tcp is not None
    base = snapshot(d)
    owner = RawClient(d.socket_path, timeout=10)
    cleanup.append(owner.close)
    prober = PingProber(d.socket_path, interval=0.05)
    socks: list[socket.socket] = []
    cleanup.append(lambda: [s.close() for s in socks])
    # The slowloris connect first (within limits.unauthenticated: only hello_timeout
    # can end them), then the flood.
    hello = msgpack.packb([0, 1, "hello", [1, d.token]], use_bin_type=True)
    t_loris = time.monotonic()
    slow = [socket.create_connection(d.tcp, timeout=10) for _ in range(loris)]
    stop = threading.Event()
    loris_bytes = [0] * loris

    def trickle() -> None:
        """One byte of hello per 0.2 s to each slowloris, until it is closed."""
        for i in range(len(hello)):
            if stop.wait(0.2):
                return
            for j, s in enumerate(slow):
                try:
                    s.send(hello[i : i + 1])
                    loris_bytes[j] += 1
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, daemon=True, name="slowloris")
    trickler.start()
    t0 = time.monotonic()
    for _ in range(floods):
        socks.append(socket.create_connection(d.tcp, timeout=10))
    socks.extend(slow)
    # The owner's side, during the flood (beside the watch).
    owner_side: dict[str, Any] = {}

    def owner_checks() -> None:
        owner_side["pong"] = owner.call("ping")
        owner_side["new_session"] = rpc_ping(d.socket_path)
        owner_side["stats"] = run_cli("stats", d.socket_path, "--json")

    checker = threading.Thread(target=owner_checks, daemon=True, name="owner")
    checker.start()
    # Those over limits.unauthenticated are refused (error 5) at once; the others
    # get hello_timeout; a connection the kernel held in the listen backlog starts
    # its hello_timeout when accepted: two rounds at most, plus slack.
    refused: list[int] = []
    closes = watch_closes(
        socks, t0, 2 * hello_timeout + CLOSE_SLACK + (time.monotonic() - t0), refused
    )
    checker.join(30)
    owner_pong = owner_side.get("pong")
    new_session = owner_side.get("new_session")
    stats = owner_side["stats"]
    stop.set()
    trickler.join(10)
    latency = prober.stop()
    flood_closes = sorted(t for i, t in closes.items() if i < floods)
    loris_closes = sorted(t + (t0 - t_loris) for i, t in closes.items() if i >= floods)
    for s in socks:
        s.close()
    after = wait_true(
        lambda: (
            (s := snapshot(d))["sessions"] == base["sessions"] + 1
            and s["fds"] == base["fds"] + 1
            and s
        ),
        timeout=10,
    ) or snapshot(d)
    with RawClient(d.tcp, timeout=10) as legit:
        legit_hello = legit.call("hello", 1, d.token)
        legit_pong = legit.call("ping")
    record(
        flood_connections=floods,
        slowloris_connections=loris,
        hello_timeout=hello_timeout,
        hello_bytes=len(hello),
        flood_closed=len(flood_closes),
        flood_closed_within_1s=sum(1 for t in flood_closes if t < 1.0),
        flood_refused_with_error_5=sum(1 for i in refused if i < floods),
        flood_last_close_s=round(flood_closes[-1], 2) if flood_closes else None,
        slowloris_closed=len(loris_closes),
        slowloris_close_s=[round(t, 2) for t in loris_closes],
        slowloris_bytes_sent=loris_bytes,
        stats_exit=stats.returncode,
        baseline=base,
        after=after,
        ping=latency,
    )
    assert owner_pong == "pong"
    assert new_session, "a new Unix session could not ping during the flood"
    assert stats.returncode == 0, stats.stderr
    prober.check()
    assert len(flood_closes) == floods, (
        f"{floods - len(flood_closes)} of {floods} connections without hello still open "
        f"{hello_timeout + CLOSE_SLACK} s after hello_timeout={hello_timeout}"
    )
    assert len(loris_closes) == loris, f"{loris - len(loris_closes)} slowloris still open"
    assert max(loris_closes) <= hello_timeout + CLOSE_SLACK, loris_closes
    assert not [i for i in refused if i >= floods], "a slowloris was refused, not timed out"
    assert all(n < len(hello) for n in loris_bytes), "a slowloris completed its hello"
    # the owner's session is still open (the +1)
    assert after["sessions"] == base["sessions"] + 1, (base, after)
    assert after["fds"] == base["fds"] + 1, (base, after)
    assert legit_hello["version"] == 1 and legit_pong == "pong"
