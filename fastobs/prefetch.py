"""Prefetch: the first list request, sent before the engine and its libraries are imported.

Where it sits: in the parent, between ``cli`` (which calls :func:`start` as soon as argv is
parsed) and ``daemon`` (which hands the result to ``kube`` and ``source``). In: the
:class:`~fastobs.settings.Settings`. Out: a :class:`Prefetch` holding the loaded
credentials, the TLS context, the discovery result and the sent first list request (the
streamed list, the request ``source`` sends first), or None.

Why: aiohttp, uvloop, prometheus_client and the engine cost about 250 ms of imports; with
the standard library alone (``socket``, ``ssl``, ``json``) the request leaves well before them,
and the API server builds the list while they load. The source then reads that very
response as its first list (:meth:`Prefetch.open`): nothing is listed twice.

Invariant: speculative and silent. Anything unusual (credentials only the ``kubernetes``
package loads, a proxy, a ``.netrc``, a group of replicas) or any failure (an error status,
an encoded body, a discovery miss, a connection error, a timeout) makes the fast path give
up, and the normal path runs exactly as it would without it: every error message, exit
code and retry comes from ``kube`` and ``source``, worded in one place. The fast path never
prints anything; :data:`outcome` says what it did, for the debug log. A response the source
does not ask for (its first request differs) is closed unread.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from fastobs import __version__, credentials
from fastobs.discovery import AGGREGATED_ACCEPT, Resource, Served, from_aggregated, match
from fastobs.settings import Settings

if TYPE_CHECKING:
    import asyncio  # imported by the engine; here only once the engine runs (~25 ms)

__all__ = ["Prefetch", "PrefetchedResponse", "outcome", "start", "streamed_list_params"]

BUDGET = 5.0
"""Seconds the fast path may wait on the network (per connect, send or read) before it gives
up; then the normal path runs with its own deadlines (a server that does not answer costs
at most this much more). Generous: giving up on a slow but working server costs more than
waiting for it (at load 7 on two cores a discovery answer, through a test proxy, once took
over 2 s)."""
_READ_BUFFER = 1 << 20
"""Bytes read ahead of the source at most (aiohttp's read buffer): back-pressure beyond."""
_MAX_HEAD = 1 << 16

outcome = ""
"""What the last :func:`start` did, in a few words (for the debug log)."""


class GiveUp(Exception):
    """The fast path stops here; the normal path does everything."""


def streamed_list_params(label_selector: str, field_selector: str) -> dict[str, str]:
    """The query of ``source``'s first request: the streamed list (WatchList)."""
    params = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
    params.update(watch="1", sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                  allowWatchBookmarks="true")
    return params


# ------------------------------------------------------------------ HTTP/1.1


class _Dechunker:
    """Decodes a ``Transfer-Encoding: chunked`` body fed in pieces of any size."""

    def __init__(self) -> None:
        self._rest = b""
        self._left = 0
        """Payload bytes still to come in the current chunk."""
        self._crlf = False
        self._trailers = False
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        """The payload in ``data`` (with what an earlier call left); ValueError if malformed."""
        buf = self._rest + data if self._rest else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end and not self.done:
            if self._left:
                take = min(self._left, end - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self._left -= take
                self._crlf = not self._left
                continue
            if self._crlf:
                if end - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise ValueError("a chunk does not end with CRLF")
                pos += 2
                self._crlf = False
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > _MAX_HEAD:
                    raise ValueError("a chunk header is too long")
                break
            line, pos = buf[pos:eol], eol + 2
            if self._trailers:
                self.done = not line
            elif (size := int(line.split(b";", 1)[0], 16)) == 0:
                self._trailers = True
            else:
                self._left = size
        self._rest = buf[pos:]
        return out


class _Http:
    """HTTP/1.1 GETs on one kept-alive socket (TLS or not): the little the fast path needs.

    Hand-written because ``http.client`` imports the ``email`` package, which alone costs
    more than the whole request on a loopback apiserver (measured: bench/README, Start-up).
    """

    def __init__(self, sock: socket.socket, host_header: str) -> None:
        self.sock = sock
        self._host = host_header
        self._buf = b""

    def send(self, target: str, headers: dict[str, str]) -> None:
        lines = [f"GET {target} HTTP/1.1", f"Host: {self._host}", *(f"{k}: {v}" for k, v in headers.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 18)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def head(self) -> tuple[int, dict[str, str]]:
        """The status and the headers (lower-case names) of the next response."""
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > _MAX_HEAD:
                raise GiveUp("response headers too long")
            self._buf += self._recv()
        head, self._buf = self._buf[:end].decode("latin-1"), self._buf[end + 4:]
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1."):
            raise GiveUp(f"not an HTTP/1.x response: {status_line[:40]!r}")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(rest[:3]), headers

    def body(self, headers: dict[str, str]) -> bytes:
        """The whole body of the response whose head was just read."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = _Dechunker()
            parts = chunks.feed(self._take())
            while not chunks.done:
                parts += chunks.feed(self._recv())
            self._buf = b""  # nothing follows: one request at a time
            return b"".join(parts)
        if "content-length" not in headers:
            raise GiveUp("a response without a length")
        length = int(headers["content-length"])
        while len(self._buf) < length:
            self._buf += self._recv()
        body, self._buf = self._buf[:length], self._buf[length:]
        return body

    def _take(self) -> bytes:
        data, self._buf = self._buf, b""
        return data

    def close(self) -> None:
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # wakes a thread in recv
        except OSError:
            pass
        self.sock.close()


class Prefetch:
    """What the fast path did: credentials, TLS context, discovery, and the sent request."""

    def __init__(self, cfg: credentials.Config, context_namespace: str, tls: ssl.SSLContext | None,
                 served: list[Served], resource: Resource, path: str, params: dict[str, str],
                 conn: _Http, sent_at: float) -> None:
        self.cfg = cfg
        self.context_namespace = context_namespace
        self.tls = tls
        """The https server's TLS context (None for plain http): the engine keeps using it."""
        self.served = served
        self.resource = resource
        self.path = path
        """The collection path requested (without the server URL's own path prefix)."""
        self.params = params
        self.sent_at = sent_at
        """time.monotonic() when the request was sent."""
        self._conn: _Http | None = conn

    async def open(self, path: str, params: dict[str, str], headers_timeout: float,
                   ) -> PrefetchedResponse | None:
        """The response to the request already sent, if it is the one the caller is about to
        send (same path, same query) and the server accepted it (200, chunked, not encoded)
        within ``headers_timeout`` of sending it (the caller's own deadline: a watch cache
        still filling may hold the answer); else None and the caller sends its own. Only the
        first call can get it."""
        import asyncio

        conn, self._conn = self._conn, None
        if conn is None:
            return None
        if (path, params) != (self.path, self.params):
            conn.close()
            _said("the prefetched list is closed unread: the first request differs")
            return None
        try:
            conn.sock.settimeout(max(BUDGET, headers_timeout - (time.monotonic() - self.sent_at)))
            status, headers = await asyncio.to_thread(conn.head)
        except (OSError, ValueError, GiveUp) as exc:
            conn.close()
            _said(f"the prefetched list failed ({type(exc).__name__}: {exc}); listing again")
            return None
        except BaseException:  # cancelled (a signal during start-up): wake the thread, no wait
            conn.close()
            raise
        if (status != 200 or headers.get("content-encoding", "identity") != "identity"
                or headers.get("transfer-encoding", "").lower() != "chunked"):
            conn.close()
            _said(f"the prefetched list was answered {status}; listing again")
            return None
        conn.sock.settimeout(None)  # from now on the source's read timeout applies
        _said("reading the prefetched list")
        return PrefetchedResponse(conn, status, headers, asyncio.get_running_loop())

    def close(self) -> None:
        """Close the request if nobody took it (start-up failed before the source ran)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _said(what: str) -> None:
    """Record what became of the prefetched request, in the debug log (set up by now)."""
    import logging

    global outcome
    outcome = what
    logging.getLogger(__name__).debug("start-up: %s", what)


def _recv_available(sock: socket.socket) -> bytes:
    """What has arrived, waiting only for the first bytes: up to :data:`_READ_BUFFER`.

    A TLS socket's ``recv`` returns one record (16 KiB at most). Handing each record to
    the event loop on its own cost a thread switch and a loop wake-up per record, about
    15 µs of the parent's CPU per listed object; what is already there goes in one piece.
    """
    parts = [sock.recv(1 << 18)]
    size = len(parts[0])
    while parts[-1] and size < _READ_BUFFER and _readable(sock):
        parts.append(sock.recv(1 << 18))
        size += len(parts[-1])
    return b"".join(parts) if len(parts) > 1 else parts[0]


def _readable(sock: socket.socket) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    return bool(select.select([sock], [], [], 0)[0])


class PrefetchedResponse:
    """The prefetched response, read the way ``source`` and ``watchstream`` read an aiohttp
    response: ``status``, ``headers``, ``content.readany()``, ``close()``, ``async with``.

    A thread reads and de-chunks the body ahead of the consumer (at most
    :data:`_READ_BUFFER` bytes, then it waits: back-pressure reaches the TCP window as with
    aiohttp); ``close`` from the event loop (the source's read timeout) shuts the socket
    down, which wakes that thread.
    """

    def __init__(self, conn: _Http, status: int, headers: dict[str, str],
                 loop: asyncio.AbstractEventLoop) -> None:
        import asyncio

        self.status = status
        self.headers = headers
        self.content = self
        self._conn = conn
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False
        self._waiting = False
        self._room = threading.Condition()
        self._ready = asyncio.Event()
        self._thread = threading.Thread(target=self._read_ahead, name="fastobs-prefetch", daemon=True)
        self._thread.start()

    def _read_ahead(self) -> None:
        chunks = _Dechunker()
        data = self._conn._take()
        try:
            while True:
                with self._room:
                    while self._buffered >= _READ_BUFFER and not self._closed:
                        self._room.wait()
                    if self._closed:
                        return
                self._push(chunks.feed(data), None)
                if chunks.done:
                    self._push(None, None)
                    return
                data = _recv_available(self._conn.sock)
                if not data:
                    raise EOFError("the body ended before its last chunk")
        except BaseException as exc:  # handed to the reader, who words it
            self._push(None, exc)

    def _push(self, parts: list[bytes] | None, error: BaseException | None) -> None:
        with self._room:
            if parts is None:
                self._ended, self._error = True, error
            else:
                self._chunks.extend(parts)
                self._buffered += sum(map(len, parts))
            # A piece that completed no payload (it ended inside a chunk header) wakes
            # nobody and must leave the reader's wait on record for the next piece.
            wake = self._waiting and (parts is None or bool(parts))
            if wake:
                self._waiting = False
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the loop is closed: nobody reads any more
                pass

    async def readany(self) -> bytes:
        """What has arrived (waiting for something); b"" at the end of the body."""
        while True:
            with self._room:
                if self._chunks:
                    data = b"".join(self._chunks)
                    self._chunks.clear()
                    self._buffered = 0
                    self._room.notify()
                    return data
                if self._ended or self._closed:
                    return self._end()
                self._ready.clear()
                self._waiting = True
            await self._ready.wait()

    def _end(self) -> bytes:
        error = self._error
        if error is None or self._closed:
            return b""
        if isinstance(error, OSError):
            raise error
        import aiohttp  # loaded by now: the engine runs

        # A body cut short or garbled: what aiohttp raises for the same.
        raise aiohttp.ClientPayloadError(f"Response payload is not completed: {error!r}")

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        with self._room:
            if self._closed:
                return
            self._closed = True
            self._room.notify()
        self._conn.close()
        self._ready.set()
        self._thread.join(timeout=1.0)

    def release(self) -> None:
        self.close()

    async def __aenter__(self) -> PrefetchedResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ the fast path


def start(settings: Settings) -> Prefetch | None:
    """Send the first list request with the standard library, or give up (None)."""
    global outcome
    try:
        prefetch = _start(settings)
    except GiveUp as why:
        outcome = f"no prefetch: {why}"
        return None
    except Exception as exc:  # speculative: the normal path meets and words the same failure
        outcome = f"no prefetch: {type(exc).__name__}: {exc}"
        return None
    outcome = "prefetched the first list"
    return prefetch


def _start(settings: Settings) -> Prefetch:
    if settings.lease_name:
        raise GiveUp("a group of replicas asks the server other things first")
    if any(k.lower().endswith("_proxy") and k.lower() != "no_proxy" and v for k, v in os.environ.items()):
        raise GiveUp("a proxy is set in the environment")
    overrides = credentials.Overrides(settings.server, settings.token, settings.insecure_skip_tls_verify)
    loaded = credentials.load_fast(settings.kubeconfig, settings.context, overrides)
    if loaded is None:
        raise GiveUp("the credentials need the kubernetes package's loader")
    cfg, context_namespace = loaded
    if cfg.proxy:
        raise GiveUp("the kubeconfig names a proxy")
    auth = cfg.auth_settings().get("BearerToken", {}).get("value")
    if not auth and (os.environ.get("NETRC") or os.path.exists(os.path.expanduser("~/.netrc"))):
        raise GiveUp("a .netrc may supply credentials")  # aiohttp (trust_env) reads it
    url = urlsplit(cfg.host)
    if url.scheme not in ("https", "http") or not url.hostname or url.username or url.query or url.fragment:
        raise GiveUp(f"an unusual server URL {cfg.host}")
    tls = credentials.tls_context(cfg) if url.scheme == "https" else None
    port = url.port or (443 if tls is not None else 80)
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    sock = socket.create_connection((url.hostname, port), timeout=BUDGET)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=cfg.tls_server_name or url.hostname)
        conn = _Http(sock, host if port == (443 if tls is not None else 80) else f"{host}:{port}")
        headers = {"User-Agent": f"fastobs/{__version__}", "Accept-Encoding": "gzip, deflate"}
        if auth:
            headers["Authorization"] = auth
        prefix = url.path.rstrip("/")
        served = _discover(conn, prefix, headers)
        resource = _resolve(served, settings.resource)
        namespace = settings.namespace or context_namespace or "default"
        path = resource.collection_path(None if settings.all_namespaces else namespace)
        params = streamed_list_params(settings.selector, settings.field_selector.strip())
        conn.send(prefix + path + "?" + urlencode(params), {**headers, "Accept": "application/json"})
        sent_at = time.monotonic()
    except BaseException:
        sock.close()
        raise
    return Prefetch(cfg, context_namespace, tls, served, resource, path, params, conn, sent_at)


def _discover(conn: _Http, prefix: str, headers: dict[str, str]) -> list[Served]:
    """``/api`` and ``/apis`` in their aggregated form, on one kept-alive connection."""
    served: list[Served] = []
    for path in ("/api", "/apis"):
        conn.send(prefix + path, {**headers, "Accept": AGGREGATED_ACCEPT})
        status, got = conn.head()
        body = conn.body(got)
        if status != 200:
            raise GiveUp(f"discovery of {path} answered {status}")
        # The standard library's parser: orjson's import costs more than it saves here.
        doc = json.loads(_decoded(body, got.get("content-encoding", "identity")))
        if not isinstance(doc, dict) or doc.get("kind") != "APIGroupDiscoveryList":
            raise GiveUp("the server has no aggregated discovery")
        served.extend(from_aggregated(doc))
    return served


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding == "identity":
        return body
    if encoding in ("gzip", "deflate"):
        return zlib.decompress(body, 47)  # 32 + 15: a gzip or zlib header, detected
    raise GiveUp(f"a body encoded as {encoding}")


def _resolve(served: list[Served], arg: str) -> Resource:
    """``kube.KubeClient.resolve``'s answer when it has one; it words every miss."""
    typed, _, group = arg.partition(".")
    found = match(served, typed.lower(), group.lower()) if typed else None
    if found is None:
        raise GiveUp(f"the resource {arg!r} is not found by discovery")
    return found
