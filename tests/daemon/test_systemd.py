"""systemd socket activation and readiness, against the real daemon process.

Two ways in: the real ``systemd-socket-activate`` (skipped, saying so, where it
is not installed: Debian's ``systemd`` package has it), and the protocol done by
hand, which runs everywhere: the test makes the listening sockets, a wrapper
process puts them at fds 3 and 4, sets ``LISTEN_PID`` to its own pid and execs
the daemon (the pid stays). In both, a notify socket the test binds (a path, or
the abstract namespace) receives ``READY=1``, ``WATCHDOG=1`` and ``STOPPING=1``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daemon_support import (
    START_TIMEOUT,
    TOKEN,
    T,
    config_text,
    free_port,
    rpc_ping,
    short_tmpdir,
    wait_for,
)

import ioserver_client
from ioserver import protocol
from ioserver.cli import RpcClient

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")

#: Puts the fds named in argv[1] (comma-separated) at 3, 4, ... and execs argv[3:] with
#: the socket-activation variables for its own pid (exec keeps the pid).
WRAPPER = """
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of 3, 4...
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)  # inheritable: the exec'd daemon gets it
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=sys.argv[2])
if os.environ.get("WATCHDOG_USEC"):
    os.environ["WATCHDOG_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *sys.argv[3:]])
"""


@dataclass
class Notifications:
    """A datagram socket the test binds as ``$NOTIFY_SOCKET``; what arrived on it."""

    sock: socket.socket
    env_value: str
    received: list[str] = field(default_factory=list)

    @classmethod
    def bind(cls, directory: str, abstract: bool) -> Notifications:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"ioserver-test-{uuid.uuid4().hex}"
            sock.bind("\0" + name)
            return cls(sock, "@" + name)
        path = os.path.join(directory, "notify.sock")
        sock.bind(path)
        return cls(sock, path)

    def wait(self, state: str, timeout: float = T) -> str:
        """The first datagram (since the last wait) holding line ``state``; fails
        the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.received):
                if state in message.split("\n"):
                    del self.received[: i + 1]
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {state} from the daemon in {timeout} s: got {self.received}")
            self.sock.settimeout(left)
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self.sock.close()


@dataclass
class Activated:
    """A daemon started by socket activation, and what the test gave it."""

    proc: subprocess.Popen[bytes]
    dir: str
    socket_path: str
    port: int
    notify: Notifications
    stderr_path: str

    @property
    def tcp_address(self) -> str:
        return f"tcp://{HOST}:{self.port}"

    def stderr(self) -> str:
        return Path(self.stderr_path).read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(START_TIMEOUT)
            pytest.fail(f"the daemon did not exit after SIGTERM:\n{self.stderr()}")

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(START_TIMEOUT)
        self.notify.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def write_config(directory: str) -> str:
    """A config with a token file (TCP sockets need one) and spawn of this Python."""
    token = os.path.join(directory, "token")
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(TOKEN)
    config = os.path.join(directory, "ioserver.toml")
    Path(config).write_text(config_text({"token_file": token}, spawn_allow=[sys.executable]))
    return config


def daemon_argv(config: str) -> list[str]:
    return ["-m", "ioserver", "serve", "--config", config]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    env.pop("WATCHDOG_USEC", None)
    env.pop("WATCHDOG_PID", None)
    env.update(extra)
    return env


def listening_sockets(directory: str) -> tuple[socket.socket, socket.socket, str, int]:
    """A Unix socket (mode 0600) and a TCP socket on 127.0.0.1, both listening."""
    path = os.path.join(directory, "ioserver.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    os.chmod(path, 0o600)
    unix.listen(16)
    tcp = socket.create_server((HOST, 0))
    return unix, tcp, path, tcp.getsockname()[1]


@pytest.fixture
def by_hand() -> Iterator[Activated]:
    """The daemon on sockets this test made, passed as fds 3 and 4 (the sd_listen_fds
    protocol by hand), with an abstract notify socket and a 0.3 s watchdog."""
    directory = short_tmpdir("iossd-")
    config = write_config(directory)
    unix, tcp, path, port = listening_sockets(directory)
    notify = Notifications.bind(directory, abstract=True)
    stderr_path = os.path.join(directory, "stderr.log")
    env = base_env(NOTIFY_SOCKET=notify.env_value, WATCHDOG_USEC="300000")
    fds = f"{unix.fileno()},{tcp.fileno()}"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, fds, "ioserver:ioserver-tcp", *daemon_argv(config)],
            pass_fds=(unix.fileno(), tcp.fileno()),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    unix.close()  # the daemon has them now; ours would keep accepting nothing
    tcp.close()
    activated = Activated(proc, directory, path, port, notify, stderr_path)
    try:
        yield activated
    finally:
        activated.cleanup()


def test_the_daemon_serves_the_sockets_it_is_passed_and_notifies(by_hand: Activated) -> None:
    d = by_hand
    ready = d.notify.wait("READY=1", timeout=START_TIMEOUT)
    assert "STATUS=listening on" in ready and d.socket_path in ready, ready
    assert rpc_ping(d.socket_path, timeout=T)  # the Unix socket: the owner's, no token
    assert rpc_ping(d.tcp_address, TOKEN, timeout=T)  # TCP: the token is required
    with pytest.raises(protocol.RpcError, match="token required"):
        RpcClient(d.tcp_address, None, timeout=T)
    stats = RpcClient(d.socket_path, timeout=T).call("stats")
    assert stats["pid"] == d.proc.pid  # LISTEN_PID was this very process
    # The watchdog pings every WATCHDOG_USEC / 2 from the loop: three in a row.
    for _ in range(3):
        d.notify.wait("WATCHDOG=1")
    assert "serving fd 3 (ioserver)" in d.stderr() and "serving fd 4 (ioserver-tcp)" in d.stderr()
    assert d.stop() == 0, d.stderr()
    d.notify.wait("STOPPING=1")
    assert os.path.exists(d.socket_path), "the daemon removed a socket it did not create"


def test_spawned_programs_inherit_no_activation_variables(by_hand: Activated) -> None:
    d = by_hand
    d.notify.wait("READY=1", timeout=START_TIMEOUT)
    show = (
        "import os; print(sorted(k for k in os.environ"
        " if k.startswith(('LISTEN_', 'NOTIFY_', 'WATCHDOG_'))), os.path.exists('/proc/self/fd/3'))"
    )
    with ioserver_client.connect(d.socket_path) as remote:
        proc = remote.spawn([sys.executable, "-c", show], packet="line")
        line = proc.recv(timeout=T).data
    assert line.strip() == b"[] False", line
    assert d.stop() == 0, d.stderr()


@pytest.mark.skipif(
    SOCKET_ACTIVATE is None,
    reason="systemd-socket-activate is not installed (Debian/Ubuntu: the systemd package)",
)
def test_systemd_socket_activate_starts_the_daemon_on_the_first_connection() -> None:
    """The real tool: it listens on a Unix path and a TCP port and execs the daemon
    when the first client connects; that client is answered, then TCP clients are."""
    assert SOCKET_ACTIVATE is not None
    directory = short_tmpdir("iossd-")
    config = write_config(directory)
    path = os.path.join(directory, "ioserver.sock")
    port = free_port()
    notify = Notifications.bind(directory, abstract=False)
    stderr_path = os.path.join(directory, "stderr.log")
    passed = ["PATH", "HOME", "IOSERVER_PURE"]  # the tool passes only what -E names
    setenv = [f"-E{name}" for name in passed if name in os.environ]
    argv = [
        SOCKET_ACTIVATE,
        f"--listen={path}",
        f"--listen={HOST}:{port}",
        "--fdname=ioserver:ioserver-tcp",
        f"-ENOTIFY_SOCKET={notify.env_value}",
        *setenv,
        sys.executable,
        *daemon_argv(config),
    ]
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            argv,
            env=base_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            umask=0o077,  # the tool creates the Unix socket: 0600
        )
    d = Activated(proc, directory, path, port, notify, stderr_path)
    try:
        wait_for(lambda: os.path.exists(path), what="systemd-socket-activate's socket")
        # The first connection starts the daemon; it waits in the backlog meanwhile.
        first = RpcClient(path, timeout=START_TIMEOUT)
        assert first.call("ping") == "pong"
        first.close()
        assert "READY=1" in d.notify.wait("READY=1")
        assert rpc_ping(d.tcp_address, TOKEN, timeout=T)
        assert "serving fd 3 (ioserver)" in d.stderr(), d.stderr()
        assert "serving fd 4 (ioserver-tcp)" in d.stderr(), d.stderr()
        assert d.stop() == 0, d.stderr()
        d.notify.wait("STOPPING=1")
        assert os.path.exists(path), "the daemon removed the socket systemd-socket-activate made"
    finally:
        d.cleanup()


def run_activated(
    env: dict[str, str], sock: socket.socket, config: str
) -> subprocess.CompletedProcess[str]:
    """The daemon given ``sock`` as fd 3; expected to refuse and exit by itself."""
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, str(sock.fileno()), "x", *daemon_argv(config)],
        pass_fds=(sock.fileno(),),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )


def test_sockets_the_daemon_cannot_serve_safely_are_refused_at_start() -> None:
    """A datagram socket, a Unix socket others may connect to, TCP without a token:
    exit 2 and one line naming the fix in the .socket unit or the config."""
    directory = short_tmpdir("iossd-")
    try:
        config = write_config(directory)
        no_token = os.path.join(directory, "open.toml")
        Path(no_token).write_text(config_text({}))
        dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dgram.bind((HOST, 0))
        loose_path = os.path.join(directory, "loose.sock")
        loose = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        loose.bind(loose_path)
        os.chmod(loose_path, 0o666)
        loose.listen(1)
        tcp = socket.create_server((HOST, 0))
        cases = [
            (dgram, config, "is not a listening stream socket: use ListenStream="),
            (loose, config, "set SocketMode=0600"),
            (tcp, no_token, "is a TCP socket, which every local user can reach"),
        ]
        for sock, cfg, message in cases:
            done = run_activated(base_env(), sock, cfg)
            assert done.returncode == 2, done
            assert message in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
            sock.close()
        assert os.path.exists(loose_path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_activation_variables_for_another_process_are_ignored() -> None:
    """LISTEN_PID of another process (a parent that did not clear them): the daemon
    binds its own socket as usual, and removes it at exit."""
    directory = short_tmpdir("iossd-")
    path = os.path.join(directory, "own.sock")
    env = base_env(LISTEN_PID="1", LISTEN_FDS="1", NOTIFY_SOCKET="")
    with open(os.path.join(directory, "stderr.log"), "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, *daemon_argv(write_config(directory)), "--socket", path],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_for(lambda: rpc_ping(path), timeout=START_TIMEOUT, what="the daemon's own socket")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(START_TIMEOUT) == 0
        assert not os.path.exists(path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(START_TIMEOUT)
        shutil.rmtree(directory, ignore_errors=True)


# -- the shipped units ----------------------------------------------------------------------

UNITS = Path(__file__).resolve().parent.parent.parent / "config"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def unit_lines(name: str) -> list[str]:
    """The settings of a shipped unit (comments and blank lines left out)."""
    text = (UNITS / name).read_text()
    return [line for line in text.splitlines() if line and not line.startswith(("#", ";"))]


def test_the_shipped_units_are_a_notify_service_on_an_owner_only_socket() -> None:
    socket_unit, service = unit_lines("ioserver.socket"), unit_lines("ioserver.service")
    assert "ListenStream=%t/ioserver.sock" in socket_unit  # the default socket path
    assert "SocketMode=0600" in socket_unit  # what the daemon requires
    assert "Type=notify" in service and "Requires=ioserver.socket" in service
    assert any(line.startswith("WatchdogSec=") for line in service)
    assert any(line.startswith("ExecStart=") and " serve " in line for line in service)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_shipped_units(tmp_path: Path) -> None:
    """systemd's own parser reads both units without a complaint (ExecStart pointed at
    this checkout's ioserver, which must exist for verify)."""
    assert SYSTEMD_ANALYZE is not None
    command = shutil.which("ioserver", path=os.path.dirname(sys.executable))
    assert command is not None, "the ioserver command is not installed beside this Python"
    for name in ("ioserver.socket", "ioserver.service"):
        text = (UNITS / name).read_text()
        text = text.replace("ExecStart=%h/.local/bin/ioserver", f"ExecStart={command}")
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "ioserver.socket", "ioserver.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=T,
    )
    assert done.returncode == 0, done
    assert "ioserver." not in done.stdout + done.stderr, done.stdout + done.stderr
