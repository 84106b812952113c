"""Tests for fastobs.source against the real kube-apiserver: paginated lists, watch
events and their keys/rv/uid/bytes, selectors, relist on 410, resuming a broken watch
without a relist, the list error limit, and objects larger than 1 MiB."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
import pytest
import uvloop
from fault_proxy import FaultProxy

from fastobs.errors import ListErrorLimit, ResourceError
from fastobs.events import Event, EventType
from fastobs.kube import KubeClient
from fastobs.source import Source, _Next
from fastobs.watchstream import Failure, object_bytes, parse_event

pytestmark = pytest.mark.cluster

CRD_GROUP = "fastobs.example.com"
WIDGETS_CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: sourcewidgets.{CRD_GROUP}
spec:
  group: {CRD_GROUP}
  scope: Namespaced
  names: {{plural: sourcewidgets, singular: sourcewidget, kind: SourceWidget}}
  versions:
  - {{name: v1, served: true, storage: true,
     schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
"""
WAIT = 30.0


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh uvloop loop, like the parent process does."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        uvloop.run(fn(*args, **kwargs))

    return wrapper


class Recorder:
    """A Sink that records every call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

    def _add(self, what: str, arg: Any) -> None:
        self.calls.append((what, arg))
        self._changed.set()

    def list_begin(self, *, relist: bool) -> None:
        self._add("begin", relist)

    def list_item(self, ev: Event) -> None:
        assert ev.type is EventType.SYNC and ev.backlog
        self._add("item", ev)

    def list_end(self) -> None:
        self._add("end", None)

    def watch_event(self, ev: Event) -> None:
        assert ev.type is not EventType.SYNC and not ev.backlog
        self._add("event", ev)

    def watch_status(self, up: bool) -> None:
        self._add("up", up)

    async def wait_capacity(self) -> None:
        return None

    # --- helpers for tests
    def count(self, what: str, arg: Any = ...) -> int:
        return sum(1 for w, a in self.calls if w == what and (arg is ... or a == arg))

    def events(self) -> list[Event]:
        return [a for w, a in self.calls if w == "event"]

    def last_list(self) -> list[Event]:
        """Items of the most recent complete list."""
        items: list[Event] = []
        done: list[Event] = []
        for w, a in self.calls:
            if w == "begin":
                items = []
            elif w == "item":
                items.append(a)
            elif w == "end":
                done = items
        return done

    async def wait_for(self, cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; calls: {self.summary()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    def summary(self) -> list[str]:
        return [f"{w}:{a.type}:{a.key}" if isinstance(a, Event) else f"{w}:{a}" for w, a in self.calls]


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def resume_from(src: Source, rv: str) -> None:
    """Watch from ``rv`` as if a list had already been delivered, as a restarted watch
    resumes; an expired ``rv`` must turn into a relist."""
    src._rv = src.stats.resource_version = rv
    src._listed = True
    await src._loop(need_list=False)


@contextlib.asynccontextmanager
async def source_for(k8s: Any, resource: str, ns: str | None,
                     **kw: Any) -> AsyncIterator[tuple[Source, Recorder]]:
    client = await KubeClient.connect(kubeconfig=str(kw.pop("kubeconfig", k8s.kubeconfig)))
    try:
        res = await client.resolve(resource)
        sink = Recorder()
        kw.setdefault("label_selector", "")
        kw.setdefault("field_selector", "")
        kw.setdefault("maximum_errors", 20)
        yield Source(client, res, namespace=ns, sink=sink, **kw), sink
    finally:
        await client.close()


async def kubectl(k8s: Any, *args: str, input: str | None = None) -> dict[str, Any]:
    """kubectl in a thread (the loop keeps reading the watch); returns -o json output if any."""
    res = await asyncio.to_thread(k8s.kubectl, *args, input=input)
    return json.loads(res.stdout) if res.stdout.startswith("{") else {}


def configmap(name: str, labels: dict[str, str] | None = None, data: dict[str, str] | None = None) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": name, "labels": labels or {}}, "data": data or {"k": "v"}})


async def create_cm(k8s: Any, ns: str, name: str, **kw: Any) -> dict[str, Any]:
    return await kubectl(k8s, "create", "-n", ns, "-o", "json", "-f", "-", input=configmap(name, **kw))


def parsed(ev: Event) -> dict[str, Any]:
    assert ev.obj is not None
    obj: dict[str, Any] = orjson.loads(ev.obj)
    return obj


# --------------------------------------------------------------------------- list

@aio
async def test_list_is_paginated_and_items_are_whole_objects(k8s: Any, ns: str) -> None:
    made = {}
    for i in range(7):
        obj = await create_cm(k8s, ns, f"cm-{i}")
        made[f"{ns}/cm-{i}"] = obj
    async with source_for(k8s, "configmaps", ns, page_size=2, stream_list=False) as (src, sink), \
            running(src.run()):
        await sink.wait_for(lambda: sink.count("end") == 1 and src.stats.watch_up, "list and watch")
    items = sink.last_list()
    assert sorted(ev.key for ev in items) == sorted(made)
    assert src.stats.list_requests == 4  # 2 + 2 + 2 + 1
    assert sink.calls[0] == ("begin", False)
    assert src.stats.events == {"Sync": 7} and src.stats.relists == 0
    for ev in items:
        want = made[ev.key]
        obj = parsed(ev)
        assert obj["apiVersion"] == "v1" and obj["kind"] == "ConfigMap"
        assert obj["metadata"]["name"] == ev.name and ev.namespace == ns
        assert ev.uid == want["metadata"]["uid"] == obj["metadata"]["uid"]
        assert ev.rv == want["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
        assert obj["data"] == {"k": "v"}


class RewindingSink(Recorder):
    """Asks its source to relist at the first item of the first list, as a replica that wins
    a bucket during its initial list does."""

    source: Source | None = None

    def list_item(self, ev: Event) -> None:
        super().list_item(ev)
        if self.source is not None and self.count("begin") == 1 and self.count("item") == 1:
            self.source.rewind(None)


@pytest.mark.parametrize("stream_list", [False, True], ids=["paged", "streamed"])
@aio
async def test_a_rewind_asked_for_during_a_list_is_applied_before_the_watch(
        k8s: Any, ns: str, stream_list: bool) -> None:
    for i in range(5):
        await create_cm(k8s, ns, f"cm-{i}")
    async with source_for(k8s, "configmaps", ns, page_size=2, stream_list=stream_list) as (src, _):
        sink = RewindingSink()
        src._sink = sink
        sink.source = src
        rewound: list[str | None] = []
        src.on_rewind = lambda rv, expired: rewound.append(rv)
        async with running(src.run()):
            await sink.wait_for(lambda: sink.count("end") == 2 and src.stats.watch_up,
                                "the relist, then the watch")
    assert rewound == [None]
    assert [w for w, _ in sink.calls if w in ("begin", "end", "up")][:4] == ["begin", "end", "begin", "end"]
    assert len(sink.last_list()) == 5


@aio
async def test_streamed_list_is_one_request_and_items_are_whole_objects(k8s: Any, ns: str) -> None:
    """The default initial list is a WatchList stream: same items, no re-encoding, one request."""
    made = {}
    for i in range(5):
        obj = await create_cm(k8s, ns, f"s-{i}")
        made[f"{ns}/s-{i}"] = obj
    async with source_for(k8s, "configmaps", ns) as (src, sink), running(src.run()):
        await sink.wait_for(lambda: sink.count("end") == 1 and src.stats.watch_up, "list and watch")
        late = await create_cm(k8s, ns, "late")
        await sink.wait_for(lambda: any(c[0] == "event" for c in sink.calls), "the live event")
    items = sink.last_list()
    assert sorted(ev.key for ev in items) == sorted(made)
    assert src.stats.list_requests == 1 and src.stats.events.get("Sync") == 5
    for ev in items:
        obj = parsed(ev)
        assert obj["kind"] == "ConfigMap" and obj["apiVersion"] == "v1"
        assert ev.rv == made[ev.key]["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    # The watch resumed from the stream's bookmark: the new object came as Added, only once.
    watched = [c for c in sink.calls if c[0] == "event"]
    assert [(c[1].type, c[1].name) for c in watched] == [(EventType.ADDED, "late")]
    assert watched[0][1].rv == late["metadata"]["resourceVersion"]


@aio
async def test_cluster_scoped_resources_have_bare_keys(k8s: Any, ns: str) -> None:
    async with source_for(k8s, "namespaces", None) as (src, sink), running(src.run()):
        await sink.wait_for(lambda: sink.count("end") == 1, "list")
    item = next(ev for ev in sink.last_list() if ev.name == ns)
    assert item.key == ns and item.namespace == ""
    assert parsed(item)["kind"] == "Namespace"


# --------------------------------------------------------------------------- watch

@aio
async def test_watch_events_added_updated_deleted(k8s: Any, ns: str) -> None:
    async with source_for(k8s, "configmaps", ns) as (src, sink), running(src.run()):
        await sink.wait_for(lambda: src.stats.watch_up, "watch up")
        created = await create_cm(k8s, ns, "a")
        await sink.wait_for(lambda: len(sink.events()) == 1, "Added")
        await kubectl(k8s, "label", "-n", ns, "cm/a", "x=y")
        await sink.wait_for(lambda: len(sink.events()) == 2, "Updated")
        updated = await kubectl(k8s, "get", "-n", ns, "-o", "json", "cm/a")
        await kubectl(k8s, "delete", "-n", ns, "cm/a")
        await sink.wait_for(lambda: len(sink.events()) == 3, "Deleted")
    added, upd, deleted = sink.events()
    assert [e.type for e in (added, upd, deleted)] == [EventType.ADDED, EventType.UPDATED, EventType.DELETED]
    uid = created["metadata"]["uid"]
    for ev in (added, upd, deleted):
        assert (ev.key, ev.namespace, ev.name, ev.uid) == (f"{ns}/a", ns, "a", uid)
        obj = parsed(ev)
        assert obj["kind"] == "ConfigMap" and obj["apiVersion"] == "v1"
        assert obj["metadata"]["resourceVersion"] == ev.rv
    assert added.rv == created["metadata"]["resourceVersion"]
    assert upd.rv == updated["metadata"]["resourceVersion"]
    assert parsed(upd)["metadata"]["labels"] == {"x": "y"}
    assert int(added.rv) < int(upd.rv) < int(deleted.rv)
    assert src.stats.resource_version == deleted.rv
    assert src.stats.events == {"Added": 1, "Updated": 1, "Deleted": 1}


@aio
async def test_label_selector_and_leaving_it_is_a_delete(k8s: Any, ns: str) -> None:
    await create_cm(k8s, ns, "in-list", labels={"app": "x"})
    await create_cm(k8s, ns, "never", labels={"app": "y"})
    async with source_for(k8s, "configmaps", ns, label_selector="app=x") as (src, sink), running(src.run()):
        await sink.wait_for(lambda: src.stats.watch_up, "watch up")
        assert [ev.name for ev in sink.last_list()] == ["in-list"]
        await create_cm(k8s, ns, "other", labels={"app": "y"})
        await create_cm(k8s, ns, "joins", labels={"app": "x"})
        await sink.wait_for(lambda: len(sink.events()) == 1, "Added joins")
        await kubectl(k8s, "label", "--overwrite", "-n", ns, "cm/joins", "app=z")
        await sink.wait_for(lambda: len(sink.events()) == 2, "Deleted joins")
    added, gone = sink.events()
    assert (added.type, added.name) == (EventType.ADDED, "joins")
    # The object stopped matching: the watch reports it as deleted, carrying the last
    # state that matched (the apiserver's watch cache sends the previous object).
    assert (gone.type, gone.name, gone.uid) == (EventType.DELETED, "joins", added.uid)
    assert parsed(gone)["metadata"]["labels"] == {"app": "x"}


@aio
async def test_field_selector(k8s: Any, ns: str) -> None:
    await create_cm(k8s, ns, "one")
    await create_cm(k8s, ns, "two")
    async with source_for(k8s, "configmaps", ns, field_selector="metadata.name=two") as (src, sink), \
            running(src.run()):
        await sink.wait_for(lambda: src.stats.watch_up, "watch up")
        await kubectl(k8s, "label", "-n", ns, "cm/one", "a=b")
        await kubectl(k8s, "label", "-n", ns, "cm/two", "a=b")
        await sink.wait_for(lambda: len(sink.events()) == 1, "Updated two")
    assert [ev.name for ev in sink.last_list()] == ["two"]
    assert [(ev.type, ev.name) for ev in sink.events()] == [(EventType.UPDATED, "two")]


@aio
async def test_all_namespaces(k8s: Any, ns: str) -> None:
    async with source_for(k8s, "configmaps", None, label_selector=f"t={ns}") as (src, sink), \
            running(src.run()):
        await sink.wait_for(lambda: src.stats.watch_up, "watch up")
        await create_cm(k8s, ns, "everywhere", labels={"t": ns})
        await sink.wait_for(lambda: len(sink.events()) == 1, "Added")
    assert sink.events()[0].key == f"{ns}/everywhere"
    assert src._path == "/api/v1/configmaps"


# --------------------------------------------------------------------------- 410 and reconnects

@pytest.fixture(scope="module")
def widgets(k8s: Any) -> str:
    """A CRD created during the run: its watch cache starts at a recent resourceVersion,
    so watching from resourceVersion 1 is reliably "too old" (410)."""
    k8s.kubectl("apply", "-f", "-", input=WIDGETS_CRD)
    k8s.kubectl("wait", "--for=condition=established", "--timeout=30s", f"crd/sourcewidgets.{CRD_GROUP}")
    deadline = time.monotonic() + 30
    while "sourcewidgets" not in k8s.kubectl("api-resources", f"--api-group={CRD_GROUP}", "-o=name").stdout:
        assert time.monotonic() < deadline, "the CRD never appeared in discovery"
        time.sleep(0.2)
    return f"sourcewidgets.{CRD_GROUP}"


def widget(name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": f"{CRD_GROUP}/v1", "kind": "SourceWidget",
                       "metadata": {"name": name}, "spec": spec})


@aio
async def test_expired_resource_version_relists_and_loses_nothing(k8s: Any, ns: str, widgets: str) -> None:
    await kubectl(k8s, "create", "-n", ns, "-f", "-", input=widget("w1", {"n": 1}))
    # A first run sees w1, then stops.
    async with source_for(k8s, widgets, ns) as (src, sink), running(src.run()):
        await sink.wait_for(lambda: src.stats.watch_up, "watch up")
    assert [ev.name for ev in sink.last_list()] == ["w1"]
    # While nothing watches: w1 changes and w2 appears.
    changed = await kubectl(k8s, "patch", "-n", ns, "-o", "json", "--type=merge", f"{widgets}/w1",
                            "-p", '{"spec": {"n": 2}}')
    w2 = await kubectl(k8s, "create", "-n", ns, "-o", "json", "-f", "-", input=widget("w2", {"n": 1}))
    # Resume with a resourceVersion the server no longer has.
    async with source_for(k8s, widgets, ns) as (src, sink), running(resume_from(src, "1")):
        await sink.wait_for(lambda: sink.count("end") == 1 and src.stats.watch_up, "relist and watch")
        await kubectl(k8s, "create", "-n", ns, "-f", "-", input=widget("w3", {"n": 1}))
        await sink.wait_for(lambda: len(sink.events()) == 1, "Added w3")
    assert src.stats.errors == {("watch", "expired"): 1}
    assert src.stats.relists == 1
    assert [a for w, a in sink.calls if w == "begin"] == [True]
    relisted = {ev.name: ev for ev in sink.last_list()}
    assert sorted(relisted) == ["w1", "w2"]
    assert relisted["w1"].rv == changed["metadata"]["resourceVersion"]
    assert parsed(relisted["w1"])["spec"] == {"n": 2}
    assert parsed(relisted["w1"])["kind"] == "SourceWidget"
    assert relisted["w2"].uid == w2["metadata"]["uid"]
    assert [(ev.type, ev.name) for ev in sink.events()] == [(EventType.ADDED, "w3")]


@aio
async def test_read_timeout_reconnects_without_relist_or_loss(k8s: Any, ns: str) -> None:
    # No bookmark comes within 0.3 s, so every quiet gap breaks the watch as a
    # half-open connection would; the source must resume from its resourceVersion.
    async with source_for(k8s, "configmaps", ns, read_timeout=0.3) as (src, sink), running(src.run()):
        await sink.wait_for(lambda: src.stats.watch_up, "watch up")
        for i in range(5):
            await create_cm(k8s, ns, f"c{i}")
            await asyncio.sleep(0.5)
        await sink.wait_for(lambda: len(sink.events()) == 5, "five Added")
    assert sorted(ev.name for ev in sink.events()) == [f"c{i}" for i in range(5)]
    assert src.stats.errors.get(("watch", "timeout"), 0) >= 2
    assert src.stats.watch_requests >= 3
    assert src.stats.relists == 0 and sink.count("begin") == 1 and src.stats.list_requests == 1


@aio
async def test_severed_connection_resumes_without_relist(k8s: Any, ns: str) -> None:
    async with source_for(k8s, "configmaps", ns) as (src, sink), running(src.run()):
        await sink.wait_for(lambda: src.stats.watch_up, "watch up")
        await create_cm(k8s, ns, "before")
        await sink.wait_for(lambda: len(sink.events()) == 1, "Added before")
        # Cut the TCP connections under the reader, like a proxy or NAT dropping them.
        cut = 0
        for conns in src._client._session.connector._conns.values():  # type: ignore[union-attr]
            for proto, _ in conns:
                proto.transport.abort()
                cut += 1
        for proto in list(src._client._session.connector._acquired):  # type: ignore[union-attr]
            if proto.transport is not None:
                proto.transport.abort()
                cut += 1
        assert cut >= 1
        await create_cm(k8s, ns, "after")
        await sink.wait_for(lambda: len(sink.events()) == 2, "Added after")
    assert [ev.name for ev in sink.events()] == ["before", "after"]
    assert src.stats.errors.get(("watch", "connection"), 0) == 1
    assert src.stats.relists == 0 and src.stats.watch_requests == 2


@pytest.mark.parametrize("tls", [True, False], ids=["TLS answered, then silence", "TLS never answered"])
@aio
async def test_every_request_has_a_deadline_up_to_its_response_headers(k8s: Any, ns: str,
                                                                       tmp_path: Any, tls: bool) -> None:
    """A path that stops forwarding: open connections go silent, new ones complete TCP (and
    TLS, at a middlebox that terminates it) and are never answered. Each request the source
    sends (watch, streamed list, list page) and discovery must fail as a timeout instead of
    waiting for headers forever (watches: the read timeout, but at least 5 s)."""
    with FaultProxy.in_front_of(k8s, tls=tls) as proxy:
        cfg = proxy.kubeconfig(tmp_path, k8s.token)
        async with source_for(k8s, "configmaps", ns, kubeconfig=cfg, read_timeout=1.0) as (src, _):
            proxy.freeze()
            calls: dict[str, Callable[[], Coroutine[Any, Any, object]]] = {
                "watch": src._watch_once, "streamed list": src._streamed_list,
                "list page": lambda: src._get_page({"limit": "500"}),
            }
            for what, call in calls.items():
                t0 = time.monotonic()
                with pytest.raises(Failure) as failure:
                    await asyncio.wait_for(call(), 10)
                took = time.monotonic() - t0
                print(f"{what}: {failure.value.kind} after {took:.2f} s: {failure.value.message}")
                assert failure.value.kind == "timeout" and took < 8, (what, took)
            src._client.headers_timeout = 1.0  # what --request-timeout 1s sets
            src._client._request_timeout = 1.0
            src._client._served = None
            t0 = time.monotonic()
            with pytest.raises(ResourceError) as error:
                await asyncio.wait_for(src._client.resolve("configmaps"), 10)
            took = time.monotonic() - t0
            print(f"discovery: after {took:.2f} s: {error.value.message}")
            # kubectl's words for a request that outlived --request-timeout, as oc prints them
            assert took < 5
            assert error.value.message == "Unable to connect to the server: context deadline exceeded"
        stats = proxy.stats()
        assert stats.frozen >= 1 and stats.blackholed >= 1, stats  # both kinds of silence were met


class SlowSink(Recorder):
    """A sink that stops the source from reading while ``gate`` is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def wait_capacity(self) -> None:
        await self.gate.wait()


@aio
async def test_back_pressure_holds_reading_without_losing_events(k8s: Any, ns: str) -> None:
    async with source_for(k8s, "configmaps", ns, read_timeout=1.0) as (src, _):
        sink = SlowSink()
        src._sink = sink
        async with running(src.run()):
            await sink.wait_for(lambda: src.stats.watch_up, "watch up")
            await create_cm(k8s, ns, "first")
            await sink.wait_for(lambda: len(sink.events()) == 1, "Added first")
            sink.gate.clear()  # the pipeline is full: nothing more is read
            for i in range(3):
                await create_cm(k8s, ns, f"held-{i}")
            await asyncio.sleep(2.5)  # longer than the read timeout
            # The read already in flight when the gate closed may deliver its chunk;
            # after that the source waits.
            assert len(sink.events()) < 4
            sink.gate.set()
            await sink.wait_for(lambda: len(sink.events()) == 4, "the held events")
    assert [ev.name for ev in sink.events()] == ["first", "held-0", "held-1", "held-2"]
    # Waiting for capacity is not silence on the connection: no timeout, no reconnect.
    assert src.stats.errors == {} and src.stats.watch_requests == 1


@aio
async def test_request_relist_interrupts_the_watch(k8s: Any, ns: str) -> None:
    await create_cm(k8s, ns, "x")
    async with source_for(k8s, "configmaps", ns) as (src, sink), running(src.run()):
        await sink.wait_for(lambda: src.stats.watch_up, "watch up")
        src.request_relist()
        await sink.wait_for(lambda: sink.count("end") == 2 and src.stats.watch_up, "second list")
    assert sink.count("begin", True) == 1
    assert src.stats.relists == 1 and src.stats.errors == {}
    assert [ev.name for ev in sink.last_list()] == ["x"]


@aio
async def test_objects_larger_than_one_mebibyte(k8s: Any, ns: str, widgets: str) -> None:
    big = "x" * (1_300_000)
    async with source_for(k8s, widgets, ns) as (src, sink), running(src.run()):
        await sink.wait_for(lambda: src.stats.watch_up, "watch up")
        await kubectl(k8s, "create", "-n", ns, "-f", "-", input=widget("huge", {"blob": big}))
        await sink.wait_for(lambda: len(sink.events()) == 1, "Added huge")
        src.request_relist()
        await sink.wait_for(lambda: sink.count("end") == 2, "relist")
    (ev,) = sink.events()
    assert ev.obj is not None and len(ev.obj) > 1 << 20
    assert parsed(ev)["spec"]["blob"] == big
    (item,) = sink.last_list()
    assert parsed(item)["spec"]["blob"] == big and item.rv == ev.rv


def deep_widget(name: str, depth: int) -> str:
    """A SourceWidget whose spec is ``depth`` levels deep (written by hand: Python's json
    module stops at its recursion limit)."""
    return (f'{{"apiVersion":"{CRD_GROUP}/v1","kind":"SourceWidget","metadata":{{"name":"{name}"}},'
            f'"spec":{{"v":1,"deep":' + '{"a":' * depth + "1" + "}" * depth + "}}")


async def create_deep(k8s: Any, ns: str, name: str, depth: int) -> tuple[str, str, str]:
    """Create a deep widget; (name, uid, resourceVersion) as the server answered."""
    res = await asyncio.to_thread(k8s.kubectl, "create", "-n", ns, "-f", "-", "-o",
                                  "jsonpath={.metadata.name} {.metadata.uid} {.metadata.resourceVersion}",
                                  input=deep_widget(name, depth))
    name, uid, rv = res.stdout.split()
    return name, uid, rv


@pytest.mark.parametrize("stream_list", [True, False], ids=["streamed list", "paginated list"])
@aio
async def test_an_object_too_deep_to_parse_is_one_event_not_a_failed_list(
        k8s: Any, ns: str, widgets: str, stream_list: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Nested past orjson's 1,024 levels (the apiserver takes it): the list and the watch
    go on; the object's event carries its key, uid, rv and the server's bytes."""
    caplog.set_level(logging.WARNING, logger="fastobs.source")
    await kubectl(k8s, "create", "-n", ns, "-f", "-", input=widget("before", {"v": 0}))
    listed = await create_deep(k8s, ns, "deep1", 1100)
    async with source_for(k8s, widgets, ns, stream_list=stream_list, page_size=1) as (src, sink), \
            running(src.run()):
        await sink.wait_for(lambda: src.stats.watch_up, "watch up")
        watched = await create_deep(k8s, ns, "deep2", 2000)
        await kubectl(k8s, "create", "-n", ns, "-f", "-", input=widget("after", {"v": 1}))
        await sink.wait_for(lambda: len(sink.events()) == 2, "Added deep2 and after")
    items = {ev.name: ev for ev in sink.last_list()}
    assert sorted(items) == ["before", "deep1"] and [ev.name for ev in sink.events()] == ["deep2", "after"]
    for ev, (name, uid, rv) in ((items["deep1"], listed), (sink.events()[0], watched)):
        assert (ev.key, ev.uid, ev.rv) == (f"{ns}/{name}", uid, rv)
        assert ev.obj is not None and ev.obj.startswith(b"{") and ev.obj.endswith(b"}")
        text = ev.obj.decode()
        assert f'"uid":"{ev.uid}"' in text and '"kind":"SourceWidget"' in text and text.count("{") > 1000
    assert src.stats.undecodable == 2 and src.stats.errors == {} and src.stats.list_errors == 0
    warned = [r for r in caplog.records if "could not be decoded" in r.getMessage()]
    assert [getattr(r, "key", None) for r in warned] == [f"{ns}/deep1", f"{ns}/deep2"]


# --------------------------------------------------------------------------- errors

@aio
async def test_forbidden_list_is_logged_counted_and_limited(k8s: Any, restricted: Any,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="fastobs.source")
    async with source_for(k8s, "secrets", restricted.namespace, kubeconfig=restricted.kubeconfig,
                          maximum_errors=2) as (src, sink):
        with pytest.raises(ListErrorLimit) as err:
            await asyncio.wait_for(src.run(), WAIT)
    assert err.value.message == "Maximum list errors of 2 reached, exiting"
    assert err.value.exit_code == 255
    assert src.stats.errors == {("list", "forbidden"): 3} and src.stats.list_errors == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0] == (f'failed to list secrets: secrets is forbidden: User "{_user(restricted)}" cannot '
                        f'list resource "secrets" in API group "" in the namespace "{restricted.namespace}"')
    assert sink.calls == []  # no list was ever opened on the sink


@aio
async def test_restricted_identity_can_watch_what_it_may(k8s: Any, restricted: Any) -> None:
    async with source_for(k8s, "configmaps", restricted.namespace, kubeconfig=restricted.kubeconfig,
                          maximum_errors=0) as (src, sink), running(src.run()):
        await sink.wait_for(lambda: src.stats.watch_up, "watch up")
    assert src.stats.errors == {}


def _user(restricted: Any) -> str:
    import k8s_cluster

    return k8s_cluster.RESTRICTED_USER


# --------------------------------------------------------------------------- pure logic

def test_object_bytes_are_sliced_verbatim() -> None:
    line = b'{"type":"MODIFIED","object":{"kind":"X","metadata":{"name":"a"},"s":"}\\"object\\":"}}'
    assert object_bytes(line, None) == b'{"kind":"X","metadata":{"name":"a"},"s":"}\\"object\\":"}'
    # Another encoder's layout is re-encoded rather than sliced wrongly.
    odd = b'{"object":{"kind":"X"},"type":"ADDED"}'
    assert orjson.loads(object_bytes(odd, {"kind": "X"})) == {"kind": "X"}


def test_parse_event_decodes_only_the_key_fields_of_changes() -> None:
    """ADDED/MODIFIED/DELETED: only name, namespace, uid and resourceVersion are decoded
    (the object stays bytes); the same answers as a full parse, whatever the key order."""
    obj = {"kind": "Pod", "apiVersion": "v1", "spec": {"x": [1, 2.5, {"y": None}]},
           "metadata": {"name": "a", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                        "labels": {"l": "v"}}}
    for etype in ("ADDED", "MODIFIED", "DELETED"):
        line = orjson.dumps({"type": etype, "object": obj})
        got_type, parsed, md = parse_event(line)
        print(etype, md)
        assert (got_type, parsed) == (etype, None)
        assert md == {"name": "a", "namespace": "ns", "uid": "u-1", "resourceVersion": "7"}
        assert orjson.loads(object_bytes(line, parsed)) == obj
    # Another encoder's key order: the fields are found, the object is re-encoded whole.
    odd = orjson.dumps({"object": obj, "type": "ADDED"})
    _, parsed, md = parse_event(odd)
    assert md["name"] == "a" and orjson.loads(object_bytes(odd, parsed)) == obj
    # A null namespace (cluster-scoped) or no metadata at all.
    _, _, md = parse_event(b'{"type":"ADDED","object":{"metadata":{"name":"n","namespace":null}}}')
    assert md == {"name": "n", "namespace": None, "uid": None, "resourceVersion": None}
    assert parse_event(b'{"type":"ADDED","object":{}}')[2] == {}


def test_parse_event_parses_bookmarks_errors_and_odd_lines_fully() -> None:
    bookmark = (b'{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"9",'
                b'"annotations":{"k8s.io/initial-events-end":"true"}}}}')
    etype, obj, md = parse_event(bookmark)
    assert etype == "BOOKMARK" and obj is not None
    assert md["annotations"] == {"k8s.io/initial-events-end": "true"}
    error = b'{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old"}}'
    etype, obj, _ = parse_event(error)
    assert etype == "ERROR" and obj == {"kind": "Status", "code": 410, "message": "too old"}
    # A name that is not a string is not the key decoder's to judge: the full parse takes it.
    etype, obj, md = parse_event(b'{"type":"ADDED","object":{"metadata":{"name":5}}}')
    assert etype == "ADDED" and obj == {"metadata": {"name": 5}} and md == {"name": 5}
    for bad in (b'{"type":"ADDED"', b"[1]", b'{"type":"ADDED","object":"x"}'):
        with pytest.raises(Failure):
            parse_event(bad)


@pytest.mark.parametrize(("code", "kind", "after"), [
    (410, "expired", _Next.RELIST),
    (500, "server", _Next.RELIST),
    (0, "other", _Next.RELIST),
])
def test_in_stream_error_events_end_in_a_relist(code: int, kind: str, after: _Next) -> None:
    from fastobs.kube import Resource

    async def main() -> None:
        sink = Recorder()
        src = Source(None, Resource("", "v1", "pods", "Pod", True),  # type: ignore[arg-type]
                     namespace=None, label_selector="", field_selector="", sink=sink, maximum_errors=0)
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "boom"}
        if code:
            status["code"] = code
        with pytest.raises(Failure) as err:
            src._on_line(orjson.dumps({"type": "ERROR", "object": status}), 0.0)
        assert (err.value.kind, err.value.relist) == (kind, True)
        assert await src._after_failure(err.value) is after
        assert src.stats.errors == {("watch", kind): 1}

    uvloop.run(main())


def test_bookmarks_only_move_the_resource_version() -> None:
    from fastobs.kube import Resource

    sink = Recorder()
    src = Source(None, Resource("", "v1", "pods", "Pod", True),  # type: ignore[arg-type]
                 namespace=None, label_selector="", field_selector="", sink=sink, maximum_errors=0)
    src._on_line(b'{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":'
                 b'{"resourceVersion":"777","annotations":{"k8s.io/initial-events-end":"true"}}}}', 1.0)
    assert sink.calls == [] and src.stats.resource_version == "777" and src.stats.bookmarks == 1


# --------------------------------------------------------------------------- throttling

@aio
async def test_throttled_watch_waits_for_retry_after_and_resumes(tmp_path: Any) -> None:
    # The real apiserver throttles (429) only under load, so a small HTTP server plays
    # it: one list, a 429 with Retry-After, then a watch that delivers an event.
    from aiohttp import web

    watches: list[tuple[float, str]] = []
    stop = asyncio.Event()

    async def pods(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "1":
            return web.json_response({"kind": "PodList", "apiVersion": "v1",
                                      "metadata": {"resourceVersion": "10"}, "items": []})
        watches.append((time.monotonic(), request.query["resourceVersion"]))
        if len(watches) == 1:
            return web.json_response({"kind": "Status", "code": 429, "message": "slow down"}, status=429,
                                     headers={"Retry-After": "2"})
        resp = web.StreamResponse()
        await resp.prepare(request)
        pod = {"kind": "Pod", "apiVersion": "v1",
               "metadata": {"name": "p", "namespace": "n", "uid": "u1", "resourceVersion": "11"}}
        await resp.write(orjson.dumps({"type": "ADDED", "object": pod}) + b"\n")
        await stop.wait()
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/pods", pods)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        from fastobs.kube import Resource

        client = await KubeClient.connect(server=f"http://127.0.0.1:{port}", token="t")
        try:
            sink = Recorder()
            src = Source(client, Resource("", "v1", "pods", "Pod", True), namespace=None, label_selector="",
                         field_selector="", sink=sink, maximum_errors=0, stream_list=False)
            async with running(src.run()):
                await sink.wait_for(lambda: len(sink.events()) == 1, "Added p")
        finally:
            await client.close()
    finally:
        stop.set()
        await runner.cleanup()
    assert [rv for _, rv in watches] == ["10", "10"]  # resumed, not relisted
    assert watches[1][0] - watches[0][0] >= 2.0
    assert src.stats.errors == {("watch", "server"): 1} and src.stats.relists == 0
    assert sink.events()[0].key == "n/p"


@aio
async def test_a_replay_starts_with_the_objects_as_they_were_at_its_start(k8s: Any, ns: str) -> None:
    """A rewind to resourceVersion R (a bucket caught up in a group of replicas): first the
    objects as they were at R (an exact list, served from storage), then the watch from R
    with every change since, deletes included. So the sink knows the objects the replay does
    not mention, and a later relist can tell which of them were deleted."""
    for i in range(3):
        made = await create_cm(k8s, ns, f"r-{i}")
    at = made["metadata"]["resourceVersion"]
    await create_cm(k8s, ns, "r-late")
    await kubectl(k8s, "delete", "-n", ns, "cm/r-0")
    async with source_for(k8s, "configmaps", ns, page_size=2) as (src, sink):
        seeded: list[tuple[str, bool]] = []
        src.on_seed = lambda ev: sink._add("seed", ev)
        src.on_seeded = lambda rv, ok: seeded.append((rv, ok))
        src.rewind(at)  # before the start: it replaces the first list
        async with running(src.run()):
            await sink.wait_for(lambda: len(sink.events()) == 2, "the replay's two changes")
    order = [(w, a.type.value, a.name) for w, a in sink.calls if w in ("seed", "event")]
    print(f"\nreplay from {at}: {order}")
    assert sorted(order[:3]) == [("seed", "Sync", f"r-{i}") for i in range(3)]
    assert order[3:] == [("event", "Added", "r-late"), ("event", "Deleted", "r-0")]
    assert seeded == [(at, True)] and src.stats.list_requests == 2  # two pages, no relist


@aio
async def test_a_rewind_asked_for_during_a_replays_first_list_is_applied_before_the_watch(
        k8s: Any, ns: str) -> None:
    """A second bucket won while the list that opens a replay is being read (two acquisitions
    in a row): its rewind must take effect before the watch starts, or the watch runs for
    minutes without the sink knowing that replay began (its bucket's events dropped)."""
    for i in range(3):
        made = await create_cm(k8s, ns, f"w-{i}")
    first = made["metadata"]["resourceVersion"]
    older = str(int(first) - 1)
    async with source_for(k8s, "configmaps", ns, page_size=2) as (src, sink):
        rewound: list[str | None] = []
        src.on_rewind = lambda rv, expired: rewound.append(rv)

        def seed(ev: Event) -> None:
            sink._add("seed", ev)
            if rewound == [first] and sink.count("seed") == 1:
                src.rewind(older)  # the second acquisition, while the first page is read

        src.on_seed = seed
        src.rewind(first)
        async with running(src.run()):
            await sink.wait_for(lambda: src.stats.watch_up, "the watch")
            await create_cm(k8s, ns, "w-late")
            await sink.wait_for(lambda: any(e.name == "w-late" for e in sink.events()), "the live event")
    print(f"\nrewinds seen before the watch: {rewound}")
    assert rewound == [first, older]
    assert [e.name for e in sink.events()] == ["w-2", "w-late"]  # w-2 came at `first`: replayed
