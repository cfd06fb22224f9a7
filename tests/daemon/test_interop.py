"""Interop: the daemon driven by a msgpack-rpc client library we did not write.

The client is pynvim's msgpack-rpc layer (``pynvim.msgpack_rpc``: the transport,
msgpack stream and session Neovim's Python client is built on; in the ``test``
extra). We use its plain constructors, ``socket_session(path)`` and
``tcp_session(host, port)``, not ``pynvim.attach`` (which expects Neovim's API).
They announce themselves with Neovim's ``nvim_set_client_info`` notification,
which the daemon must ignore; pynvim shows an error as ``err[1]`` (Neovim's
convention, which our ``[code, message]`` errors follow); its msgids start at 1.
"""

from __future__ import annotations

from typing import Any

import pytest
from daemon_support import TOKEN, DaemonProcess, EchoServer
from pynvim.msgpack_rpc import Session, socket_session, tcp_session

pytestmark = pytest.mark.timeout(30)  # pynvim's calls have no timeout of their own


def next_event(session: Session) -> tuple[str, list[Any]]:
    message = session.next_message()
    assert message is not None, "the daemon closed the connection"
    assert message.type == "notification", message
    return message.name, message.args


def echo_lines(session: Session, echo: EchoServer, n: int = 100) -> None:
    """connect_tcp to the echo server, n ``send`` notifications, n ``data`` events in
    order, then ``close`` and its ``closed`` event."""
    port_id = session.request("connect_tcp", "127.0.0.1", echo.address[1], {"packet": "line"})
    assert isinstance(port_id, int)
    for i in range(n):
        session.request("send", port_id, b"line %d\n" % i, async_=True)  # a notification
    for i in range(n):
        assert next_event(session) == ("data", [port_id, b"line %d\n" % i])
    assert session.request("close", port_id) is None
    assert next_event(session) == ("closed", [port_id, None])


def test_pynvim_over_the_unix_socket(daemon: DaemonProcess, echo_server: EchoServer) -> None:
    session = socket_session(daemon.socket_path)
    try:
        assert session.request("ping") == "pong"
        info = session.request("get_api_info")
        assert info["version"] == 1
        assert {"connect_tcp", "close", "ping", "hello"} <= set(info["methods"])
        assert {"data", "closed", "error"} <= set(info["events"])
        assert info["error_codes"]["NO_SUCH_PORT"] == 4
        assert info["notifications"]["send"]["params"][1]["name"] == "data"
        echo_lines(session, echo_server)
        with pytest.raises(Exception, match=r"^no such port: 999$"):
            session.request("close", 999)
        with pytest.raises(Exception, match=r"^unknown method 'nvim_get_api_info'$"):
            session.request("nvim_get_api_info")
        assert session.request("ping") == "pong"  # the session went on
    finally:
        session.close()


def test_pynvim_over_tcp_with_hello_and_the_token(
    tcp_daemon: DaemonProcess, echo_server: EchoServer
) -> None:
    assert tcp_daemon.tcp is not None
    host, port = tcp_daemon.tcp

    refused = tcp_session(host, port)
    try:
        with pytest.raises(Exception, match="hello"):
            refused.request("ping")  # hello must come first over TCP
        # ... and the daemon closed the connection: the next request reads EOF, or a
        # reset if it reached the closed socket first (both mean "closed").
        with pytest.raises((EOFError, ConnectionResetError, BrokenPipeError)):
            refused.request("ping")
    finally:
        refused.close()

    wrong = tcp_session(host, port)
    try:
        with pytest.raises(Exception, match=r"^wrong token$"):
            wrong.request("hello", 1, "wrong-token-0123456789")
    finally:
        wrong.close()

    session = tcp_session(host, port)
    try:
        hello = session.request("hello", 1, TOKEN)
        assert hello["version"] == 1 and isinstance(hello["session_id"], int)
        assert session.request("ping") == "pong"
        echo_lines(session, echo_server, n=20)
    finally:
        session.close()
