"""SIGTERM with 50 clients mid-stream: each streams through an echo port, some have
spawned ``/bin/sh -c "sleep 999.<marker>; :"`` (the shell can't exec the sleep: it
is a grandchild of the daemon). The daemon must exit 0 in under 5 s, remove its
socket file, end every client's connection, and leave no process of ours behind:
no shell, no ``sleep`` with our unique marker (in its argv and its environment).
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import socket
import threading
import time
from typing import Any

import msgpack
from chaos_support import SelectorEcho, kill_pids, pids_with, wait_true
from daemon_support import DaemonProcess, RawClient, short_tmpdir

CLIENTS = 50
EXIT_BOUND = 5.0
"""Seconds the daemon may take to exit after SIGTERM."""


class Streamers:
    """The clients' sockets, written and read in one thread until the daemon ends
    them: ``eof`` is how many saw the end, ``received`` the bytes they read."""

    def __init__(self, socks: list[socket.socket], ports: list[int]) -> None:
        pack = msgpack.Packer(use_bin_type=True).pack
        chunk = os.urandom(4 * 1024)
        self.socks = socks
        self.messages = [pack([2, "send", [p, chunk]]) for p in ports]
        self.eof = 0
        self.received = 0
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="streamers")
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        out = {}
        for i, s in enumerate(self.socks):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
            out[i] = bytearray()
        deadline = time.monotonic() + 120
        while self.eof < len(self.socks) and time.monotonic() < deadline:
            if self._stop.is_set():
                break
            for key, _ in sel.select(0.01):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.received += len(data)
                else:
                    self.eof += 1
                    sel.unregister(s)
                    out.pop(key.data, None)
            for i, buf in out.items():
                if not buf:  # ~4 KiB per client per 20 ms: mid-stream, not a CPU hog
                    buf += self.messages[i]
                try:
                    n = self.socks[i].send(buf)
                except (BlockingIOError, OSError):
                    continue
                self.sent += n
                del buf[:n]
            time.sleep(0.02)
        sel.close()

    def wait_eof(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return self.eof == len(self.socks)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def one_round(spawns: int, stream_seconds: float, cleanup: list[Any]) -> dict[str, Any]:
    """A daemon, 50 streaming clients (``spawns`` of them with a shell and its sleep),
    SIGTERM: the figures, with the checks done by the caller."""
    marker = f"{random.randrange(10**8):08d}"
    sleep_arg = f"999.{marker}"
    cleanup.append(lambda: kill_pids(pids_with(sleep_arg)))
    d = DaemonProcess(spawn_allow=["/bin/sh"])
    cleanup.append(d.cleanup)
    d.start()
    assert d.proc is not None
    tmp = short_tmpdir("chaos-")
    echo = SelectorEcho(os.path.join(tmp, "echo.sock"))
    cleanup.append(lambda: os.rmdir(tmp) if os.path.isdir(tmp) else None)
    cleanup.append(echo.close)
    clients = [RawClient(d.socket_path, timeout=10) for _ in range(CLIENTS)]
    cleanup.append(lambda: [c.close() for c in clients])
    ports = [c.call("connect_tcp", *echo.address) for c in clients]
    children = []
    for c in clients[:spawns]:
        _, pid = c.call(
            "spawn",
            ["/bin/sh", "-c", f"sleep {sleep_arg}; :"],
            {"env": {"CHAOS_MARKER": sleep_arg}},
        )
        children.append(pid)
    # each shell and its sleep
    ours = wait_true(lambda: len(pids_with(sleep_arg)) >= 2 * spawns, timeout=10)
    before = len(pids_with(sleep_arg))
    streamers = Streamers([c.sock for c in clients], ports)
    time.sleep(stream_seconds)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    code = d.proc.wait(30)
    exit_s = time.monotonic() - t0
    d.returncode = code
    all_eof = streamers.wait_eof(10)
    streamers.stop()
    left = wait_true(lambda: not pids_with(sleep_arg), timeout=2.0)
    survivors = pids_with(sleep_arg)
    return {
        "exit_code": code,
        "exit_s": round(exit_s, 3),
        "socket_file_left": os.path.exists(d.socket_path),
        "clients": CLIENTS,
        "clients_saw_eof": streamers.eof,
        "all_eof": all_eof,
        "bytes_streamed_in": streamers.sent,
        "bytes_streamed_out": streamers.received,
        "spawned_shells": len(children),
        "marker_processes_before": before,
        "marker_processes_started": bool(ours),
        "marker_processes_after": len(survivors),
        "no_survivors": bool(left),
        "stderr_tail": d.stderr()[-500:] if code != 0 else "",
    }


def test_sigterm_mid_stream(form: str, record: Any, cleanup: list[Any]) -> None:
    rounds, spawns, seconds = (3, 20, 3.0) if form == "long" else (1, 5, 1.0)
    results = [one_round(spawns, seconds, cleanup) for _ in range(rounds)]
    record(rounds=results)
    for r in results:
        assert r["marker_processes_started"], r
        assert r["exit_code"] == 0, r
        assert r["exit_s"] < EXIT_BOUND, r
        assert not r["socket_file_left"], r
        assert r["all_eof"], r
        assert r["marker_processes_after"] == 0, f"processes of ours survived: {r}"
