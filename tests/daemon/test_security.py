"""Who may reach the daemon and what they may do: the socket's mode, TCP only with a
token, sessions kept apart, spawn only from the allow-list, one daemon per socket."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_support import (
    TOKEN,
    DaemonProcess,
    EchoServer,
    RawClient,
    config_text,
    free_port,
    run_serve,
    serve_argv,
    short_tmpdir,
    stop_and_check,
)

import ioserver_client
from ioserver import protocol

pytestmark = pytest.mark.timeout(30)


def read_data(c: RawClient, port_id: int, n: int) -> bytes:
    """``n`` bytes of ``data`` events (a pipe may cut them anywhere)."""
    got = b""
    while len(got) < n:
        name, params = c.event()
        assert name == "data" and params[0] == port_id, (name, params)
        got += params[1]
    return got


# -- the Unix socket ---------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_socket_is_created_0600_whatever_the_umask(
    daemon_factory: Callable[..., DaemonProcess], umask: int
) -> None:
    d = daemon_factory(umask=umask)
    mode = os.stat(d.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600, oct(stat.S_IMODE(mode))


def test_a_stale_socket_file_is_replaced_at_start() -> None:
    """A socket file nobody listens on (its daemon died) is removed and replaced."""
    d = DaemonProcess()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(d.socket_path)
    stale.close()
    assert stat.S_ISSOCK(os.lstat(d.socket_path).st_mode)
    try:
        d.start()
        assert d.ping()
        assert "replaced the stale socket" in d.stderr()
    finally:
        stop_and_check(d)


def test_a_live_daemons_socket_makes_a_second_daemon_exit_non_zero(
    daemon: DaemonProcess,
) -> None:
    """The second daemon says why and exits 1; the first keeps its socket and serves."""
    done = run_serve(serve_argv(daemon.config_path, daemon.socket_path))
    assert done.returncode == 1, done
    assert "another ioserver is already listening on" in done.stderr
    assert daemon.socket_path in done.stderr
    assert os.path.exists(daemon.socket_path)
    assert daemon.ping()


def test_a_file_that_is_not_a_socket_is_not_replaced() -> None:
    directory = short_tmpdir()
    try:
        path = os.path.join(directory, "ioserver.sock")
        Path(path).write_text("precious")
        config = os.path.join(directory, "c.toml")
        Path(config).write_text(config_text())
        done = run_serve(serve_argv(config, path))
        assert done.returncode == 1, done
        assert "exists and is not a socket" in done.stderr
        assert Path(path).read_text() == "precious"
    finally:
        shutil.rmtree(directory)


# -- TCP and tokens ----------------------------------------------------------------------


def _refused_config(server: dict[str, object], *extra_argv: str) -> str:
    """Run the daemon with this [server] section; it must refuse to start: its stderr."""
    directory = short_tmpdir()
    try:
        config = os.path.join(directory, "c.toml")
        Path(config).write_text(config_text(server))
        done = run_serve(serve_argv(config, os.path.join(directory, "s.sock"), *extra_argv))
        assert done.returncode != 0, done
        assert not os.path.exists(os.path.join(directory, "s.sock"))
        return done.stderr
    finally:
        shutil.rmtree(directory)


def test_tcp_without_a_token_is_refused_at_start() -> None:
    stderr = _refused_config({"tcp": f"127.0.0.1:{free_port()}"})
    assert "server.tcp" in stderr and "token" in stderr, stderr
    assert "Traceback" not in stderr


def test_tcp_from_the_command_line_without_a_token_is_refused_too() -> None:
    stderr = _refused_config({}, "--tcp", f"127.0.0.1:{free_port()}")
    assert "server.tcp" in stderr and "token" in stderr, stderr


def test_a_short_token_or_a_loose_token_file_is_refused_at_start() -> None:
    stderr = _refused_config({"token": "short"})
    assert "server.token" in stderr and "16" in stderr, stderr
    directory = short_tmpdir()
    try:
        token_file = os.path.join(directory, "token")
        Path(token_file).write_text(TOKEN)
        os.chmod(token_file, 0o644)
        stderr = _refused_config({"token_file": token_file})
        assert "server.token_file" in stderr and "chmod 600" in stderr, stderr
    finally:
        shutil.rmtree(directory)


def test_insecure_tcp_starts_and_answers_without_a_token(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(tcp=True, insecure=True)
    assert d.tcp is not None
    with RawClient(d.tcp) as c:
        assert c.call("hello", 1, None)["version"] == 1
        assert c.call("ping") == "pong"


def test_over_tcp_a_request_before_hello_is_refused_and_the_connection_closed(
    tcp_daemon: DaemonProcess, echo_server: EchoServer
) -> None:
    assert tcp_daemon.tcp is not None
    with RawClient(tcp_daemon.tcp) as c:
        c.notify("send", 1, b"dropped")  # notifications before hello are dropped
        failure = c.error_of("connect_tcp", *echo_server.address)
        assert failure.code == 6 and "hello" in failure.message, failure.error
        assert c.read_until_closed() == []
    assert echo_server.connections() == []


def test_over_tcp_a_wrong_token_is_refused_and_the_connection_closed(
    tcp_daemon: DaemonProcess,
) -> None:
    assert tcp_daemon.tcp is not None
    for token in ("wrong-token-0123456789", None, TOKEN[:-1], TOKEN + "x"):
        with RawClient(tcp_daemon.tcp) as c:
            failure = c.error_of("hello", 1, token)
            assert failure.code == 6 and failure.message == "wrong token", failure.error
            assert c.read_until_closed() == []


def test_over_tcp_the_right_token_works(tcp_daemon: DaemonProcess, echo_server: EchoServer) -> None:
    assert tcp_daemon.tcp is not None
    with RawClient(tcp_daemon.tcp) as c:
        hello = c.call("hello", 1, TOKEN)
        assert hello["version"] == 1 and "ioserver" in hello["server"]
        assert isinstance(hello["session_id"], int)
        assert c.call("ping") == "pong"
        port_id = c.call("connect_tcp", *echo_server.address, {"packet": "line"})
        c.notify("send", port_id, b"over tcp\n")
        assert c.event() == ("data", [port_id, b"over tcp\n"])


def test_the_client_package_over_tcp_needs_the_token(
    tcp_daemon: DaemonProcess, echo_server: EchoServer
) -> None:
    for token in (None, "wrong-token-0123456789"):
        with pytest.raises(protocol.RpcError) as info:
            ioserver_client.connect(tcp_daemon.tcp_address, token=token)
        assert info.value.code == protocol.NOT_ALLOWED
    remote = ioserver_client.connect(tcp_daemon.tcp_address, token=TOKEN)
    try:
        assert remote.ping() == "pong"
        port = remote.connect_tcp(*echo_server.address, packet="line")
        port.send(b"hi\n")
        assert port.recv(timeout=10).data == b"hi\n"  # type: ignore[attr-defined]
        port.close()
    finally:
        remote.close()


def test_hello_over_the_unix_socket_checks_the_token_if_given(
    tcp_daemon: DaemonProcess,
) -> None:
    """Over the Unix socket hello is optional (the socket's mode is the check); a
    hello that is sent is checked all the same."""
    with RawClient(tcp_daemon.socket_path) as c:
        assert c.call("ping") == "pong"
        assert c.error_of("hello", 1, "wrong-token-0123456789").code == 6
        assert c.call("hello", 1, TOKEN)["version"] == 1


# -- sessions are apart ------------------------------------------------------------------


def test_a_session_cannot_touch_another_sessions_port(
    tcp_daemon: DaemonProcess, echo_server: EchoServer
) -> None:
    assert tcp_daemon.tcp is not None
    with RawClient(tcp_daemon.socket_path) as owner, RawClient(tcp_daemon.tcp) as other:
        other.call("hello", 1, TOKEN)
        port_id = owner.call("connect_tcp", *echo_server.address, {"packet": "line"})
        for method, extra in (("close", []), ("setopts", [{"active": False}]), ("read", [])):
            failure = other.error_of(method, port_id, *extra)
            assert failure.code == 4 and "no such port" in failure.message, failure.error
        other.notify("send", port_id, b"not yours\n")
        name, params = other.event()
        assert name == "error" and params[0] == port_id and params[1][0] == 4
        owner.notify("send", port_id, b"mine\n")
        assert owner.event() == ("data", [port_id, b"mine\n"])
        assert not owner.events


# -- spawn -------------------------------------------------------------------------------


def test_spawn_is_refused_when_the_config_allows_nothing(daemon: DaemonProcess) -> None:
    with RawClient(daemon.socket_path) as c:
        failure = c.error_of("spawn", ["cat"])
        assert failure.code == 6 and "[spawn]" in failure.message, failure.error
        assert c.call("ping") == "pong"
    remote = ioserver_client.connect(daemon.socket_path)
    try:
        with pytest.raises(protocol.RpcError) as info:
            remote.spawn(["cat"])
        assert info.value.code == protocol.NOT_ALLOWED
    finally:
        remote.close()


def test_spawn_runs_only_what_the_allow_list_names(spawn_daemon: DaemonProcess) -> None:
    with RawClient(spawn_daemon.socket_path) as c:
        cat = shutil.which("cat")
        assert cat is not None
        for argv in (["sh", "-c", "echo hi"], [cat], ["/bin/../bin/sh"], ["python3"]):
            failure = c.error_of("spawn", argv)
            assert failure.code == 6 and "not allowed" in failure.message, (argv, failure.error)
        port_id, pid = c.call("spawn", ["cat"])
        assert isinstance(pid, int) and pid > 0
        c.notify("send", port_id, b"meow")
        assert read_data(c, port_id, 4) == b"meow"
        c.call("close_stdin", port_id)
        assert [c.event(), c.event()] == [("exited", [port_id, 0]), ("closed", [port_id, None])]
        port_id, _ = c.call("spawn", [sys.executable, "-c", "print('from python')"])
        events = c.events_until(lambda name, params: name == "closed")
        assert events[-2:] == [("exited", [port_id, 0]), ("closed", [port_id, None])]
        assert all(name == "data" and params[0] == port_id for name, params in events[:-2])
        assert b"".join(params[1] for _, params in events[:-2]) == b"from python\n"


def test_spawn_resolves_an_allowed_name_on_the_daemons_path_not_the_clients(
    spawn_daemon: DaemonProcess,
) -> None:
    """A client's env with its own PATH can't swap the program: "cat" is the
    daemon's cat, not a "cat" in a directory the client names."""
    directory = short_tmpdir()
    try:
        fake = os.path.join(directory, "cat")
        Path(fake).write_text("#!/bin/sh\necho evil\n")
        os.chmod(fake, 0o755)
        with RawClient(spawn_daemon.socket_path) as c:
            port_id, _ = c.call("spawn", ["cat"], {"env": {"PATH": directory}})
            c.notify("send", port_id, b"real cat\n")
            assert read_data(c, port_id, 9) == b"real cat\n"
            c.call("close_stdin", port_id)
            assert c.events_until(lambda name, params: name == "closed")[-1] == (
                "closed",
                [port_id, None],
            )
    finally:
        shutil.rmtree(directory)
