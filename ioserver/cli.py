"""``ioserver serve | ping | stats | top | reload``: the command line.

Logs and progress go to stderr, results to stdout. Exit codes: 0 success,
1 the daemon is unreachable or answered with an error, 2 bad usage or
configuration, 130 interrupted (Ctrl-C). A failure is one line on stderr,
never a traceback; a closed stdout (``ioserver top | head -1``) ends the
command quietly.

Addresses: a Unix socket path (``unix:PATH`` also works) or
``tcp://HOST:PORT`` (``tcp://[::1]:PORT`` for IPv6); without one, the
configured socket (``--config``, else the default path).

Tokens are never given on the command line, where every local user can read
them (``ps``): clients take ``--token-file PATH`` (a file of mode 0600, like
the daemon's ``token_file``) or ``$IOSERVER_TOKEN``; ``serve`` takes
``--token-file`` or its config.

``stats`` and ``top`` talk to the daemon through a session of their own, which
the daemon names in its ``stats`` answer (``session_id``). Both leave that
session out of what they show (``sessions``, ``session_list`` and the rates
computed from it), so a daemon nobody uses shows 0 sessions; ``sessions_total``
still counts every session since the start, theirs included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

from . import __version__, protocol
from .config import LOG_LEVELS, ConfigError, _parse_tcp, read_token_file

__all__ = ["RpcClient", "UsageError", "format_stats", "format_top", "main", "parse_address"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

TOKEN_HINT = "use --token-file or IOSERVER_TOKEN"


class UsageError(Exception):
    """The command line is wrong (a bad address, an unreadable token file): exit 2."""


class _StdoutClosed(Exception):
    """Whoever read our stdout went away (``| head -1``): stop quietly."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``ioserver top: argument --interval: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


# -- talking to a daemon -----------------------------------------------------------------


def parse_address(text: str) -> tuple[str, Any]:
    """``("unix", path)`` or ``("tcp", (host, port))``; UsageError for anything else."""
    if text.startswith("tcp://"):
        try:
            return "tcp", _parse_tcp(text[len("tcp://") :])
        except ValueError:
            raise UsageError(
                f"bad address {text!r}: expected tcp://HOST:PORT "
                "(tcp://[::1]:PORT for IPv6) or a socket path"
            ) from None
    if text.startswith("unix:"):
        text = text[len("unix:") :]
    if "://" in text or not text:
        raise UsageError(f"bad address {text!r}: expected a socket path or tcp://HOST:PORT")
    return "unix", text


class RpcClient:
    """A minimal blocking msgpack-rpc client over one socket (for the CLI).

    ``address`` as :func:`parse_address` takes it (UsageError if malformed);
    OSError if nobody answers there. Over TCP it sends ``hello`` first (with
    ``token``, or none); a refusal without a token is reported as
    "token required (use --token-file or IOSERVER_TOKEN)".
    """

    def __init__(self, address: str, token: str | None = None, timeout: float = 5.0) -> None:
        kind, where = parse_address(address)
        self.sock = _connect(kind, where, timeout)
        self.conn = protocol.Connection()
        self.msgid = 0
        if token is not None or kind == "tcp":
            try:
                self.call("hello", protocol.PROTOCOL_VERSION, token)
            except protocol.RpcError as exc:
                self.close()
                if exc.code == protocol.NOT_ALLOWED and token is None:
                    raise protocol.RpcError(exc.code, f"token required ({TOKEN_HINT})") from None
                raise
            except BaseException:
                self.close()
                raise

    def call(self, method: str, *params: Any) -> Any:
        """Send one request and wait for its answer; the error answer raised."""
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


def _connect(kind: str, where: Any, timeout: float) -> socket.socket:
    if kind == "tcp":
        return socket.create_connection(where, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(where)
    except BaseException:
        sock.close()
        raise
    return sock


def _address(args: argparse.Namespace) -> str:
    """The address to talk to: the argument, else the configured socket."""
    if args.address:
        parse_address(args.address)  # a bad one is a usage error before anything else
        return str(args.address)
    from .config import load

    return load(args.config).server.socket_path()


def _token(args: argparse.Namespace) -> str | None:
    """``--token-file``'s token, else ``$IOSERVER_TOKEN``, else None."""
    if args.token_file:
        try:
            return read_token_file(args.token_file, key="--token-file")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    return os.environ.get("IOSERVER_TOKEN") or None


def _open(args: argparse.Namespace) -> tuple[str, RpcClient | None]:
    """Connect as the command line says: (address, client), or (address, None) after
    printing why nobody answers."""
    address = _address(args)
    token = _token(args)
    try:
        return address, RpcClient(address, token)
    except OSError as exc:
        _no_answer(address, exc)
        return address, None


def _no_answer(address: str, exc: BaseException) -> None:
    print(f"ioserver: no answer from {address}: {exc}", file=sys.stderr)


def _out(text: str) -> None:
    """Write to stdout now; a reader that went away ends the command (quietly)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise _StdoutClosed from None


def own_view(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The ``stats`` answer without the session that asked for it (this command's).

    The daemon names the asking session in ``session_id``; it is removed from
    ``session_list`` and from the ``sessions`` count, and ``session_id`` dropped.
    """
    view = dict(stats)
    mine = view.pop("session_id", None)
    sessions = list(view.get("session_list") or [])
    kept = [s for s in sessions if s.get("id") != mine]
    if mine is not None and len(kept) < len(sessions):
        view["session_list"] = kept
        if isinstance(view.get("sessions"), int):
            view["sessions"] -= len(sessions) - len(kept)
    return view


# -- commands ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the daemon until SIGINT/SIGTERM (SIGHUP reloads the config)."""
    from .daemon import logs
    from .daemon.reload import ConfigSource
    from .daemon.serve import Daemon, StartError

    overrides = {
        "socket": args.socket or None,
        "tcp": args.tcp,
        "token_file": args.token_file,
        "log_level": "debug" if args.verbose else args.log_level,
    }
    source = ConfigSource(args.config, {k: v for k, v in overrides.items() if v is not None})
    config = source.read()  # a reload reads the same way (the overrides still win)
    logs.configure(config.server.log_level, config.server.log_format)
    try:
        return Daemon(config, source).run()
    except StartError as exc:
        print(f"ioserver: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAIL


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the daemon to re-read its configuration (as SIGHUP does); print what changed."""
    address, client = _open(args)
    if client is None:
        return EXIT_FAIL
    try:
        answer = client.call("reload")
    except OSError as exc:
        _no_answer(address, exc)
        return EXIT_FAIL
    except protocol.RpcError as exc:
        print(f"ioserver: reload refused by {address}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        client.close()
    changed = ", ".join(answer.get("changed") or []) or "nothing changed"
    _out(f"reloaded {address}: {changed}\n")
    for key in answer.get("restart_needed") or []:
        _out(f"{key} changed in the file: it takes effect at the next restart\n")
    return EXIT_OK


def cmd_ping(args: argparse.Namespace) -> int:
    """Ping the daemon and print the round trip."""
    address, client = _open(args)
    if client is None:
        return EXIT_FAIL
    try:
        start = time.perf_counter()
        answer = client.call("ping")
        elapsed = time.perf_counter() - start
    except OSError as exc:
        _no_answer(address, exc)
        return EXIT_FAIL
    finally:
        client.close()
    _out(f"{answer} from {address} in {elapsed * 1e6:.0f} µs\n")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the daemon's counters: a formatted view, or JSON with ``--json``."""
    address, client = _open(args)
    if client is None:
        return EXIT_FAIL
    try:
        stats = own_view(client.call("stats"))
    except OSError as exc:
        _no_answer(address, exc)
        return EXIT_FAIL
    finally:
        client.close()
    if args.json:
        _out(json.dumps(stats, indent=2, sort_keys=True, default=str) + "\n")
    else:
        _out(format_stats(stats) + "\n")
    return EXIT_OK


#: What each counter of the ``stats`` answer means, as ``ioserver stats`` prints it.
COUNTERS: dict[str, str] = {
    "requests": "requests the I/O thread ran (opens, writes, closes, timers)",
    "batches": "times the I/O thread woke up and drained its request queue",
    "pipe_writes": "wakeups paid for: bytes written to the I/O thread's self-pipe",
    "empty_wakeups": "wakeups that found no request waiting",
    "skipped_wakeups": "timer requests that needed no wakeup",
    "max_batch": "the most requests run in one drain",
    "longest_batch_ms": "the longest drain in milliseconds (high: the loop stalled)",
    "pending": "requests waiting for the I/O thread right now",
    "stalls": "functions that held the I/O thread longer than slow_callback_ms",
    "longest_stall_ms": "the longest of those stalls in milliseconds",
    "file_size": "file worker threads running",
    "file_busy": "file workers on a job right now",
    "file_queued": "file jobs waiting for a worker",
    "file_grown": "file workers added because every worker was stuck",
}
#: Keys shown in the header lines rather than as counters.
_HEADER_KEYS = {
    "state",
    "loop",
    "core",
    "pid",
    "ports",
    "open_ports",
    "ports_opened",
    "sessions",
    "unauthenticated",
    "sessions_total",
    "session_list",
}


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.3f}".rstrip("0").rstrip(".")


def _ports_line(stats: Mapping[str, Any]) -> str:
    kinds = stats.get("ports") or {}
    by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) or "none"
    opened = stats.get("ports_opened")
    since = f"; {_num(opened)} opened since the start" if opened is not None else ""
    return f"ports     {_num(stats.get('open_ports', 0))} open ({by_kind}){since}"


def format_sessions(sessions: list[dict[str, Any]]) -> str:
    """The sessions table (or a line saying there are none)."""
    if not sessions:
        return "(no client sessions)"
    columns = (
        ("session", "id"),
        ("kind", "kind"),
        ("ports", "ports"),
        ("timers", "timers"),
        ("requests", "requests"),
        ("events", "events"),
        ("bytes in", "bytes_in"),
        ("bytes out", "bytes_out"),
    )
    rows = [[title for title, _ in columns]]
    rows += [[_num(s.get(key, "")) for _, key in columns] for s in sessions]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(w) if title == "kind" else cell.rjust(w)
            for cell, w, (title, _) in zip(row, widths, columns, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_stats(stats: Mapping[str, Any]) -> str:
    """``ioserver stats``: the daemon, its sessions and ports, each counter explained,
    then one row per session. ``stats`` as :func:`own_view` gives it."""
    lines = [
        f"ioserver daemon pid {stats.get('pid')}: {stats.get('state')}, "
        f"loop {stats.get('loop')}, core {stats.get('core')}",
        "",
        f"sessions  {_num(stats.get('sessions', 0))} connected (this command's own not "
        f"counted), {_num(stats.get('unauthenticated', 0))} waiting for hello, "
        f"{_num(stats.get('sessions_total', 0))} since the start",
        _ports_line(stats),
        "",
        "I/O thread counters since the start:",
    ]
    counters = [k for k in COUNTERS if k in stats]
    counters += sorted(k for k in stats if k not in COUNTERS and k not in _HEADER_KEYS)
    width = max((len(k) for k in counters), default=0)
    values = {k: _num(stats[k]) for k in counters}
    vwidth = max((len(v) for v in values.values()), default=0)
    for key in counters:
        meaning = COUNTERS.get(key, "")
        lines.append(f"  {key:<{width}}  {values[key]:>{vwidth}}  {meaning}".rstrip())
    lines += ["", format_sessions(list(stats.get("session_list") or []))]
    return "\n".join(lines)


def _session_rates(
    stats: Mapping[str, Any], previous: Mapping[str, Any] | None, dt: float
) -> dict[str, float] | None:
    """Per-second client ``requests``, ``events`` and ``bytes`` since ``previous``:
    each session's growth (a session new since then counts in full, one gone since
    then not at all), summed."""
    if previous is None or dt <= 0:
        return None
    before = {s.get("id"): s for s in previous.get("session_list") or []}
    totals = {"requests": 0.0, "events": 0.0, "bytes": 0.0}
    for s in stats.get("session_list") or []:
        old = before.get(s.get("id"), {})
        for key in ("requests", "events"):
            totals[key] += max(0, s.get(key, 0) - old.get(key, 0))
        now_bytes = s.get("bytes_in", 0) + s.get("bytes_out", 0)
        old_bytes = old.get("bytes_in", 0) + old.get("bytes_out", 0)
        totals["bytes"] += max(0, now_bytes - old_bytes)
    return {key: value / dt for key, value in totals.items()}


def format_top(
    stats: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    dt: float,
    hint: str = "",
) -> str:
    """One screen of ``ioserver top``: what clients do (requests/s: their RPCs), the
    I/O thread's own counters on a line of their own, then the sessions. ``stats``
    and ``previous`` as :func:`own_view` gives them; ``dt`` the seconds between."""
    rates = _session_rates(stats, previous, dt)

    def rate(key: str) -> str:
        return "-" if rates is None else f"{rates[key]:,.0f}/s"

    def loop_rate(key: str) -> str:
        if previous is None or dt <= 0:
            return "-"
        return f"{(stats.get(key, 0) - previous.get(key, 0)) / dt:,.0f}/s"

    loop_requests = stats.get("requests", 0)
    per_request = stats.get("pipe_writes", 0) / loop_requests if loop_requests else 0.0
    lines = [
        f"ioserver pid {stats.get('pid')}  {stats.get('state')}  loop {stats.get('loop')}  "
        f"core {stats.get('core')}{hint}",
        f"sessions {_num(stats.get('sessions', 0))}  ports {_num(stats.get('open_ports', 0))}  "
        f"client requests {rate('requests')}  events {rate('events')}  "
        f"bytes {rate('bytes')}",
        f"I/O thread: requests {loop_rate('requests')}  batches {loop_rate('batches')}  "
        f"pipe writes/request {per_request:.4f}  longest batch "
        f"{stats.get('longest_batch_ms')} ms  pending {stats.get('pending')}  "
        f"stalls {stats.get('stalls', 0)} (longest {stats.get('longest_stall_ms', 0)} ms)",
        "",
        format_sessions(list(stats.get("session_list") or [])),
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _keys() -> Iterator[int | None]:
    """stdin's fd in cbreak mode (keys arrive unbuffered, unechoed) while it is a
    terminal, restored afterwards; None when it is not a terminal."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        yield None
        return
    if not os.isatty(fd):
        yield None
        return
    import termios
    import tty

    try:
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    except termios.error:
        yield None
        return
    try:
        yield fd
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_or_quit(seconds: float, keys: int | None) -> bool:
    """Wait ``seconds``; True if ``q`` was typed meanwhile (only when stdin is a terminal)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if keys is None:
            time.sleep(left)
            break
        ready, _, _ = select.select([keys], [], [], left)
        if ready:
            typed = os.read(keys, 64)
            if not typed:  # the terminal hung up
                keys = None
            elif b"q" in typed.lower():
                return True
    return False


def cmd_top(args: argparse.Namespace) -> int:
    """A live view refreshed every ``--interval`` seconds (q or Ctrl-C to quit)."""
    address, client = _open(args)
    if client is None:
        return EXIT_FAIL
    previous: dict[str, Any] | None = None
    previous_time = 0.0
    shown = 0
    tty_out = sys.stdout.isatty()
    try:
        with _keys() as keys:
            hint = "  (q quits)" if keys is not None else ""
            while args.count is None or shown < args.count:
                now = time.monotonic()
                try:
                    stats = own_view(client.call("stats"))
                except OSError as exc:
                    print(f"ioserver: lost the daemon at {address}: {exc}", file=sys.stderr)
                    return EXIT_FAIL
                screen = format_top(stats, previous, now - previous_time, hint)
                _out(("\x1b[H\x1b[2J" if tty_out else "") + screen + "\n")
                previous, previous_time = stats, now
                shown += 1
                if args.count is not None and shown >= args.count:
                    break
                if _wait_or_quit(args.interval, keys):
                    break
    except KeyboardInterrupt:
        pass  # Ctrl-C is how top ends: not an error
    finally:
        client.close()
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


class _RefuseToken(argparse.Action):
    """``--token VALUE``: refused, since every local user can read a command line."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error(
            f"--token: a token on the command line is visible to every local user; {TOKEN_HINT}"
        )


def build_parser() -> ArgumentParser:
    """The ``ioserver`` argument parser (one subcommand per ``cmd_*``)."""
    parser = ArgumentParser(
        prog="ioserver",
        description="An Erlang-style I/O server for Python. Exit codes: 0 ok, "
        "1 the daemon does not answer or answers with an error, 2 bad usage or config.",
    )
    parser.add_argument("--version", action="version", version=f"ioserver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the standalone daemon",
        description="Run the daemon until SIGINT or SIGTERM; prints where it listens.",
    )
    serve.add_argument(
        "--config", help="config file (default: the built-in defaults; see config/ioserver.toml)"
    )
    serve.add_argument("--socket", help="Unix socket path (overrides the config)")
    serve.add_argument(
        "--tcp", help="also listen on HOST:PORT (needs a token: --token-file or the config)"
    )
    serve.add_argument(
        "--token-file", help="file (mode 0600) holding the clients' token (overrides the config)"
    )
    serve.add_argument("--token", action=_RefuseToken, help=argparse.SUPPRESS)
    level = serve.add_mutually_exclusive_group()
    level.add_argument(
        "--log-level", choices=LOG_LEVELS, help="logging threshold (overrides the config)"
    )
    level.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log at debug level (sessions opening and closing, ...)",
    )
    serve.set_defaults(func=cmd_serve)

    for name, func, help_text in (
        ("ping", cmd_ping, "check that a daemon answers"),
        ("stats", cmd_stats, "print a daemon's counters and sessions"),
        ("top", cmd_top, "live view of a daemon (q or Ctrl-C quits)"),
        ("reload", cmd_reload, "make a daemon re-read its config file (as SIGHUP does)"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:])
        p.add_argument(
            "address",
            nargs="?",
            help="socket path or tcp://HOST:PORT (default: the configured socket)",
        )
        p.add_argument("--config", help="config file to find the default socket in")
        p.add_argument(
            "--token-file",
            help="file (mode 0600) holding the token for TCP (default: $IOSERVER_TOKEN)",
        )
        p.add_argument("--token", action=_RefuseToken, help=argparse.SUPPRESS)
        if name == "stats":
            p.add_argument(
                "--json",
                action="store_true",
                help="machine-readable output: the daemon's stats answer, this "
                "command's own session left out of sessions and session_list",
            )
        if name == "top":
            p.add_argument(
                "--interval",
                type=_positive_float,
                default=1.0,
                help="seconds between screens (default 1)",
            )
            p.add_argument("--count", type=_positive_int, help="stop after this many screens")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, ConfigError) as exc:
        kind = "bad configuration: " if isinstance(exc, ConfigError) else ""
        print(f"ioserver: {kind}{exc}", file=sys.stderr)
        return EXIT_USAGE
    except protocol.RpcError as exc:  # the daemon answered with an error (a wrong token...)
        print(f"ioserver: error from the daemon: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except (_StdoutClosed, BrokenPipeError):
        # The reader went away (``ioserver top | head -1``): stop quietly, as Unix
        # tools do; stdout now points at devnull so the final flush can't raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
