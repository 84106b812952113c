"""Watch stream: one HTTP list or watch response from the apiserver, read line by line.

Where it sits: under ``source``, which opens the requests (the streamed list, the watch,
list pages) and decides what happens next; this module reads one open response and
classifies what went wrong. In: an ``aiohttp`` response whose body is newline-delimited
watch events (``{"type": ..., "object": ...}``). Out: each line, with its arrival time, to
the caller's ``on_line``; the parts of a line the source needs (:func:`parse_event`,
:func:`object_bytes`); or a :class:`Failure` whose ``kind`` feeds the stats and the retry
policy.

Invariants: a line is handed over whole, however the body is chunked and however long it
is; nothing is read while the consumer has no capacity (back-pressure reaches the TCP
window), and that wait never counts as silence; a response silent for ``read_timeout``
seconds while we wait for data (a half-open connection) is closed and reported as a
``timeout`` failure to retry at once. The object's bytes are passed on as the server sent
them, never re-encoded when the server's layout allows slicing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from fastobs.kube import status_message

__all__ = [
    "CONNECT_TIMEOUT",
    "Failure",
    "LineHandler",
    "describe",
    "error_event",
    "http_failure",
    "object_bytes",
    "parse_event",
    "read_lines",
    "status_kind",
]

RETRY_AFTER_CAP = 30.0
"""The longest Retry-After honoured (the source's longest backoff)."""
CONNECT_TIMEOUT = 30.0
_OBJECT_MARK = b'","object":'


class Failure(Exception):
    """An HTTP/stream failure, classified for stats and the retry policy."""

    def __init__(self, kind: str, message: str, *, retry_now: bool = False, relist: bool = False,
                 retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        # The server's Retry-After (429, 503): never retry sooner than that.
        self.retry_after = retry_after
        # True for an in-stream ERROR event: the server gave up on this watch.
        self.relist = relist
        # True when the connection had worked: reconnect at once, not after a backoff.
        self.retry_now = retry_now


def http_failure(resp: aiohttp.ClientResponse, body: bytes) -> Failure:
    """The failure a non-200 response stands for, with the server's message and Retry-After."""
    try:
        retry_after = min(float(resp.headers.get("Retry-After", "0")), RETRY_AFTER_CAP)
    except ValueError:
        retry_after = 0.0
    return Failure(status_kind(resp.status), status_message(resp.status, body), retry_after=retry_after)


def status_kind(status: int) -> str:
    if status == 410:
        return "expired"
    if status == 403:
        return "forbidden"
    if status == 401:
        return "unauthorized"
    if status == 404:
        return "not_found"
    if status == 429 or status >= 500:
        return "server"
    return "other"


LineHandler = Callable[[bytes, float], "bool | None"]
"""Receives (one line without its newline, monotonic arrival time); True stops the reading."""


async def read_lines(resp: aiohttp.ClientResponse, read_timeout: float, on_line: LineHandler, *,
                     wait_capacity: Callable[[], Awaitable[None]],
                     on_chunk: Callable[[int, float], None]) -> int:
    """Split the body on newlines (no length limit) and hand each line to ``on_line``, until
    the end of the body or until ``on_line`` returns True; returns the number of lines.

    ``wait_capacity`` is awaited before every read; ``on_chunk(size, now)`` runs for every
    chunk received, before its lines. Raises :class:`Failure` when the connection breaks
    or stays silent for ``read_timeout`` seconds.
    """
    # The read timeout is a _Stall watchdog rather than aiohttp's sock_read, whose
    # timer also runs while back-pressure holds reading.
    stall = _Stall(resp, read_timeout)
    try:
        return await _read(resp.content, stall, on_line, wait_capacity, on_chunk)
    finally:
        stall.stop()


async def _read(content: aiohttp.StreamReader, stall: _Stall, handle: LineHandler,
                wait_capacity: Callable[[], Awaitable[None]], on_chunk: Callable[[int, float], None]) -> int:
    pending: list[bytes] = []
    handled = 0
    while True:
        await wait_capacity()
        stall.waiting_since = time.monotonic()
        try:
            chunk = await content.readany()
        except (aiohttp.ClientError, OSError) as exc:
            if stall.fired:
                raise stall.failure() from None
            raise Failure("connection", describe(exc), retry_now=handled > 0) from None
        stall.waiting_since = 0.0
        if not chunk:
            if stall.fired:
                raise stall.failure()
            return handled
        now = time.monotonic()
        on_chunk(len(chunk), now)
        start = 0
        nl = chunk.find(b"\n")
        while nl >= 0:
            if pending:
                pending.append(chunk[start:nl])
                line = b"".join(pending)
                pending.clear()
            else:
                line = chunk[start:nl]
            if line:
                handled += 1
                if handle(line, now):
                    return handled
            start = nl + 1
            nl = chunk.find(b"\n", start)
        if start < len(chunk):
            pending.append(chunk[start:])


class _Stall:
    """The watch's read timeout: closes the response when a read has waited
    ``timeout`` seconds for data. Time spent waiting for sink capacity does not
    count, and one timer per connection is cheaper than one per read."""

    def __init__(self, resp: aiohttp.ClientResponse, timeout: float) -> None:
        self.waiting_since = 0.0
        """time.monotonic() when the pending read started; 0 = not reading."""
        self.fired = False
        self._resp = resp
        self._timeout = timeout
        self._handle: asyncio.TimerHandle | None = None
        if timeout > 0:
            self._period = max(timeout / 8, 0.02)
            self._handle = asyncio.get_running_loop().call_later(self._period, self._check)

    def _check(self) -> None:
        since = self.waiting_since
        if since and time.monotonic() - since >= self._timeout:
            self.fired = True
            self._handle = None
            self._resp.close()  # wakes the pending read with EOF or a connection error
            return
        self._handle = asyncio.get_running_loop().call_later(self._period, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def failure(self) -> Failure:
        # The server answered and then went silent (a half-open connection): the
        # read timeout already paced this, so reconnect at once.
        return Failure("timeout", f"no data for {self._timeout:g} s on the watch", retry_now=True)


def parse_event(line: bytes) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(type, object, object metadata) of one watch line; Failure when it is not one."""
    try:
        doc = orjson.loads(line)
        obj = doc["object"]
        return str(doc["type"]), obj, obj.get("metadata") or {}
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise Failure("other", "the server sent an invalid watch event") from None


def error_event(obj: dict[str, Any], *, relist: bool) -> Failure:
    """The failure an in-stream ERROR event (a Status) stands for; 410 means expired."""
    code = obj.get("code") or 0
    kind = "expired" if code == 410 else status_kind(int(code)) if code else "other"
    return Failure(kind, str(obj.get("message") or f"watch error {code}"), relist=relist)


def object_bytes(line: bytes, obj: Any) -> bytes:
    """The object's JSON exactly as the server sent it, sliced out of the event line.

    The apiserver encodes ``{"type":"X","object":{...}}``; anything else is re-encoded.
    """
    p = line.find(_OBJECT_MARK, 9, 64)
    if p > 0 and line.startswith(b'{"type":"') and line.endswith(b"}"):
        return line[p + len(_OBJECT_MARK):-1]
    return orjson.dumps(obj)


def describe(exc: BaseException) -> str:
    """One line for a connection error (aiohttp's messages may span lines or be empty)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
