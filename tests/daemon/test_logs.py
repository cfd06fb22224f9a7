"""The daemon's log an operator reads: ``[server] log_format`` and its event lines.

With ``log_format = "json"`` every line the real daemon writes to stderr is one
JSON object; the lines an operator acts on carry an ``event`` and its fields:
a session opened and closed (debug), an authentication failure (warning, with
the peer's address, at most 10 a minute, then one line saying the rest are
counted), a limit hit (info, with the limit's name). The text format keeps
the same messages for people.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from daemon_support import DaemonProcess, RawClient, RpcFailed, wait_for

from ioserver import protocol


def json_lines(d: DaemonProcess) -> list[dict[str, Any]]:
    """Every line of the daemon's stderr, each parsed as JSON (fails on any other line)."""
    lines = d.stderr().splitlines()
    parsed = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\n{d.stderr()}") from None
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= set(entry)
        parsed.append(entry)
    return parsed


def events(d: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in json_lines(d) if e.get("event") == name]


def test_json_lines_for_sessions_auth_failures_and_limits(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(
        tcp=True,
        token=True,
        server={"log_format": "json", "log_level": "debug"},
        limits={"ports_per_session": 1},
    )
    assert d.tcp is not None
    announced = wait_for(lambda: events(d, "announce"), what="the listening line")
    assert d.socket_path in announced[0]["addresses"]

    with RawClient(d.socket_path) as client:
        client.call("send_after", 60, "one")
        assert client.error_of("send_after", 60, "two").code == protocol.LIMIT
        session = client.call("stats")["session_id"]
    closed = wait_for(
        lambda: [e for e in events(d, "session_closed") if e["session"] == session],
        what="the session_closed line",
    )[0]
    assert closed["level"] == "debug" and closed["kind"] == "unix" and closed["requests"] == 3
    opened = [e for e in events(d, "session_opened") if e["session"] == session]
    assert len(opened) == 1 and opened[0]["level"] == "debug", opened
    (limit,) = [e for e in events(d, "limit_hit") if e["session"] == session]
    assert limit["level"] == "info" and limit["limit"] == "ports_per_session", limit
    assert "too many ports: limit ports_per_session=1" in limit["message"]

    # 12 wrong tokens: 10 warnings with the peer's address, then one line saying the
    # rest are counted, not logged.
    peers = []
    for i in range(12):
        with RawClient(d.tcp) as intruder:
            peers.append(f"127.0.0.1:{intruder.sock.getsockname()[1]}")
            try:
                intruder.call("hello", protocol.PROTOCOL_VERSION, f"wrong-token-{i:04d}-abcdefgh")
            except RpcFailed as exc:
                assert exc.code == protocol.NOT_ALLOWED
            else:
                raise AssertionError("a wrong token was accepted")
    wait_for(lambda: events(d, "log_dropping"), what="the line saying failures are dropped")
    failures = events(d, "auth_failed")
    assert len(failures) == 10, failures
    assert [f["peer"] for f in failures] == peers[:10]
    assert all(f["level"] == "warning" and f["reason"] == "wrong token" for f in failures)
    (dropping,) = events(d, "log_dropping")
    assert dropping["level"] == "warning" and dropping["what"] == "authentication failures"
    assert "the rest are counted, not logged" in dropping["message"]


def test_text_lines_say_the_same(daemon_factory: Callable[..., DaemonProcess]) -> None:
    d = daemon_factory(limits={"sessions": 1})
    with RawClient(d.socket_path) as first:
        assert first.call("ping") == "pong"
        with RawClient(d.socket_path) as second:
            name, params = second.event()
            assert name == "error" and params[1][0] == protocol.LIMIT
    log = d.wait_log("limit hit by session")
    line = next(x for x in log.splitlines() if "limit hit by session" in x)
    assert " INFO ioserver: limit hit by session " in line
    assert line.endswith("(unix): too many sessions: limit sessions=1"), line
