"""Tests for ioserver.config: defaults, the shipped config/ioserver.toml, every bad key
or value refused with a message naming it, the TCP/token rules, token_file, spawn."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ioserver import config as C
from ioserver.config import (
    Config,
    ConfigError,
    LimitsConfig,
    MetricsConfig,
    ServerConfig,
    SpawnConfig,
    from_mapping,
    load,
)

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "ioserver.toml"
TOKEN = "0123456789abcdef-token"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# --- defaults and the shipped file ----------------------------------------------------------


def test_defaults() -> None:
    cfg = Config()
    assert cfg.server == ServerConfig(
        socket="",
        tcp="",
        token="",
        token_file="",
        insecure=False,
        loop="auto",
        log_level="info",
    )
    assert cfg.limits == LimitsConfig(
        sessions=1000,
        ports_per_session=1000,
        max_frame_bytes=16 * 1024 * 1024,
        max_message_bytes=16 * 1024 * 1024,
        pending_bytes=4 * 1024 * 1024,
    )
    assert cfg.spawn.allow == ()
    assert not cfg.spawn.enabled
    assert cfg.server.tcp_address() is None
    assert load(None) == cfg
    assert from_mapping({}) == cfg


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().limits.sessions = 5  # type: ignore[misc]


def test_shipped_file_gives_exactly_the_defaults() -> None:
    assert C.SHIPPED_CONFIG == SHIPPED
    assert load(SHIPPED) == Config()


def test_shipped_file_documents_every_key() -> None:
    """Every key of every section is set in the file (to its default), with a
    comment just above it."""
    text = SHIPPED.read_text()
    data = tomllib.loads(text)
    for section, cls in (
        ("server", ServerConfig),
        ("limits", LimitsConfig),
        ("spawn", SpawnConfig),
        ("metrics", MetricsConfig),
    ):
        names = [f.name for f in dataclasses.fields(cls)]
        assert list(data[section]) == names, section
        default = cls()
        for name in names:
            value = data[section][name]
            expected = getattr(default, name)
            assert (tuple(value) if isinstance(value, list) else value) == expected
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\w+ = ", line):
            assert lines[i - 1].startswith("#"), f"{line!r} has no comment above it"
    assert "16 MiB" in text and "4 MiB" in text


# --- bad keys and values -----------------------------------------------------------------------

BAD: list[tuple[dict[str, Any], str]] = [
    (
        {"serve": {}},
        "unknown section [serve] (the sections are [server], [limits], [spawn], [metrics])",
    ),
    ({"server": {"sockett": "x"}}, "server.sockett: unknown key (the keys of [server] are socket"),
    ({"limits": {"ports": 3}}, "limits.ports: unknown key"),
    ({"spawn": {"deny": []}}, "spawn.deny: unknown key"),
    ({"server": 5}, "server: expected a table, got 5"),
    ({"server": {"socket": 5}}, "server.socket: expected a string, got 5"),
    ({"server": {"tcp": 7000}}, "server.tcp: expected a string, got 7000"),
    ({"server": {"tcp": "7000", "insecure": True}}, "server.tcp: expected"),
    ({"server": {"tcp": "localhost:http", "insecure": True}}, "got 'localhost:http'"),
    ({"server": {"tcp": "localhost:70000", "insecure": True}}, "got 'localhost:70000'"),
    ({"server": {"tcp": "::1:7000", "insecure": True}}, "server.tcp: expected"),
    ({"server": {"tcp": ":7000", "insecure": True}}, "server.tcp: expected"),
    ({"server": {"token": 123456789012345678}}, "server.token: expected a string"),
    ({"server": {"token": "short"}}, "server.token: expected at least 16 characters, got 5"),
    ({"server": {"token_file": 5}}, "server.token_file: expected a string, got 5"),
    ({"server": {"insecure": "yes"}}, "server.insecure: expected true or false, got 'yes'"),
    ({"server": {"insecure": 1}}, "server.insecure: expected true or false, got 1"),
    ({"server": {"loop": "trio"}}, "server.loop: expected one of 'auto', 'uvloop', 'asyncio'"),
    ({"server": {"log_level": "INFO"}}, "server.log_level: expected one of 'debug', 'info'"),
    ({"server": {"log_level": ["info"]}}, "server.log_level: expected one of"),
    ({"limits": {"sessions": -3}}, "limits.sessions: expected an int >= 1, got -3"),
    ({"limits": {"sessions": 0}}, "limits.sessions: expected an int >= 1, got 0"),
    ({"limits": {"sessions": True}}, "limits.sessions: expected an int >= 1, got True"),
    ({"limits": {"sessions": "10"}}, "limits.sessions: expected an int >= 1, got '10'"),
    ({"limits": {"ports_per_session": 1.5}}, "limits.ports_per_session: expected an int >= 1"),
    ({"limits": {"max_frame_bytes": 0}}, "limits.max_frame_bytes: expected an int >= 1, got 0"),
    ({"limits": {"max_message_bytes": 100}}, "limits.max_message_bytes: expected an int >= 1024"),
    ({"limits": {"pending_bytes": -1}}, "limits.pending_bytes: expected an int >= 1, got -1"),
    ({"limits": {"max_elements": 0}}, "limits.max_elements: expected an int >= 1, got 0"),
    ({"limits": {"max_depth": 501}}, "limits.max_depth: expected an int from 1 to 500, got 501"),
    ({"limits": {"hello_timeout": 0}}, "limits.hello_timeout: expected a number > 0, got 0"),
    ({"limits": {"hello_timeout": "5"}}, "limits.hello_timeout: expected a number > 0, got '5'"),
    ({"limits": {"unauthenticated": 0}}, "limits.unauthenticated: expected an int >= 1, got 0"),
    ({"spawn": {"allow": "cat"}}, "spawn.allow: expected a list of program names"),
    ({"spawn": {"allow": ["cat", 5]}}, "spawn.allow[1]: expected a program name or an absolute"),
    ({"spawn": {"allow": [""]}}, "spawn.allow[0]: expected a program name"),
    ({"spawn": {"allow": ["bin/cat"]}}, "spawn.allow[0]: expected a program name or an absolute"),
    ({"server": {"log_format": "xml"}}, "server.log_format: expected one of 'text', 'json', got"),
    ({"metrics": {"listen": 9464}}, "metrics.listen: expected a string, got 9464"),
    ({"metrics": {"listen": "9464"}}, 'metrics.listen: expected "" (off) or "host:port"'),
    ({"metrics": {"port": 1}}, "metrics.port: unknown key (the keys of [metrics] are listen)"),
]


@pytest.mark.parametrize(("data", "text"), BAD)
def test_bad_config_names_the_key(data: dict[str, Any], text: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(data)
    assert text in str(info.value)


def test_bad_value_in_a_file_names_the_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[limits]\nsessions = -3\n")
    with pytest.raises(
        ConfigError, match=r"c\.toml: limits\.sessions: expected an int >= 1, got -3"
    ):
        load(path)


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[server]\nsocket = \n")
    with pytest.raises(ConfigError, match=r"c\.toml: invalid TOML: .*line 2"):
        load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml"):
        load(tmp_path / "nope.toml")


def test_not_a_table() -> None:
    with pytest.raises(ConfigError, match="expected a table of sections"):
        from_mapping([])  # type: ignore[arg-type]


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[limits]\nsessions = 5\n[spawn]\nallow = ["cat"]\n')
    cfg = load(path)
    assert cfg.limits == LimitsConfig(sessions=5)
    assert cfg.spawn == SpawnConfig(allow=("cat",))
    assert cfg.server == ServerConfig()


# --- server: socket, tcp, token ------------------------------------------------------------------


def test_default_socket_path() -> None:
    assert C.default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1000"}) == (
        "/run/user/1000/ioserver.sock"
    )
    fallback = C.default_socket_path({})
    assert fallback.endswith(f"ioserver-{os.getuid()}/ioserver.sock")
    assert C.default_socket_path({"XDG_RUNTIME_DIR": "relative"}) == fallback
    assert ServerConfig(socket="~/x.sock").socket_path() == os.path.expanduser("~/x.sock")
    assert ServerConfig().socket_path() == C.default_socket_path()


def test_tcp_without_token_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping({"server": {"tcp": "127.0.0.1:7000"}})
    message = str(info.value)
    assert "server.tcp = '127.0.0.1:7000' needs a token" in message
    assert "server.token_file" in message and "insecure = true" in message


def test_tcp_with_token_or_insecure() -> None:
    cfg = from_mapping({"server": {"tcp": "127.0.0.1:7000", "token": TOKEN}})
    assert cfg.server.tcp_address() == ("127.0.0.1", 7000)
    assert cfg.server.token == TOKEN
    cfg = from_mapping({"server": {"tcp": "[::1]:0", "insecure": True}})
    assert cfg.server.tcp_address() == ("::1", 0)
    assert cfg.server.token == ""
    assert ServerConfig(tcp="localhost:65535", insecure=True).tcp_address() == ("localhost", 65535)


def test_overrides_are_checked_too() -> None:
    """``dataclasses.replace`` (a --tcp override) can't skip the token rule."""
    server = Config().server
    with pytest.raises(ConfigError, match="needs a token"):
        dataclasses.replace(server, tcp="127.0.0.1:7000")
    assert dataclasses.replace(server, tcp="127.0.0.1:7000", token=TOKEN).tcp == "127.0.0.1:7000"
    with pytest.raises(ConfigError, match=r"limits\.sessions"):
        LimitsConfig(sessions=0)


def test_with_server(tmp_path: Path) -> None:
    cfg = Config()
    assert cfg.with_server(socket="/tmp/x.sock", tcp=None).server.socket == "/tmp/x.sock"
    with pytest.raises(ConfigError, match="needs a token"):
        cfg.with_server(tcp="127.0.0.1:7000")
    with pytest.raises(ConfigError, match=r"server\.tcp: expected"):
        cfg.with_server(tcp="nonsense", insecure=True)
    with pytest.raises(ConfigError, match=r"server\.sock: unknown key"):
        cfg.with_server(sock="x")
    token = write(tmp_path / "token", TOKEN)
    new = cfg.with_server(tcp="127.0.0.1:7000", token_file=str(token))
    assert new.server.token == TOKEN and new.server.tcp_address() == ("127.0.0.1", 7000)
    assert new.limits is cfg.limits


def test_token_file(tmp_path: Path) -> None:
    path = write(tmp_path / "token", f"  {TOKEN}\n")
    cfg = from_mapping({"server": {"tcp": "127.0.0.1:7000", "token_file": str(path)}})
    assert cfg.server.token == TOKEN
    assert cfg.server.token_file == str(path)
    # From a TOML file too.
    conf = write(tmp_path / "c.toml", f'[server]\ntcp = "127.0.0.1:1"\ntoken_file = "{path}"\n')
    assert load(conf).server.token == TOKEN


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620])
def test_token_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "token", TOKEN, mode)
    with pytest.raises(ConfigError) as info:
        from_mapping({"server": {"token_file": str(path)}})
    message = str(info.value)
    assert message.startswith("server.token_file:")
    assert f"mode {mode:04o}" in message and f"chmod 600 {path}" in message


def test_token_file_stricter_modes_pass(tmp_path: Path) -> None:
    for mode in (0o400, 0o600):
        path = write(tmp_path / f"token{mode:o}", TOKEN, mode)
        assert from_mapping({"server": {"token_file": str(path)}}).server.token == TOKEN


def test_token_file_problems(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"token_file": str(tmp_path / "missing")}, "server.token_file: cannot read"),
        ({"token_file": str(write(tmp_path / "empty", " \n"))}, "is empty"),
        ({"token_file": str(write(tmp_path / "short", "abc"))}, "at least 16 characters"),
        (
            {"token_file": str(write(tmp_path / "t", TOKEN)), "token": TOKEN},
            "server.token and server.token_file are both set",
        ),
    ]
    (tmp_path / "latin1").write_bytes(b"\xff" * 20)
    (tmp_path / "latin1").chmod(0o600)
    cases.append(({"token_file": str(tmp_path / "latin1")}, "is not UTF-8 text"))
    (tmp_path / "big").write_bytes(b"x" * 70_000)
    (tmp_path / "big").chmod(0o600)
    cases.append(({"token_file": str(tmp_path / "big")}, "is over 64 KiB"))
    sub = tmp_path / "dir"
    sub.mkdir(mode=0o700)
    cases.append(({"token_file": str(sub)}, "server.token_file"))
    for server, text in cases:
        with pytest.raises(ConfigError) as info:
            from_mapping({"server": server})
        assert text in str(info.value), server


def test_fifo_token_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    # Opening a FIFO for reading would block without a writer: open it with one.
    fd = os.open(fifo, os.O_RDWR)
    try:
        with pytest.raises(ConfigError, match="is not a regular file"):
            from_mapping({"server": {"token_file": str(fifo)}})
    finally:
        os.close(fd)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


# --- spawn ---------------------------------------------------------------------------------------


def test_spawn_allow_names_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prog = tmp_path / "bin" / "hello"
    prog.parent.mkdir()
    prog.write_text("#!/bin/sh\necho hi\n")
    prog.chmod(0o755)
    monkeypatch.setenv("PATH", str(prog.parent))
    spawn = from_mapping({"spawn": {"allow": ["hello", "/usr/bin/env", "ghost"]}}).spawn
    assert spawn.enabled
    assert spawn.allow == ("hello", "/usr/bin/env", "ghost")
    assert spawn.resolve("hello") == str(prog)  # found on the daemon's PATH
    assert spawn.resolve("/usr/bin/env") == "/usr/bin/env"
    assert spawn.resolve("/usr/bin/../bin/env") == "/usr/bin/env"
    assert spawn.resolve("env") is None  # a path entry does not allow the name
    assert spawn.resolve(str(prog)) is None  # a name entry does not allow a path
    assert spawn.resolve("./hello") is None
    assert spawn.resolve("cat") is None
    with pytest.raises(FileNotFoundError, match="ghost"):
        spawn.resolve("ghost")


def test_spawn_disabled_by_default() -> None:
    spawn = Config().spawn
    assert not spawn.enabled
    assert spawn.resolve("cat") is None
    assert spawn.resolve("/bin/cat") is None


def test_metrics_listen_and_log_format() -> None:
    cfg = from_mapping({"metrics": {"listen": "127.0.0.1:0"}, "server": {"log_format": "json"}})
    assert cfg.metrics.address() == ("127.0.0.1", 0)
    assert cfg.server.log_format == "json"
    assert MetricsConfig().address() is None
    assert from_mapping({"metrics": {"listen": "[::1]:9464"}}).metrics.address() == ("::1", 9464)
