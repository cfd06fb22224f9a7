"""``ioserver serve | ping | stats | top``: the command line.

Logs and progress go to stderr, results to stdout. Exit codes: 0 success,
1 the daemon answered with an error or is unreachable, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from typing import Any

from . import __version__, protocol

__all__ = ["main"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class RpcClient:
    """A minimal blocking msgpack-rpc client over one socket (for the CLI)."""

    def __init__(self, address: str, token: str | None = None, timeout: float = 5.0) -> None:
        self.sock = _connect(address, timeout)
        self.conn = protocol.Connection()
        self.msgid = 0
        if token is not None or address.startswith("tcp://"):
            self.call("hello", protocol.PROTOCOL_VERSION, token)

    def call(self, method: str, *params: Any) -> Any:
        self.msgid += 1
        self.sock.sendall(self.conn.request(self.msgid, method, list(params)))
        while True:
            event = self.conn.next_event()
            if event is protocol.NEED_DATA:
                data = self.sock.recv(65536)
                self.conn.receive_data(data)
                if not data:
                    raise ConnectionError("the daemon closed the connection")
                continue
            if event is protocol.CLOSED:
                raise ConnectionError("the daemon closed the connection")
            if isinstance(event, protocol.Response) and event.msgid == self.msgid:
                if event.error is not None:
                    raise protocol.wire_to_exception(event.error)
                return event.result

    def close(self) -> None:
        self.sock.close()


def _connect(address: str, timeout: float) -> socket.socket:
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        return socket.create_connection((host, int(port)), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def _address(args: argparse.Namespace) -> str:
    if args.address:
        return str(args.address)
    from .config import load

    return load(args.config).server.socket_path()


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, load
    from .daemon.serve import Daemon, StartError

    try:
        config = load(args.config)
        overrides: dict[str, Any] = {}
        if args.socket:
            overrides["socket"] = args.socket
        if args.tcp is not None:
            overrides["tcp"] = args.tcp
        if overrides:
            config = config.with_server(**overrides)
    except ConfigError as exc:
        print(f"ioserver: bad configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        stream=sys.stderr,
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        return Daemon(config).run()
    except StartError as exc:
        print(f"ioserver: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAIL


def cmd_ping(args: argparse.Namespace) -> int:
    address = _address(args)
    try:
        client = RpcClient(address, args.token)
        start = time.perf_counter()
        answer = client.call("ping")
        elapsed = time.perf_counter() - start
        client.close()
    except (OSError, ConnectionError) as exc:
        print(f"ioserver: no answer from {address}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"{answer} from {address} in {elapsed * 1e6:.0f} µs")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    address = _address(args)
    try:
        client = RpcClient(address, args.token)
        stats = client.call("stats")
        client.close()
    except (OSError, ConnectionError) as exc:
        print(f"ioserver: no answer from {address}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True, default=str))
    else:
        print(format_stats(stats))
    return EXIT_OK


def format_stats(stats: dict[str, Any]) -> str:
    """A human table of the ``stats`` answer."""
    lines = []
    for key in sorted(k for k in stats if k != "session_list"):
        lines.append(f"{key:<18} {stats[key]}")
    sessions = stats.get("session_list") or []
    if sessions:
        lines.append("")
        lines.append(
            f"{'session':>8} {'kind':<5} {'ports':>6} {'requests':>9} {'events':>9} "
            f"{'bytes in':>10} {'bytes out':>10}"
        )
        for s in sessions:
            lines.append(
                f"{s['id']:>8} {s['kind']:<5} {s['ports']:>6} {s['requests']:>9} "
                f"{s['events']:>9} {s['bytes_in']:>10} {s['bytes_out']:>10}"
            )
    return "\n".join(lines)


def cmd_top(args: argparse.Namespace) -> int:
    """A live view refreshed every ``--interval`` seconds (Ctrl-C to quit)."""
    address = _address(args)
    try:
        client = RpcClient(address, args.token)
    except OSError as exc:
        print(f"ioserver: no answer from {address}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    previous: dict[str, Any] | None = None
    previous_time = 0.0
    shown = 0
    tty = sys.stdout.isatty()
    try:
        while args.count is None or shown < args.count:
            now = time.monotonic()
            stats = client.call("stats")
            screen = format_top(stats, previous, now - previous_time)
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(screen, flush=True)
            previous, previous_time = stats, now
            shown += 1
            if args.count is None or shown < args.count:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    except (OSError, ConnectionError) as exc:
        print(f"ioserver: lost the daemon: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        client.close()
    return EXIT_OK


def format_top(stats: dict[str, Any], previous: dict[str, Any] | None, dt: float) -> str:
    """One screen of ``ioserver top``: totals, rates since the last screen, sessions."""

    def rate(key: str) -> str:
        if previous is None or dt <= 0:
            return "-"
        return f"{(stats.get(key, 0) - previous.get(key, 0)) / dt:,.0f}/s"

    sessions = stats.get("session_list") or []
    bytes_now = sum(s["bytes_in"] + s["bytes_out"] for s in sessions)
    bytes_before = sum(
        s["bytes_in"] + s["bytes_out"] for s in (previous or {}).get("session_list") or []
    )
    requests = stats.get("requests", 0)
    per_request = stats.get("pipe_writes", 0) / requests if requests else 0.0
    lines = [
        f"ioserver pid {stats.get('pid')}  loop {stats.get('loop')}  "
        f"core {stats.get('core')}  state {stats.get('state')}",
        f"sessions {stats.get('sessions')}  ports {stats.get('open_ports')}  "
        f"requests {rate('requests')}  batches {rate('batches')}  "
        f"pipe writes/request {per_request:.4f}",
        f"bytes/s {((bytes_now - bytes_before) / dt) if previous and dt > 0 else 0:,.0f}  "
        f"longest batch {stats.get('longest_batch_ms')} ms  pending {stats.get('pending')}",
        "",
        format_stats({"session_list": sessions}).strip() or "(no sessions)",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ioserver", description="An Erlang-style I/O server for Python."
    )
    parser.add_argument("--version", action="version", version=f"ioserver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the standalone daemon")
    serve.add_argument(
        "--config",
        help="config file (default: config/ioserver.toml "
        "next to the project, else built-in defaults)",
    )
    serve.add_argument("--socket", help="Unix socket path (overrides the config)")
    serve.add_argument("--tcp", help="also listen on HOST:PORT (needs a token in the config)")
    serve.set_defaults(func=cmd_serve)

    for name, func, help_text in (
        ("ping", cmd_ping, "check that a daemon answers"),
        ("stats", cmd_stats, "print a daemon's counters"),
        ("top", cmd_top, "live view of a daemon, refreshed every second"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "address",
            nargs="?",
            help="socket path or tcp://host:port (default: the configured socket)",
        )
        p.add_argument("--config", help="config file to find the default socket in")
        p.add_argument(
            "--token",
            default=os.environ.get("IOSERVER_TOKEN"),
            help="auth token for TCP (default: $IOSERVER_TOKEN)",
        )
        if name == "stats":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "top":
            p.add_argument("--interval", type=float, default=1.0, help="seconds between screens")
            p.add_argument("--count", type=int, help="stop after this many screens")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except protocol.RpcError as exc:  # the daemon answered with an error (a wrong token...)
        print(f"ioserver: error from the daemon: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:
        # The reader went away (``ioserver stats | head -1``): stop quietly, as Unix
        # tools do; stdout now points at devnull so the final flush can't raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
