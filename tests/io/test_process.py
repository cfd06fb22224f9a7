"""Process ports: stdin/stdout/stderr as messages, Exited then Closed, killing and reaping.

Every test runs on both loops (uvloop and asyncio's selector loop) and both
spawn back ends (Popen + pidfd, and the loop's own ``subprocess_exec``).
Nothing depends on timing: waits are bounded polls (``wait_until``) or
blocking receives with generous timeouts.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

from ioserver.channel import ChannelClosed
from ioserver.drivers import process
from ioserver.messages import Closed, Data, Error, Exited, Message, Stderr
from ioserver.port import Port
from ioserver.server import IOServer

PY = sys.executable
T = 20.0  # a receive that should succeed at once; only a hang hits it

COMBOS = [
    pytest.param(("auto", "pidfd"), id="uvloop-pidfd"),
    pytest.param(("auto", "exec"), id="uvloop-exec"),
    pytest.param(("asyncio", "pidfd"), id="asyncio-pidfd"),
    pytest.param(("asyncio", "exec"), id="asyncio-exec"),
]


@pytest.fixture(params=COMBOS)
def io(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[IOServer]:
    loop, backend = request.param
    if backend == "pidfd" and not process._pidfd_supported():
        pytest.skip("no pidfd support here")
    if backend == "exec":
        monkeypatch.setattr(process, "_pidfd_ok", False)
    with IOServer(loop=loop) as server:
        yield server


def recv_until_closed(port: Port, timeout: float = T) -> list[Message]:
    """Every message up to and including Closed."""
    out: list[Message] = []
    while True:
        msg = port.recv(timeout)
        out.append(msg)
        if isinstance(msg, Closed):
            return out


def our_child(pid: int) -> bool:
    """Whether ``pid`` is still a child of this process (running or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):  # gone (ESRCH: while we read it)
        return False
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[1]) == os.getpid()  # fields: state, ppid, ...


def kinds(messages: list[Message]) -> list[str]:
    return [type(m).__name__ for m in messages]


def test_cat_echoes_lines_then_exited_then_closed(io: IOServer) -> None:
    p = io.spawn(["cat"], packet="line")
    lines = [b"hello\n", b"world\n", b"x" * 1000 + b"\n"]
    for line in lines:
        p.send(line)
    assert [p.recv(T).data for _ in lines] == lines  # type: ignore[attr-defined]
    p.close_stdin()
    assert p.recv(T) == Exited(p, 0)
    assert p.recv(T) == Closed(p, None)
    with pytest.raises(ChannelClosed):
        p.recv(T)  # its own inbox is closed after Closed
    assert not our_child(p.info_extra["pid"])


def test_info_has_pid(io: IOServer) -> None:
    p = io.spawn(["cat"])
    info = p.info()
    assert info["kind"] == "process"
    assert isinstance(info["pid"], int) and our_child(info["pid"])
    p.close_stdin()
    assert kinds(recv_until_closed(p)) == ["Exited", "Closed"]


def test_nonzero_exit(io: IOServer) -> None:
    p = io.spawn([PY, "-c", "import sys; sys.exit(3)"])
    assert recv_until_closed(p) == [Exited(p, 3), Closed(p, None)]


def test_killed_by_signal_gives_negative_returncode(io: IOServer) -> None:
    p = io.spawn([PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert recv_until_closed(p) == [Exited(p, -signal.SIGKILL), Closed(p, None)]

    p = io.spawn(["sleep", "60"])
    os.kill(p.info()["pid"], signal.SIGTERM)
    assert recv_until_closed(p) == [Exited(p, -signal.SIGTERM), Closed(p, None)]


OUT_ERR = "import os; os.write(1, b'out'); os.write(2, b'err'); os.write(1, b'put')"


def split(messages: list[Message]) -> tuple[bytes, bytes]:
    out = b"".join(m.data for m in messages if isinstance(m, Data))
    err = b"".join(m.data for m in messages if isinstance(m, Stderr))
    return out, err


def test_stderr_separate(io: IOServer) -> None:
    p = io.spawn([PY, "-c", OUT_ERR])
    msgs = recv_until_closed(p)
    assert split(msgs) == (b"output", b"err")
    assert msgs[-2:] == [Exited(p, 0), Closed(p, None)]


def test_stderr_merge(io: IOServer) -> None:
    p = io.spawn([PY, "-c", OUT_ERR], stderr="merge")
    msgs = recv_until_closed(p)
    assert split(msgs) == (b"outerrput", b"")  # one pipe: the order of the writes


def test_stderr_discard(io: IOServer) -> None:
    p = io.spawn([PY, "-c", OUT_ERR], stderr="discard")
    msgs = recv_until_closed(p)
    assert split(msgs) == (b"output", b"")
    assert msgs[-2:] == [Exited(p, 0), Closed(p, None)]


def test_bad_options(io: IOServer) -> None:
    with pytest.raises(TypeError, match="no shell"):
        io.spawn("echo hi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stderr"):
        io.spawn(["true"], stderr="both")
    with pytest.raises(ValueError, match="empty"):
        io.spawn([])
    with pytest.raises(TypeError):
        io.spawn(["true"], colour="red")
    assert io.stats()["open_ports"] == 0


def test_cannot_start(io: IOServer, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        io.spawn([str(tmp_path / "no-such-program")])
    not_executable = tmp_path / "script"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    not_executable.chmod(0o644)
    with pytest.raises(PermissionError):
        io.spawn([str(not_executable)])
    with pytest.raises(FileNotFoundError):
        io.spawn(["cat"], cwd=str(tmp_path / "missing-dir"))
    wait_until(lambda: io.stats()["open_ports"] == 0, what="failed spawns leave no port")


def test_cwd_and_env(io: IOServer, tmp_path: Path) -> None:
    code = "import os; print(os.getcwd()); print(os.environ.get('IOSERVER_TEST'))"
    p = io.spawn([PY, "-c", code], cwd=str(tmp_path), env={"IOSERVER_TEST": "yes"}, packet="line")
    msgs = recv_until_closed(p)
    assert [m.data for m in msgs if isinstance(m, Data)] == [
        os.fsencode(os.path.realpath(tmp_path)) + b"\n",
        b"yes\n",
    ]


def test_exited_waits_for_unread_output(io: IOServer) -> None:
    """The child exits (and is reaped) long before its output is read: Exited still
    comes after all of it, then Closed; a passive port reads one message per read()."""
    p = io.spawn([PY, "-c", "print('a'); print('b')"], packet="line", active=False)
    wait_until(lambda: p.info()["reaped"], what="the child is reaped")
    assert p.read(T) == Data(p, b"a\n")
    assert p.read(T) == Data(p, b"b\n")
    assert p.read(T) == Exited(p, 0)
    assert p.read(T) == Closed(p, None)


def test_close_kills_and_reaps(io: IOServer) -> None:
    p = io.spawn(["sleep", "60"])
    pid = p.info()["pid"]
    assert our_child(pid)
    p.close()
    assert p.recv(T) == Closed(p, None)
    wait_until(lambda: not our_child(pid), what=f"pid {pid} reaped")
    wait_until(lambda: io.stats()["open_ports"] == 0, what="the port is gone")


IGNORE_TERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    "time.sleep(60)\n"
)


def test_close_escalates_to_sigkill(io: IOServer) -> None:
    p = io.spawn([PY, "-c", IGNORE_TERM], packet="line", kill_timeout=0.2)
    assert p.recv(T) == Data(p, b"ready\n")
    pid = p.info()["pid"]
    p.close()
    assert p.recv(T) == Closed(p, None)
    wait_until(lambda: not our_child(pid), what=f"pid {pid} SIGKILLed and reaped")


def test_kill_timeout_zero_is_sigkill_at_once(io: IOServer) -> None:
    p = io.spawn([PY, "-c", IGNORE_TERM], packet="line", kill_timeout=0)
    assert p.recv(T) == Data(p, b"ready\n")
    pid = p.info()["pid"]
    p.close()
    wait_until(lambda: not our_child(pid), what=f"pid {pid} reaped")


def test_server_stop_kills_and_reaps_children(io: IOServer) -> None:
    with IOServer(loop="asyncio" if "Selector" in io.loop_type else "auto") as other:
        p1 = other.spawn(["sleep", "60"])
        p2 = other.spawn([PY, "-c", IGNORE_TERM], packet="line", kill_timeout=0.2)
        assert p2.recv(T) == Data(p2, b"ready\n")
        closed_early = other.spawn(["sleep", "60"])
        closed_early.close()
        pids = [p.info()["pid"] for p in (p1, p2)] + [closed_early.info_extra["pid"]]
    for pid in pids:
        wait_until(lambda pid=pid: not our_child(pid), what=f"pid {pid} reaped")
    for p in (p1, p2):
        msgs = recv_until_closed(p)
        assert msgs[-1] == Closed(p, "server stopped")


def test_slow_consumer_20mb_bounded_and_exact(io: IOServer) -> None:
    size = 20_000_000
    code = (
        "import sys\n"
        "block = bytes(range(256)) * 256\n"
        f"n = {size}\n"
        "while n > 0:\n"
        "    n -= sys.stdout.buffer.write(block[:n])\n"
    )
    expected = hashlib.sha256((bytes(range(256)) * 256 * (size // 65536 + 1))[:size]).digest()
    p = io.spawn([PY, "-c", code])
    # Consume nothing: the inbox fills, reading pauses, the child blocks on the pipe.
    wait_until(lambda: not p.info()["reading"], what="reading paused")
    info = p.info()
    capacity = info["inbox"].capacity
    assert info["inbox"].buffered <= capacity
    assert info["bytes_in"] < size
    assert not info["reaped"]  # the child cannot finish: it is blocked writing
    digest = hashlib.sha256()
    total = 0
    received = 0
    while True:
        msg = p.recv(T)
        if not isinstance(msg, Data):
            break
        digest.update(msg.data)
        total += len(msg.data)
        received += 1
        if received % 50 == 0:
            info = p.info()
            assert info["inbox"].buffered <= capacity
            assert info["pending_messages"] <= 2
    assert total == size
    assert digest.digest() == expected
    assert msg == Exited(p, 0)
    assert p.recv(T) == Closed(p, None)


def test_stdin_backpressure_blocks_the_writer(io: IOServer) -> None:
    """A passive cat stops reading its stdin once its stdout is full: the stdin
    transport pauses writing, the port gets busy, ``send`` blocks; reading
    resumes everything, and every byte comes back in order."""
    chunk = bytes(range(256)) * 256  # 64 KiB
    count = 64  # 4 MiB: far more than the pipes and cat can hold
    p = io.spawn(["cat"], active=False, high_water=64 * 1024)
    sent = [0]

    def writer() -> None:
        for _ in range(count):
            p.send(chunk)
            sent[0] += 1
        p.close_stdin()

    t = threading.Thread(target=writer, daemon=True)
    t.start()

    def transport_busy() -> bool:
        # Busy with every send handed to the transport: pause_writing made it busy
        # (a momentary ``busy`` from sends the loop has not processed would not do).
        info = p.info()
        return bool(info["busy"] and info["unsent_bytes"] == 0)

    wait_until(transport_busy, what="the stdin transport paused writing")
    assert sent[0] < count and t.is_alive()
    p.setopts(active=True)
    data = bytearray()
    while True:
        msg = p.recv(T)
        if not isinstance(msg, Data):
            break
        data += msg.data
    t.join(T)
    assert not t.is_alive()
    assert len(data) == len(chunk) * count
    assert data == chunk * count
    assert msg == Exited(p, 0)
    assert p.recv(T) == Closed(p, None)


def test_send_after_close_stdin_fails_the_port(io: IOServer) -> None:
    # A child that outlives its stdin: `cat` exits at EOF, and its Closed could then
    # come before the send (which would raise PortClosed instead of failing the port).
    p = io.spawn([PY, "-c", "import sys, time; sys.stdin.read(); time.sleep(60)"])
    p.close_stdin()
    p.send(b"too late")
    msgs = recv_until_closed(p)
    errors = [m for m in msgs if isinstance(m, Error)]
    assert len(errors) == 1 and isinstance(errors[0].error, BrokenPipeError)
    assert msgs[-1] == Closed(p, "error")
    pid = p.info_extra["pid"]
    wait_until(lambda: not our_child(pid), what=f"pid {pid} reaped")


def test_child_closing_stdin_drops_writes(io: IOServer) -> None:
    if "uvloop" in io.loop_type and not process._pidfd_supported():
        # uvloop's subprocess_exec leaks the child's end of each stdio socketpair
        # into the child as an extra fd: closing fd 0 does not close its stdin.
        pytest.skip("uvloop's subprocess_exec leaks stdio fds into the child")
    code = "import os, time; os.close(0); print('closed', flush=True); time.sleep(60)"
    p = io.spawn([PY, "-c", code], packet="line")
    assert p.recv(T) == Data(p, b"closed\n")
    for _ in range(5):
        p.send(b"x" * 70000)  # dropped: the reader is gone (EPIPE), not an Error
    p.close()
    assert recv_until_closed(p) == [Closed(p, None)]


def test_shared_inbox_and_active_once(io: IOServer) -> None:
    from ioserver.channel import Channel

    inbox: Channel[Any] = Channel(16)
    p = io.spawn(["echo", "hi"], inbox=inbox, active="once")
    assert inbox.recv(T) == Data(p, b"hi\n")
    # (Not setopts: Port.setopts raises PortClosed once Closed is queued, even
    # while Exited and Closed still wait for the active budget.)
    assert p.read(T) == Exited(p, 0)
    assert p.read(T) == Closed(p, None)
    assert not inbox.closed  # a shared inbox stays open


def test_pidfd_backend_installs_no_sigchld_handler() -> None:
    """Lesson 11 (docs/architecture.md): with pidfds, spawning touches no signal
    disposition (uvloop's own subprocess_exec would install libuv's SIGCHLD handler)."""
    if not process._pidfd_supported():
        pytest.skip("no pidfd support here")

    def sigchld_caught() -> bool:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGCHLD - 1)))
        return False

    if sigchld_caught():
        pytest.skip("an earlier test (uvloop's subprocess_exec) left a SIGCHLD handler")
    with IOServer() as io:
        p = io.spawn(["true"])
        assert recv_until_closed(p) == [Exited(p, 0), Closed(p, None)]
        assert not sigchld_caught()
