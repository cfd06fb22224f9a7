"""TLS on the daemon's TCP listener, against the real daemon process, real handshakes and
third-party TLS clients (``openssl s_client``, Node's ``tls``).

Certificates come from ``trustme``: a throwaway CA per module (and a second,
untrusted one), a server certificate for 127.0.0.1, expired and misnamed ones,
client certificates. Every failure mode checks two things: the client gets an
error that says what to do, and the daemon keeps serving the next client.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trustme
from cryptography.hazmat.primitives import serialization  # trustme's own dependency
from daemon_support import (
    TOKEN,
    DaemonProcess,
    EchoServer,
    RawClient,
    T,
    free_port,
    rpc_ping,
    run_serve,
    serve_argv,
    short_tmpdir,
    stop_and_check,
    wait_for,
)

import ioserver_client
from ioserver import protocol
from ioserver.cli import RpcClient

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


# -- certificates and daemons ----------------------------------------------------------------


@dataclass
class Certs:
    """PEM files in one directory: the CA, the daemon's certificate and key, and more."""

    dir: Path
    ca: trustme.CA

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def write_leaf(self, name: str, leaf: trustme.LeafCert) -> tuple[str, str]:
        """``name.pem`` and ``name.key`` (0600) for ``leaf``; their paths."""
        cert, key = self.path(name + ".pem"), self.path(name + ".key")
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        os.chmod(key, 0o600)
        return cert, key

    def context(self, cert: str | None = None) -> ssl.SSLContext:
        """A client context trusting this CA, with client certificate ``cert`` if named."""
        ctx = ssl.create_default_context(cafile=self.path("ca.pem"))
        if cert:
            ctx.load_cert_chain(self.path(cert + ".pem"), self.path(cert + ".key"))
        return ctx


def make_certs(directory: Path) -> Certs:
    ca = trustme.CA()
    certs = Certs(directory, ca)
    ca.cert_pem.write_to_path(certs.path("ca.pem"))
    certs.write_leaf("server", ca.issue_cert(HOST, "localhost"))
    certs.write_leaf("client", ca.issue_cert("client@example.org"))
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    expired = ca.issue_cert(HOST, not_before=past, not_after=past + datetime.timedelta(days=1))
    certs.write_leaf("expired", expired)
    certs.write_leaf(
        "expired-client",
        ca.issue_cert(
            "client@example.org", not_before=past, not_after=past + datetime.timedelta(days=1)
        ),
    )
    certs.write_leaf("misnamed", ca.issue_cert("daemon.example.org"))
    other = trustme.CA()
    other.cert_pem.write_to_path(certs.path("other-ca.pem"))
    certs.write_leaf("stranger", other.issue_cert(HOST))
    certs.write_leaf("stranger-client", other.issue_cert("client@example.org"))
    return certs


@dataclass
class TlsDaemon:
    """A running daemon whose TCP listener speaks TLS, and its certificates."""

    process: DaemonProcess
    certs: Certs
    port: int

    @property
    def address(self) -> str:
        return f"tls://{HOST}:{self.port}"

    def ping(self, ctx: ssl.SSLContext | None = None) -> bool:
        """A TLS client completes hello and ping (the daemon still serves TLS)."""
        try:
            with ioserver_client.connect(
                self.address, token=TOKEN, ssl=ctx or self.certs.context("client")
            ) as remote:
                return remote.ping() == "pong"
        except OSError:
            return False


def start_tls_daemon(
    cert: str = "server",
    client_ca: bool = False,
    limits: dict[str, Any] | None = None,
    certs: Certs | None = None,
    loop: str = "auto",
) -> TlsDaemon:
    """A daemon with a token, TCP on a free port, TLS with ``cert``; started."""
    d = DaemonProcess(token=True, limits=limits)
    certs = certs or make_certs(Path(d.dir))
    port = free_port()
    keys = {
        "tcp": f"{HOST}:{port}",
        "tls_cert": certs.path(cert + ".pem"),
        "tls_key": certs.path(cert + ".key"),
        "loop": loop,
    }
    if client_ca:
        keys["tls_client_ca"] = certs.path("ca.pem")
    d.write_config(server=keys)
    d.start()  # waits for the Unix socket; TLS is checked by each test
    daemon = TlsDaemon(d, certs, port)
    if cert == "server":
        wait_for(daemon.ping, what="a TLS ping")
    return daemon


@pytest.fixture(scope="module")
def tls_daemon() -> Iterator[TlsDaemon]:
    """One TLS daemon for the tests that leave it as they found it."""
    daemon = start_tls_daemon()
    yield daemon
    stop_and_check(daemon.process)


@pytest.fixture(scope="module")
def mtls_daemon() -> Iterator[TlsDaemon]:
    """A TLS daemon that requires client certificates signed by its CA."""
    daemon = start_tls_daemon(client_ca=True)
    yield daemon
    stop_and_check(daemon.process)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m ioserver ARGS`` as a user runs it, the token in $IOSERVER_TOKEN."""
    return subprocess.run(
        [sys.executable, "-m", "ioserver", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "IOSERVER_TOKEN": TOKEN},
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The CLI failed with exit 1 and one line on stderr, no traceback; that line."""
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# -- it works -------------------------------------------------------------------------------


def test_a_client_with_the_ca_uses_the_daemon_over_tls(
    tls_daemon: TlsDaemon, echo_server: EchoServer
) -> None:
    """Through TLS: hello with the token, a port opened by the daemon, bytes both ways."""
    with ioserver_client.connect(
        tls_daemon.address, token=TOKEN, ssl=tls_daemon.certs.context()
    ) as remote:
        assert remote.ping() == "pong"
        conn = remote.connect_tcp(*echo_server.address)
        conn.send(b"over tls\n")
        got = b""
        while len(got) < 9:
            got += conn.recv(timeout=T).data
        assert got == b"over tls\n"
        conn.close()


def test_the_cli_speaks_tls_with_cafile(tls_daemon: TlsDaemon) -> None:
    done = cli("ping", tls_daemon.address, "--cafile", tls_daemon.certs.path("ca.pem"))
    assert done.returncode == 0, done
    assert done.stdout.startswith(f"pong from {tls_daemon.address}")
    stats = cli("stats", "--json", tls_daemon.address, "--cafile", tls_daemon.certs.path("ca.pem"))
    assert stats.returncode == 0, stats
    assert '"pid"' in stats.stdout


def test_the_daemon_says_where_it_listens_with_tls(tls_daemon: TlsDaemon) -> None:
    assert f"listening on {tls_daemon.process.socket_path} and {tls_daemon.address}" in (
        tls_daemon.process.stderr()
    )


def test_the_token_is_still_required_over_tls(tls_daemon: TlsDaemon) -> None:
    with pytest.raises(protocol.RpcError, match="wrong token"):
        ioserver_client.connect(tls_daemon.address, token="x" * 20, ssl=tls_daemon.certs.context())
    with pytest.raises(protocol.RpcError, match="token required"):
        RpcClient(tls_daemon.address, None, ssl_context=tls_daemon.certs.context())
    assert tls_daemon.ping()


# -- clear errors, the daemon unaffected ---------------------------------------------------------


def test_a_plain_tcp_client_is_told_to_use_tls(tls_daemon: TlsDaemon) -> None:
    """The daemon sees a msgpack request where a ClientHello should be and answers it
    in clear text: the client raises TLSError naming the tls:// address; the CLI says
    so in one line."""
    plain = f"tcp://{HOST}:{tls_daemon.port}"
    with pytest.raises(ioserver_client.TLSError, match=f"connect with {tls_daemon.address}"):
        ioserver_client.connect(plain, token=TOKEN)
    line = one_line_error(cli("ping", plain))
    assert f"connect with {tls_daemon.address}" in line
    with RawClient((HOST, tls_daemon.port)) as raw:  # what a client in any language sees
        msgid = raw.request("hello", 1, TOKEN)
        error, _ = raw.response(msgid)
        assert error[0] == protocol.NOT_ALLOWED and error[2] == {"tls": "required"}, error
    assert tls_daemon.ping()
    assert "plain TCP on the TLS port" in tls_daemon.process.stderr()


@pytest.mark.parametrize(
    ("ca", "expected", "cli_hint"),
    [
        (None, "not signed by a CA this client trusts", "--cafile"),
        ("other-ca.pem", "not signed by a CA this client trusts", "--cafile"),
    ],
    ids=["system-cas", "another-ca"],
)
def test_an_untrusted_daemon_certificate_is_a_clear_error(
    tls_daemon: TlsDaemon, ca: str | None, expected: str, cli_hint: str
) -> None:
    ctx = ssl.create_default_context(cafile=tls_daemon.certs.path(ca) if ca else None)
    with pytest.raises(ioserver_client.TLSError, match=expected) as caught:
        ioserver_client.connect(tls_daemon.address, token=TOKEN, ssl=ctx)
    assert isinstance(caught.value, ConnectionError)
    args = ["ping", tls_daemon.address] + (["--cafile", tls_daemon.certs.path(ca)] if ca else [])
    line = one_line_error(cli(*args))
    assert expected in line and cli_hint in line, line
    assert tls_daemon.ping()


@pytest.mark.parametrize(
    ("cert", "expected"),
    [
        ("expired", "has expired: renew server.tls_cert"),
        ("misnamed", "not for this IP address"),
        ("stranger", "not signed by a CA this client trusts"),
    ],
)
def test_a_wrong_daemon_certificate_is_a_clear_error(
    tls_daemon: TlsDaemon, cert: str, expected: str
) -> None:
    """Daemons with an expired certificate, one for another name, one from another CA:
    the client (trusting the first CA) says which."""
    other = start_tls_daemon(cert=cert, certs=tls_daemon.certs)
    try:
        with pytest.raises(ioserver_client.TLSError, match=expected):
            ioserver_client.connect(other.address, token=TOKEN, ssl=other.certs.context())
        line = one_line_error(cli("ping", other.address, "--cafile", other.certs.path("ca.pem")))
        assert expected in line, line
        assert other.process.ping()  # its Unix socket still serves
    finally:
        stop_and_check(other.process)


@pytest.mark.parametrize("loop", ["auto", "asyncio"])  # uvloop's TLS, then asyncio's
def test_a_handshake_that_never_finishes_is_closed_within_hello_timeout(loop: str) -> None:
    """Silence after connecting, half a ClientHello, or TLS begun late and no hello:
    each closed once hello_timeout has passed since the accept (the handshake and
    hello share it, so a late handshake does not buy time); TLS clients meanwhile
    are served."""
    daemon = start_tls_daemon(limits={"hello_timeout": 2.0}, loop=loop)
    try:
        started = time.monotonic()
        silent = socket.create_connection((HOST, daemon.port))
        partial = socket.create_connection((HOST, daemon.port))
        partial.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's first bytes
        late = RawClient((HOST, daemon.port))
        assert daemon.ping()
        time.sleep(max(0.0, started + 1.0 - time.monotonic()))
        late.sock = daemon.certs.context().wrap_socket(late.sock, server_hostname=HOST)
        with late:
            messages = late.read_until_closed()
        assert any("no hello within 2 s" in str(m) for m in messages), messages
        assert time.monotonic() - started < 2.9  # the deadline did not restart at the handshake
        for sock in (silent, partial):
            sock.settimeout(T)
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
            sock.close()
        assert 1.9 <= time.monotonic() - started < T
        assert "no TLS handshake within hello_timeout=2 s" in daemon.process.stderr()
        assert daemon.ping()
    finally:
        stop_and_check(daemon.process)


def test_a_client_waiting_for_a_handshake_that_never_comes_times_out(tmp_path: Path) -> None:
    """A server that accepts and never speaks TLS: TLSError after ``timeout``."""
    mute = EchoServer(echo=False)
    try:
        certs = make_certs(tmp_path)
        started = time.monotonic()
        with pytest.raises(ioserver_client.TLSError, match=r"no TLS handshake within 0\.5 s"):
            ioserver_client.connect(
                f"tls://{HOST}:{mute.address[1]}", token=TOKEN, ssl=certs.context(), timeout=0.5
            )
        assert time.monotonic() - started < T
    finally:
        mute.close()


def test_a_tls_client_at_a_plain_listener_is_a_clear_error(
    daemon_factory: Any,
) -> None:
    d = daemon_factory(tcp=True, token=True)
    assert d.tcp is not None
    certs = make_certs(Path(d.dir))
    with pytest.raises(ioserver_client.TLSError, match="does not speak TLS"):
        ioserver_client.connect(f"tls://{HOST}:{d.tcp[1]}", token=TOKEN, ssl=certs.context())
    assert rpc_ping(d.tcp_address, TOKEN)


def test_handshakes_count_against_the_unauthenticated_limit() -> None:
    """Two silent connections fill limits.unauthenticated = 2: the third is closed at
    once (long before hello_timeout), the two stay; once they go, TLS clients are
    served again."""
    daemon = start_tls_daemon(limits={"unauthenticated": 2, "hello_timeout": 30.0})
    try:
        silent = [socket.create_connection((HOST, daemon.port)) for _ in range(2)]
        wait_for(lambda: _refused_at_once(daemon.port), what="a third connection closed at once")
        for sock in silent:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):  # still open: no EOF, nothing to read
                sock.recv(1)
        with pytest.raises(
            ioserver_client.TLSError, match=r"unauthenticated|closed the connection"
        ):
            ioserver_client.connect(daemon.address, token=TOKEN, ssl=daemon.certs.context())
        for sock in silent:
            sock.close()
        wait_for(daemon.ping, what="TLS served again")
        assert daemon.process.ping()
    finally:
        stop_and_check(daemon.process)


def _refused_at_once(port: int) -> bool:
    with socket.create_connection((HOST, port)) as sock:
        sock.settimeout(5.0)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


# -- client certificates (server.tls_client_ca) -----------------------------------------------


def test_a_client_certificate_signed_by_the_ca_is_accepted(mtls_daemon: TlsDaemon) -> None:
    assert mtls_daemon.ping(mtls_daemon.certs.context("client"))
    certs = mtls_daemon.certs
    done = cli(
        "ping",
        mtls_daemon.address,
        "--cafile",
        certs.path("ca.pem"),
        "--cert",
        certs.path("client.pem"),
        "--key",
        certs.path("client.key"),
    )
    assert done.returncode == 0, done


@pytest.mark.parametrize(
    ("cert", "expected"),
    [
        (None, "requires a client certificate signed by its CA"),
        ("stranger-client", "requires a client certificate signed by its CA"),
        ("expired-client", "requires a client certificate signed by its CA"),
    ],
    ids=["none", "another-ca", "expired"],
)
def test_a_missing_or_wrong_client_certificate_is_a_clear_error(
    mtls_daemon: TlsDaemon, cert: str | None, expected: str
) -> None:
    with pytest.raises(ioserver_client.TLSError, match=expected):
        ioserver_client.connect(
            mtls_daemon.address, token=TOKEN, ssl=mtls_daemon.certs.context(cert)
        )
    args = ["ping", mtls_daemon.address, "--cafile", mtls_daemon.certs.path("ca.pem")]
    if cert:
        args += ["--cert", mtls_daemon.certs.path(cert + ".pem")]
        args += ["--key", mtls_daemon.certs.path(cert + ".key")]
    line = one_line_error(cli(*args))
    assert expected in line, line
    assert mtls_daemon.ping()
    assert "TLS handshake failed" in mtls_daemon.process.stderr()


# -- clients that are not ours -----------------------------------------------------------------


OPENSSL = shutil.which("openssl")
NODE = shutil.which("node")


def hello_and_ping() -> bytes:
    return msgpack.packb([0, 1, "hello", [1, TOKEN]]) + msgpack.packb([0, 2, "ping", []])


@pytest.mark.skipif(OPENSSL is None, reason="openssl (the command) is not installed")
def test_openssl_s_client_verifies_the_daemon(tls_daemon: TlsDaemon) -> None:
    assert OPENSSL is not None
    base = [OPENSSL, "s_client", "-connect", f"{HOST}:{tls_daemon.port}", "-brief"]
    ok = subprocess.run(
        [*base, "-CAfile", tls_daemon.certs.path("ca.pem"), "-verify_return_error"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=T,
    )
    assert ok.returncode == 0, ok.stderr
    assert "Verification: OK" in ok.stderr, ok.stderr
    bad = subprocess.run(
        [*base, "-CAfile", tls_daemon.certs.path("other-ca.pem"), "-verify_return_error"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=T,
    )
    assert bad.returncode != 0 and "verify" in bad.stderr.lower(), bad.stderr
    assert tls_daemon.ping()


@pytest.mark.skipif(OPENSSL is None, reason="openssl (the command) is not installed")
def test_msgpack_rpc_through_openssl_s_client(tls_daemon: TlsDaemon) -> None:
    """hello + ping, hand-packed, piped through ``openssl s_client -quiet``: the reply
    bytes decode to the hello answer and "pong"."""
    assert OPENSSL is not None
    proc = subprocess.Popen(
        [
            OPENSSL,
            "s_client",
            "-quiet",
            "-connect",
            f"{HOST}:{tls_daemon.port}",
            "-CAfile",
            tls_daemon.certs.path("ca.pem"),
            "-verify_return_error",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(hello_and_ping())
        proc.stdin.flush()
        replies = read_replies(proc.stdout, 2)
    finally:
        proc.kill()
        proc.wait(T)
    assert replies[1][2] is None and replies[1][3]["version"] == 1, replies
    assert replies[2] == [1, 2, None, "pong"], replies


def read_replies(stream: Any, n: int) -> dict[int, Any]:
    """``n`` msgpack-rpc responses off a pipe, by msgid (bounded by T)."""
    unpacker = msgpack.Unpacker(raw=False)
    replies: dict[int, Any] = {}
    deadline = time.monotonic() + T
    fd = stream.fileno()
    while len(replies) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {replies} after {T} s"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        data = os.read(fd, 65536)
        assert data, f"EOF after {replies}"
        unpacker.feed(data)
        for message in unpacker:
            if message[0] == 1:
                replies[message[1]] = message
    return replies


NODE_CLIENT = r"""
// A msgpack-rpc client in Node with no packages: TLS from node:tls, msgpack by hand.
const tls = require('tls'), fs = require('fs');
const [port, caPath, token] = process.argv.slice(1);
function str(s) {
  const b = Buffer.from(s, 'utf8');
  return Buffer.concat([Buffer.from(b.length < 32 ? [0xa0 | b.length] : [0xd9, b.length]), b]);
}
const hello = Buffer.concat([Buffer.from([0x94, 0x00, 0x01]), str('hello'),
                             Buffer.from([0x92, 0x01]), str(token)]);
const ping = Buffer.concat([Buffer.from([0x94, 0x00, 0x02]), str('ping'), Buffer.from([0x90])]);
const sock = tls.connect({host: '127.0.0.1', port: Number(port), ca: fs.readFileSync(caPath)},
                         () => sock.write(Buffer.concat([hello, ping])));
let got = Buffer.alloc(0);
sock.on('data', (d) => {
  got = Buffer.concat([got, d]);
  // the ping answer, [1, 2, nil, "pong"], ends the conversation
  if (got.includes(Buffer.from([0x94, 0x01, 0x02, 0xc0, 0xa4]))) {
    process.stdout.write(JSON.stringify({authorized: sock.authorized, hex: got.toString('hex')}));
    sock.end();
  }
});
sock.on('error', (e) => { process.stderr.write('node tls error: ' + e.message); process.exit(3); });
setTimeout(() => { process.stderr.write('node: no answer'); process.exit(4); }, 8000).unref();
"""


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_a_node_tls_client_speaks_msgpack_rpc(tls_daemon: TlsDaemon) -> None:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "-e", NODE_CLIENT, str(tls_daemon.port), tls_daemon.certs.path("ca.pem"), TOKEN],
        capture_output=True,
        text=True,
        timeout=T + 5,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["authorized"] is True
    messages = list(msgpack.Unpacker(io.BytesIO(bytes.fromhex(answer["hex"])), raw=False))
    assert messages[0][:3] == [1, 1, None] and messages[0][3]["version"] == 1, messages
    assert messages[1] == [1, 2, None, "pong"], messages
    assert tls_daemon.ping()


# -- configuration errors ----------------------------------------------------------------------


def _serve_with(keys: dict[str, str], directory: Path) -> subprocess.CompletedProcess[str]:
    token = directory / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    lines = [f'{k} = "{v}"' for k, v in {"token_file": str(token), **keys}.items()]
    config = directory / "ioserver.toml"
    config.write_text("[server]\n" + "\n".join(lines) + "\n")
    return run_serve(serve_argv(config, str(directory / "s.sock")))


def test_bad_tls_settings_stop_the_daemon_with_a_message_naming_the_key() -> None:
    directory = Path(short_tmpdir("iostls-"))
    try:
        certs = make_certs(directory)
        tcp = f"{HOST}:{free_port()}"
        cert, key = certs.path("server.pem"), certs.path("server.key")
        loose = certs.path("loose.key")
        shutil.copy(key, loose)
        os.chmod(loose, 0o644)
        encrypted = certs.path("encrypted.key")  # a passphrase the daemon can't ask for
        private = serialization.load_pem_private_key(Path(key).read_bytes(), None)
        Path(encrypted).write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            )
        )
        os.chmod(encrypted, 0o600)
        cases = [
            ({"tcp": tcp, "tls_cert": cert}, 2, "server.tls_cert and server.tls_key go together"),
            ({"tcp": tcp, "tls_cert": cert, "tls_key": loose}, 2, "chmod 600"),
            (
                {"tcp": tcp, "tls_cert": certs.path("client.pem"), "tls_key": key},
                2,
                "not a PEM certificate and its private key",
            ),
            ({"tcp": tcp, "tls_cert": cert, "tls_key": key + ".missing"}, 2, "cannot read"),
            ({"tcp": tcp, "tls_cert": cert, "tls_key": encrypted}, 2, "tls_key is encrypted"),
            ({"tls_cert": cert, "tls_key": key}, 1, "server.tcp is empty"),
            ({"tcp": tcp, "tls_client_ca": cert}, 2, "tls_client_ca needs server.tls_cert"),
        ]
        for keys, code, message in cases:
            done = _serve_with(keys, directory)
            assert done.returncode == code, (keys, done)
            assert message in done.stderr, (keys, done.stderr)
            assert "Traceback" not in done.stderr
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_sighup_reloads_the_certificate_files_for_new_handshakes() -> None:
    """A renewed certificate (here: from another CA, to tell them apart) serves the
    handshakes after the SIGHUP; the session made before goes on. Turning TLS off is
    restart-only, and a key that doesn't match is refused: the running one stays."""
    daemon = start_tls_daemon()
    d, certs = daemon.process, daemon.certs
    other = ssl.create_default_context(cafile=certs.path("other-ca.pem"))
    try:
        with ioserver_client.connect(daemon.address, token=TOKEN, ssl=certs.context()) as before:
            d.write_config(
                server={
                    "tls_cert": certs.path("stranger.pem"),
                    "tls_key": certs.path("stranger.key"),
                }
            )
            d.hangup()
            assert "server.tls_cert" in d.wait_log("configuration reloaded on SIGHUP")
            assert daemon.ping(other)
            with pytest.raises(ioserver_client.TLSError, match="not signed by a CA"):
                ioserver_client.connect(daemon.address, token=TOKEN, ssl=certs.context())
            assert before.ping() == "pong"
        d.write_config(server={"tls_cert": "", "tls_key": ""})
        d.hangup()
        d.wait_log("server.tls_cert changed in the configuration: it needs a restart")
        assert daemon.ping(other)  # still TLS, with the reloaded certificate
        d.write_config(
            server={"tls_cert": certs.path("server.pem"), "tls_key": certs.path("client.key")}
        )
        d.hangup()
        assert "not a PEM certificate and its private key" in d.wait_log("reload on SIGHUP refused")
        assert daemon.ping(other)
    finally:
        stop_and_check(d)
