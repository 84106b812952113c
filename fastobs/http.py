"""HTTP endpoints: ``/metrics`` and the health checks, served from the parent's event loop.

Where it sits: the parent starts :func:`serve` once when ``--listen-addr`` is not empty.
In: a :class:`~fastobs.metrics.Metrics` to render and a :class:`HealthProvider` to ask.
Out: plain HTTP answers, with ``oc observe``'s exact bodies on ``/healthz`` and
``/healthz/ready``.

Endpoints:

* ``/metrics``: Prometheus text format 0.0.4.
* ``/healthz``, ``/healthz/ready``: as oc (Kubernetes ``healthz`` style), ready once the
  initial sync is done.
* ``/readyz``: ready once the initial sync is done *and* the watch is up; in a group of
  replicas its verbose form names the role (owner of some buckets, or standby: a standby is
  ready too, so a rolling update goes on).
* ``/readyz/owner``: in a group of replicas, ready only while this replica owns buckets.
* ``/livez``: fails only when a worker stops answering heartbeats, or the group's member
  loop stopped running (it runs whether or not the API server answers).

Invariant: ``/livez`` never depends on the API server. A liveness probe that failed during
an API outage would make the kubelet restart every replica at once, for a problem a
restart cannot fix; a wedged event loop does not answer at all, which is what the
probe's timeout catches.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from fastobs.errors import ListenError
from fastobs.metrics import CONTENT_TYPE, Metrics

__all__ = ["HealthProvider", "Server", "parse_listen_addr", "serve"]

log = logging.getLogger(__name__)

_TEXT = "text/plain; charset=utf-8"


class HealthProvider(Protocol):
    """What the engine answers for the health endpoints."""

    def initial_sync_done(self) -> bool: ...

    def watch_up(self) -> bool: ...

    def workers_healthy(self) -> bool:
        """Every worker answered heartbeats recently."""
        ...

    def group_role(self) -> str | None:
        """In a group of replicas: "owner of N of B buckets" or "standby"; None alone."""
        ...

    def group_healthy(self) -> bool:
        """The group's member loop ran recently (True alone)."""
        ...


class Server:
    """A running endpoint server; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    async def close(self) -> None:
        """Stop listening and finish the requests in progress."""
        await self._runner.cleanup()


async def serve(listen_addr: str, metrics: Metrics, health: HealthProvider) -> Server:
    """Serve the endpoints on ``listen_addr`` (oc's form: ``:11251``, ``127.0.0.1:0``, ``[::1]:80``).

    Raises :class:`~fastobs.errors.ListenError` when the address cannot be bound.
    """
    sock = _bind(listen_addr)
    app = web.Application()
    app.router.add_get("/metrics", _metrics_handler(metrics))
    app.router.add_get("/healthz", _healthz_handler(health))
    app.router.add_get("/healthz/ready", _healthz_ready_handler(health))
    app.router.add_get("/readyz", _readyz_handler(health))
    app.router.add_get("/readyz/owner", _owner_handler(health))
    app.router.add_get("/livez", _livez_handler(health))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    port = int(sock.getsockname()[1])
    log.debug("serving /metrics and health endpoints on %s (port %d)", listen_addr, port)
    return Server(runner, port)


def parse_listen_addr(addr: str) -> tuple[str, int]:
    """Split ``host:port`` as Go's ``net.SplitHostPort``; an empty host means every interface."""
    host, sep, port_text = addr.rpartition(":")
    if not sep:
        raise ValueError(f"address {addr}: missing port in address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"address {addr}: too many colons in address")
    try:
        port = int(port_text, 10) if port_text else 0
    except ValueError:
        raise ValueError(f"address {addr}: invalid port") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"address {addr}: invalid port")
    return host, port


def _bind(addr: str) -> socket.socket:
    # The socket is bound here, not inside aiohttp, so a bind failure surfaces at once as
    # oc's message, and the real port is known for ":0".
    try:
        host, port = parse_listen_addr(addr)
    except ValueError as e:
        raise ListenError(f'Unable to listen on "{addr}": listen tcp: {e}') from None
    try:
        return _listening_socket(host, port)
    except socket.gaierror as e:
        raise ListenError(f'Unable to listen on "{addr}": listen tcp: lookup {host}: {e.strerror}') from None
    except OSError as e:
        reason = os.strerror(e.errno).lower() if e.errno else str(e)
        raise ListenError(f'Unable to listen on "{addr}": listen tcp {addr}: bind: {reason}') from None


def _listening_socket(host: str, port: int) -> socket.socket:
    if not host and socket.has_dualstack_ipv6():
        # Go's ":port" listens on every IPv4 and IPv6 address with one socket.
        return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    if not host:
        return socket.create_server(("0.0.0.0", port))
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    return socket.create_server(sockaddr[:2], family=family)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _metrics_handler(metrics: Metrics) -> _Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    return handle


def _healthz_handler(health: HealthProvider) -> _Handler:
    # The Kubernetes healthz format oc serves: "ok", or a verbose list on request or failure.
    async def handle(request: web.Request) -> web.Response:
        ready = _ask(health.initial_sync_done)
        if ready and "verbose" not in request.query:
            return _text(200, "ok")
        if ready:
            return _text(200, "[+]ready ok\nhealthz check passed\n")
        return _text(500, "[-]ready failed: reason withheld\nhealthz check failed\n")

    return handle


def _healthz_ready_handler(health: HealthProvider) -> _Handler:
    async def handle(request: web.Request) -> web.Response:
        if _ask(health.initial_sync_done):
            return _text(200, "ok")
        return _text(500, "internal server error: waiting for initial sync\n")

    return handle


def _readyz_handler(health: HealthProvider) -> _Handler:
    async def handle(request: web.Request) -> web.Response:
        checks = [
            ("initial-sync", _ask(health.initial_sync_done), "waiting for initial sync"),
            ("watch", _ask(health.watch_up), "watch is not connected"),
        ]
        role = health.group_role()
        if role is not None:
            checks.append((f"role: {role}", True, ""))
        return _checks_response("readyz", checks, verbose="verbose" in request.query)

    return handle


def _owner_handler(health: HealthProvider) -> _Handler:
    async def handle(request: web.Request) -> web.Response:
        role = health.group_role()
        owner = role is not None and role != "standby"
        checks = [("owner", owner, role or "not in a group of replicas")]
        return _checks_response("readyz", checks, verbose="verbose" in request.query)

    return handle


def _livez_handler(health: HealthProvider) -> _Handler:
    async def handle(request: web.Request) -> web.Response:
        checks = [("workers", _ask(health.workers_healthy), "a worker stopped answering heartbeats")]
        if health.group_role() is not None:
            checks.append(("group", _ask(health.group_healthy), "the member loop stopped running"))
        return _checks_response("livez", checks, verbose="verbose" in request.query)

    return handle


def _checks_response(endpoint: str, checks: list[tuple[str, bool, str]], *, verbose: bool) -> web.Response:
    passed = all(ok for _, ok, _ in checks)
    if passed and not verbose:
        return _text(200, "ok")
    lines = [f"[+]{name} ok" if ok else f"[-]{name} failed: {why}" for name, ok, why in checks]
    verdict = "passed" if passed else "failed"
    return _text(200 if passed else 500, "\n".join(lines) + f"\n{endpoint} check {verdict}\n")


def _ask(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        # A check that raises is a failing check; the endpoint itself must keep answering.
        log.exception("health check %s raised", getattr(check, "__name__", check))
        return False


def _text(status: int, body: str) -> web.Response:
    return web.Response(
        status=status, body=body.encode(),
        headers={"Content-Type": _TEXT, "X-Content-Type-Options": "nosniff"},
    )
