"""The command line against a real daemon: ``ioserver serve | ping | stats | top``,
help, exit codes (0 ok, 1 no daemon or an error from it, 2 bad usage or config), run
as ``python -m ioserver`` and as the console script. Its stderr never holds a
traceback, whatever the mistake."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon_support import (
    START_TIMEOUT,
    TOKEN,
    DaemonProcess,
    RawClient,
    config_text,
    free_port,
    run_cli,
    run_serve,
    serve_argv,
    short_tmpdir,
    wait_for,
)

from ioserver.cli import COUNTERS

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


def _token_file(directory: str, token: str, name: str = "client-token") -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def _env(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "IOSERVER_TOKEN"}
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


def run_cli_env(
    *args: str, env: dict[str, str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """``run_cli`` with this environment."""
    return subprocess.run(
        [sys.executable, "-m", "ioserver", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """Exit ``code``, nothing on stdout, one line on stderr holding ``words``."""
    assert done.returncode == code, done
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "", done
    assert len(done.stderr.splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)


def test_ping_over_tcp_with_a_token_file_or_the_environment(tcp_daemon: DaemonProcess) -> None:
    token_file = _token_file(tcp_daemon.dir, TOKEN)
    done = run_cli_env("ping", tcp_daemon.tcp_address, "--token-file", token_file, env=_env())
    assert done.returncode == 0, done
    assert done.stdout.startswith(f"pong from {tcp_daemon.tcp_address}")
    done = run_cli_env("ping", tcp_daemon.tcp_address, env=_env(IOSERVER_TOKEN=TOKEN))
    assert done.returncode == 0, done
    # --token-file wins over the environment
    done = run_cli_env(
        "ping", tcp_daemon.tcp_address, "--token-file", token_file, env=_env(IOSERVER_TOKEN="x")
    )
    assert done.returncode == 0, done


def test_a_token_on_the_command_line_is_refused(tcp_daemon: DaemonProcess) -> None:
    """``--token`` would show the secret to every local user (ps): exit 2, say what to use."""
    for command in ("ping", "stats", "top"):
        done = run_cli(command, tcp_daemon.tcp_address, "--token", TOKEN)
        assert_one_line_error(done, 2, "--token-file", "IOSERVER_TOKEN")
        assert TOKEN not in done.stderr


def test_ping_over_tcp_without_a_token_says_a_token_is_required(
    tcp_daemon: DaemonProcess,
) -> None:
    done = run_cli_env("ping", tcp_daemon.tcp_address, env=_env())
    assert_one_line_error(done, 1, "token required (use --token-file or IOSERVER_TOKEN)")
    assert "wrong token" not in done.stderr


def test_ping_over_tcp_with_a_wrong_token_exits_1_with_a_message(
    tcp_daemon: DaemonProcess,
) -> None:
    wrong = _token_file(tcp_daemon.dir, "wrong-token-0123456789")
    done = run_cli_env("ping", tcp_daemon.tcp_address, "--token-file", wrong, env=_env())
    assert_one_line_error(done, 1, "wrong token")
    done = run_cli_env(
        "ping", tcp_daemon.tcp_address, env=_env(IOSERVER_TOKEN="wrong-token-0123456789")
    )
    assert_one_line_error(done, 1, "wrong token")
    # and the daemon logged both failures at warning level, with the peer
    log = wait_for(
        lambda: (t := tcp_daemon.stderr()).count("authentication failed") >= 2 and t,
        what="two logged authentication failures",
    )
    assert re.search(r"WARNING ioserver: authentication failed from 127\.0\.0\.1:\d+", log)


def test_an_unusable_token_file_exits_2(tcp_daemon: DaemonProcess) -> None:
    loose = os.path.join(tcp_daemon.dir, "loose-token")
    Path(loose).write_text(TOKEN)
    os.chmod(loose, 0o644)
    done = run_cli("ping", tcp_daemon.tcp_address, "--token-file", loose)
    assert_one_line_error(done, 2, "--token-file", "chmod 600")
    done = run_cli("ping", tcp_daemon.tcp_address, "--token-file", loose + ".missing")
    assert_one_line_error(done, 2, "--token-file", "cannot read")


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


def test_stats_prints_a_formatted_view_without_its_own_session(daemon: DaemonProcess) -> None:
    with RawClient(daemon.socket_path) as c:
        c.call("interval", 60)
        c.call("send_after", 60, "later")
        done = run_cli("stats", daemon.socket_path)
    assert done.returncode == 0, done
    out = done.stdout
    assert f"ioserver daemon pid {daemon.pid}: running" in out
    # the sessions line counts the other client only (this command's own is left out)
    assert re.search(r"^sessions +1 connected \(this command's own not counted\)", out, re.M), out
    # ports by kind
    assert re.search(r"^ports +1 open \(interval 1\)", out, re.M), out
    # every counter with a word on what it means
    for key, meaning in COUNTERS.items():
        assert re.search(rf"^  {key} +[\d.,]+  {re.escape(meaning)}$", out, re.M), (key, out)
    lines = out.splitlines()
    header = next(line for line in lines if line.split()[:3] == ["session", "kind", "ports"])
    rows = lines[lines.index(header) + 1 :]
    assert len(rows) == 1, out  # not the CLI's own session
    assert rows[0].split()[1:4] == ["unix", "1", "1"], rows  # kind, ports, timers


def test_stats_with_no_other_client_shows_no_session(daemon: DaemonProcess) -> None:
    done = run_cli("stats", daemon.socket_path)
    assert done.returncode == 0, done
    assert re.search(r"^sessions +0 connected", done.stdout, re.M), done.stdout
    assert "(no client sessions)" in done.stdout


def test_stats_json(daemon: DaemonProcess) -> None:
    done = run_cli("stats", "--json", daemon.socket_path)
    assert done.returncode == 0, done
    stats = json.loads(done.stdout)
    assert stats["pid"] == daemon.pid
    assert stats["sessions"] == 0 and stats["session_list"] == []  # its own left out
    assert "session_id" not in stats
    assert stats["state"] == "running"
    assert {"requests", "batches", "pipe_writes", "open_ports", "ports"} <= set(stats)
    with RawClient(daemon.socket_path) as c:
        c.call("ping")
        stats = json.loads(run_cli("stats", "--json", daemon.socket_path).stdout)
        raw = c.call("stats")
    assert stats["sessions"] == 1 and [s["requests"] for s in stats["session_list"]] == [1]
    # the daemon names the asking session in its answer
    assert raw["session_id"] in [s["id"] for s in raw["session_list"]]


def test_top_prints_count_screens(daemon: DaemonProcess) -> None:
    """--count 2 --interval 0.2: two screens, the second with rates."""
    done = run_cli("top", daemon.socket_path, "--count", "2", "--interval", "0.2")
    assert done.returncode == 0, done
    screens = done.stdout.split(f"ioserver pid {daemon.pid}")
    assert screens[0] == "" and len(screens) == 3, done.stdout
    assert "\x1b[" not in done.stdout  # not a terminal: no escape codes
    first, second = screens[1], screens[2]
    assert "client requests -" in first  # no rate before a second sample
    # its own stats calls are not client requests: an idle daemon shows 0/s
    assert "client requests 0/s" in second, second
    for screen in (first, second):
        assert "sessions 0 " in screen and "(no client sessions)" in screen
        assert "I/O thread: requests" in screen and "pipe writes/request" in screen


def test_top_shows_the_clients_requests_per_second(daemon: DaemonProcess) -> None:
    stop = threading.Event()
    sent = [0]

    def busy() -> None:
        with RawClient(daemon.socket_path) as c:
            while not stop.is_set():
                c.call("ping")
                sent[0] += 1
                time.sleep(0.002)

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        wait_for(lambda: sent[0] > 10, what="the busy client to start")
        done = run_cli("top", daemon.socket_path, "--count", "2", "--interval", "0.5")
    finally:
        stop.set()
        thread.join(10)
    assert done.returncode == 0, done
    second = done.stdout.split(f"ioserver pid {daemon.pid}")[2]
    rate = int(re.search(r"client requests ([\d,]+)/s", second)[1].replace(",", ""))  # type: ignore[index]
    assert rate >= 10, second  # the pings, ~100-500/s on a busy machine
    assert "sessions 1 " in second


def test_top_piped_into_head_exits_quietly(daemon: DaemonProcess) -> None:
    """``ioserver top | head -1``: the reader goes away; no message, exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ioserver", "top", daemon.socket_path, "--interval", "0.05"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert first.startswith(b"ioserver pid "), first
    proc.stdout.close()  # what head does after its line
    try:
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr.read() == b""


def test_top_quits_on_q_when_stdin_is_a_terminal(daemon: DaemonProcess) -> None:
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ioserver", "top", daemon.socket_path, "--interval", "30"],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first.startswith(b"ioserver pid ") and b"(q quits)" in first, first
        time.sleep(0.2)  # top now waits for 30 s or a key
        start = time.monotonic()
        os.write(master, b"q")
        try:
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert time.monotonic() - start < 5, "q did not end top before its next screen"
        assert b"Traceback" not in proc.stderr.read()
    finally:
        os.close(master)
        os.close(slave)


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
    done = run_cli("top", "--count", "many")
    assert_one_line_error(done, 2, "--count", "'many'")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("ping", "tcp://localhost"), ("bad address 'tcp://localhost'", "tcp://HOST:PORT")),
        (("ping", "tcp://127.0.0.1:99999"), ("bad address",)),
        (("stats", "http://localhost:7000"), ("bad address",)),
        (("ping", "--config", "typo.toml"), ("bad configuration", "typo.toml")),
        (("stats", "--config", "typo.toml"), ("bad configuration", "typo.toml")),
        (("top", "--config", "typo.toml"), ("bad configuration", "typo.toml")),
        (("top", "--interval", "-1"), ("--interval", "'-1'")),
        (("top", "--interval", "0"), ("--interval",)),
        (("top", "--interval", "nan"), ("--interval",)),
        (("top", "--count", "0"), ("--count",)),
        (("serve", "--log-level", "loud"), ("--log-level",)),
    ],
)
def test_mistakes_are_one_line_and_exit_2(args: tuple[str, ...], words: tuple[str, ...]) -> None:
    assert_one_line_error(run_cli(*args), 2, *words)


def test_a_bad_config_for_a_client_names_the_key() -> None:
    directory = short_tmpdir()
    try:
        config = os.path.join(directory, "bad.toml")
        Path(config).write_text("[server]\nsokcet = '/tmp/x'\n")
        done = run_cli("ping", "--config", config)
        assert_one_line_error(done, 2, "server.sokcet: unknown key")
    finally:
        shutil.rmtree(directory)


def test_version() -> None:
    """One version: ``ioserver --version`` and the daemon's hello name
    ``ioserver.__version__``, which the build also reads (pyproject.toml)."""
    import ioserver

    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout == f"ioserver {ioserver.__version__}\n", done


def test_hello_names_the_same_version(daemon: DaemonProcess) -> None:
    import ioserver

    with RawClient(daemon.socket_path) as c:
        assert c.call("hello", 1, None)["server"] == f"ioserver {ioserver.__version__}"


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


def _serve(directory: str, *extra: str, tcp: bool = False) -> tuple[subprocess.Popen[str], str]:
    """A daemon started as a user would (its stderr a pipe we read); (process, socket)."""
    config = os.path.join(directory, "ioserver.toml")
    server: dict[str, object] = {}
    if tcp:
        server = {"tcp": f"127.0.0.1:{free_port()}", "token_file": _token_file(directory, TOKEN)}
    Path(config).write_text(config_text(server))
    socket_path = os.path.join(directory, "s.sock")
    proc = subprocess.Popen(
        serve_argv(config, socket_path, *extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, socket_path


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line, f"the daemon said nothing and exited with {proc.wait(10)}"
    return line


def test_serve_says_once_where_it_listens_tcp_included() -> None:
    directory = short_tmpdir()
    proc, socket_path = _serve(directory, tcp=True)
    try:
        line = _first_line(proc)
        match = re.fullmatch(r"ioserver: listening on (\S+) and (tcp://127\.0\.0\.1:\d+)\n", line)
        assert match and match[1] == socket_path, line
        # the addresses as printed are what the clients take
        env = _env(IOSERVER_TOKEN=TOKEN)
        for address in match.groups():
            done = run_cli_env("ping", address, env=env)
            assert done.returncode == 0, done
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(START_TIMEOUT) == 0
        assert proc.stderr is not None
        rest = proc.stderr.read()
        assert "listening on" not in rest, rest  # once
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(directory)


def test_serve_logs_sessions_at_debug_level_only() -> None:
    for extra, shown in ((("-v",), True), (("--log-level", "debug"), True), ((), False)):
        directory = short_tmpdir()
        proc, socket_path = _serve(directory, *extra)
        try:
            _first_line(proc)
            assert run_cli("ping", socket_path).returncode == 0
            time.sleep(0.2)  # the close is logged after the answer
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(START_TIMEOUT) == 0
            assert proc.stderr is not None
            log = proc.stderr.read()
            opened = re.search(r"DEBUG ioserver: session (\d+) opened \(unix\)", log)
            closed = re.search(r"DEBUG ioserver: session (\d+) closed \(unix; 1 requests", log)
            if shown:
                assert opened and closed and opened[1] == closed[1], (extra, log)
            else:
                assert "DEBUG" not in log, log
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            shutil.rmtree(directory)


def test_serve_stops_within_300_ms_without_clients() -> None:
    """SIGTERM (or Ctrl-C's SIGINT) to exit, as the parent's wait() sees it: < 0.3 s.

    (Measured by waiting for the process, not by polling its pid: an orphan's
    zombie lingers until init reaps it, which is not the daemon's time.)"""
    times = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        directory = short_tmpdir()
        proc, socket_path = _serve(directory)
        try:
            _first_line(proc)
            assert run_cli("ping", socket_path).returncode == 0
            time.sleep(0.3)
            start = time.monotonic()
            proc.send_signal(sig)
            assert proc.wait(START_TIMEOUT) == 0
            times.append(time.monotonic() - start)
            assert not os.path.exists(socket_path)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            shutil.rmtree(directory)
    assert min(times) < 0.3, times
    assert max(times) < 1.0, times  # a shared, busy machine gets some slack


def test_serve_over_tcp_takes_its_token_from_a_file_never_the_command_line() -> None:
    directory = short_tmpdir()
    try:
        config = os.path.join(directory, "ioserver.toml")
        Path(config).write_text(config_text())
        socket_path = os.path.join(directory, "s.sock")
        tcp = f"127.0.0.1:{free_port()}"
        # without a token: refused at start, one line naming the ways to give one
        done = run_serve(serve_argv(config, socket_path, "--tcp", tcp))
        assert_one_line_error(done, 2, "needs a token", "--token-file")
        done = run_serve(serve_argv(config, socket_path, "--tcp", tcp, "--token", TOKEN))
        assert_one_line_error(done, 2, "--token-file")
        assert TOKEN not in done.stderr
        assert not os.path.exists(socket_path)
        # with --token-file: clients need that token
        token_file = _token_file(directory, TOKEN, "server-token")
        proc = subprocess.Popen(
            serve_argv(config, socket_path, "--tcp", tcp, "--token-file", token_file),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert f"tcp://{tcp}" in _first_line(proc)
            done = run_cli_env("ping", f"tcp://{tcp}", env=_env(IOSERVER_TOKEN=TOKEN))
            assert done.returncode == 0, done
            done = run_cli_env("ping", f"tcp://{tcp}", env=_env())
            assert_one_line_error(done, 1, "token required")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(START_TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    finally:
        shutil.rmtree(directory)


def test_top_says_so_when_the_daemon_goes_away(daemon: DaemonProcess) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ioserver", "top", daemon.socket_path, "--interval", "0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith("ioserver pid ")
        assert daemon.stop() == 0
        proc.stdout.read()
        assert proc.wait(20) == 1
        err = proc.stderr.read()
        assert err.startswith(f"ioserver: lost the daemon at {daemon.socket_path}"), err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
