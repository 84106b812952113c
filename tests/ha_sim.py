"""A protocol simulation of a group of replicas: fastobs's own coordinator, ownership,
watermark, tracker, key queue and worker-side fence, driven in virtual time.

What is real and what is simulated:

* real: ``coordinator.Coordinator`` (member and bucket Leases, the view, takeover, drain and
  release, suspend and resume, the fence timer), ``membership.assign``, ``ownership.Ownership``
  (the dispatch gate, acquire, replay bookkeeping), ``watermark.Progress``,
  ``tracker.Tracker``, ``queue.KeyQueue`` and ``fencing.Fence`` (the workers' deadline);
* simulated: the API server (an in-memory Lease store with resourceVersion compare-and-swap,
  request and watch delays, and the watched objects' event log), the event loop's clock
  (virtual: a schedule of minutes runs in milliseconds), each replica's clocks (its
  monotonic clock and its wall clock, each with its own offset and optionally its own rate),
  the commands (random durations, failures, SIGTERM that may be ignored), and the faults:
  crashes, pauses of the parent process, partitions from the API server, watch lag, graceful
  joins and leaves.

Every replica runs in the one event loop; a context variable says which replica a task or a
timer belongs to, and the clock functions the production modules call read that replica's
clock. The checker (:class:`World`) asserts, at every command start and every 50 ms:

1. **exclusive**: no two replicas may dispatch for, or have a command running in, the same
   bucket at the same instant (may dispatch = the bucket is held owned or draining and the
   replica's Lease is valid on its own clock);
2. **watermark**: the watermark a replica would publish for a bucket never reaches the
   resourceVersion of an event of that bucket it accepted and has not run successfully (or
   superseded by a newer state that ran); and every watermark written into a Lease is backed
   by the global history: each object of the bucket whose state at or below it is not the
   newest has run at that state or later;

and at the end of a schedule (faults healed, load stopped, the group left to settle):

3. **live**: every bucket is owned by exactly one live replica, balanced (max − min ≤ 1);
4. **complete**: every object's final state ran (its last resourceVersion, or its delete).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import random
import selectors
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

import fastobs.coordinator as coordinator_mod
import fastobs.fencing as fencing_mod
import fastobs.ownership as ownership_mod
from fastobs import membership
from fastobs.buckets import Bucketer
from fastobs.coordinator import Coordinator, _ViewSink
from fastobs.events import Event, EventType, ObjectKey
from fastobs.fencing import Fence
from fastobs.lease import (
    GROUP_LABEL,
    ROLE_LABEL,
    WATERMARK,
    Conflict,
    Lease,
    LeaseError,
    NotFound,
    parse_watermarks,
)
from fastobs.ownership import Ownership, State
from fastobs.queue import KeyQueue
from fastobs.settings import Settings
from fastobs.tracker import Tracker

GROUP = "sim"
NAMESPACE = "ns"

# --------------------------------------------------------------------------------- virtual time


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0


class _VirtualSelector(selectors.BaseSelector):
    """Never blocks: a select with a timeout moves the virtual clock instead of waiting."""

    def __init__(self, clock: _Clock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready:
            return ready
        if timeout is None:
            raise RuntimeError("simulation deadlock: nothing scheduled and nothing ready")
        # Every turn of the loop costs a microsecond: a timer re-armed for "now" on a clock
        # that runs at another rate than the loop's must not stop virtual time.
        self._clock.now += max(1e-6, timeout)
        return []

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: _Clock) -> None:
        super().__init__(_VirtualSelector(clock))
        self._sim_clock = clock

    def time(self) -> float:
        return self._sim_clock.now


_current: contextvars.ContextVar[Replica | None] = contextvars.ContextVar("sim_replica", default=None)


# --------------------------------------------------------------------------------- parameters


@dataclass
class Params:
    replicas: int = 3
    buckets: int = 8
    keys: int = 24
    lease_duration: float = 4.0
    renew_deadline: float = 3.0
    retry_period: float = 0.5
    kill_grace: float = 0.5
    drain_timeout: float = 3.0
    duration: float = 40.0
    """Virtual seconds of load and faults; settling comes after."""
    settle: float = 30.0
    write_rate: float = 6.0
    """Object changes per second."""
    faults: int = 4
    """Random faults per schedule."""
    fault_kinds: tuple[str, ...] = ("crash", "pause", "partition", "join", "leave", "lag", "slow")
    command: tuple[float, float] = (0.02, 0.6)
    failure_rate: float = 0.05
    sigterm_ignored: float = 0.5
    request_delay: tuple[float, float] = (0.001, 0.05)
    watch_delay: tuple[float, float] = (0.001, 0.1)
    wall_offsets: float = 0.0
    """Each replica's wall clock is off by up to this many seconds (either way)."""
    clock_offsets: float = 0.0
    """Each replica's monotonic clock starts at a random point up to this many seconds."""
    clock_rates: float = 0.0
    """Each replica's clocks run at a rate within 1 ± this of real time."""


# --------------------------------------------------------------------------------- the API server


class Store:
    """Leases with compare-and-swap, and the watchers of the group's Leases."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.leases: dict[str, dict[str, Any]] = {}
        self.rv = itertools.count(1)
        self.watchers: list[LeaseWatch] = []
        self.writes = 0

    def _matches(self, doc: dict[str, Any], selector: str) -> bool:
        labels = doc["metadata"].get("labels") or {}
        for term in filter(None, selector.split(",")):
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
        return True

    def _stored(self, lease: Lease) -> Lease:
        doc = lease.to_json()
        doc["metadata"]["resourceVersion"] = str(next(self.rv))
        self.leases[lease.name] = doc
        self.writes += 1
        stored = Lease.from_json(orjson.loads(orjson.dumps(doc)))
        self.world.lease_written(stored)
        for w in self.watchers:
            w.push("MODIFIED", doc)
        return stored

    def apply(self, op: str, arg: Any) -> Any:
        if op == "get":
            doc = self.leases.get(arg)
            return None if doc is None else Lease.from_json(orjson.loads(orjson.dumps(doc)))
        if op == "list":
            return [Lease.from_json(orjson.loads(orjson.dumps(d))) for d in self.leases.values()
                    if self._matches(d, arg)]
        lease: Lease = arg
        current = self.leases.get(lease.name)
        if op == "create":
            if current is not None:
                raise Conflict("conflict", f"lease {lease.name} exists")
            return self._stored(lease)
        if current is None:
            raise NotFound("not_found", f"lease {lease.name} not found")
        if current["metadata"]["resourceVersion"] != lease.resource_version:
            raise Conflict("conflict", f"lease {lease.name} changed")
        if op == "update":
            return self._stored(lease)
        assert op == "delete"
        del self.leases[lease.name]
        for w in self.watchers:
            w.push("DELETED", current)
        return None


class SimLeaseClient:
    """``lease.LeaseClient``'s interface over the store, with delays, partitions and pauses.

    A request travels for a random delay, is applied at the store whether or not the client
    is still waiting (a crash or a timeout does not undo a write that arrived), and its
    answer travels back; the client waits at most the request's deadline."""

    def __init__(self, replica: Replica) -> None:
        self.r = replica
        self.namespace = NAMESPACE

    async def _call(self, op: str, arg: Any, deadline: float) -> Any:
        r, world = self.r, self.r.world
        await r.unpaused()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        there = world.rng.uniform(*world.p.request_delay) * r.slowness
        back = world.rng.uniform(*world.p.request_delay) * r.slowness

        def arrive() -> None:
            if r.partitioned or r.dead:
                return  # lost on the way
            try:
                result: Any = world.store.apply(op, arg)
                exc: BaseException | None = None
            except LeaseError as e:
                result, exc = None, e

            def answer() -> None:
                if r.partitioned or fut.done():
                    return
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)

            world.call_later(back, answer)

        world.call_later(there, arrive)
        try:
            return await asyncio.wait_for(fut, max(deadline, 0.05))
        except TimeoutError:
            raise LeaseError("timeout", f"{op}: no answer within {deadline:.2f}s") from None
        finally:
            await r.unpaused()

    async def get(self, name: str, deadline: float) -> Lease | None:
        result: Lease | None = await self._call("get", name, deadline)
        return result

    async def list(self, label_selector: str, deadline: float) -> list[Lease]:
        result: list[Lease] = await self._call("list", label_selector, deadline)
        return result

    async def create(self, lease: Lease, deadline: float) -> Lease:
        lease = _copy_lease(lease)
        lease.resource_version = ""
        result: Lease = await self._call("create", lease, deadline)
        return result

    async def update(self, lease: Lease, deadline: float) -> Lease:
        result: Lease = await self._call("update", _copy_lease(lease), deadline)
        return result

    async def delete(self, lease: Lease, deadline: float) -> None:
        await self._call("delete", _copy_lease(lease), deadline)


def _copy_lease(lease: Lease) -> Lease:
    return Lease.from_json(orjson.loads(orjson.dumps(lease.to_json())))


class LeaseWatch:
    """The coordinator's watch of the group's Leases: a list, then changes in order, each
    after the replica's current watch delay; nothing arrives while it is cut off or paused
    (the watch restarts with a fresh list when that ends)."""

    def __init__(self, replica: Replica, sink: _ViewSink) -> None:
        self.r = replica
        self.sink = sink
        self.queue: list[tuple[float, str, dict[str, Any]]] = []
        self.wake = asyncio.Event()
        self.last_due = 0.0

    def push(self, etype: str, doc: dict[str, Any]) -> None:
        now = self.r.world.now()
        due = max(self.last_due, now + self.r.watch_lag())
        self.last_due = due
        self.queue.append((due, etype, orjson.loads(orjson.dumps(doc))))
        self.wake.set()

    def retry_now(self) -> None:
        """The coordinator got through again: this watch has no backoff to cut short, only a
        wait to end."""
        self.wake.set()

    async def run(self) -> None:
        world = self.r.world
        world.store.watchers.append(self)
        try:
            while not self.r.dead:
                await self._list()
                while not self.r.partitioned and not self.r.paused and not self.r.dead:
                    if not self.queue:
                        self.wake.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.wake.wait(), 1.0)
                        continue
                    due, etype, doc = self.queue[0]
                    if due > world.now():
                        await asyncio.sleep(due - world.now())
                        continue
                    self.queue.pop(0)
                    self.sink.watch_event(_lease_event(etype, doc))
                await self.r.reachable()
        finally:
            world.store.watchers.remove(self)

    async def _list(self) -> None:
        await asyncio.sleep(self.r.world.rng.uniform(*self.r.world.p.request_delay) * 2)
        await self.r.reachable()
        self.queue.clear()
        self.last_due = 0.0
        docs = [orjson.loads(orjson.dumps(d)) for d in self.r.world.store.leases.values()
                if (d["metadata"].get("labels") or {}).get(GROUP_LABEL) == GROUP]
        self.sink.list_begin(relist=True)
        for doc in docs:
            self.sink.list_item(_lease_event("ADDED", doc))
        self.sink.list_end()


def _lease_event(etype: str, doc: dict[str, Any]) -> Event:
    md = doc["metadata"]
    kind = EventType.DELETED if etype == "DELETED" else EventType.UPDATED
    return Event(kind, ObjectKey(f"{NAMESPACE}/{md['name']}"), NAMESPACE, md["name"], "",
                 md.get("resourceVersion", ""), orjson.dumps(doc), 0.0)


# --------------------------------------------------------------------------------- the watched objects


@dataclass
class Change:
    rv: int
    etype: EventType
    key: ObjectKey
    uid: str
    at: float


class Objects:
    """The observed resource: live objects and the log of every change (the API server's
    history, all of it kept)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.live: dict[ObjectKey, tuple[str, int]] = {}
        """key -> (uid, rv)."""
        self.log: list[Change] = []
        self.uids = itertools.count(1)

    def head(self) -> int:
        return self.log[-1].rv if self.log else 0

    def change(self, rv: int) -> None:
        w = self.world
        key = ObjectKey(f"{NAMESPACE}/k{w.rng.randrange(w.p.keys)}")
        current = self.live.get(key)
        if current is None:
            uid, etype = f"u{next(self.uids)}", EventType.ADDED
        elif w.rng.random() < 0.15:
            uid, etype = current[0], EventType.DELETED
        else:
            uid, etype = current[0], EventType.UPDATED
        if etype is EventType.DELETED:
            del self.live[key]
        else:
            self.live[key] = (uid, rv)
        self.log.append(Change(rv, etype, key, uid, w.now()))
        for r in w.replicas:
            r.stream.wake.set()


def _event(etype: EventType, key: ObjectKey, uid: str, rv: int, received: float, backlog: bool) -> Event:
    ns, _, name = key.partition("/")
    return Event(etype, key, ns, name, uid, str(rv), b"{}", received, backlog=backlog)


class SimStream:
    """``source.Source`` as ``ownership`` sees it (``rewind``, ``position``) and as it feeds the
    sink: a list, then the log's changes after the list, each after the watch delay; a
    rewind restarts from a resourceVersion (a replay: changes come again, deletes included)
    or relists; bookmarks move the position when nothing changes."""

    def __init__(self, replica: Replica) -> None:
        self.r = replica
        self.pos: int | None = None
        self.cursor = 0
        self.pending: tuple[str | None] | None = None
        self.listed = False
        self.wake = asyncio.Event()

    def position(self) -> int | None:
        return self.pos

    def rewind(self, rv: str | None) -> None:
        if self.pending is not None:
            old = self.pending[0]
            if old is None or (rv is not None and int(old) < int(rv)):
                rv = old
        self.pending = (rv,)
        self.wake.set()

    async def run(self) -> None:
        objs = self.r.world.objects
        need_list = self.pending is None
        while not self.r.dead:
            await self.r.reachable()
            if self.pending is not None:
                (rv,) = self.pending
                self.pending = None
                self.r.own.rewound(rv, False)
                if rv is None:
                    need_list = True
                else:
                    self.pos = int(rv)
                    self.cursor = _first_after(objs.log, int(rv))
                    self.listed = True
                    # As ``Source`` does: a replay starts with a list of the objects as of its
                    # start (read from storage), then watches from there.
                    await self._seed_list(int(rv))
                    if self.pending is not None:
                        continue  # asked for during that list: apply it before anything else
            if need_list:
                # A list once begun ends before a rewind asked for meanwhile is applied
                # (as ``Source`` does): the position stays where it was until the list ends.
                await asyncio.sleep(self.r.world.rng.uniform(0.01, 0.2))
                await self.r.reachable()
                self._list()
                need_list = False
                continue
            await self._follow()

    async def _seed_list(self, rv: int) -> None:
        """``Source._seed_list``: the objects as they were at ``rv``, each to the engine's
        ``seed_item``, then ``seeded``; one attempt, which fails when the replica is cut off."""
        world = self.r.world
        await asyncio.sleep(world.rng.uniform(0.01, 0.2))
        await self.r.unpaused()
        if self.r.dead:
            return
        if self.r.partitioned:
            self.r.own.seeded(str(rv), False)
            return
        as_of: dict[ObjectKey, tuple[str, int]] = {}
        for ch in world.objects.log[:_first_after(world.objects.log, rv)]:
            if ch.etype is EventType.DELETED:
                as_of.pop(ch.key, None)
            else:
                as_of[ch.key] = (ch.uid, ch.rv)
        now = world.now()
        for key in sorted(as_of):
            uid, at = as_of[key]
            self.r.engine.seed_item(_event(EventType.SYNC, key, uid, at, now, backlog=True))
        self.r.own.seeded(str(rv), True)

    def _list(self) -> None:
        objs, e = self.r.world.objects, self.r.engine
        head = objs.head()
        e.list_begin(relist=self.listed)
        now = self.r.world.now()
        for key in sorted(objs.live):
            uid, rv = objs.live[key]
            e.list_item(_event(EventType.SYNC, key, uid, rv, now, backlog=True))
        e.list_end()
        self.pos, self.cursor, self.listed = head, len(objs.log), True

    async def _follow(self) -> None:
        """Deliver what is due; return when a rewind is asked for or the replica is cut off."""
        world, objs = self.r.world, self.r.world.objects
        lag = self.r.watch_lag()
        idle_since = world.now()
        while self.pending is None and not self.r.partitioned and not self.r.paused and not self.r.dead:
            if self.cursor < len(objs.log):
                ch = objs.log[self.cursor]
                due = ch.at + lag
                if due > world.now():
                    await asyncio.sleep(due - world.now())
                    continue
                self.cursor += 1
                self.pos = ch.rv
                self.r.engine.watch_event(_event(ch.etype, ch.key, ch.uid, ch.rv, world.now(), backlog=False))
                idle_since = world.now()
                lag = self.r.watch_lag()
                continue
            if world.now() - idle_since >= 1.0 and self.pos is not None:
                self.pos = max(self.pos, objs.head())  # a BOOKMARK
                idle_since = world.now()
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 1.0)


def _first_after(log: list[Change], rv: int) -> int:
    lo, hi = 0, len(log)
    while lo < hi:
        mid = (lo + hi) // 2
        if log[mid].rv <= rv:
            lo = mid + 1
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------------- one replica


@dataclass
class Job:
    id: int
    ev: Event
    bucket: int
    replica: Replica
    started: float = 0.0
    ended: bool = False
    handle: asyncio.TimerHandle | None = None


class SimEngine:
    """The parent's event path and pool, as ``engine`` and ``pool`` wire ``ownership`` in:
    admit before the tracker, accept before the queue, the dispatch gate before each job,
    ``ran`` after a success, ``stopped`` after a fenced command."""

    def __init__(self, replica: Replica) -> None:
        self.r = replica
        clock = replica.world.now
        self.queue = KeyQueue(clock=clock)
        self.tracker = Tracker(emit=self._emit, tracking=True, namespaced=True, keep_object=False,
                               clock=clock)
        self.running: dict[ObjectKey, Job] = {}
        self.results: list[tuple[Job, str]] = []
        self.stopping = False

    # sink
    def list_begin(self, *, relist: bool) -> None:
        self.tracker.list_begin()

    def list_item(self, ev: Event) -> None:
        if self.r.own.admit(ev):
            self.tracker.list_item(ev)

    def list_end(self) -> None:
        deletes, _ = self.tracker.list_end(None)
        for ev in deletes:
            self._emit(ev)
        self.r.own.list_ended()

    def seed_item(self, ev: Event) -> None:
        if self.r.own.seeds(ev):
            self.tracker.seed(ev)

    def watch_event(self, ev: Event) -> None:
        if self.r.own.admit(ev):
            self.tracker.watch_event(ev)

    def _emit(self, ev: Event) -> None:
        own = self.r.own
        if not own.accept(ev):
            self.tracker.handled(ev, ok=True, arg=None)
            return
        rv = ev.rv or own.synthetic.get(ev.key, "")
        self.r.world.accepted(self.r, ev, own.bucket(ev), int(rv) if rv else None)
        self.queue.add(ev)
        self.pump()

    # EngineControl
    def purge(self, events: Callable[[Event], bool], records: Callable[[ObjectKey, str], bool]) -> None:
        self.queue.discard(events)
        self.tracker.forget(records)
        self.r.world.purged(self.r, events)

    def queued(self, match: Callable[[Event], bool]) -> int:
        return self.queue.count(match)

    # DispatchControl
    def fence(self, match: Callable[[Event], bool], grace: float) -> int:
        ids = [j.id for j in self.running.values() if match(j.ev)]
        self.r.fence.kill(ids, grace)
        return len(ids)

    def in_flight(self, match: Callable[[Event], bool]) -> int:
        return sum(1 for j in self.running.values() if match(j.ev))

    def set_deadline(self, until: float, grace: float) -> None:
        self.r.fence.extend(until, grace)

    def pump_all(self) -> None:
        self.pump()

    def pump(self) -> None:
        r, own = self.r, self.r.own
        if r.paused or r.dead or self.stopping or not own.open():
            return
        while True:
            ev = self.queue.pop()
            if ev is None:
                return
            if not own.admits(ev):
                self.queue.done(ev.key)
                continue
            b, _epoch = own.stamp(ev)
            job = Job(next(r.world.job_ids), ev, b, r)
            self.running[ev.key] = job
            r.world.start_job(job)

    def result(self, job: Job, outcome: str) -> None:
        """A worker's result reached the parent."""
        if self.r.dead:
            return
        if self.r.paused:
            self.results.append((job, outcome))
            return
        self.running.pop(job.ev.key, None)
        self.r.fence.forget(job.id)
        ev = job.ev
        self.queue.done(ev.key)
        if outcome == "fenced":
            if self.r.own.stopped(ev):
                self.queue.requeue(ev)
        elif outcome == "ok":
            rv = ev.rv or self.r.own.synthetic.get(ev.key, "")
            self.tracker.handled(ev, ok=True, arg=None)
            self.queue.forget(ev.key)
            self.r.own.ran(ev)
            self.r.world.ran(self.r, ev, job.bucket, int(rv) if rv else None)
        else:
            self.tracker.handled(ev, ok=False, arg=None)
            self.queue.forget(ev.key)
            self.r.world.ran(self.r, ev, job.bucket, None, failed=True)
        self.pump()

    def flush(self) -> None:
        results, self.results = self.results, []
        for job, outcome in results:
            self.result(job, outcome)


class Replica:
    """One fastobs process: its coordinator, ownership, engine, worker fence and clocks."""

    def __init__(self, world: World, identity: str, incarnation: int) -> None:
        self.world = world
        self.identity = identity
        rng = world.rng
        p = world.p
        self.clock_offset = rng.uniform(0, p.clock_offsets)
        self.wall_offset = rng.uniform(-p.wall_offsets, p.wall_offsets)
        self.rate = 1.0 + rng.uniform(-p.clock_rates, p.clock_rates)
        self.paused = False
        self.partitioned = False
        self.dead = False
        self.leaving = False
        self.slowness = 1.0
        self.lag_until = 0.0
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._reachable = asyncio.Event()
        self._reachable.set()
        self.context = contextvars.copy_context()
        self.context.run(_current.set, self)
        s = Settings(lease_name=GROUP, buckets=p.buckets, lease_duration=p.lease_duration,
                     renew_deadline=p.renew_deadline, retry_period=p.retry_period,
                     lease_kill_grace=p.kill_grace, drain_timeout=p.drain_timeout, identity=identity)
        self.own = Ownership(Bucketer(p.buckets, "name"), kill_grace=p.kill_grace)
        self.engine = SimEngine(self)
        self.stream = SimStream(self)
        self.fence = Fence()
        self.own.bind(engine=self.engine, pool=self.engine, stream=self.stream)
        self.c: Coordinator = self.context.run(
            Coordinator, None, s, self.own, namespace=NAMESPACE, config="v1;sim")  # type: ignore[arg-type]
        self.c.holder = f"{identity}@{incarnation:06x}"
        self.c.leases = SimLeaseClient(self)  # type: ignore[assignment]
        self.c.watch = LeaseWatch(self, _ViewSink(self.c))  # type: ignore[assignment]
        self.c.on_failure = lambda exc: world.violation(
            "live", f"{self.c.holder}: a coordinator task failed: {exc!r}")
        self.tasks: list[asyncio.Task[Any]] = []

    def within(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn`` as this replica's code (its clocks), from anywhere."""
        if _current.get() is self:
            return fn(*args)
        return self.context.run(fn, *args)

    # clocks, as this replica's machine sees them
    def clock(self) -> float:
        return self.clock_offset + self.rate * self.world.now()

    def wall(self) -> float:
        return 1.7e9 + self.wall_offset + self.rate * self.world.now()

    def watch_lag(self) -> float:
        lag = self.world.rng.uniform(*self.world.p.watch_delay)
        if self.world.now() < self.lag_until:
            lag += self.world.p.lease_duration * 1.5
        return lag

    def may_dispatch(self, bucket: int) -> bool:
        """Whether this replica could start a command of ``bucket`` now: the bucket owned (or
        draining with work of it still queued), the Lease valid on this replica's clock."""
        if self.dead or self.engine.stopping or self.clock() >= self.own.valid_until:
            return False
        state = self.own.states.get(bucket)
        if state is State.DRAINING:
            return self.engine.queue.count(lambda ev: self.own.bucket(ev) == bucket) > 0
        return state is State.OWNED

    async def unpaused(self) -> None:
        await self._resumed.wait()

    async def reachable(self) -> None:
        while self.paused or self.partitioned:
            await self._resumed.wait()
            await self._reachable.wait()

    def spawn(self, coro: Any) -> None:
        self.tasks.append(self.world.loop.create_task(coro, context=self.context))

    async def start(self) -> None:
        await self.c.start()
        self.spawn(self.stream.run())

    def pause(self, on: bool) -> None:
        self.paused = on
        if on:
            self._resumed.clear()
        else:
            self._resumed.set()
            self.within(self.engine.flush)
            self.stream.wake.set()
            self.within(self.engine.pump)

    def partition(self, on: bool) -> None:
        self.partitioned = on
        if on:
            self._reachable.clear()
        else:
            self._reachable.set()
            self.stream.wake.set()

    def crash(self) -> None:
        """SIGKILL: the parent is gone; the workers see it and kill their commands."""
        self.dead = True
        self.c.stopping = True  # its loops end even where a cancellation is swallowed (wait_for)
        self._resumed.set()
        self._reachable.set()
        for task in self.tasks:
            task.cancel()
        for task in list(self.c._tasks) + list(self.c._drains.values()):
            task.cancel()
        if self.c._fence_timer is not None:
            self.c._fence_timer.cancel()
        if self.fence._timer is not None:
            self.fence._timer.cancel()
        for job in list(self.engine.running.values()):
            self.world.end_job(job, "killed")

    async def leave(self) -> None:
        """SIGTERM: stop reading, let running commands end, hand every bucket over, exit."""
        for task in self.tasks:
            task.cancel()
        self.engine.stopping = True
        while self.engine.running and not self.dead:
            await asyncio.sleep(0.05)
        await self.c.shutdown()
        self.dead = True


# --------------------------------------------------------------------------------- the world


@dataclass
class Figures:
    schedules: int = 0
    commands: int = 0
    failed_commands: int = 0
    fenced_commands: int = 0
    takeovers: int = 0
    acquires: int = 0
    releases: int = 0
    resumes: int = 0
    fences: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    lease_writes: int = 0
    changes: int = 0
    moves: int = 0
    minimal_moves: int = 0
    virtual_seconds: float = 0.0
    unsettled: int = 0
    """Schedules that had not settled (owners, balance, queues) when the settle time ran out."""
    replays_unended: int = 0
    """Replicas still catching a bucket up at the end (a replay that never ended)."""


class World:
    """One schedule: the replicas, the API server, the faults, and the checks."""

    def __init__(self, seed: int, p: Params) -> None:
        self.seed = seed
        self.p = p
        self.rng = random.Random(seed)
        self.clock = _Clock()
        self.loop = _VirtualLoop(self.clock)
        self.store = Store(self)
        self.objects = Objects(self)
        self.replicas: list[Replica] = []
        self.job_ids = itertools.count(1)
        self.jobs: dict[int, Job] = {}
        self.running: dict[int, dict[Replica, int]] = {}
        """bucket -> replica -> commands running (on the machines, not as the parent believes)."""
        self.violations: list[str] = []
        self.kinds: dict[str, int] = {}
        self.outstanding: dict[Replica, dict[int, dict[ObjectKey, list[int]]]] = {}
        """replica -> bucket -> key -> accepted rvs not run yet."""
        self.completed: dict[ObjectKey, list[tuple[EventType, int | None, str, bool]]] = {}
        """key -> (type, rv, uid, succeeded) of every command that ran to its end."""
        self.figures = Figures()
        self.incarnations = itertools.count(1)
        self.names = itertools.count(0)
        self.rv = itertools.count(1)
        self.bucketer = Bucketer(p.buckets, "name")
        self.background: set[asyncio.Task[Any]] = set()

    # time
    def now(self) -> float:
        return self.clock.now

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.loop.call_later(delay, fn, context=contextvars.Context())

    def violation(self, kind: str, what: str) -> None:
        """Record a broken invariant: ``kind`` is exclusive, watermark, live or complete."""
        self.violations.append(f"t={self.now():.3f} {what}")
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    # commands
    def start_job(self, job: Job) -> None:
        r = job.replica
        if not r.fence.may_start(job.id):
            self.call_later(0.0, lambda: r.engine.result(job, "fenced"))
            return
        job.started = self.now()
        self.jobs[job.id] = job
        r.fence.started(job.id, job.id)
        holders = self.running.setdefault(job.bucket, {})
        others = [o.c.holder for o, n in holders.items() if n and o is not r]
        if others:
            self.violation("exclusive",
                           f"bucket {job.bucket}: {r.c.holder} starts {job.ev.key}@{job.ev.rv} while "
                           f"{others} run commands in it")
        holders[r] = holders.get(r, 0) + 1
        if job.ended:
            return
        duration = self.rng.uniform(*self.p.command)
        outcome = "failed" if self.rng.random() < self.p.failure_rate else "ok"
        job.handle = self.loop.call_later(duration, self.end_job, job, outcome, context=contextvars.Context())

    def signal(self, pgid: int, sig: int) -> None:
        job = self.jobs.get(pgid)
        if job is None or job.ended:
            return
        if sig == signal.SIGKILL:
            self.end_job(job, "killed")
        elif self.rng.random() >= self.p.sigterm_ignored:
            delay = self.rng.uniform(0.0, 0.05)
            self.loop.call_later(delay, self.end_job, job, "killed", context=contextvars.Context())

    def end_job(self, job: Job, outcome: str) -> None:
        if job.ended:
            return
        job.ended = True
        if job.handle is not None:
            job.handle.cancel()
        self.jobs.pop(job.id, None)
        holders = self.running.get(job.bucket, {})
        holders[job.replica] = holders.get(job.replica, 1) - 1
        r = job.replica
        r.fence.ended(job.id)
        if r.fence.fenced(job.id):
            outcome = "fenced"
        if outcome == "killed":
            outcome = "fenced"
        if outcome == "fenced":
            self.figures.fenced_commands += 1
        else:
            ev = job.ev
            rv = int(ev.rv) if ev.rv else None
            self.completed.setdefault(ev.key, []).append((ev.type, rv, ev.uid, outcome == "ok"))
            self.figures.commands += 1
        if not r.dead:
            r.within(r.engine.result, job, outcome)

    def ran(self, r: Replica, ev: Event, bucket: int, rv: int | None, failed: bool = False) -> None:
        """The parent learnt that ``ev``'s command ended (``rv``: the one it held the
        watermark at, a relist's delete included)."""
        if failed:
            self.figures.failed_commands += 1
            return
        keys = self.outstanding.get(r, {}).get(bucket, {})
        pending = keys.get(ev.key)
        if pending is None or rv is None:
            return
        left = [x for x in pending if x > rv]
        if left:
            keys[ev.key] = left
        else:
            del keys[ev.key]

    def accepted(self, r: Replica, ev: Event, bucket: int, rv: int | None) -> None:
        if rv is None:
            return
        self.outstanding.setdefault(r, {}).setdefault(bucket, {}).setdefault(ev.key, []).append(rv)

    def purged(self, r: Replica, match: Callable[[Event], bool]) -> None:
        # Purged events are forgotten here with their buckets' holds (ownership forgets the
        # holds of the buckets it purges); the end-to-end check covers their fate.
        for keys in self.outstanding.get(r, {}).values():
            for key in list(keys):
                if match(_event(EventType.UPDATED, key, "", 1, 0.0, False)):
                    del keys[key]

    # Leases
    def lease_written(self, lease: Lease) -> None:
        if lease.labels.get(ROLE_LABEL) == "member":
            marks = parse_watermarks(lease.annotations.get(WATERMARK, ""))
        else:
            text = lease.annotations.get(WATERMARK, "")
            b = int(lease.name.rsplit("-b", 1)[1].split("-of-")[0]) if "-b" in lease.name else 0
            marks = {b: int(text)} if text.isdigit() else {}
        for b, mark in marks.items():
            self._check_published(lease.name, b, mark)

    def _check_published(self, where: str, bucket: int, mark: int) -> None:
        """What a watermark promises the next owner, who replays every change after it: each
        object of ``bucket`` whose newest change so far is at or below ``mark`` has run at
        that change or later (a change after ``mark`` reaches the next owner anyway)."""
        latest: dict[ObjectKey, Change] = {}
        for ch in self.objects.log:
            if self.bucketer.bucket(ch.key, NAMESPACE, ch.uid) == bucket:
                latest[ch.key] = ch
        for key, ch in latest.items():
            if ch.rv <= mark and not self._covered(key, ch, succeeded=True):
                self.violation("watermark",
                               f"{where}: watermark {mark} of bucket {bucket} passes {key}@{ch.rv} "
                               f"({ch.etype.value}), which never ran")

    def _covered(self, key: ObjectKey, ch: Change, *, succeeded: bool = False) -> bool:
        """Whether ``ch`` is done with.

        For the final check (``succeeded`` False): a command ran ``ch`` or a newer state of
        its object (the same uid), whatever its outcome; for a delete, a ``Deleted`` of that
        object (from the watch, or found by a relist). For a published watermark
        (``succeeded`` True), the watermark's own rule: a command of the *key* at ``ch`` or
        later succeeded (a failed state holds its key back until a newer one of the key
        succeeds), or a ``Deleted`` of that object found by a relist succeeded."""
        for etype, rv, uid, ok in self.completed.get(key, []):
            if succeeded:
                if ok and ((rv is not None and rv >= ch.rv) or (rv is None and uid == ch.uid)):
                    return True
                continue
            if uid != ch.uid:
                continue
            if etype is EventType.DELETED:
                return True
            if ch.etype is not EventType.DELETED and rv is not None and rv >= ch.rv:
                return True
        return False

    # checks every step
    def check(self) -> None:
        for b in range(self.p.buckets):
            may = [r.c.holder for r in self.replicas if r.may_dispatch(b)]
            busy = [r.c.holder for r, n in self.running.get(b, {}).items() if n]
            both = sorted(set(may) | set(busy))
            if len(both) > 1:
                self.violation("exclusive", f"bucket {b}: may dispatch {may}, commands running on {busy}")
        for r in self.replicas:
            if r.dead:
                continue
            marks = r.within(r.own.watermarks)
            for b, mark in marks.items():
                for key, rvs in self.outstanding.get(r, {}).get(b, {}).items():
                    if rvs and min(rvs) <= mark:
                        self.violation("watermark", f"{r.c.holder}: watermark {mark} of bucket {b} "
                                                    f"passes {key}@{min(rvs)}, "
                                       "accepted and not run")

    async def checker(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(0.05)

    # load
    async def load(self, until: float) -> None:
        while self.now() < until:
            await asyncio.sleep(self.rng.expovariate(self.p.write_rate))
            self.objects.change(next(self.rv))
            self.figures.changes += 1

    # replicas
    async def add_replica(self, identity: str | None = None) -> Replica:
        if identity is None:
            identity = f"r{next(self.names)}"
        r = Replica(self, identity, next(self.incarnations))
        self.replicas.append(r)
        self.outstanding[r] = {}
        r.spawn(r.start())
        return r

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if not r.dead and not r.leaving]


# --------------------------------------------------------------------------------- patching


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """Point the production modules' clocks and signals at the simulation's."""

    def clock() -> float:
        r = _current.get()
        if r is None:
            raise RuntimeError("a fencing clock read outside any replica")
        return r.clock()

    def wall() -> float:
        r = _current.get()
        assert r is not None
        return r.wall()

    def signal_group(pgid: int, sig: int) -> None:
        r = _current.get()
        assert r is not None
        r.world.signal(pgid, sig)

    saved = (coordinator_mod.clock, ownership_mod.clock, fencing_mod.clock, coordinator_mod._wall,
             fencing_mod._signal_group, coordinator_mod.random.getstate())
    coordinator_mod.clock = ownership_mod.clock = fencing_mod.clock = clock
    coordinator_mod._wall = wall
    fencing_mod._signal_group = signal_group
    try:
        yield
    finally:
        (coordinator_mod.clock, ownership_mod.clock, fencing_mod.clock, coordinator_mod._wall,
         fencing_mod._signal_group, state) = saved
        coordinator_mod.random.setstate(state)


# --------------------------------------------------------------------------------- schedules


async def _schedule(world: World) -> None:
    p, rng = world.p, world.rng
    for _ in range(p.replicas):
        await world.add_replica()
        await asyncio.sleep(rng.uniform(0.0, 0.3))
    checker = world.loop.create_task(world.checker())
    # The group forms before the load starts: an object created and deleted before any
    # replica listed was never known to anyone (oc alike), so it cannot be "lost".
    await _settle(world, initial=True)
    load = world.loop.create_task(world.load(world.now() + p.duration))
    start = world.now()
    faults = sorted(start + rng.uniform(p.lease_duration, p.duration) for _ in range(p.faults))
    for at in faults:
        if at > world.now():
            await asyncio.sleep(at - world.now())
        await _fault(world, rng.choice(p.fault_kinds))
    await load
    # settle: heal everything, keep at least one replica, let the group converge
    for r in world.replicas:
        if not r.dead:
            r.partition(False)
            r.pause(False)
            r.slowness = 1.0
            r.lag_until = 0.0
    if not world.live():
        await world.add_replica()
    await _settle(world)
    checker.cancel()
    world.check()
    _final_checks(world)


async def _settle(world: World, initial: bool = False) -> None:
    """Wait until every bucket is owned by a live replica and nothing is pending, or give up."""
    p = world.p
    deadline = world.now() + p.settle
    calm = 0
    while world.now() < deadline:
        await asyncio.sleep(0.25)
        calm = calm + 1 if _settled(world) else 0
        if calm >= 4:  # a second without a change of owner, a queued event or a replay
            return
    if not initial:
        world.figures.unsettled += 1


def _owners(world: World) -> dict[int, list[Replica]]:
    out: dict[int, list[Replica]] = {b: [] for b in range(world.p.buckets)}
    for r in world.live():
        for b, st in r.own.states.items():
            if st is State.OWNED:
                out[b].append(r)
    return out


def _settled(world: World) -> bool:
    owners = _owners(world)
    if any(len(o) != 1 for o in owners.values()):
        return False
    counts = [sum(1 for o in owners.values() if o[0] is r) for r in world.live()]
    if max(counts) - min(counts) > 1:
        return False
    for r in world.live():
        if r.engine.running or len(r.engine.queue) or r.own.awaiting:
            return False
        st = r.stream
        if st.pending is not None or st.pos != world.objects.head() or st.cursor != len(world.objects.log):
            return False
    return True


def _final_checks(world: World) -> None:
    owners = _owners(world)
    for b, o in owners.items():
        if len(o) != 1:
            world.violation("live", f"after settling, bucket {b} is owned by {[r.c.holder for r in o]}")
    live = world.live()
    counts = [sum(1 for o in owners.values() if o and o[0] is r) for r in live]
    if counts and max(counts) - min(counts) > 1:
        world.violation("live", f"after settling, unbalanced: {counts}")
    world.figures.replays_unended = sum(1 for r in live if r.own.progress.replaying())
    # complete: every object's final state ran
    final: dict[ObjectKey, Change] = {}
    for ch in world.objects.log:
        final[ch.key] = ch
    for key, ch in final.items():
        if not world._covered(key, ch):
            world.violation("complete", f"final state of {key} ({ch.etype.value}@{ch.rv}) never ran")


async def _fault(world: World, kind: str) -> None:
    rng, p = world.rng, world.p
    live = world.live()
    world.figures.faults[kind] = world.figures.faults.get(kind, 0) + 1
    if kind == "join" or not live:
        used = {r.identity for r in world.replicas if not r.dead}
        reuse = sorted({r.identity for r in world.replicas if r.dead} - used)
        await world.add_replica(rng.choice(reuse) if reuse and rng.random() < 0.5 else None)
        return
    r = rng.choice(live)
    if kind == "crash":
        r.crash()
        if rng.random() < 0.7:
            world.call_later(rng.uniform(0.5, 2 * p.lease_duration),
                             lambda: _restart(world, r.identity))
    elif kind == "leave":
        if len(live) > 1:
            r.leaving = True
            world.loop.create_task(r.leave(), context=r.context)
    elif kind == "pause":
        r.pause(True)
        world.call_later(rng.uniform(0.3, 3 * p.lease_duration), lambda: r.pause(False))
    elif kind == "partition":
        r.partition(True)
        world.call_later(rng.uniform(0.3, 3 * p.lease_duration), lambda: r.partition(False))
    elif kind == "lag":
        r.lag_until = world.now() + rng.uniform(1.0, 3 * p.lease_duration)
    elif kind == "slow":
        r.slowness = rng.uniform(5.0, 40.0)
        world.call_later(rng.uniform(1.0, 2 * p.lease_duration), lambda: setattr(r, "slowness", 1.0))


def _restart(world: World, identity: str) -> None:
    """A crashed replica's pod comes back under the same identity (unless one runs)."""
    if any(r.identity == identity and not r.dead for r in world.replicas):
        return
    _spawn_world(world, world.add_replica(identity))


def _spawn_world(world: World, coro: Any) -> None:
    task = world.loop.create_task(coro)
    world.background.add(task)
    task.add_done_callback(world.background.discard)


def run(seed: int, p: Params | None = None) -> World:
    """Run one schedule; the returned world holds its violations and figures."""
    p = p or Params()
    world = World(seed, p)
    coordinator_mod.random.seed(seed)
    with patched():
        try:
            world.loop.run_until_complete(_schedule(world))
        finally:
            _shutdown(world)
    f = world.figures
    f.schedules = 1
    f.lease_writes = world.store.writes
    f.virtual_seconds = world.now()
    for r in world.replicas:
        for reason, n in r.c.stats.transitions.items():
            if reason == "takeover":
                f.takeovers += n
            elif reason == "acquire":
                f.acquires += n
            elif reason == "release":
                f.releases += n
            elif reason == "resume":
                f.resumes += n
            elif reason == "fenced":
                f.fences += n
    return world


def _shutdown(world: World) -> None:
    """Stop every replica where it stands and end every task (nothing is written any more)."""
    loop = world.loop
    for r in world.replicas:
        if not r.dead:
            r.within(r.crash)
    for _ in range(20):
        pending = asyncio.all_tasks(loop)
        if not pending:
            break
        for task in pending:
            task.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def minimal_moves(before: dict[int, str], members: list[str]) -> int:
    """The fewest buckets that must change owner to balance ``before`` over ``members``."""
    held = {b: (h if h in members else "") for b, h in before.items()}
    quota = membership.quotas(members, held)
    counts: dict[str, int] = {}
    for h in held.values():
        if h:
            counts[h] = counts.get(h, 0) + 1
    orphans = sum(1 for h in held.values() if not h)
    return orphans + sum(max(0, counts.get(m, 0) - quota[m]) for m in members)
