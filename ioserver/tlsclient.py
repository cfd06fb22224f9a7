"""The client side of TLS to a daemon: ``tls://`` addresses, contexts, errors that say what to do.

Shared by the Python client (``ioserver_client.connect("tls://host:port", ssl=...)``)
and the command line (``ioserver ping tls://host:port --cafile ca.pem``), so
both read the same addresses and explain a failed handshake the same way.

A TLS failure surfaces deep inside OpenSSL as a reason code
(``CERTIFICATE_VERIFY_FAILED``, ``WRONG_VERSION_NUMBER``, an alert from the
daemon...). :func:`explain` turns the ones a user meets into a
:class:`TLSError` whose message names what happened and what to do: pass the
daemon's CA, renew a certificate, use ``tcp://`` for a plain listener, give a
client certificate. A TLSError is a ConnectionError, so code that already
handles "the daemon is unreachable" handles it too.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

__all__ = [
    "TLS_REQUIRED",
    "TLSError",
    "client_context",
    "closed_after_handshake",
    "explain",
    "parse_tls_address",
    "tls_required",
]

TLS_REQUIRED: Final = "required"
"""``details.tls`` of the error a TLS listener sends a plain-TCP client (protocol.md)."""

#: OpenSSL verify codes (X509_V_ERR_*) a user can act on, and what to do.
_VERIFY_HINTS: Final[dict[int, str]] = {
    9: "the daemon's certificate is not valid yet (check both clocks)",
    10: "the daemon's certificate has expired: renew server.tls_cert on the daemon",
    18: "the daemon's certificate is self-signed and not trusted here: "
    "pass it as the CA (ssl=ssl.create_default_context(cafile=...) or --cafile)",
    19: "the daemon's certificate chain ends in a CA this client does not trust: "
    "pass that CA (ssl=ssl.create_default_context(cafile=...) or --cafile)",
    20: "the daemon's certificate is not signed by a CA this client trusts: "
    "pass the daemon's CA certificate (ssl=ssl.create_default_context(cafile=...) or --cafile)",
    21: "the daemon's certificate is not signed by a CA this client trusts: "
    "pass the daemon's CA certificate (ssl=ssl.create_default_context(cafile=...) or --cafile)",
    62: "the daemon's certificate is not for this host name: connect with a name "
    "its certificate lists, or reissue the certificate for this one",
    64: "the daemon's certificate is not for this IP address: connect with a name "
    "or address its certificate lists, or reissue the certificate for this one",
}

#: OpenSSL reasons (ssl.SSLError.reason) a user can act on, and what to do.
_REASON_HINTS: Final[dict[str, str]] = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the daemon requires a client certificate "
    "(server.tls_client_ca): load one into the context (ctx.load_cert_chain(cert, key); "
    "--cert and --key on the command line)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the daemon refused the handshake (a client "
    "certificate may be required: server.tls_client_ca); see the daemon's log",
    "TLSV1_ALERT_UNKNOWN_CA": "the daemon does not trust this client's certificate: "
    "use one signed by the CA in the daemon's server.tls_client_ca",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the daemon refused this client's certificate: "
    "use one signed by the CA in the daemon's server.tls_client_ca",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the daemon refused this client's certificate "
    "as expired: renew it",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS (a plain tcp:// listener?): "
    "connect with tcp://HOST:PORT, or set server.tls_cert and server.tls_key on the daemon",
    "RECORD_LAYER_FAILURE": "the server does not speak TLS (a plain tcp:// listener?): "
    "connect with tcp://HOST:PORT, or set server.tls_cert and server.tls_key on the daemon",
    "PACKET_LENGTH_TOO_LONG": "the server does not speak TLS (a plain tcp:// listener?): "
    "connect with tcp://HOST:PORT",
    "UNEXPECTED_EOF_WHILE_READING": "the daemon closed the connection during the TLS "
    "handshake: it may be at its limit of connections waiting to authenticate "
    "(limits.unauthenticated), or have refused this client; see the daemon's log",
}


class TLSError(ConnectionError):
    """A TLS connection to a daemon failed; the message says why and what to do.

    ``address`` is the address as given; ``reason`` the OpenSSL reason or
    verify message behind it (``"CERTIFICATE_VERIFY_FAILED"``...), or None.
    """

    def __init__(self, address: str, message: str, reason: str | None = None) -> None:
        super().__init__(f"TLS to {address} failed: {message}")
        self.address = address
        self.reason = reason


def parse_tls_address(text: str) -> tuple[str, int]:
    """``"tls://host:port"`` (``"tls://[::1]:port"`` for IPv6) as ``(host, port)``;
    ValueError (naming the expected form) for anything else."""
    rest = text[len("tls://") :] if text.startswith("tls://") else None
    host, sep, port_text = (rest or "").rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # a bare IPv6 address is ambiguous: brackets are required
    if rest is None or not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(
            f"bad address {text!r}: expected tls://HOST:PORT (tls://[::1]:PORT for IPv6)"
        )
    return host, int(port_text)


def client_context(
    cafile: str | None = None, certfile: str | None = None, keyfile: str | None = None
) -> ssl.SSLContext:
    """A context that verifies the daemon: against ``cafile`` if given, else the
    system's CAs; with a client certificate (``certfile``, ``keyfile``) for a
    daemon that requires one. OSError/ssl.SSLError if a file can't be loaded."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        ctx.load_cert_chain(certfile, keyfile or None)
    return ctx


def closed_after_handshake(address: str) -> TLSError:
    """The daemon closed the connection after the TLS handshake, before answering
    anything: what a daemon with ``tls_client_ca`` does when it refuses the
    client's certificate (with TLS 1.3 the client learns of it only then, and
    the daemon sends no alert)."""
    return TLSError(
        address,
        "the daemon closed the connection right after the TLS handshake: it requires a "
        "client certificate signed by its CA (server.tls_client_ca) and got none, or an "
        "expired one, or one from another CA; load a good one into the context "
        "(ctx.load_cert_chain(cert, key); --cert and --key on the command line). The "
        "daemon's log names the reason",
        "client certificate refused",
    )


def tls_required(error: Any) -> bool:
    """Whether an rpc error (an RpcError's ``details``) is the daemon telling a
    plain-TCP client that its port speaks TLS."""
    return isinstance(error, dict) and error.get("tls") == TLS_REQUIRED


def explain(
    exc: BaseException, address: str, timeout: float | None = None, handshake: bool = True
) -> TLSError | None:
    """``exc`` as a TLSError saying what to do; None if it is not about TLS (a
    refused connection, an unknown host: raise those as they are).

    ``handshake``: ``exc`` came from connecting to ``address`` with TLS, so a
    connection reset or closed then is the daemon refusing the handshake; else
    (the connection later) only TLS errors proper are explained.
    """
    if isinstance(exc, TLSError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        hint = _VERIFY_HINTS.get(code, "the daemon's certificate failed verification")
        return TLSError(address, f"{hint} ({exc.verify_message})", exc.verify_message)
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        if isinstance(exc, ssl.SSLEOFError) and not exc.reason:
            reason = "UNEXPECTED_EOF_WHILE_READING"
        hint = _REASON_HINTS.get(reason, "the TLS handshake failed")
        return TLSError(address, f"{hint} ({reason})", reason)
    if not handshake:
        return None
    text = str(exc)
    if isinstance(exc, ConnectionResetError | BrokenPipeError) or (
        isinstance(exc, ConnectionError) and "closed" in text.lower()
    ):
        reason = "UNEXPECTED_EOF_WHILE_READING"
        return TLSError(address, f"{_REASON_HINTS[reason]} ({type(exc).__name__})", reason)
    if isinstance(exc, TimeoutError) or "handshake is taking longer" in text:
        within = f" within {timeout:g} s" if timeout else ""
        return TLSError(
            address,
            f"no TLS handshake{within}: is a TLS listener there? (a plain tcp:// "
            "listener, or a server that is not an ioserver daemon, never answers one)",
            "timeout",
        )
    return None
