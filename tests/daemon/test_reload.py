"""Reloading the real daemon's configuration: SIGHUP and ``ioserver reload``.

Each test starts ``ioserver serve`` as a process, changes its config file (or
its token file) on disk, sends a real SIGHUP (or runs ``ioserver reload``),
waits for the daemon's log line saying it reloaded, then checks the change
from the outside: a rotated token refuses the old one for new sessions while
an established session goes on; new limits and the spawn allow-list apply; a
bad file is refused with the message ``serve`` gives and changes nothing; a
listener change is reported as needing a restart.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from daemon_support import (
    TOKEN,
    DaemonProcess,
    RawClient,
    RpcFailed,
    run_cli,
    run_serve,
    serve_argv,
)

from ioserver import protocol

NEW_TOKEN = "rotated-token-9876543210-zyxwvut"
RELOADED = "configuration reloaded on SIGHUP"


def hello(d: DaemonProcess, token: str) -> RawClient:
    """A TCP session authenticated with ``token`` (RpcFailed if refused)."""
    assert d.tcp is not None
    client = RawClient(d.tcp)
    try:
        client.call("hello", protocol.PROTOCOL_VERSION, token)
    except BaseException:
        client.close()
        raise
    return client


def test_sighup_rotates_the_token_and_keeps_established_sessions(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(tcp=True, token=True)
    with hello(d, TOKEN) as established:
        d.write_token(NEW_TOKEN)
        d.hangup()
        log = d.wait_log(RELOADED)
        assert re.search(r"reloaded on SIGHUP: server\.token; 1 sessions kept", log), log
        assert NEW_TOKEN not in log and TOKEN not in log  # a secret never goes to the log
        # New sessions need the new token...
        with pytest.raises(RpcFailed) as refused:
            hello(d, TOKEN)
        assert refused.value.code == protocol.NOT_ALLOWED
        with hello(d, NEW_TOKEN) as fresh:
            assert fresh.call("ping") == "pong"
        # ...and the session that authenticated with the old one goes on.
        assert established.call("ping") == "pong"
    d.wait_log("authentication failed from 127.0.0.1:")


def test_sighup_applies_limits_spawn_allow_and_log_level(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(limits={"ports_per_session": 3})
    with RawClient(d.socket_path) as before:
        assert before.call("send_after", 60, "a") and before.call("send_after", 60, "b")
        no_spawn = before.error_of("spawn", ["cat"])
        assert no_spawn.code == protocol.NOT_ALLOWED
        d.write_config(
            server={"log_level": "debug"}, limits={"ports_per_session": 1}, spawn_allow=["cat"]
        )
        d.hangup()
        log = d.wait_log(RELOADED)
        line = log[log.index(RELOADED) :].splitlines()[0]
        for key in ("server.log_level", "limits.ports_per_session", "spawn.allow"):
            assert key in line, line
        assert "('info' -> 'debug')" in line and "(3 -> 1)" in line, line
        # The connected session sees the new port limit at its next open...
        limited = before.error_of("send_after", 60, "c")
        assert limited.code == protocol.LIMIT and "ports_per_session=1" in limited.message
    # ...and a new one too, with spawn allowed now; the debug level logs sessions.
    with RawClient(d.socket_path) as after:
        port_id, pid = after.call("spawn", ["cat"])
        assert isinstance(pid, int)
        assert after.error_of("send_after", 60, "x").code == protocol.LIMIT
        after.call("close", port_id)
    d.wait_log(" closed (unix;")  # a debug line: the new level is in force


def test_a_bad_file_is_refused_with_serves_message_and_nothing_changes(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(tcp=True, token=True, limits={"ports_per_session": 2})
    d.write_config(limits={"sessions": -3, "ports_per_session": 5})
    # What `ioserver serve` says about this file at start:
    started = run_serve(serve_argv(d.config_path, d.socket_path + ".other"))
    assert started.returncode == 2, started
    serve_says = started.stderr.strip()
    assert (
        serve_says.startswith("ioserver: bad configuration: ") and "limits.sessions" in serve_says
    )
    d.hangup()
    log = d.wait_log("reload on SIGHUP refused")
    assert serve_says + " (reload on SIGHUP refused: the running configuration stays)" in log
    # `ioserver reload` says the same, exits 1; the daemon goes on with the old config.
    done = run_cli("reload", d.socket_path)
    assert done.returncode == 1, done
    assert "ioserver: reload refused by " in done.stderr and "limits.sessions" in done.stderr
    assert "Traceback" not in done.stderr
    with RawClient(d.socket_path) as client:
        assert client.call("send_after", 60, 1) and client.call("send_after", 60, 2)
        assert client.error_of("send_after", 60, 3).code == protocol.LIMIT  # still 2
    with hello(d, TOKEN) as client:
        assert client.call("ping") == "pong"
    # Fixed, the file reloads.
    d.write_config(limits={"sessions": 10})
    done = run_cli("reload", d.socket_path)
    assert done.returncode == 0, done
    assert "limits.ports_per_session" in done.stdout and "limits.sessions" in done.stdout


def test_a_listener_change_needs_a_restart_and_the_old_one_stays(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(tcp=True, token=True)
    assert d.tcp is not None
    old_tcp = f"127.0.0.1:{d.tcp[1]}"
    d.write_config(server={"tcp": "127.0.0.1:1", "loop": "asyncio", "slow_callback_ms": 5})
    done = run_cli("reload", d.socket_path)
    assert done.returncode == 0, done
    assert "server.tcp changed in the file: it takes effect at the next restart" in done.stdout
    assert "server.loop changed in the file" in done.stdout
    assert "server.slow_callback_ms changed in the file" in done.stdout
    log = d.wait_log("server.tcp changed in the configuration: it needs a restart")
    assert f"(ioserver keeps '{old_tcp}' until then)" in log
    with hello(d, TOKEN) as client:  # the old listener still serves
        assert client.call("ping") == "pong"
    # Removing the token while the TCP listener runs would leave it open to anyone:
    d.write_config(
        server={"tcp": old_tcp, "loop": "auto", "slow_callback_ms": 100, "token_file": ""}
    )
    done = run_cli("reload", d.socket_path)
    assert done.returncode == 1 and "needs a token" in done.stderr, done
    with pytest.raises(RpcFailed):
        hello(d, "")


def test_reload_is_for_the_owner_only(daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory(tcp=True, token=True)
    with hello(d, TOKEN) as client:
        refused = client.error_of("reload")
        assert refused.code == protocol.NOT_ALLOWED and "Unix socket" in refused.message
    with RawClient(d.socket_path) as owner:
        assert owner.call("reload") == {"changed": [], "restart_needed": []}
    assert "reload request from session" in d.wait_log("nothing changed")
    # A SIGHUP and a request at once: two reloads, one after the other, both complete.
    # (Two SIGHUPs sent at once may arrive as one: the kernel does not queue signals.)
    with RawClient(d.socket_path) as owner:
        d.hangup()
        assert owner.call("reload") == {"changed": [], "restart_needed": []}
    log = d.wait_log(RELOADED + ": nothing changed")
    assert log.count("configuration reloaded on reload request") == 2, log
    assert "refused" not in log and "Traceback" not in log
