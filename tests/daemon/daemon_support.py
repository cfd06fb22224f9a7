"""Helpers for the daemon tests: the real ``ioserver serve`` process, a raw msgpack client,
a plain-socket echo server, and polling.

Imported by the test files as ``from daemon_support import ...`` (pytest puts this
directory on ``sys.path``; there is no ``__init__.py``). The fixtures built on them are
in ``conftest.py`` beside this file.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ioserver.cli import RpcClient

T = 10.0
"""Seconds any single wait may take before the test fails (the machine is shared)."""

START_TIMEOUT = 30.0
"""Seconds the daemon may take to answer its first ping, or to exit after SIGTERM."""

TOKEN = "test-token-0123456789-abcdefghij"
"""The token of the token-protected daemons (>= 16 characters)."""


# -- waiting ---------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float = T, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something true (which is returned); fail
    the test after ``timeout`` seconds. Polls every 5 ms: the daemon is another
    process, and a tight loop here would take its CPU on a 2-core machine."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(0.005)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def short_tmpdir(prefix: str = "iosd-") -> str:
    """A fresh directory under /tmp: Unix socket paths must stay under 108 bytes,
    which pytest's tmp_path (named after the test) does not promise."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


# -- the daemon process -------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for these plain values
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def config_text(
    server: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    spawn_allow: Sequence[str] = (),
    metrics: dict[str, Any] | None = None,
) -> str:
    """The TOML of a daemon config with these keys (the rest default; log_level "info"
    unless ``server`` sets it)."""
    server = {"log_level": "info", **(server or {})}
    lines = ["[server]"]
    lines += [f"{k} = {_toml(v)}" for k, v in server.items()]
    lines += ["", "[limits]"]
    lines += [f"{k} = {_toml(v)}" for k, v in (limits or {}).items()]
    lines += ["", "[spawn]", f"allow = {_toml(list(spawn_allow))}", ""]
    if metrics:
        lines += ["[metrics]", *(f"{k} = {_toml(v)}" for k, v in metrics.items()), ""]
    return "\n".join(lines)


def serve_argv(config: str | os.PathLike[str], socket_path: str, *extra: str) -> list[str]:
    """The command line that runs the daemon, as a user would type it."""
    return [
        sys.executable,
        "-m",
        "ioserver",
        "serve",
        "--config",
        os.fspath(config),
        "--socket",
        socket_path,
        *extra,
    ]


def rpc_ping(address: str, token: str | None = None, timeout: float = 2.0) -> bool:
    """Whether a daemon answers ``ping`` at ``address`` (what ``ioserver ping`` does)."""
    try:
        client = RpcClient(address, token, timeout=timeout)
    except OSError:
        return False
    try:
        return bool(client.call("ping") == "pong")
    except (OSError, ConnectionError):
        return False
    finally:
        client.close()


def rpc_call(address: str, method: str, *params: Any, token: str | None = None) -> Any:
    """One request on a fresh connection (the CLI's client), its result."""
    client = RpcClient(address, token, timeout=T)
    try:
        return client.call(method, *params)
    finally:
        client.close()


class DaemonProcess:
    """One ``python -m ioserver serve`` subprocess with its own config and socket.

    ``start()`` writes the config, runs the daemon with stderr to a file, and
    waits until ``ping`` answers on its socket; ``stop()`` sends SIGTERM and
    returns the exit code. ``stderr()`` is everything it logged so far.
    """

    def __init__(
        self,
        *,
        tcp: bool = False,
        token: bool = False,
        insecure: bool = False,
        spawn_allow: Sequence[str] = (),
        limits: dict[str, Any] | None = None,
        umask: int = 0o022,
        server: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        self.umask = umask
        self.dir = short_tmpdir()
        self.socket_path = os.path.join(self.dir, "ioserver.sock")
        self.config_path = os.path.join(self.dir, "ioserver.toml")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.token: str | None = None
        self.tcp: tuple[str, int] | None = None
        server = dict(server or {})
        if token:
            token_file = os.path.join(self.dir, "token")
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(TOKEN + "\n")
            server["token_file"] = token_file
            self.token = TOKEN
        if tcp:
            self.tcp = ("127.0.0.1", free_port())
            server["tcp"] = f"127.0.0.1:{self.tcp[1]}"
        if insecure:
            server["insecure"] = True
        self.limits = dict(limits or {})
        self.server = server
        self.spawn_allow = list(spawn_allow)
        self.metrics = dict(metrics or {})
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"<DaemonProcess pid={self.pid} {self.socket_path}>"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def tcp_address(self) -> str:
        assert self.tcp is not None
        return f"tcp://{self.tcp[0]}:{self.tcp[1]}"

    def write_config(
        self,
        server: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        spawn_allow: Sequence[str] | None = None,
    ) -> None:
        """(Re)write the config file, with these keys changed (what a reload reads)."""
        self.server.update(server or {})
        self.limits.update(limits or {})
        if spawn_allow is not None:
            self.spawn_allow = list(spawn_allow)
        text = config_text(self.server, self.limits, self.spawn_allow, self.metrics)
        Path(self.config_path).write_text(text)

    def write_token(self, token: str) -> None:
        """Replace the token file's content (mode 0600), as an operator rotating it does."""
        path = self.server["token_file"]
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        self.token = token

    def hangup(self) -> None:
        """Send SIGHUP (reload the config)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def wait_log(self, text: str, count: int = 1, timeout: float = T) -> str:
        """Wait until ``text`` was logged ``count`` times; all of stderr so far."""
        return str(
            wait_for(
                lambda: (log := self.stderr()).count(text) >= count and log,
                timeout,
                what=f"{count} x {text!r} in the daemon's log",
            )
        )

    def metrics_url(self) -> str:
        """The metrics URL the daemon announces once started (waited for: it may
        answer ping a moment before)."""
        found = re.search(r"metrics on (http://[^\s\"]+)", self.wait_log("metrics on http://"))
        assert found, f"no metrics URL in the log:\n{self.stderr()}"
        return found[1]

    def start(self) -> DaemonProcess:
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                serve_argv(self.config_path, self.socket_path),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                umask=self.umask,
            )
        deadline = time.monotonic() + START_TIMEOUT
        # The Unix listener answers before the TCP one is up: wait for both.
        while not (
            rpc_ping(self.socket_path)
            and (self.tcp is None or rpc_ping(self.tcp_address, self.token or None))
        ):
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the daemon exited with {self.proc.returncode} at start:\n{self.stderr()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(
                    f"the daemon did not answer ping in {START_TIMEOUT} s:\n{self.stderr()}"
                )
            time.sleep(0.02)
        return self

    def stderr(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit; the exit code (cached: stop twice is fine)."""
        assert self.proc is not None
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                self.returncode = self.proc.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"the daemon did not exit after {sig!r}:\n{self.stderr()}")
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(START_TIMEOUT)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- observing it from outside ----------------------------------------------------

    def ping(self) -> bool:
        return rpc_ping(self.socket_path)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = rpc_call(self.socket_path, "stats")
        return result

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def thread_count(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        raise AssertionError("no Threads: line in /proc/<pid>/status")

    def socket_mode(self) -> int:
        return stat.S_IMODE(os.stat(self.socket_path).st_mode)


def stop_and_check(d: DaemonProcess) -> None:
    """SIGTERM; the daemon must exit 0 and take its socket file with it."""
    try:
        code = d.stop()
        assert code == 0, f"the daemon exited with {code}:\n{d.stderr()}"
        assert not os.path.exists(d.socket_path), "the daemon left its socket file behind"
    finally:
        d.cleanup()


def run_serve(argv: list[str], timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a daemon that is expected to exit by itself (a refused start)."""
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -m ioserver ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ioserver", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- a raw msgpack-rpc client -------------------------------------------------------------


class PeerClosed(ConnectionError):
    """The daemon closed the connection while we waited for a message."""


class RpcFailed(Exception):
    """An error response: ``.error`` is the wire error ``[code, message, details?]``."""

    def __init__(self, error: Any) -> None:
        super().__init__(error)
        self.error = error
        self.code = error[0] if isinstance(error, list) and error else None
        self.message = error[1] if isinstance(error, list) and len(error) > 1 else ""


class RawClient:
    """A blocking msgpack-rpc client on a plain socket: nothing of ours but msgpack.

    Requests get msgids from 12345 up (a server must echo them, not count its
    own); responses are matched by msgid in whatever order they come;
    notifications received meanwhile are kept in ``events`` in order.
    """

    def __init__(self, address: str | tuple[str, int], timeout: float = T) -> None:
        if isinstance(address, tuple):
            self.sock = socket.create_connection(address, timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        self.unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, unicode_errors="surrogateescape"
        )
        self.packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")
        self.events: collections.deque[list[Any]] = collections.deque()
        self.responses: dict[int, tuple[Any, Any]] = {}
        self.msgid = 12345
        self.eof = False
        self.bytes_sent = 0
        self.bytes_received = 0

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # sending

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.bytes_sent += len(data)

    def send(self, message: Any) -> None:
        self.send_raw(self.packer.pack(message))

    def request(self, method: Any, *params: Any, msgid: int | None = None) -> int:
        if msgid is None:
            msgid = self.msgid
            self.msgid += 1
        self.send([0, msgid, method, list(params)])
        return msgid

    def notify(self, method: Any, *params: Any) -> None:
        self.send([2, method, list(params)])

    # receiving

    def _read_message(self, deadline: float) -> Any:
        """The next message off the socket; PeerClosed at EOF, TimeoutError at the deadline."""
        while True:
            try:
                return next(self.unpacker)
            except StopIteration:
                pass
            if self.eof:
                raise PeerClosed("the daemon closed the connection")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the daemon in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                raise TimeoutError("no message from the daemon in time") from None
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            else:
                self.bytes_received += len(data)
                self.unpacker.feed(data)

    def _pump(self, deadline: float) -> None:
        message = self._read_message(deadline)
        assert isinstance(message, list) and message, f"not a msgpack-rpc message: {message!r}"
        if message[0] == 1:
            assert len(message) == 4, message
            assert message[1] not in self.responses, f"second response to {message[1]}"
            self.responses[message[1]] = (message[2], message[3])
        elif message[0] == 2:
            assert len(message) == 3, message
            self.events.append(message)
        else:
            raise AssertionError(f"the daemon sent a message of type {message[0]}: {message!r}")

    def response(self, msgid: int, timeout: float = T) -> tuple[Any, Any]:
        """``(error, result)`` of request ``msgid``."""
        deadline = time.monotonic() + timeout
        while msgid not in self.responses:
            self._pump(deadline)
        return self.responses.pop(msgid)

    def call(self, method: Any, *params: Any, timeout: float = T) -> Any:
        """Request and wait: the result, or RpcFailed with the error."""
        error, result = self.response(self.request(method, *params), timeout)
        if error is not None:
            raise RpcFailed(error)
        return result

    def error_of(self, method: Any, *params: Any) -> RpcFailed:
        """Request that must fail: the failure."""
        try:
            result = self.call(method, *params)
        except RpcFailed as exc:
            return exc
        raise AssertionError(f"{method}{params!r} succeeded with {result!r}")

    def event(self, timeout: float = T) -> tuple[str, list[Any]]:
        """The next notification as ``(name, params)``."""
        deadline = time.monotonic() + timeout
        while not self.events:
            self._pump(deadline)
        _, name, params = self.events.popleft()
        return name, params

    def events_until(
        self, done: Callable[[str, list[Any]], bool], timeout: float = T
    ) -> list[tuple[str, list[Any]]]:
        """Notifications up to and including the first for which ``done`` is true."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            name, params = self.event(max(0.0, deadline - time.monotonic()))
            out.append((name, params))
            if done(name, params):
                return out

    def read_until_closed(self, timeout: float = T) -> list[Any]:
        """Every message until the daemon closes the connection (notifications kept)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._pump(deadline)
        except PeerClosed:
            pass
        return [[2, name, params] for _, name, params in self.events] + [
            [1, k, e, r] for k, (e, r) in self.responses.items()
        ]


# -- a plain-socket TCP echo server ---------------------------------------------------------


class EchoServer:
    """A TCP echo server on 127.0.0.1 in threads of the test process (not ioserver).

    It counts, per accepted connection, the bytes it echoed and whether the peer
    ended it, so a test can wait for "the daemon closed its port" as a state.
    """

    def __init__(self, echo: bool = True) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.echo = echo
        self.lock = threading.Lock()
        self.conns: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []
        self.closing = False
        accept = threading.Thread(target=self._accept, daemon=True, name="echo-accept")
        accept.start()
        self.threads.append(accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            record = {"sock": conn, "bytes": 0, "ended": False}
            with self.lock:
                if self.closing:
                    conn.close()
                    return
                self.conns.append(record)
            t = threading.Thread(target=self._serve, args=(record,), daemon=True, name="echo")
            t.start()
            self.threads.append(t)

    def _serve(self, record: dict[str, Any]) -> None:
        conn: socket.socket = record["sock"]
        try:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                record["bytes"] += len(data)
                if self.echo:
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            record["ended"] = True
            with contextlib.suppress(OSError):
                conn.close()

    def connections(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.conns)

    def open_count(self) -> int:
        return sum(1 for c in self.connections() if not c["ended"])

    def close(self) -> None:
        with self.lock:
            self.closing = True
            conns = list(self.conns)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone doesn't)
        self.sock.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c["sock"].shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(T)


def recv_exactly(sock: socket.socket, n: int, timeout: float = T) -> bytes:
    """``n`` bytes from a plain socket (fails the test on EOF or timeout)."""
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            pytest.fail(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def read_until_eof(sock: socket.socket, timeout: float = T) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def names(events: Iterable[tuple[str, list[Any]]]) -> list[str]:
    return [name for name, _ in events]
