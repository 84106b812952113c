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
them, never re-encoded when the server's layout allows slicing. An object the parser gives
up on (nested past orjson's 1,024 levels, which the apiserver accepts for CRDs that keep
unknown fields) is not a broken stream: :func:`scan_json` finds its key fields without
building it, and it goes on as a :class:`PartialObject`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import msgspec
import orjson

from fastobs.kube import status_message
from fastobs.kube_errors import go_error_text

__all__ = [
    "CONNECT_TIMEOUT",
    "Failure",
    "LineHandler",
    "PartialObject",
    "error_event",
    "http_failure",
    "object_bytes",
    "parse_event",
    "parse_object",
    "read_lines",
    "scan_json",
    "split_list",
    "status_kind",
    "with_type",
]

RETRY_AFTER_CAP = 30.0
"""The longest Retry-After honoured (the source's longest backoff)."""
CONNECT_TIMEOUT = 30.0
_OBJECT_MARK = b'","object":'


class Failure(Exception):
    """An HTTP/stream failure, classified for stats and the retry policy."""

    def __init__(self, kind: str, message: str, *, retry_now: bool = False, relist: bool = False,
                 retry_after: float = 0.0, status: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        """The HTTP status of a refused request; 0 for anything else."""
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
    return Failure(status_kind(resp.status), status_message(resp.status, body), retry_after=retry_after,
                   status=resp.status)


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
            raise Failure("connection", go_error_text(exc), retry_now=handled > 0) from None
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


class PartialObject(dict[str, Any]):
    """An object the JSON parser gave up on (nested deeper than its limit): only its
    ``metadata`` fields the pipeline needs (namespace, name, uid, resourceVersion), found by
    :func:`scan_json`, and the object's bytes as the server sent them (``raw``).

    The event still carries the object on; whoever must parse it fully (a template, the
    object variable) fails for this one key, never for the stream.
    """

    __slots__ = ("raw", "error")

    def __init__(self, metadata: dict[str, Any], raw: bytes, error: str) -> None:
        super().__init__(metadata=metadata)
        self.raw = raw
        self.error = error


class _Metadata(msgspec.Struct):
    """The only object fields the parent needs: the key, uid and resourceVersion."""

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None  # noqa: N815 - the field's name on the wire


class _Object(msgspec.Struct):
    metadata: _Metadata | None = None


class _Line(msgspec.Struct):
    type: str
    object: _Object


_DECODE_KEY_FIELDS = msgspec.json.Decoder(_Line).decode
"""Decodes a watch line into the fields above only, skipping the rest of the object
without building it: about a quarter of a full parse's CPU for a 5.7 KB Pod."""
_KEY_ONLY_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED"})


def parse_event(line: bytes) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
    """(type, object, object metadata) of one watch line; Failure when it is not one.

    For ADDED, MODIFIED and DELETED the object is not parsed (None): only its metadata's
    name, namespace, uid and resourceVersion are (the object itself goes on as bytes, see
    :func:`object_bytes`). Other types (BOOKMARK, ERROR) come fully parsed; an object too
    deep for the parser comes back as a :class:`PartialObject`.
    """
    try:
        fast = _DECODE_KEY_FIELDS(line)
    except (msgspec.DecodeError, RecursionError):
        # Not the usual shape, or too deep to skip: the full parse decides. (The skip
        # recurses, so it gives up below orjson's depth limit: an object orjson cannot
        # parse always reaches the PartialObject path.)
        fast = None
    if fast is not None and fast.type in _KEY_ONLY_TYPES:
        md = fast.object.metadata
        if md is None:
            return fast.type, None, {}
        return fast.type, None, {"name": md.name, "namespace": md.namespace, "uid": md.uid,
                                 "resourceVersion": md.resourceVersion}
    try:
        doc = orjson.loads(line)
        obj = doc["object"]
        return str(doc["type"]), obj, obj.get("metadata") or {}
    except orjson.JSONDecodeError as exc:
        partial = _scan_event(line, str(exc))
        if partial is None:
            raise Failure("other", "the server sent an invalid watch event") from None
        return partial
    except (KeyError, TypeError, AttributeError):
        raise Failure("other", "the server sent an invalid watch event") from None


def parse_object(data: bytes) -> dict[str, Any]:
    """One object (a list item); a :class:`PartialObject` when it is too deep to parse;
    ValueError when it is not an object at all."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        partial = _scan_object(data, str(exc))
        if partial is None:
            raise ValueError("not a JSON object") from None
        return partial
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


JsonPath = tuple[bytes | None, ...]
"""Object keys as written in the JSON text (quotes included); None: any array element."""

_TYPE: JsonPath = (b'"type"',)
_OBJECT: JsonPath = (b'"object"',)
_METADATA_FIELDS = (b'"namespace"', b'"name"', b'"uid"', b'"resourceVersion"')


def _metadata_paths(prefix: JsonPath) -> dict[JsonPath, str]:
    md = (*prefix, b'"metadata"')
    return {(*md, f): f.decode().strip('"') for f in _METADATA_FIELDS}


_EVENT_METADATA = _metadata_paths(_OBJECT)
_OBJECT_METADATA = _metadata_paths(())


def _scan_event(line: bytes, error: str) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """The fallback of :func:`parse_event`: type, key fields and the object's bytes, found
    without building the object; None when the line is not a watch event after all."""
    try:
        found = scan_json(line, (_TYPE, _OBJECT, *_EVENT_METADATA))
        etype = orjson.loads(_first(line, found, _TYPE))
        start, end = found[_OBJECT][0]
        md = _scalars(line, found, _EVENT_METADATA)
    except (ValueError, KeyError, IndexError):
        return None
    if not isinstance(etype, str) or line[start:start + 1] != b"{" or "name" not in md:
        return None
    obj = PartialObject(md, line[start:end], error)
    return etype, obj, md


_OBJECT_TYPE: dict[JsonPath, str] = {(b'"apiVersion"',): "apiVersion", (b'"kind"',): "kind"}


def _scan_object(data: bytes, error: str) -> PartialObject | None:
    try:
        found = scan_json(data, (*_OBJECT_METADATA, *_OBJECT_TYPE))
        md = _scalars(data, found, _OBJECT_METADATA)
        typed = _scalars(data, found, _OBJECT_TYPE)
    except ValueError:
        return None
    if not data.lstrip().startswith(b"{") or "name" not in md:
        return None
    obj = PartialObject(md, data.strip(), error)
    obj.update(typed)
    return obj


_LIST_FIELDS: dict[JsonPath, str] = {
    (b'"kind"',): "kind", (b'"apiVersion"',): "apiVersion",
    (b'"metadata"', b'"resourceVersion"'): "resourceVersion", (b'"metadata"', b'"continue"'): "continue",
}
_LIST_ITEMS: JsonPath = (b'"items"', None)


def split_list(body: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """A list response's kind, apiVersion, resourceVersion and continue token, and its
    items' bytes, found without parsing the items (for a page the parser gave up on).
    Raises ValueError when the body is not a list."""
    found = scan_json(body, (*_LIST_FIELDS, _LIST_ITEMS))
    return _scalars(body, found, _LIST_FIELDS), [body[a:b] for a, b in found.get(_LIST_ITEMS, [])]


def with_type(obj: PartialObject, api_version: str, kind: str) -> bytes:
    """A list item's bytes with the ``apiVersion`` and ``kind`` lists leave out."""
    if "apiVersion" in obj and "kind" in obj:
        return obj.raw
    head = b'{"apiVersion":' + orjson.dumps(api_version) + b',"kind":' + orjson.dumps(kind)
    rest = obj.raw[1:].lstrip()
    return head + (rest if rest.startswith(b"}") else b"," + rest)


def _first(data: bytes, found: dict[JsonPath, list[tuple[int, int]]],
           path: JsonPath) -> bytes:
    start, end = found[path][0]
    return data[start:end]


def _scalars(data: bytes, found: dict[JsonPath, list[tuple[int, int]]],
             fields: dict[JsonPath, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, name in fields.items():
        if path in found:
            value = orjson.loads(_first(data, found, path))
            if isinstance(value, str):
                out[name] = value
    return out


_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+')
_OPEN_OBJECT, _OPEN_ARRAY, _CLOSE_OBJECT, _CLOSE_ARRAY = b"{", b"[", b"}", b"]"
_QUOTE, _COLON, _COMMA = ord('"'), ord(":"), ord(",")


def scan_json(data: bytes, paths: Iterable[JsonPath]
              ) -> dict[JsonPath, list[tuple[int, int]]]:
    """Where the values at ``paths`` are in the JSON text ``data``, at any nesting depth.

    A path is a tuple of object keys as they are written in the text (``b'"metadata"'``,
    quotes included) and ``None`` for "any element of an array". Returns path -> the
    ``(start, end)`` offsets of every value found there, containers included. No value is
    built and nothing recurses, so no depth is too deep; only the paths' own prefixes are
    followed. Raises ValueError on text that is not JSON in structure (strings and
    scalars are not validated: the caller decodes the few it needs).
    """
    wanted = set(paths)
    followed = {p[:i] for p in wanted for i in range(len(p) + 1)}
    found: dict[JsonPath, list[tuple[int, int]]] = {}
    # One entry per open container: its path (None once off every wanted path), whether it
    # is an object, the key of the value that comes next in it, where it starts.
    stack: list[list[Any]] = []
    expect_key = False
    for m in _TOKEN.finditer(data):
        tok = m.group()
        if expect_key:
            expect_key = False
            if tok[0] == _QUOTE:
                stack[-1][2] = tok
                continue
            if tok != _CLOSE_OBJECT:
                raise ValueError("an object key was expected")
        first = tok[0]
        if first == _COLON:
            continue
        if first == _COMMA:
            if not stack:
                raise ValueError("a comma outside any container")
            expect_key = stack[-1][1]
            continue
        if tok == _CLOSE_OBJECT or tok == _CLOSE_ARRAY:
            if not stack or stack[-1][1] != (tok == _CLOSE_OBJECT):
                raise ValueError("unbalanced brackets")
            path, _, _, start = stack.pop()
            if path in wanted:
                found.setdefault(path, []).append((start, m.end()))
            continue
        path = _child_path(stack, followed)
        if tok == _OPEN_OBJECT or tok == _OPEN_ARRAY:
            stack.append([path, tok == _OPEN_OBJECT, None, m.start()])
            expect_key = tok == _OPEN_OBJECT
        elif path in wanted:
            found.setdefault(path, []).append((m.start(), m.end()))
    if stack:
        raise ValueError("the text ends inside a container")
    return found


def _child_path(stack: list[list[Any]], followed: set[JsonPath]
                ) -> JsonPath | None:
    """The path of the value that starts now, or None when no wanted path goes there."""
    if not stack:
        return ()
    parent, is_object, key, _ = stack[-1]
    if parent is None:
        return None
    path = (*parent, key if is_object else None)
    return path if path in followed else None


def error_event(obj: dict[str, Any] | None, *, relist: bool) -> Failure:
    """The failure an in-stream ERROR event (a Status) stands for; 410 means expired."""
    obj = obj or {}  # parse_event always parses an ERROR's object; None only for typing
    code = obj.get("code") or 0
    kind = "expired" if code == 410 else status_kind(int(code)) if code else "other"
    return Failure(kind, str(obj.get("message") or f"watch error {code}"), relist=relist)


def object_bytes(line: bytes, obj: Any) -> bytes:
    """The object's JSON exactly as the server sent it, sliced out of the event line.

    The apiserver encodes ``{"type":"X","object":{...}}``; anything else is re-encoded.
    """
    if type(obj) is PartialObject:
        return obj.raw
    p = line.find(_OBJECT_MARK, 9, 64)
    if p > 0 and line.startswith(b'{"type":"') and line.endswith(b"}"):
        return line[p + len(_OBJECT_MARK):-1]
    if obj is None:  # parse_event left it unparsed
        obj = orjson.loads(line)["object"]
    return orjson.dumps(obj)
