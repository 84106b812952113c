"""A loopback TCP/TLS proxy in front of the API server that breaks the network path on request.

Where it sits: in tests only, between a fastobs (or a ``KubeClient``) under test and the real
kube-apiserver; the client gets a kubeconfig that points at the proxy. Unlike an HTTP-level
proxy, it knows nothing of requests: it forwards bytes, and fails the way a network path fails.

* ``freeze()``: the path stops forwarding. Open connections go silent in both directions
  (nothing is read, nothing is written, nothing is closed: a half-open connection), and new
  connections complete the TCP handshake -- and in TLS mode the TLS handshake -- and are
  then never answered.
* ``blackhole()``: only new connections are never answered; open ones keep working.
* ``drop()``: every open connection is reset (RST to the client), as by a NAT or a
  middlebox that lost its state.
* ``recover()``: new connections are forwarded again. Connections that were frozen or
  blackholed stay dead (the path's state for them is gone), so the client has to notice and
  reconnect; ``recover(resume=True)`` resumes frozen ones instead (a path that only paused).

In TLS mode (the default) the proxy terminates TLS with the API server's own serving
certificate, so the client's CA file and host name work unchanged, and opens its own TLS
connection upstream. In TCP mode it forwards the TLS bytes untouched; a blackholed client
then hangs inside the TLS handshake.

The proxy runs its own event loop in a daemon thread, so synchronous tests and tests that
run fastobs's loop in the main thread can both use it. Every method is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

_CHUNK = 1 << 16


@dataclass
class ProxyStats:
    """What the proxy saw; read with ``FaultProxy.stats()`` (a copy)."""

    accepted: int = 0
    """Connections accepted (TLS mode: after the TLS handshake)."""
    forwarded: int = 0
    """Connections forwarded upstream."""
    blackholed: int = 0
    """Connections accepted and never answered."""
    frozen: int = 0
    """Open connections that went silent at a freeze()."""
    reset: int = 0
    """Connections reset by drop()."""
    open: int = 0
    """Connections open now (live, frozen or blackholed)."""
    accepted_at: list[float] = field(default_factory=list)
    """time.monotonic() of each accepted connection."""


class _Conn:
    """One client connection and, when forwarded, its upstream connection."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.client = writer
        self.upstream: asyncio.StreamWriter | None = None
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.dead = False
        """Frozen for good (until ``recover(resume=True)``) or blackholed."""
        self.tasks: list[asyncio.Task[None]] = []
        self.handler = asyncio.current_task()


class FaultProxy:
    """Forward 127.0.0.1:<port> to the API server until told to fail."""

    def __init__(self, server: str, cert_file: Path, key_file: Path, ca_file: Path, *,
                 tls: bool = True) -> None:
        url = urlsplit(server)
        self.upstream = (url.hostname or "127.0.0.1", url.port or 443)
        self.tls = tls
        self.ca_file = ca_file
        self._server_ctx: ssl.SSLContext | None = None
        self._client_ctx: ssl.SSLContext | None = None
        if tls:
            self._server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._server_ctx.load_cert_chain(str(cert_file), str(key_file))
            self._client_ctx = ssl.create_default_context(cafile=str(ca_file))
        self._mode = "forward"  # forward | blackhole | freeze
        self._stats = ProxyStats()
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    def in_front_of(cls, k8s: Any, *, tls: bool = True) -> FaultProxy:
        """A proxy for the test cluster (``k8s`` fixture), serving its own certificate."""
        ca: Path = k8s.ca_file  # the apiserver's self-signed serving certificate and its CA
        return cls(k8s.server, ca, ca.with_name("apiserver.key"), ca, tls=tls)

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, directory: Path, token: str, name: str = "fault-proxy.kubeconfig") -> Path:
        """A kubeconfig that reaches the API server through this proxy, as the admin token."""
        path = directory / name
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url,
                                                       "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "proxy", "user": {"token": token}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
        }))
        return path

    # ------------------------------------------------------------------ faults

    def freeze(self) -> None:
        """Open connections go silent; new ones are accepted and never answered."""
        self._call(self._freeze())

    def blackhole(self) -> None:
        """New connections are accepted and never answered; open ones keep working."""
        self._call(self._set_mode("blackhole"))

    def drop(self) -> int:
        """Reset every open connection; returns how many were reset."""
        return self._call(self._drop())

    def recover(self, resume: bool = False) -> None:
        """Forward new connections again; ``resume`` also wakes the frozen ones."""
        self._call(self._recover(resume))

    def stats(self) -> ProxyStats:
        return self._call(self._snapshot())

    # ------------------------------------------------------------------ inside the loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _start(self) -> None:
        tls = {"ssl": self._server_ctx, "ssl_handshake_timeout": 30} if self._server_ctx else {}
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, **tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            self._close(conn, reset=False)
        await asyncio.sleep(0)

    async def _set_mode(self, mode: str) -> None:
        self._mode = mode

    async def _freeze(self) -> None:
        self._mode = "freeze"
        for conn in self._conns:
            if not conn.dead:
                conn.dead = True
                conn.flowing.clear()
                self._stats.frozen += 1

    async def _recover(self, resume: bool) -> None:
        self._mode = "forward"
        if resume:
            for conn in self._conns:
                if conn.upstream is not None and conn.dead:
                    conn.dead = False
                    conn.flowing.set()

    async def _drop(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            self._close(conn, reset=True)
        self._stats.reset += len(conns)
        return len(conns)

    async def _snapshot(self) -> ProxyStats:
        s = self._stats
        return ProxyStats(s.accepted, s.forwarded, s.blackholed, s.frozen, s.reset, len(self._conns),
                          list(s.accepted_at))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
        self._stats.accepted += 1
        self._stats.accepted_at.append(time.monotonic())
        try:
            if self._mode != "forward":
                # Never answered: nothing is read, so the client's request sits in our
                # socket buffer, as it would in a router that stopped forwarding.
                conn.dead = True
                conn.flowing.clear()
                self._stats.blackholed += 1
                await asyncio.Event().wait()
            up_reader, conn.upstream = await asyncio.open_connection(
                *self.upstream, ssl=self._client_ctx, server_hostname=self.upstream[0] if self.tls else None)
            self._stats.forwarded += 1
            conn.tasks = [asyncio.ensure_future(self._pump(conn, reader, conn.upstream)),
                          asyncio.ensure_future(self._pump(conn, up_reader, writer))]
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            self._close(conn, reset=False)

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
            while True:
                await conn.flowing.wait()
                data = await reader.read(_CHUNK)
                await conn.flowing.wait()  # frozen while reading: this chunk is held, never sent
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

    def _close(self, conn: _Conn, *, reset: bool) -> None:
        if conn not in self._conns:
            return
        self._conns.discard(conn)
        for task in conn.tasks:
            task.cancel()
        if conn.handler is not None and conn.handler is not asyncio.current_task():
            conn.handler.cancel()
        for w in (conn.client, conn.upstream):
            if w is None:
                continue
            if reset:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
