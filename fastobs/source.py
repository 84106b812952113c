"""Source: list + watch one resource and turn the HTTP streams into events.

Where it sits: after ``kube`` (which authenticates and resolves the resource) and
before ``tracker``. This module is the reflector loop (list, watch, relist, and the retry
policy below); ``watchstream`` reads each response line by line. In: the apiserver's
streamed list (a watch with ``sendInitialEvents``, one object per line, ended by the
``k8s.io/initial-events-end`` bookmark), or its paginated list responses where streaming
is not supported, then its watch stream (newline-delimited ``{"type": ..., "object": ...}``
lines). Out: calls on a :class:`Sink` -- list boundaries, ``Sync`` items, live
``Added``/``Updated``/``Deleted`` events -- each carrying the object's raw JSON bytes, and
:class:`SourceStats`.

Invariant: no change is missed. A watch always resumes from the last resourceVersion
seen (events and bookmarks move it); when the server says that version is gone (HTTP
410, an in-stream ``ERROR`` event, an expired continue token) the source relists, and
the sink's ``list_end`` lets the tracker detect keys that vanished meanwhile. The
source keeps no parsed objects beyond the list page being read.

Retry policy (client-go's reflector, as oc observe behaves):

* watch ended normally (server timeout) -> resume from the last resourceVersion;
* 410 / expired -> relist at once; any other in-stream ``ERROR`` event, 403, 404 ->
  relist after the backoff;
* connection error, 429, 5xx, 401, no response headers in time (every request has a
  deadline up to its headers, see ``_WATCH_HEADERS_TIMEOUT``) -> resume after the backoff
  (0.8 s doubling to 30 s, at least ``Retry-After``); a connection that had delivered
  events, or a read timeout (no byte for ``read_timeout`` s, e.g. a half-open connection)
  -> resume at once;
* a failed list -> one error line, counted run-wide, retried about a second later;
  more than ``maximum_errors`` failures raise ListErrorLimit; a list refused as a bad
  request (400: a field label the resource does not support) raises UsageError at once.

In a group of replicas (``ownership``) the source can be sent back in time: :meth:`Source.rewind`
makes the next watch start at an older resourceVersion, so what happened since then (deletes
included) is delivered again, and ``on_rewind`` says when that replay starts or that the server
no longer has its start; then a list as of that start (``on_seed``, read from storage) and a
relist follow, so the sink can still tell which objects were deleted since. With the
server-side filter every request carries the group's ``shardSelector`` of the moment.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, cast

import aiohttp
import orjson

from fastobs.errors import ListErrorLimit, UsageError
from fastobs.events import Event, EventType, object_key
from fastobs.kube import KubeClient, Resource, status_message
from fastobs.kube_errors import go_error_text
from fastobs.prefetch import Prefetch
from fastobs.selector import unable_to_find
from fastobs.watchstream import (
    CONNECT_TIMEOUT,
    Failure,
    LineHandler,
    PartialObject,
    error_event,
    http_failure,
    object_bytes,
    parse_event,
    parse_object,
    read_lines,
    split_list,
    with_type,
)

log = logging.getLogger(__name__)

_WATCH_TYPES = {"ADDED": EventType.ADDED, "MODIFIED": EventType.UPDATED, "DELETED": EventType.DELETED}
_BACKOFF_START = 0.8
_BACKOFF_CAP = 30.0
_LIST_RETRY_DELAY = 1.0
"""oc retries a failed list about once a second (client-go's reflector period)."""
_WATCH_SECONDS = (300, 600)
"""Server-side watch duration, randomized like client-go so many clients do not
reconnect in lockstep."""
_SHORT_WATCH = 1.0
"""A watch that ends normally within this many seconds without a single line is
treated as a failure (client-go's "very short watch"), so a broken server cannot
make the source spin."""
_INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_WATCH_HEADERS_TIMEOUT = (5.0, 30.0)
"""The apiserver answers a watch (a streamed list too) with its headers once the watch is
registered, before any event: a watch still without headers after the read timeout, kept
within 5..30 s, went into a path that stopped forwarding, and only a new connection gets
through (the floor spares a merely busy server when the read timeout is very short)."""
_LIST_HEADERS_TIMEOUT = 60.0
"""A list page's headers come once the server has built the page; by its own default
request timeout (60 s) it answers, if only with 504. A list page otherwise gets the read
timeout, the same bound as any silence while its body is read."""


class Sink(Protocol):
    """Receives what the source produces (the parent's engine, in front of ``tracker``).

    A ``list_begin`` may follow another ``list_begin`` without a ``list_end`` when a
    list failed half-way; the later one starts over.
    """

    def list_begin(self, *, relist: bool) -> None: ...

    def list_item(self, ev: Event) -> None: ...

    def list_end(self) -> None: ...

    def watch_event(self, ev: Event) -> None: ...

    def watch_status(self, up: bool) -> None: ...

    async def wait_capacity(self) -> None: ...


@dataclass
class SourceStats:
    """Everything the source does that metrics may report; mutated in place."""

    list_requests: int = 0
    watch_requests: int = 0
    relists: int = 0
    errors: dict[tuple[str, str], int] = field(default_factory=dict)
    """(op "list"|"watch", kind) -> count; kinds: expired, forbidden, unauthorized,
    not_found, connection, timeout, server (5xx, 429), other."""
    last_activity: float = 0.0
    """time.monotonic() of the last byte, event or bookmark received."""
    watch_up: bool = False
    list_errors: int = 0
    """Failed lists, run-wide (never reset): compared with --maximum-errors."""
    lists_completed: int = 0
    events: dict[str, int] = field(default_factory=dict)
    """EventType value -> events delivered to the sink."""
    bookmarks: int = 0
    bytes_received: int = 0
    resource_version: str = ""
    """The resourceVersion the next watch resumes from."""
    undecodable: int = 0
    """Objects the parser gave up on (too deeply nested), passed on with their key found
    by a fallback scan."""

    def count_error(self, op: str, kind: str) -> None:
        self.errors[(op, kind)] = self.errors.get((op, kind), 0) + 1

    def count_events(self, etype: EventType, n: int = 1) -> None:
        name = etype.value  # an enum's value is a property: read it once
        self.events[name] = self.events.get(name, 0) + n


def _older(a: str, b: str) -> bool:
    """Whether resourceVersion ``a`` is before ``b`` (integers; otherwise keep ``a``)."""
    return not (a.isdigit() and b.isdigit()) or int(a) < int(b)


class _Next(Enum):
    """What the run loop does after a watch connection ends."""

    RESUME = "resume"
    RELIST = "relist"


class _Backoff:
    """0.8 s doubling to 30 s with ±20% jitter; reset by a healthy watch."""

    def __init__(self) -> None:
        self._next = _BACKOFF_START

    def reset(self) -> None:
        self._next = _BACKOFF_START

    def delay(self) -> float:
        d = self._next
        self._next = min(self._next * 2, _BACKOFF_CAP)
        return d * random.uniform(0.8, 1.2)


class Source:
    """Lists then watches one resource forever, relisting when the server requires it."""

    prefetched: Prefetch | None = None
    """The first list request, sent already by ``prefetch``: read instead of sent again."""

    def __init__(self, client: KubeClient, resource: Resource, *, namespace: str | None,
                 label_selector: str, field_selector: str, sink: Sink, maximum_errors: int,
                 read_timeout: float = 90.0, page_size: int = 500, stream_list: bool = True,
                 on_stats: Callable[[], None] | None = None,
                 shard_selector: Callable[[], str] | None = None) -> None:
        self._client = client
        self._resource = resource
        self._path = resource.collection_path(namespace)
        self._selectors = {k: v for k, v in (("labelSelector", label_selector),
                                              ("fieldSelector", field_selector)) if v}
        self._sink = sink
        self._maximum_errors = maximum_errors
        self._read_timeout = read_timeout
        self._page_size = page_size
        self._on_stats = on_stats
        self.stats = SourceStats()
        self._rv = ""
        self._listed = False
        self._relist_requested = False
        self._wake = asyncio.Event()
        self._watch_task: asyncio.Future[_Next] | None = None
        self._stream_list = stream_list
        """Try the streaming list (WatchList: ``sendInitialEvents``) first; it is turned off
        for good when the server refuses it, and the paginated LIST serves instead."""
        self._initial_begun = False
        self._initial_rv: str | None = None
        self._stream_refusal = ""
        self._backoff = _Backoff()
        self._shard_selector = shard_selector
        self._rewind: tuple[str | None] | None = None
        """A pending rewind: (resourceVersion,) to watch from, (None,) to relist."""
        self._replaying: str | None = None
        """The resourceVersion a replay started at, until its first line arrives."""
        self.on_rewind: Callable[[str | None, bool], None] | None = None
        """Called with (rv, False) right before a rewound watch (rv None: a relist) is
        requested, and with (rv, True) when the server no longer has ``rv``."""
        self.on_seed: Callable[[Event], None] | None = None
        """With it set, a replay starts with a list of the objects as they were at its start
        (``resourceVersionMatch=Exact``, served from storage, which keeps more history than
        the watch), each of them passed here, so the sink knows every object of the replayed
        past, not only those that changed; when the watch can no longer serve the replay, the
        relist that replaces it is preceded by that list too."""
        self.on_seeded: Callable[[str, bool], None] | None = None
        """Called with (rv, ok) once that list ended, or failed (its history is gone too)."""
        self._seed: str | None = None
        """The resourceVersion of the list :attr:`on_seed` gets next (before the replay's
        watch, or before the relist that replaces a replay the watch could not serve)."""
        self._seeded: str | None = None
        """The resourceVersion of the last list that :attr:`on_seed` got in full."""

    # ------------------------------------------------------------------ control

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion, forever; a :meth:`rewind` made
        before the start replaces the first list (a watch from where a previous run stopped)."""
        await self._loop(need_list=self._rewind is None)

    async def _loop(self, need_list: bool) -> None:
        while True:
            if self._rewind is not None:
                need_list = self._start_rewind() or need_list
            if self._seed is not None:
                await self._seed_list(self._seed)
                if self._rewind is not None:
                    continue  # asked for during that list: apply it before anything else
            if need_list or self._relist_requested:
                await self._list_until_success()
                if self._rewind is not None:
                    # Asked for during the list (which had no watch to interrupt): apply it
                    # before watching, or it would wait for the watch's natural end.
                    need_list = False
                    continue
            need_list = await self._watch_cycle() is _Next.RELIST

    def rewind(self, rv: str | None) -> None:
        """Deliver again what happened since ``rv``: the next watch starts there (events the
        sink already had come again), or with None the next cycle relists. Two rewinds before
        the next watch start at the older point. Interrupts the current watch."""
        if self._rewind is not None:
            pending = self._rewind[0]
            if pending is None or (rv is not None and _older(pending, rv)):
                rv = pending
        self._rewind = (rv,)
        self._wake.set()
        if self._watch_task is not None and not self._watch_task.done():
            self._watch_task.cancel()

    def position(self) -> int | None:
        """The resourceVersion everything up to which was delivered (events and bookmarks);
        None before the first list ended, or when it is not an integer."""
        rv = self.stats.resource_version
        return int(rv) if rv.isdigit() else None

    def _start_rewind(self) -> bool:
        """Apply the pending rewind; True when it is a relist."""
        assert self._rewind is not None
        (rv,) = self._rewind
        self._rewind = None
        if self.on_rewind is not None:
            self.on_rewind(rv, False)
        if rv is None:
            return True
        self._rv = self.stats.resource_version = rv
        self._listed = True
        self._replaying = rv
        if self.on_seed is not None:
            self._seed = rv  # the objects as of there first: the replay brings only changes
        return False

    async def server_filters(self, selector: str) -> bool:
        """Whether the server applies ``selector`` (it echoes it in ``metadata.shardInfo`` of a
        list); False on any failure, so the caller falls back to filtering itself."""
        params = dict(self._selectors)
        params.update(limit="1", shardSelector=selector)
        try:
            resp = await self._client.request("GET", self._path, params)
            async with resp:
                body = await resp.read()
            doc = orjson.loads(body) if resp.status == 200 else {}
        except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
            log.warning("could not ask the server about shardSelector: %s", go_error_text(exc))
            return False
        if resp.status != 200:
            log.info("the server refused shardSelector: %s", status_message(resp.status, body))
            return False
        info = (doc.get("metadata") or {}).get("shardInfo") or {}
        return bool(info.get("selector"))

    def clear_shard_selector(self) -> None:
        """The server does not filter: send no ``shardSelector`` (it would only be ignored)."""
        self._shard_selector = None

    def _params(self) -> dict[str, str]:
        params = dict(self._selectors)
        if self._shard_selector is not None:
            params["shardSelector"] = self._shard_selector()
        return params

    def request_relist(self) -> None:
        """Make the next cycle a full relist (``--resync-period``); interrupts the watch."""
        self._relist_requested = True
        self._wake.set()
        if self._watch_task is not None and not self._watch_task.done():
            self._watch_task.cancel()

    def retry_now(self) -> None:
        """The API server is reachable again (another request just got through): end the
        backoff now instead of after up to 30 s, and start the next backoff from its start."""
        self._backoff.reset()
        self._wake.set()

    def _changed(self) -> None:
        if self._on_stats is not None:
            self._on_stats()

    async def _sleep(self, delay: float) -> None:
        """Sleep, cut short by request_relist."""
        if delay <= 0:
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except TimeoutError:
            pass

    # --------------------------------------------------------------------- list

    async def _list_until_success(self) -> None:
        """One full list; failures are logged, counted, and retried about once a second."""
        paginate = True
        if self._listed:
            self.stats.relists += 1
        while True:
            try:
                rv = await self._streamed_list() if self._stream_list else None
                self._rv = rv if rv is not None else await self._list(paginate)
                self.stats.resource_version = self._rv
                self._relist_requested = False
                return
            except Failure as f:
                self.stats.count_error("list", f.kind)
                self._changed()
                if f.kind == "expired" and paginate:
                    # The continue token expired mid-list: start over in one request
                    # (client-go's pager does the same), which cannot expire again.
                    log.warning("list of %s: continue token expired; listing again without pages",
                                self._resource.resource)
                    paginate = False
                    continue
                if f.status == 400:
                    # A bad request (a field label the resource does not support) fails the
                    # same way every time: stop now, in kubectl's words, as a bad selector does.
                    raise UsageError(unable_to_find(
                        self._resource.gvr_string(), self._selectors.get("labelSelector", ""),
                        self._selectors.get("fieldSelector", ""), f.message)) from None
                self._count_list_failure(f.message)
                await self._sleep(max(_LIST_RETRY_DELAY, f.retry_after))

    def _count_list_failure(self, message: str) -> None:
        self.stats.list_errors += 1
        log.error("failed to list %s: %s", self._resource.resource, message)
        limit = self._maximum_errors
        if limit != -1 and self.stats.list_errors > limit:
            raise ListErrorLimit(f"Maximum list errors of {limit} reached, exiting")

    async def _list(self, paginate: bool) -> str:
        """Read every page and feed the sink; returns the list's resourceVersion.

        ``list_begin`` waits for the first page, so a list that keeps failing (403)
        does not open a list on the sink each second.
        """
        params = self._params()
        if paginate and self._page_size > 0:
            params["limit"] = str(self._page_size)
        first = True
        while True:
            await self._sink.wait_capacity()
            body = await self._get_page(params)
            if first:
                self._sink.list_begin(relist=self._listed)
                first = False
            rv, cont = self._emit_page(body)
            if not cont:
                break
            params["continue"] = cont
        self._sink.list_end()
        self._listed = True
        self.stats.lists_completed += 1
        self._changed()
        if self._stream_refusal:
            log.info("the server cannot stream lists (%s); using paginated lists", self._stream_refusal)
            self._stream_refusal = ""
        return rv

    async def _seed_list(self, rv: str) -> None:
        """The objects as they were at ``rv`` (``resourceVersionMatch=Exact``: the API server
        reads them from storage, which keeps its history for minutes after the watch cache
        lost it, across an API server restart too), to :attr:`on_seed`. With them the sink
        knows what the replay from ``rv`` did not change, and when the watch can no longer
        replay, deletes since ``rv`` are found by the relist that follows, as objects missing
        from it. One attempt: on any failure the replay or relist goes on without it."""
        self._seed = None
        params = self._params()
        params.update(resourceVersion=rv, resourceVersionMatch="Exact")
        if self._page_size > 0:
            params["limit"] = str(self._page_size)
        ok = False
        try:
            while True:
                await self._sink.wait_capacity()
                body = await self._get_page(params)
                _, cont = self._emit_page(body, self.on_seed)
                if not cont:
                    break
                # The token carries the resourceVersion; the server refuses both together.
                params.pop("resourceVersion", None)
                params.pop("resourceVersionMatch", None)
                params["continue"] = cont
            ok = True
            self._seeded = rv
        except Failure as f:
            self.stats.count_error("list", f.kind)
            log.info("list of %s as of resourceVersion %s failed: %s", self._resource.resource, rv, f.message)
        if self.on_seeded is not None:
            self.on_seeded(rv, ok)

    async def _streamed_list(self) -> str | None:
        """The initial state as a watch stream (KEP-3157 WatchList), one object per line.

        Cheaper than LIST pages for the client: each object is parsed on its own and its
        bytes are sliced out of the line instead of re-encoded (a 500-item page parses
        several times slower per item), and the server never builds a whole page. Returns
        the resourceVersion of the ``k8s.io/initial-events-end`` bookmark, or None when the
        server does not support streaming lists (then LIST serves, from now on).
        """
        params = self._params()
        params.update(watch="1", sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                      allowWatchBookmarks="true")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=None)
        self.stats.list_requests += 1
        self._initial_begun = False
        self._initial_rv = None
        resp = await self._prefetched_response(params) or await self._open(params, timeout)
        async with resp:
            if resp.status == 403:
                # Allowed to list but not to watch? Let the LIST say so, in oc's words
                # ("cannot list ..."), and count it; stay with streaming for next time.
                await self._error_body(resp)
                return None
            if resp.status in (400, 422):
                # Said once a paginated list worked: a bad field selector gets 400 here too.
                self._stream_refusal = status_message(resp.status, await self._error_body(resp))
                self._stream_list = False
                return None
            if resp.status != 200:
                raise http_failure(resp, await self._error_body(resp))
            try:
                await self._read_lines(resp, self._on_initial_line)
            finally:
                resp.close()  # the rest of this stream is the live watch: we watch anew
        if self._initial_rv is None:
            raise Failure("connection", "the streamed list ended before its last object")
        self._sink.list_end()
        self._listed = True
        self.stats.lists_completed += 1
        self._changed()
        return self._initial_rv

    def _on_initial_line(self, line: bytes, received: float) -> bool:
        """One line of a streamed list; True once the initial-events-end bookmark came."""
        etype, obj, md = parse_event(line)
        if not self._initial_begun:
            self._initial_begun = True
            self._sink.list_begin(relist=self._listed)
        if etype == "ADDED":
            ns = md.get("namespace") or ""
            name = md.get("name") or ""
            if type(obj) is PartialObject:
                self._undecodable(obj, ns, name)
            self._sink.list_item(Event(EventType.SYNC, object_key(ns, name), ns, name, md.get("uid") or "",
                                       md.get("resourceVersion") or "", object_bytes(line, obj), received,
                                       backlog=True))
            self.stats.count_events(EventType.SYNC)
            return False
        if etype == "BOOKMARK":
            if (md.get("annotations") or {}).get(_INITIAL_EVENTS_END) == "true":
                self._initial_rv = md.get("resourceVersion") or ""
                return True
            return False
        if etype == "ERROR":
            raise error_event(obj, relist=False)
        raise Failure("other", f"unexpected {etype} event before the end of a streamed list")

    async def _get_page(self, params: dict[str, str]) -> bytes:
        self.stats.list_requests += 1
        timeout = aiohttp.ClientTimeout(total=self._client.default_timeout().total,
                                        sock_connect=CONNECT_TIMEOUT, sock_read=self._read_timeout)
        resp = await self._open(params, timeout)
        try:
            async with resp:
                body = await resp.read()  # sock_read bounds every wait for data
        except TimeoutError as exc:
            raise self._timeout(exc) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Failure("connection", go_error_text(exc)) from None
        self.stats.bytes_received += len(body)
        self.stats.last_activity = time.monotonic()
        if resp.status != 200:
            raise http_failure(resp, body)
        return body

    def _emit_page(self, body: bytes, to: Callable[[Event], None] | None = None) -> tuple[str, str]:
        """Hand a page's items to the sink (or ``to``) as Sync events; returns (resourceVersion,
        continue)."""
        try:
            doc = orjson.loads(body)
            items: list[dict[str, Any]] = doc.get("items") or []
            meta = doc.get("metadata") or {}
        except orjson.JSONDecodeError:
            doc, items = self._page_by_item(body)
            meta = doc
        except AttributeError:
            raise Failure("other", "the server returned an invalid list") from None
        kind = str(doc.get("kind") or "").removesuffix("List") or self._resource.kind
        api_version = doc.get("apiVersion") or ""
        received = time.monotonic()
        emit = self._sink.list_item if to is None else to
        for item in items:
            md = item.get("metadata") or {}
            ns = md.get("namespace") or ""
            name = md.get("name") or ""
            # List items carry no apiVersion/kind; commands expect whole objects.
            if type(item) is PartialObject:
                self._undecodable(item, ns, name)
                raw = with_type(item, api_version, kind)
            else:
                raw = orjson.dumps({"apiVersion": api_version, "kind": kind, **item})
            emit(Event(EventType.SYNC, object_key(ns, name), ns, name, md.get("uid") or "",
                       md.get("resourceVersion") or "", raw, received, backlog=True))
        if items and to is None:
            self.stats.count_events(EventType.SYNC, len(items))
        return str(meta.get("resourceVersion") or ""), str(meta.get("continue") or "")

    def _page_by_item(self, body: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A page the parser gave up on (an item nested too deep): its fields and its items,
        parsed one by one; the one too deep becomes a PartialObject, not a failed list."""
        try:
            fields, raw_items = split_list(body)
            return fields, [parse_object(item) for item in raw_items]
        except ValueError:
            raise Failure("other", "the server returned an invalid list") from None

    def _undecodable(self, obj: PartialObject, ns: str, name: str) -> None:
        """One object the parser gave up on: logged with its key and counted. Its event goes
        on (the command may not need it parsed); a stage that must parse it fails that
        event alone."""
        self.stats.undecodable += 1
        key = object_key(ns, name)
        log.warning("the object %s could not be decoded (%s); passing it on as the server sent it",
                    key, obj.error, extra={"key": key, "rv": obj["metadata"].get("resourceVersion")})
        self._changed()

    # -------------------------------------------------------------------- watch

    async def _watch_cycle(self) -> _Next:
        """One watch connection plus the delay the outcome calls for."""
        task = asyncio.ensure_future(self._watch_once())
        self._watch_task = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current and current.cancelling()):
                if self._relist_requested:
                    return _Next.RELIST
                if self._rewind is not None:
                    return _Next.RESUME  # the loop applies the rewind
            raise
        except Failure as f:
            return await self._after_failure(f)
        finally:
            self._watch_task = None

    async def _after_failure(self, f: Failure) -> _Next:
        self.stats.count_error("watch", f.kind)
        self._changed()
        if f.kind == "expired":
            log.info("watch of %s: %s; relisting", self._resource.resource, f.message)
            if self._replaying is not None and self.on_rewind is not None:
                self.on_rewind(self._replaying, True)
                if self.on_seed is not None and self._seeded != self._replaying:
                    self._seed = self._replaying
            self._replaying = None
            return _Next.RELIST
        if f.kind in ("connection", "timeout", "server", "unauthorized") and not f.relist:
            log.warning("watch of %s failed: %s; resuming from resourceVersion %s",
                        self._resource.resource, f.message, self._rv)
            if f.retry_now:
                self._backoff.reset()
            else:
                await self._sleep(max(self._backoff.delay(), f.retry_after))
            return _Next.RELIST if self._relist_requested else _Next.RESUME
        # Anything else (forbidden, not found, an ERROR event) ends the cycle like
        # client-go's reflector: relist after a pause, and the list counts its failures.
        log.warning("watch of %s ended with error: %s; relisting", self._resource.resource, f.message)
        await self._sleep(self._backoff.delay())
        return _Next.RELIST

    def _watch_params(self) -> dict[str, str]:
        params = self._params()
        params.update(watch="1", resourceVersion=self._rv, allowWatchBookmarks="true",
                      timeoutSeconds=str(random.randint(*_WATCH_SECONDS)))
        return params

    async def _watch_once(self) -> _Next:
        """One watch request, read to its end; raises Failure."""
        # No sock_read: read_lines has its own read timeout, which back-pressure does not trip.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=None)
        self.stats.watch_requests += 1
        started = time.monotonic()
        resp = await self._open(self._watch_params(), timeout)
        async with resp:
            if resp.status != 200:
                raise http_failure(resp, await self._error_body(resp))
            self._set_up(True)
            try:
                lines = await self._read_lines(resp, self._on_line)
            finally:
                self._set_up(False)
        if lines:
            self._backoff.reset()
        elif time.monotonic() - started < _SHORT_WATCH:
            raise Failure("other", "the watch ended at once without events")
        return _Next.RESUME

    # ------------------------------------------------------------------ requests

    async def _open(self, params: dict[str, str],
                    timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's per-request timeouts
                    ) -> aiohttp.ClientResponse:
        """Send one GET of the collection; raises Failure.

        Its headers have a deadline too: a path that stopped forwarding accepts a new
        connection (even its TLS handshake, at a middlebox) and answers nothing, and the
        read timeout of the body only starts once the headers are in.
        """
        try:
            return await self._client.request("GET", self._path, params, timeout=timeout,
                                              headers_timeout=self._headers_deadline(params))
        except TimeoutError as exc:
            raise self._timeout(exc) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Failure("connection", go_error_text(exc)) from None

    def _headers_deadline(self, params: dict[str, str]) -> float:
        if "watch" in params:
            low, high = _WATCH_HEADERS_TIMEOUT
            return min(max(self._read_timeout, low), high) if self._read_timeout else high
        return self._read_timeout or _LIST_HEADERS_TIMEOUT

    async def _prefetched_response(self, params: dict[str, str]) -> aiohttp.ClientResponse | None:
        """The response to the first request if ``prefetch`` sent it (once; None otherwise)."""
        prefetched, self.prefetched = self.prefetched, None
        if prefetched is None:
            return None
        resp = await prefetched.open(self._path, params, self._headers_deadline(params))
        # It offers the members of an aiohttp response this module and watchstream read.
        return cast("aiohttp.ClientResponse | None", resp)

    def _timeout(self, exc: TimeoutError) -> Failure:
        detail = " ".join(str(exc).split())
        where = f"timed out talking to {self._client.server}"
        return Failure("timeout", f"{where}: {detail}" if detail else where)

    async def _error_body(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body of an error response (a short Status), read within the read timeout."""
        try:
            async with asyncio.timeout(self._read_timeout or None):
                return await resp.read()
        except TimeoutError as exc:
            raise self._timeout(exc) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Failure("connection", go_error_text(exc)) from None

    def _set_up(self, up: bool) -> None:
        self.stats.watch_up = up
        self._sink.watch_status(up)
        self._changed()

    async def _read_lines(self, resp: aiohttp.ClientResponse, on_line: LineHandler) -> int:
        """Read one response to its end (or until ``on_line`` says stop); raises Failure."""
        return await read_lines(resp, self._read_timeout, on_line, wait_capacity=self._sink.wait_capacity,
                                on_chunk=self._received)

    def _received(self, size: int, now: float) -> None:
        self.stats.last_activity = now
        self.stats.bytes_received += size
        self._changed()

    def _on_line(self, line: bytes, received: float) -> None:
        etype, obj, md = parse_event(line)
        if etype != "ERROR":
            self._replaying = None
        if etype == "BOOKMARK":
            self._rv = md.get("resourceVersion") or self._rv
            self.stats.resource_version = self._rv
            self.stats.bookmarks += 1
            return
        if etype == "ERROR":
            raise error_event(obj, relist=True)
        event_type = _WATCH_TYPES.get(etype)
        if event_type is None:
            log.warning("ignoring a watch event of unknown type %r", etype)
            return
        ns = md.get("namespace") or ""
        name = md.get("name") or ""
        rv = md.get("resourceVersion") or ""
        if type(obj) is PartialObject:
            self._undecodable(obj, ns, name)
        self._sink.watch_event(Event(event_type, object_key(ns, name), ns, name, md.get("uid") or "",
                                     rv, object_bytes(line, obj), received))
        self.stats.count_events(event_type)
        if rv:
            self._rv = rv
            self.stats.resource_version = rv
