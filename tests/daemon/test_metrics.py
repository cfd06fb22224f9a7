"""``[metrics] listen``: scraping the real daemon's ``/metrics`` endpoint.

The daemon runs as a process with ``listen = "127.0.0.1:0"`` and announces the
URL; the test scrapes it with urllib (what Prometheus does: an HTTP GET) and
parses the answer with prometheus_client's own parser, so a malformed
exposition fails here as it would fail in Prometheus. Counters are checked to
move by what real clients did in between; a daemon configured for metrics
without prometheus_client, or on a port already taken, refuses to start with a
one-line message.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from daemon_support import (
    START_TIMEOUT,
    DaemonProcess,
    EchoServer,
    RawClient,
    T,
    config_text,
    run_cli,
    serve_argv,
    short_tmpdir,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

from ioserver import protocol

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """GET the endpoint and parse it: ``{(sample name, sorted labels): value}``."""
    with urllib.request.urlopen(url, timeout=T) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, /, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_scrape_parses_and_its_counters_follow_real_requests(
    daemon_factory: Callable[..., DaemonProcess], echo_server: EchoServer
) -> None:
    d = daemon_factory(metrics={"listen": "127.0.0.1:0"})
    url = d.metrics_url()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    before = scrape(url)
    for name in (
        "ioserver_loop_lag_seconds",
        "ioserver_loop_pipe_writes_total",
        "ioserver_loop_batches_total",
        "ioserver_bytes_in_total",
        "process_open_fds",
    ):
        assert any(key[0] == name for key in before), name
    assert value(before, "ioserver_sessions", kind="unix") == 0
    assert 0 <= value(before, "ioserver_loop_lag_seconds") < T

    with RawClient(d.socket_path) as client:
        for _ in range(3):
            assert client.call("ping") == "pong"
        port_id = client.call("connect_tcp", *echo_server.address)
        client.notify("send", port_id, b"metrics!")
        name, params = client.event()
        assert (name, params) == ("data", [port_id, b"metrics!"])
        assert client.error_of("close", 999).code == protocol.NO_SUCH_PORT
        assert client.error_of("no_such_method").code == protocol.UNKNOWN_METHOD
        during = scrape(url)
        assert value(during, "ioserver_sessions", kind="unix") == 1
        assert value(during, "ioserver_open_ports", kind="tcp") == 1
        sent = client.bytes_sent
    after = wait_for(
        lambda: (s := scrape(url)) and value(s, "ioserver_sessions", kind="unix") == 0 and s,
        what="the session to close in the metrics",
    )

    def grew(name: str, /, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("ioserver_requests_total", method="ping") == 3
    assert grew("ioserver_requests_total", method="connect_tcp") == 1
    assert grew("ioserver_requests_total", method="unknown") == 1
    assert grew("ioserver_errors_total", code="4", error="NO_SUCH_PORT") == 1
    assert grew("ioserver_errors_total", code="2", error="UNKNOWN_METHOD") == 1
    assert grew("ioserver_events_total") >= 1  # the data event (and closed, at the end)
    assert grew("ioserver_bytes_in_total") == sent  # counted after the session closed too
    assert grew("ioserver_bytes_out_total") > len(b"metrics!")
    assert grew("ioserver_sessions_opened_total", kind="unix") == 1
    assert grew("ioserver_ports_opened_total") == 1
    assert grew("ioserver_loop_requests_total") >= 1  # the write into the port
    assert value(after, "ioserver_open_ports", kind="tcp") == 0
    # Scraping is not client work: a scrape alone moves no loop counter.
    again = scrape(url)
    for name in ("ioserver_loop_requests_total", "ioserver_loop_pipe_writes_total"):
        assert value(again, name) == value(after, name), name


def test_auth_failures_and_limit_hits_are_counted(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(
        tcp=True, token=True, limits={"ports_per_session": 1}, metrics={"listen": "127.0.0.1:0"}
    )
    url = d.metrics_url()
    before = scrape(url)
    assert d.tcp is not None
    with RawClient(d.tcp) as intruder:
        assert intruder.error_of("hello", 1, "not-the-token-0123456789").code == 6
    with RawClient(d.socket_path) as client:
        client.call("send_after", 60, 1)
        assert client.error_of("send_after", 60, 2).code == protocol.LIMIT
    after = wait_for(
        lambda: (
            (s := scrape(url))
            and value(s, "ioserver_auth_failures_total")
            > value(before, "ioserver_auth_failures_total")
            and s
        ),
        what="the auth failure in the metrics",
    )
    assert (
        value(after, "ioserver_limit_hits_total") == value(before, "ioserver_limit_hits_total") + 1
    )
    assert value(after, "ioserver_sessions_opened_total", kind="tcp") >= 1
    done = run_cli("reload", d.socket_path)
    assert done.returncode == 0, done
    reloaded = scrape(url)
    ok = {"result": "ok"}
    assert value(reloaded, "ioserver_config_reloads_total", **ok) == 1 + value(
        after, "ioserver_config_reloads_total", **ok
    )
    assert value(reloaded, "ioserver_requests_total", method="reload") == 1


def _serve_once(config: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``ioserver serve`` with ``config``, expected to exit by itself."""
    directory = short_tmpdir()
    try:
        path = Path(directory, "ioserver.toml")
        path.write_text(config)
        socket_path = os.path.join(directory, "s.sock")
        done = subprocess.run(
            serve_argv(path, socket_path),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            env=env,
        )
        assert not os.path.exists(socket_path), "a refused start left its socket behind"
        return done
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_metrics_without_prometheus_client_is_a_clear_error_at_start() -> None:
    # A directory whose prometheus_client fails to import, first on the path: the
    # daemon sees what it sees when the extra is not installed.
    shadow = short_tmpdir()
    try:
        Path(shadow, "prometheus_client.py").write_text(
            "raise ImportError(\"No module named 'prometheus_client'\")\n"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([shadow, *sys.path])}
        done = _serve_once(config_text(metrics={"listen": "127.0.0.1:0"}), env)
    finally:
        shutil.rmtree(shadow, ignore_errors=True)
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines()[-1] == (
        "ioserver: cannot start: [metrics] listen is set but prometheus_client is not installed: "
        "pip install 'ioserver[metrics]', or set [metrics] listen = \"\""
    ), done.stderr
    assert "Traceback" not in done.stderr


def test_a_metrics_port_in_use_is_a_clear_error_at_start() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = _serve_once(config_text(metrics={"listen": f"127.0.0.1:{port}"}), dict(os.environ))
    assert done.returncode == 1, done
    assert f"ioserver: cannot start: cannot serve metrics on 127.0.0.1:{port}: " in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stuck_or_garbage_http_client_blocks_neither_clients_nor_scrapes(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(metrics={"listen": "127.0.0.1:0"})
    url = d.metrics_url()
    host, port = url.removeprefix("http://").removesuffix("/metrics").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=T) as stuck:
        stuck.sendall(b"GET /metr")  # a request that never ends, held open
        with socket.create_connection((host, int(port)), timeout=T) as garbage:
            garbage.sendall(b"\x00\xff not http at all\r\n\r\n")
            garbage.recv(1024)  # whatever it answers (an error, or nothing)
        with RawClient(d.socket_path) as client:  # clients are served meanwhile
            assert client.call("ping") == "pong"
        samples = scrape(url)  # and so is another scrape
        assert value(samples, "ioserver_requests_total", method="ping") >= 1
    assert d.ping()
