"""The command line against a real daemon: ``ioserver ping | stats | top``, help,
exit codes (0 ok, 1 no daemon or an error from it, 2 bad usage or config), run as
``python -m ioserver`` and as the console script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_support import (
    TOKEN,
    DaemonProcess,
    RawClient,
    config_text,
    run_cli,
    run_serve,
    serve_argv,
    short_tmpdir,
)

pytestmark = pytest.mark.timeout(30)


def test_ping_answers(daemon: DaemonProcess) -> None:
    done = run_cli("ping", daemon.socket_path)
    assert done.returncode == 0, done
    assert re.fullmatch(rf"pong from {re.escape(daemon.socket_path)} in \d+ µs\n", done.stdout)


def test_ping_finds_the_socket_in_the_config(daemon: DaemonProcess) -> None:
    config = os.path.join(daemon.dir, "client.toml")
    Path(config).write_text(config_text({"socket": daemon.socket_path}))
    done = run_cli("ping", "--config", config)
    assert done.returncode == 0, done
    assert done.stdout.startswith("pong from " + daemon.socket_path)


def test_ping_over_tcp_with_the_token(tcp_daemon: DaemonProcess) -> None:
    done = run_cli("ping", tcp_daemon.tcp_address, "--token", TOKEN)
    assert done.returncode == 0, done
    assert done.stdout.startswith(f"pong from {tcp_daemon.tcp_address}")
    env = {**os.environ, "IOSERVER_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "ioserver", "ping", tcp_daemon.tcp_address],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 0, done


def test_ping_over_tcp_with_a_wrong_token_exits_1_with_a_message(
    tcp_daemon: DaemonProcess,
) -> None:
    done = run_cli("ping", tcp_daemon.tcp_address, "--token", "wrong-token-0123456789")
    assert done.returncode == 1, done
    assert "wrong token" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_no_daemon_listening_exits_1() -> None:
    directory = short_tmpdir()
    try:
        missing = os.path.join(directory, "nobody.sock")
        for command in (["ping"], ["stats"], ["stats", "--json"], ["top", "--count", "1"]):
            done = run_cli(*command, missing)
            assert done.returncode == 1, (command, done)
            assert f"no answer from {missing}" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
            assert done.stdout == ""
    finally:
        shutil.rmtree(directory)


def test_stats_prints_a_table(daemon: DaemonProcess) -> None:
    with RawClient(daemon.socket_path) as c:
        c.call("interval", 60)
        done = run_cli("stats", daemon.socket_path)
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    rows = dict(line.split(None, 1) for line in lines if line and not line.startswith(" "))
    assert rows["sessions"] == "2"  # the one above and the CLI's own
    assert rows["open_ports"] == "1"
    assert rows["pid"] == str(daemon.pid)
    header = next(line for line in lines if "session" in line and "bytes in" in line)
    assert header.split()[:3] == ["session", "kind", "ports"]
    sessions = lines[lines.index(header) + 1 :]
    assert len(sessions) == 2
    assert sorted(row.split()[2] for row in sessions) == ["0", "1"]  # ports per session


def test_stats_json(daemon: DaemonProcess) -> None:
    done = run_cli("stats", "--json", daemon.socket_path)
    assert done.returncode == 0, done
    stats = json.loads(done.stdout)
    assert stats["pid"] == daemon.pid
    assert stats["sessions"] == 1 and len(stats["session_list"]) == 1
    assert stats["session_list"][0]["kind"] == "unix"
    assert stats["state"] == "running"
    assert {"requests", "batches", "pipe_writes", "open_ports"} <= set(stats)


def test_top_prints_count_screens(daemon: DaemonProcess) -> None:
    """--count 2 --interval 0.2: two screens, the second with rates."""
    done = run_cli("top", daemon.socket_path, "--count", "2", "--interval", "0.2")
    assert done.returncode == 0, done
    screens = done.stdout.split(f"ioserver pid {daemon.pid}")
    assert screens[0] == "" and len(screens) == 3, done.stdout
    assert "\x1b[" not in done.stdout  # not a terminal: no escape codes
    first, second = screens[1], screens[2]
    assert "requests -" in first  # no rate before a second sample
    assert re.search(r"requests [\d,]+/s", second), second
    for screen in (first, second):
        assert "sessions 1" in screen and "pipe writes/request" in screen


def test_help_lists_the_commands() -> None:
    done = run_cli("--help")
    assert done.returncode == 0, done
    for command in ("serve", "ping", "stats", "top"):
        assert command in done.stdout
    for command in ("serve", "ping", "stats", "top"):
        sub = run_cli(command, "--help")
        assert sub.returncode == 0 and f"usage: ioserver {command}" in sub.stdout, sub


def test_usage_errors_exit_2() -> None:
    assert run_cli().returncode == 2
    assert run_cli("nosuchcommand").returncode == 2
    assert run_cli("top", "--count", "many").returncode == 2


def test_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("ioserver "), done


def test_serve_with_a_bad_config_exits_2_naming_the_key() -> None:
    directory = short_tmpdir()
    try:
        config = os.path.join(directory, "bad.toml")
        Path(config).write_text("[limits]\nsessions = -3\n")
        done = run_serve(serve_argv(config, os.path.join(directory, "s.sock")))
        assert done.returncode == 2, done
        assert "limits.sessions" in done.stderr and "-3" in done.stderr
        Path(config).write_text("[server]\nsokcet = '/tmp/x'\n")
        done = run_serve(serve_argv(config, os.path.join(directory, "s.sock")))
        assert done.returncode == 2 and "server.sokcet: unknown key" in done.stderr, done
        done = run_serve(serve_argv(os.path.join(directory, "missing.toml"), "/tmp/x.sock"))
        assert done.returncode == 2 and "cannot read config file" in done.stderr, done
    finally:
        shutil.rmtree(directory)


def test_the_console_script_works(daemon: DaemonProcess) -> None:
    script = Path(sys.executable).parent / "ioserver"
    if not script.exists():
        pytest.skip(f"no console script at {script} (package not installed with pip -e)")
    done = subprocess.run(
        [str(script), "ping", daemon.socket_path], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.startswith("pong from "), done
