"""A forked child's copies of servers are stopped at the fork; the parent's keep working.

The child exits at once (no 10 s wait for a loop thread that is not there, no
"did not stop" warning); an inherited port is closed in the child: ``send``
raises PortClosed, its next message is ``Closed(port, "forked")``, then its own
inbox is closed; the server's methods raise ServerStopped naming the fork.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from ioserver import Channel, ChannelClosed, IOServer, ServerStopped
from ioserver.messages import Data
from ioserver.port import PortClosed

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reap(pid: int, timeout: float = 20.0) -> tuple[int, float]:
    """Wait for the child ``pid`` (kill it after ``timeout``); its exit status and
    the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.monotonic() - start
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child did not exit within {timeout} s")


def in_child(action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Fork; the child runs ``action`` and reports its result (JSON) through a
    pipe, then ``os._exit``s. Returns the report (with the child's exit code)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(rfd)
            try:
                report = action()
            except BaseException as exc:
                report = {"error": repr(exc)}
                code = 1
            os.write(wfd, json.dumps(report).encode())
        finally:
            os._exit(code)
    os.close(wfd)
    code, _ = reap(pid)
    chunks = []
    while chunk := os.read(rfd, 65536):
        chunks.append(chunk)
    os.close(rfd)
    report: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    report["exit"] = code
    return report


@pytest.mark.timeout(60)
def test_inherited_ports_are_closed_in_the_child_and_the_parent_keeps_working(
    io: IOServer,
) -> None:
    listener = io.listen_tcp("127.0.0.1", 0)
    conn = io.connect_tcp("127.0.0.1", listener.address[1])
    peer = listener.recv(timeout=10).conn
    shared: Channel[Any] = Channel(8)
    shared_conn = io.connect_tcp("127.0.0.1", listener.address[1], inbox=shared)
    shared_peer = listener.recv(timeout=10).conn
    # Empty before the send (after it, the loop may already have delivered it).
    assert conn.inbox.statistics().buffered == 0
    peer.send(b"buffered before the fork")
    deadline = time.monotonic() + 10
    while len(conn) == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(conn) == 1  # a Data waits in conn's inbox across the fork
    shared.send("a plain message")

    def child() -> dict[str, Any]:
        report: dict[str, Any] = {}
        first = conn.recv(timeout=1)
        report["first"] = [type(first).__name__, first.port is conn, getattr(first, "reason", None)]
        try:
            conn.recv(timeout=1)
        except ChannelClosed:
            report["then"] = "ChannelClosed"
        try:
            conn.send(b"from the child")
        except PortClosed:
            report["send"] = "PortClosed"
        try:
            io.call(lambda: None, timeout=1)
        except ServerStopped as exc:
            report["call"] = str(exc)
        shared_messages = [shared.recv(timeout=1) for _ in range(2)]
        report["shared"] = [
            m if isinstance(m, str) else [type(m).__name__, m.port is shared_conn, m.reason]
            for m in shared_messages
        ]
        start = time.monotonic()
        io.stop()
        report["stop_seconds"] = time.monotonic() - start
        with IOServer(name="fork-child") as fresh:  # a new server works in the child
            report["fresh"] = fresh.call(lambda: "ok", timeout=10)
        return report

    report = in_child(child)
    assert report == {
        "first": ["Closed", True, "forked"],
        "then": "ChannelClosed",
        "send": "PortClosed",
        "call": report.get("call", "missing"),
        "shared": ["a plain message", ["Closed", True, "forked"]],
        "stop_seconds": report.get("stop_seconds", 99.0),
        "fresh": "ok",
        "exit": 0,
    }
    assert "inherited through fork" in report["call"]
    assert report["stop_seconds"] < 2.0

    # The parent: its ports, inboxes and loop are untouched.
    assert io.running
    assert conn.recv(timeout=10) == Data(conn, b"buffered before the fork")
    conn.send(b"from the parent")
    assert peer.recv(timeout=10) == Data(peer, b"from the parent")
    shared_peer.send(b"still shared")
    assert shared.recv(timeout=10) == "a plain message"
    assert shared.recv(timeout=10) == Data(shared_conn, b"still shared")
    for port in (conn, peer, shared_conn, shared_peer, listener):
        port.close()


CHILD_EXITS = textwrap.dedent(
    """
    import os, sys, time
    import ioserver
    from ioserver import IOServer

    def run(io):
        listener = io.listen_tcp("127.0.0.1", 0)
        conn = io.connect_tcp("127.0.0.1", listener.address[1])
        peer = listener.recv(timeout=10).conn
        # UDP ports bound to numeric addresses: their opening must not start libuv's
        # resolver threads (a child forked after that crashes at exit, SIGSEGV).
        udp = io.open_udp(("127.0.0.1", 0))
        udp_client = io.open_udp(remote_addr=udp.address)
        # A host name: resolved in this thread, never by libuv's threadpool (same crash).
        named = io.connect_tcp("localhost", listener.address[1])
        named_peer = listener.recv(timeout=10).conn
        named_listener = io.listen_tcp("localhost", 0)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # atexit / __exit__ stop the child's copy of the server
        while time.monotonic() - start < 20:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            status = -1
        elapsed = time.monotonic() - start
        conn.send(b"parent ok")
        assert peer.recv(timeout=10).data == b"parent ok"
        named.send(b"named ok")
        assert named_peer.recv(timeout=10).data == b"named ok"
        named_listener.close()
        udp_client.send(b"udp ok")
        assert udp.recv(timeout=10).data == b"udp ok"
        print(MODE, os.waitstatus_to_exitcode(status) if status != -1 else -1, elapsed)

    MODE = sys.argv[1]
    if MODE == "default":
        run(ioserver.default())
    else:
        with IOServer() as io:
            run(io)
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["default", "with"])
def test_a_forked_child_exits_at_once_without_a_warning(mode: str) -> None:
    """``sys.exit(0)`` in the child of a process using ``ioserver.default()`` (or
    inside a ``with IOServer()`` block) exits at once, and says nothing."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", CHILD_EXITS, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # neither the child nor the parent warned
    got_mode, code, elapsed = done.stdout.split()
    assert (got_mode, code) == (mode, "0")
    assert float(elapsed) < 2.0
