"""Prefetch: the first list request, sent before the engine and its libraries are imported.

Where it sits: in the parent, between ``cli`` (which calls :func:`start` as soon as argv is
parsed) and ``daemon`` (which hands the result to ``kube`` and ``source``). In: the
:class:`~fastobs.settings.Settings`. Out: a :class:`Prefetch` holding the loaded
credentials, the TLS context, the discovery result and the sent first list request (the
streamed list, the request ``source`` sends first), or None.

Why: aiohttp, uvloop, prometheus_client and the engine cost about 250 ms of imports; with
the standard library alone (``ssl``, ``http.client``) the request leaves well before them,
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

import http.client
import os
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

import orjson

from fastobs import __version__, credentials
from fastobs.discovery import AGGREGATED_ACCEPT, Resource, Served, from_aggregated, match
from fastobs.settings import Settings

if TYPE_CHECKING:
    import asyncio  # imported by the engine; here only once the engine runs (~25 ms)

__all__ = ["Prefetch", "PrefetchedResponse", "outcome", "start", "streamed_list_params"]

BUDGET = 2.0
"""Seconds the fast path may wait on the network (per connect, send or read) before it gives
up; then the normal path runs with its own deadlines (a server that does not answer costs
at most this much more)."""
_READ_BUFFER = 1 << 20
"""Bytes read ahead of the source at most (aiohttp's read buffer): back-pressure beyond."""

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


class _TLSConnection(http.client.HTTPSConnection):
    """An https connection whose certificate is checked for ``server_name`` (the
    kubeconfig's ``tls-server-name``) rather than the host dialled, as aiohttp's
    ``server_hostname`` does."""

    def __init__(self, host: str, port: int | None, *, timeout: float, context: ssl.SSLContext,
                 server_name: str | None) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._tls = context
        self._server_name = server_name or host

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


class Prefetch:
    """What the fast path did: credentials, TLS context, discovery, and the sent request."""

    def __init__(self, cfg: credentials.Config, context_namespace: str, tls: ssl.SSLContext | None,
                 served: list[Served], resource: Resource, path: str, params: dict[str, str],
                 conn: http.client.HTTPConnection, sent_at: float) -> None:
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
        self._conn: http.client.HTTPConnection | None = conn

    async def open(self, path: str, params: dict[str, str]) -> PrefetchedResponse | None:
        """The response to the request already sent, if it is the one the caller is about to
        send (same path, same query) and the server accepted it (200, identity encoding);
        else None and the caller sends its own. Only the first call can get it."""
        import asyncio

        global outcome
        conn, self._conn = self._conn, None
        if conn is None:
            return None
        if (path, params) != (self.path, self.params):
            conn.close()
            outcome = "prefetched list closed unread: the first request differs"
            return None
        try:
            resp = await asyncio.to_thread(conn.getresponse)
        except (OSError, http.client.HTTPException):
            conn.close()
            outcome = "prefetched list failed; listing again"
            return None
        if resp.status != 200 or resp.getheader("Content-Encoding", "identity") != "identity":
            conn.close()
            outcome = f"prefetched list answered {resp.status}; listing again"
            return None
        if conn.sock is not None:
            conn.sock.settimeout(None)  # from now on the source's read timeout applies
        outcome = "prefetched list consumed"
        return PrefetchedResponse(conn, resp, asyncio.get_running_loop())

    def close(self) -> None:
        """Close the request if nobody took it (start-up failed before the source ran)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class PrefetchedResponse:
    """The prefetched response, read the way ``source`` and ``watchstream`` read an aiohttp
    response: ``status``, ``headers``, ``content.readany()``, ``close()``, ``async with``.

    A thread reads the socket ahead of the consumer (at most :data:`_READ_BUFFER` bytes, then
    it waits: back-pressure reaches the TCP window as with aiohttp); ``close`` from the event
    loop (the source's read timeout) shuts the socket down, which wakes that thread.
    """

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.status = resp.status
        self.headers = {k: v for k, v in resp.getheaders()}
        self.content = self
        self._conn = conn
        self._resp = resp
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False
        import asyncio

        self._room = threading.Condition()
        self._ready = asyncio.Event()
        self._thread = threading.Thread(target=self._read_ahead, name="fastobs-prefetch", daemon=True)
        self._thread.start()

    def _read_ahead(self) -> None:
        while True:
            with self._room:
                while self._buffered >= _READ_BUFFER and not self._closed:
                    self._room.wait()
                if self._closed:
                    return
            try:
                chunk = self._resp.read1(1 << 16)
            except BaseException as exc:  # handed to the reader, who decides what it means
                self._push(b"", exc)
                return
            self._push(chunk, None)
            if not chunk:
                return

    def _push(self, chunk: bytes, error: BaseException | None) -> None:
        with self._room:
            if chunk:
                self._chunks.append(chunk)
                self._buffered += len(chunk)
            else:
                self._ended = True
                self._error = error
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
            await self._ready.wait()

    def _end(self) -> bytes:
        error = self._error
        if error is None or self._closed:
            return b""
        if isinstance(error, OSError):
            raise error
        import aiohttp  # loaded by now: the engine runs

        # A body cut short (http.client's IncompleteRead): aiohttp's words for the same.
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
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
            except OSError:
                pass
        self._ready.set()
        self._thread.join(timeout=1.0)
        self._conn.close()

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
    conn: http.client.HTTPConnection
    if tls is not None:
        conn = _TLSConnection(url.hostname, url.port or 443, timeout=BUDGET, context=tls,
                              server_name=cfg.tls_server_name)
    else:  # the port always given: http.client would read one out of a bare IPv6 address
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=BUDGET)
    headers = {"User-Agent": f"fastobs/{__version__}", "Accept-Encoding": "gzip, deflate"}
    if auth:
        headers["Authorization"] = auth
    prefix = url.path.rstrip("/")
    try:
        served = _discover(conn, prefix, headers)
        resource = _resolve(served, settings.resource)
        namespace = settings.namespace or context_namespace or "default"
        path = resource.collection_path(None if settings.all_namespaces else namespace)
        params = streamed_list_params(settings.selector, settings.field_selector.strip())
        _send(conn, prefix + path + "?" + urlencode(params), headers, "application/json")
        sent_at = time.monotonic()
    except BaseException:
        conn.close()
        raise
    return Prefetch(cfg, context_namespace, tls, served, resource, path, params, conn, sent_at)


def _send(conn: http.client.HTTPConnection, url: str, headers: dict[str, str], accept: str) -> None:
    conn.putrequest("GET", url, skip_accept_encoding=True)
    for name, value in (*headers.items(), ("Accept", accept)):
        conn.putheader(name, value)
    conn.endheaders()


def _discover(conn: http.client.HTTPConnection, prefix: str, headers: dict[str, str]) -> list[Served]:
    """``/api`` and ``/apis`` in their aggregated form, on one kept-alive connection."""
    served: list[Served] = []
    for path in ("/api", "/apis"):
        _send(conn, prefix + path, headers, AGGREGATED_ACCEPT)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise GiveUp(f"discovery of {path} answered {resp.status}")
        doc = orjson.loads(_decoded(body, resp.getheader("Content-Encoding", "identity")))
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
