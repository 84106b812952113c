"""Kube errors: what kubectl prints when discovery cannot reach the API server or is refused.

Where it sits: beside ``kube``, whose discovery (the first requests fastobs makes) calls
:func:`status_error` for an error answer and :func:`unreachable` for a request that got no
answer; ``kube`` raises the text as a :class:`~fastobs.errors.KubectlError`, which ``cli``
prints as is, as oc prints it through kubectl's error printer (``StandardErrorMessage``).
Later, ``watchstream`` words the list and watch failures it logs with :func:`go_error_text`.

In: the HTTP status and body of an error answer, or the exception aiohttp raised and where
the request went. Out: one line, kubectl's: ``error: You must be logged in to the server
(...)``, ``Error from server (...): ...``, ``The connection to the server ... was refused -
did you specify the right host or port?`` or ``Unable to connect to the server: <Go's
error>``.

Invariant: never a Python object's repr or an OpenSSL reason in place of Go's words. Where
aiohttp's exception does not say which step failed (a timeout, a reply that is not TLS, a
certificate for other names), the step is tried again on its own to find out, on this error
path only; the answer is what Go's HTTP client would have said for that step.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from fastobs.gocompat import go_errno, go_quote
from fastobs.header import rfc3339_local

__all__ = ["Endpoint", "go_error_text", "status_error", "unreachable"]

GO_DIAL_TIMEOUT = 30.0
"""client-go's dialer timeout."""
GO_TLS_HANDSHAKE_TIMEOUT = 10.0
"""client-go's transport TLS handshake timeout."""
GO_DISCOVERY_TIMEOUT = 32.0
"""client-go's discovery request timeout when ``--request-timeout`` is not set."""
_PROBE_TIMEOUT = 2.0
"""How long a diagnostic re-try of one step may take."""


@dataclass(frozen=True)
class Endpoint:
    """Where a failed request went, and how it would have checked the server's certificate."""

    url: str
    server_name: str | None = None
    proxy: str | None = None
    ca_file: str | None = None
    verify: bool = True
    timeout: float = 0.0
    """``--request-timeout`` in seconds; 0 = none."""

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)


# --- an error answer ----------------------------------------------------------------------


def status_error(status: int, body: bytes, content_type: str) -> str:
    """kubectl's line for an error answer to a discovery request. client-go does not read a
    Status from it (the request asked for discovery documents), so the error is its generic
    one for the status code (``NewGenericServerResponse``), printed by kubectl's
    ``StandardErrorMessage``: ``error: You must be logged in to the server (<message>)`` for
    a 401, ``Error from server (<Reason>): <message>`` otherwise."""
    text = "unknown"
    if content_type.startswith("text/plain"):
        text = body[:2048].decode("utf-8", "replace").strip()
    reason, message = _GENERIC.get(status, ("", ""))
    if status in (403, 415) or (status == 406 and text not in ("", "unknown")):
        message = text  # the server's words say who may do what, or which types it takes
    elif not message and status >= 500:
        reason = "InternalError"
        message = f"an error on the server ({go_quote(text)}) has prevented the request from succeeding"
    elif not message:
        message = f"the server responded with the status code {status} but did not return more information"
    if reason == "Unauthorized":
        return f"error: You must be logged in to the server ({message})"
    return f"Error from server ({reason}): {message}" if reason else f"Error from server: {message}"


_GENERIC = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "the server has asked for the client to provide credentials"),
    403: ("Forbidden", ""),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    406: ("NotAcceptable", "the server was unable to respond with a content type that the client supports"),
    409: ("Conflict", "the server reported a conflict"),
    415: ("UnsupportedMediaType", ""),
    422: ("Invalid", "the server rejected our request due to an error in our request"),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted, but may still be "
                    "processing the request"),
}
"""client-go's reason and message for an error answer without a Status it could read."""


# --- no answer ----------------------------------------------------------------------------


async def unreachable(exc: BaseException, endpoint: Endpoint) -> str:
    """kubectl's line when the server gave no answer: a refused connection names the server,
    anything else is ``Unable to connect to the server: <Go's error>``."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ConnectionRefusedError):
        return (f"The connection to the server {urlsplit(endpoint.url).netloc} was refused - did you "
                "specify the right host or port?")
    return f"Unable to connect to the server: {await go_net_error(exc, endpoint)}"


async def go_net_error(exc: BaseException, endpoint: Endpoint) -> str:
    """What Go's HTTP client says for a request that got no answer (the error inside
    client-go's ``url.Error``), for what aiohttp raised. Where the exception does not say
    which step failed, that step is tried again to find out."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"tls: failed to verify certificate: {await _x509(exc.certificate_error, endpoint)}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return await _not_tls(exc.os_error, endpoint)
    if isinstance(exc, TimeoutError):
        return await _timed_out(endpoint)
    return go_error_text(exc)


def go_error_text(exc: BaseException) -> str:
    """Go's words for a failed request without trying any step again: for the list and
    watch loop, which retries on its own and logs each failure (``failed to list ...``,
    ``watch of ... failed: ...``). Where only a second try could tell (a reply that is not
    TLS, a certificate for other names or out of date), Go's more general words."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"tls: failed to verify certificate: {_x509_now(exc.certificate_error)}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        reason = getattr(exc.os_error, "reason", "")
        if reason in _NOT_TLS_REASONS:
            return "tls: first record does not look like a TLS handshake"
        return f"remote error: tls: {' '.join(str(exc.os_error).split())}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return _dns(exc.host, exc.os_error)
    if isinstance(exc, aiohttp.ClientConnectorError):
        number = exc.os_error.errno
        why = go_errno(number) if number else " ".join(str(exc.os_error).split())
        return f"dial tcp {_hostport(exc.host, exc.port)}: connect: {why}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "EOF"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "unexpected EOF"  # the body ended before its chunk or length said it would
    if isinstance(exc, TimeoutError):
        return "context deadline exceeded"
    if isinstance(exc, OSError) and exc.errno:
        return go_errno(exc.errno)
    return " ".join(str(exc).split()) or type(exc).__name__


_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                    "HTTP_REQUEST", "UNKNOWN_PROTOCOL")
"""OpenSSL's reasons for a reply that is not TLS at all."""


def _hostport(host: str, port: int | None) -> str:
    """Go's ``net.JoinHostPort``: an IPv6 address in brackets."""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port is not None else host


def _dns(host: str, error: OSError) -> str:
    """Go's resolver error: it names the name server that answered (the first in resolv.conf)."""
    why = "no such host" if error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)) else (
        "server misbehaving")
    return f"dial tcp: lookup {host} on {_name_server()}: {why}"


def _name_server(resolv_conf: str = "/etc/resolv.conf") -> str:
    try:
        with open(resolv_conf, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            return _hostport(fields[1], 53)
    return "127.0.0.1:53"  # Go's default when resolv.conf names none


async def _timed_out(endpoint: Endpoint) -> str:
    """Which of Go's timeouts would have fired first: the dial (30 s), the TLS handshake
    (10 s, after the dial) or the request's own deadline (``--request-timeout``, else 32 s
    for discovery). The step that hangs is found by trying the dial and the handshake again."""
    deadline = endpoint.timeout or GO_DISCOVERY_TIMEOUT
    exceeded = "context deadline exceeded"
    if endpoint.proxy:
        return exceeded
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(endpoint.host, endpoint.port),
                                                _PROBE_TIMEOUT)
    except TimeoutError:
        if deadline <= GO_DIAL_TIMEOUT:
            return exceeded
        return f"dial tcp {_hostport(endpoint.host, endpoint.port)}: i/o timeout"
    except OSError:
        return exceeded
    writer.close()
    if urlsplit(endpoint.url).scheme != "https" or deadline <= GO_TLS_HANDSHAKE_TIMEOUT:
        return exceeded
    if await _handshake_peer_cert(endpoint, verify=False) is None:
        return "net/http: TLS handshake timeout"
    return exceeded


async def _handshake_peer_cert(endpoint: Endpoint, *, verify: bool, check_hostname: bool = False,
                               ) -> dict[str, object] | bytes | None:
    """Complete a TLS handshake with the server again; its certificate (parsed when the chain
    was verified, else DER bytes), or None when the handshake does not complete."""
    ctx = ssl.create_default_context(cafile=endpoint.ca_file) if verify else ssl.create_default_context()
    ctx.check_hostname = check_hostname
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            endpoint.host, endpoint.port, ssl=ctx, server_hostname=endpoint.server_name or endpoint.host),
            _PROBE_TIMEOUT)
    except (OSError, TimeoutError):
        return None
    try:
        sock = writer.get_extra_info("ssl_object")
        cert: dict[str, object] | bytes | None = (
            sock.getpeercert() if verify else sock.getpeercert(binary_form=True)) if sock else None
    finally:
        writer.transport.abort()  # no TLS goodbye: the server may never answer one
    return cert


async def _not_tls(error: BaseException, endpoint: Endpoint) -> str:
    """A reply that is not TLS: Go says which, from its first five bytes."""
    reason = getattr(error, "reason", "")
    if reason not in _NOT_TLS_REASONS:
        return f"remote error: tls: {' '.join(str(error).split())}"
    if await _first_bytes(endpoint) == b"HTTP/":
        return "http: server gave HTTP response to HTTPS client"
    return "tls: first record does not look like a TLS handshake"


async def _first_bytes(endpoint: Endpoint) -> bytes:
    """The first five bytes the server answers a TLS client hello with."""
    hello = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                                                  server_hostname=endpoint.host or None)
    with contextlib.suppress(ssl.SSLWantReadError):
        hello.do_handshake()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(endpoint.host, endpoint.port),
                                                _PROBE_TIMEOUT)
    except (OSError, TimeoutError):
        return b""
    try:
        writer.write(outgoing.read())
        return await asyncio.wait_for(reader.readexactly(5), _PROBE_TIMEOUT)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return b""
    finally:
        writer.close()


# --- certificates -------------------------------------------------------------------------


async def _x509(error: BaseException, endpoint: Endpoint) -> str:
    """Go's x509 verification error for OpenSSL's."""
    code = getattr(error, "verify_code", None)
    if code == 62:  # the chain is fine, the names are not
        cert = await _handshake_peer_cert(endpoint, verify=True)
        if isinstance(cert, dict):
            return _hostname_error(cert, endpoint.server_name or endpoint.host)
    if code in (9, 10):  # not yet valid, expired
        der = await _handshake_peer_cert(endpoint, verify=False)
        if isinstance(der, bytes):
            return _validity_error(der, time.time())
    return _x509_now(error)


def _x509_now(error: BaseException) -> str:
    """Go's x509 error for what OpenSSL's says without the certificate at hand."""
    if getattr(error, "verify_code", None) in (2, 18, 19, 20, 21):  # no issuer, self-signed, untrusted chain
        return "x509: certificate signed by unknown authority"
    return f"x509: {getattr(error, 'verify_message', '') or ' '.join(str(error).split())}"


_MAX_NAMES = 100
"""Go lists at most 99 names in a host name error."""


def _hostname_error(cert: dict[str, object], host: str) -> str:
    """Go's ``x509.HostnameError``: the names the certificate is valid for."""
    sans = cert.get("subjectAltName", ())
    pairs = [(str(kind), str(value)) for kind, value in sans] if isinstance(sans, tuple) else []
    try:
        ipaddress.ip_address(host)
    except ValueError:
        names = [value for kind, value in pairs if kind == "DNS"]
        if len(names) >= _MAX_NAMES:
            return f"x509: certificate is valid for {len(names)} names, but none matched {host}"
        valid = ", ".join(names)
    else:
        ips = [str(ipaddress.ip_address(value.strip())) for kind, value in pairs if kind == "IP Address"]
        if not ips:
            return f"x509: cannot validate certificate for {host} because it doesn't contain any IP SANs"
        if len(ips) >= _MAX_NAMES:
            return f"x509: certificate is valid for {len(ips)} IP SANs, but none matched {host}"
        valid = ", ".join(ips)
    if not valid:
        return f"x509: certificate is not valid for any names, but wanted to match {host}"
    return f"x509: certificate is valid for {valid}, not {host}"


def _validity_error(der: bytes, epoch: float) -> str:
    """Go's ``x509.CertificateInvalidError`` for an expired or not yet valid certificate (the
    current time in the local zone, the certificate's in UTC, as Go prints them)."""
    not_before, not_after = _validity(der)
    prefix = "x509: certificate has expired or is not yet valid: "
    stamp = rfc3339_local(epoch)
    if datetime.datetime.fromtimestamp(epoch, datetime.UTC) < not_before:
        return f"{prefix}current time {stamp} is before {not_before.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return f"{prefix}current time {stamp} is after {not_after.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def _validity(der: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    """notBefore and notAfter of a DER certificate (tbsCertificate's fifth field)."""
    _, tbs = _tlv(der, 0)  # Certificate ::= SEQUENCE { tbsCertificate, ... }
    _, pos = _tlv(der, tbs)  # tbsCertificate ::= SEQUENCE {
    fields: list[tuple[int, int, int]] = []
    while len(fields) < 6:
        tag, start = _tlv(der, pos)
        length_end = _skip(der, pos)
        fields.append((tag, start, length_end))
        pos = length_end
    if fields[0][0] != 0xA0:  # no explicit version: validity is the fourth field
        fields.insert(0, (0xA0, 0, 0))
    _, start, end = fields[4]  # validity ::= SEQUENCE { notBefore, notAfter }
    times = []
    pos = start
    while pos < end:
        tag, body = _tlv(der, pos)
        nxt = _skip(der, pos)
        text = der[body:nxt].decode("ascii")
        fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"
        times.append(datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.UTC))
        pos = nxt
    return times[0], times[1]


def _tlv(der: bytes, pos: int) -> tuple[int, int]:
    """(tag, offset of the value) of the DER element at ``pos``."""
    tag, first = der[pos], der[pos + 1]
    if first < 0x80:
        return tag, pos + 2
    return tag, pos + 2 + (first & 0x7F)


def _skip(der: bytes, pos: int) -> int:
    """The offset just after the DER element at ``pos``."""
    first = der[pos + 1]
    if first < 0x80:
        return pos + 2 + first
    count = first & 0x7F
    length = int.from_bytes(der[pos + 2 : pos + 2 + count], "big")
    return pos + 2 + count + length
