"""Coordinator: this replica's part in its group: its member Lease, the bucket Leases, every
change of ownership.

Where it sits: in the parent, beside the pipeline; ``daemon`` starts it when ``--lease-name``
is set. In: the group's Leases (watched with a second ``source`` on the leases resource, read
and written with ``lease``) and this process's progress (``ownership``'s watermarks). Out:
decisions applied to ``ownership`` (acquire, drain and release, suspend and resume, the
Lease's validity), Lease writes, and figures for metrics and ``/readyz``.

The group (see docs/ha.md):

* a **member Lease** per replica (``<group>-m-<identity>``) says it is alive: it is renewed
  every ``--retry-period`` and carries the watermark of every bucket the replica holds;
* a **bucket Lease** per bucket (``<group>`` for one bucket, else ``<group>-bNN-of-B``)
  names its owner; it is written only when the owner changes (acquire, release, takeover),
  and carries the watermark it changed hands with;
* every replica computes the same balanced, sticky assignment (``membership``) from the
  members alive in its view; a replica acquires a bucket released to it, takes over one whose
  owner's member Lease has not changed for the owner's lease duration (on this process's own
  clock, confirmed by a fresh read), and drains then releases the buckets it holds beyond its
  share.

Rules (client-go's leader election, plus fencing; timing on the ``fencing`` clock):

1. Time is this process's monotonic clock: another replica's Lease is expired when its
   resourceVersion has not changed for its duration *as observed here*; a remote
   ``renewTime`` is never compared with the local clock. After this process lost contact (a
   renewal failed for more than two periods), every other Lease's observation starts over.
2. Every ownership write is a compare-and-swap (PUT with ``resourceVersion``); a 409 means
   someone else wrote first.
3. Every request has a deadline no later than the end of the Lease's validity (a request
   sent without a valid Lease gets a retry period, at least a second).
4. Fencing before expiry: the Lease is valid until ``renewal sent + renew deadline``; then
   every bucket is suspended and every worker stops its commands itself (SIGTERM, SIGKILL
   after ``--lease-kill-grace``). Others take over no earlier than ``renewal applied + lease
   duration``; ``renew deadline + kill grace + retry period ≤ lease duration`` (checked at
   start) leaves the margin.
5. A suspended bucket resumes only after a compare-and-swap on its bucket Lease succeeds, so
   a takeover by another replica and the resumption cannot both win.
6. A bucket is released only after its commands have ended (drained, or stopped and reaped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from fastobs import membership
from fastobs.errors import GroupConfigError
from fastobs.events import Event, EventType
from fastobs.fencing import clock
from fastobs.kube import KubeClient
from fastobs.lease import (
    CONFIG,
    GROUP_LABEL,
    LEASES,
    PREVIOUS_HOLDER,
    PREVIOUS_WATERMARKS,
    RELEASED_BY,
    ROLE_LABEL,
    WATERMARK,
    Conflict,
    Lease,
    LeaseClient,
    LeaseError,
    NotFound,
    bucket_lease_name,
    format_watermarks,
    member_lease_name,
    micro_time,
    parse_watermarks,
)
from fastobs.metrics import GroupState
from fastobs.ownership import Ownership, State
from fastobs.settings import Settings
from fastobs.source import Source

log = logging.getLogger(__name__)

MEMBER = "member"
BUCKET = "bucket"
JITTER = 1.2
"""Retries wait ``retry period × U(1, 1.2)`` (client-go's jitter factor)."""
ADOPT_AFTER_DURATIONS = 2
"""A free bucket its target member did not take for this many lease durations may be taken
by any member: views that disagree must not leave a bucket without an owner. Long, because
adopting what the target is about to take makes the adopter hand it over again."""
STALE_MEMBER = 300.0
"""Member Leases released or unchanged for this long are deleted (when RBAC allows)."""
_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def lease_namespace(settings: Settings, watched: str) -> str:
    """``--lease-namespace``, else the pod's namespace in a cluster, else ``watched``."""
    if settings.lease_namespace:
        return settings.lease_namespace
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        with contextlib.suppress(OSError), open(_SA_NAMESPACE, encoding="utf-8") as f:
            namespace = f.read().strip()
            if namespace:
                return namespace
    return watched


def group_config(settings: Settings, resource: str, scope: str) -> str:
    """What every replica of a group must agree on, as stored on the bucket Leases."""
    import hashlib

    selectors = hashlib.sha256(f"{settings.selector}\0{settings.field_selector}".encode()).hexdigest()[:12]
    # v2: the name key is mixed before it is cut into ranges (buckets.mix64); a group must not
    # mix the two, or its replicas would disagree on which objects a bucket holds.
    return (f"v2;buckets={settings.buckets};key={settings.shard_key};resource={resource};"
            f"scope={scope};sel={selectors}")


@dataclass
class Seen:
    """A Lease of the group as observed here, and since when it has been unchanged."""

    lease: Lease
    since: float
    """Fencing-clock time its current resourceVersion was first seen."""


@dataclass
class Stats:
    transitions: dict[str, int] = field(default_factory=dict)
    """reason (acquire, takeover, release, resume, lost, fenced) -> count."""
    renew_errors: int = 0
    moved_out: int = 0
    last_loop: float = 0.0

    def count(self, reason: str) -> None:
        self.transitions[reason] = self.transitions.get(reason, 0) + 1


class Coordinator:
    """The member loop, the view of the group, and the ownership decisions."""

    def __init__(self, client: KubeClient, settings: Settings, ownership: Ownership, *,
                 namespace: str, config: str) -> None:
        self.settings = settings
        self.ownership = ownership
        self.leases = LeaseClient(client, namespace)
        self.namespace = namespace
        self.group = settings.lease_name
        self.buckets = settings.buckets
        self.config = config
        self.identity = settings.identity or default_identity()
        self.holder = f"{self.identity}@{secrets.token_hex(3)}"
        """This process in the group: its identity plus an incarnation new at every start."""
        self.member_name = member_lease_name(self.group, self.identity)
        self.ld = settings.lease_duration
        self.rd = settings.renew_deadline
        self.rp = settings.retry_period
        self.view: dict[str, Seen] = {}
        self.me: Lease | None = None
        self.records: dict[int, Lease] = {}
        """Bucket Leases as this process last wrote them, for the buckets it holds."""
        self.valid_until = 0.0
        self.last_renewed = 0.0
        self.started = clock()
        self.stats = Stats()
        self.stopping = False
        self._wake = asyncio.Event()
        self._fence_timer: asyncio.TimerHandle | None = None
        self._drains: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gc_allowed = True
        self._last_gc = 0.0
        self._list_gen = 0
        self._warned_standbys = False
        self._waiting_for_member = False
        self._predecessor: Lease | None = None
        self._renew_failed = False
        self.on_failure: Callable[[BaseException], None] = lambda exc: None
        """Called when one of the coordinator's tasks fails (the daemon stops fastobs)."""
        self.on_handover: Callable[[float], None] = lambda seconds: None
        """A bucket was drained and released: the seconds it took."""
        self.on_fencing: Callable[[float], None] = lambda seconds: None
        """Commands were stopped by fencing: the seconds until the last one ended."""
        self.on_contact: Callable[[], None] = lambda: None
        """A renewal got through after failures: the API server is reachable again."""
        self.stats.last_loop = time.monotonic()
        self.watch = Source(client, LEASES, namespace=namespace, label_selector=f"{GROUP_LABEL}={self.group}",
                            field_selector="", sink=_ViewSink(self), maximum_errors=-1)

    # ------------------------------------------------------------------ start and stop

    async def start(self) -> None:
        """Check the group's configuration, join it, and take the first buckets; raises
        GroupConfigError when the group was started with another configuration."""
        await self._check_config()
        self._spawn(self.watch.run(), "the watch of the group's Leases")
        deadline = time.monotonic() + max(self.ld, 5.0)
        while self.me is None:
            await self._join()
            if self.me is None:
                if time.monotonic() > deadline and not self._waiting_for_member:
                    log.warning("still waiting to join lease group %r", self.group)
                    deadline = time.monotonic() + self.ld
                await asyncio.sleep(self._period())
        await self._settle_view()
        await self._reconcile()
        self._spawn(self._renew_loop(), "the renewal loop")
        self._spawn(self._decide_loop(), "the decision loop")

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: self._crashed(t, what))

    async def shutdown(self) -> None:
        """Graceful exit, after the commands ended: release every held bucket with its
        watermark, then this member's Lease, so others take over at once."""
        self.stopping = True
        for task in list(self._drains.values()):
            task.cancel()
        marks = self.ownership.watermarks()
        for bucket in sorted(self.ownership.held()):
            await self._release(bucket, marks.get(bucket), max(self.rp, 1.0))
        if self.me is not None:
            lease = _copy(self.me)
            lease.holder, lease.duration = "", 1
            # A release that did not get through leaves its bucket Lease naming this holder:
            # whoever takes it over finds its watermark here, or it would run everything of
            # the bucket and miss the deletes made since.
            lease.annotations.pop(WATERMARK, None)
            _leave_last_words(lease, self.holder, format_watermarks(marks))
            with contextlib.suppress(LeaseError):
                await self.leases.update(lease, max(self.rp, 1.0))
        await self.close()

    async def close(self) -> None:
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    # ------------------------------------------------------------------ configuration

    async def _check_config(self) -> None:
        deadline = time.monotonic() + 30.0
        while True:
            try:
                records = await self.leases.list(f"{GROUP_LABEL}={self.group},{ROLE_LABEL}={BUCKET}",
                                                 self._timeout())
                break
            except LeaseError as exc:
                if exc.kind == "forbidden" or time.monotonic() > deadline:
                    raise GroupConfigError(f"cannot read the Leases of group {self.group!r} in namespace "
                                           f"{self.namespace!r}: {exc.message}") from None
                await asyncio.sleep(self._period())
        for record in records:
            theirs = record.annotations.get(CONFIG, "")
            if theirs and theirs != self.config:
                raise GroupConfigError(f"lease group {self.group!r} is {_describe(theirs)}; this process is "
                                       f"{_describe(self.config)} (use another --lease-name to change that)")

    # ------------------------------------------------------------------ the loop

    async def _renew_loop(self) -> None:
        """Renew every retry period, whatever the decisions are doing (a round of decisions
        can take seconds on a slow API server; renewals must not wait for it)."""
        while not self.stopping:
            self.stats.last_loop = time.monotonic()
            await self._renew()
            await asyncio.sleep(self._period())

    async def _decide_loop(self) -> None:
        """Decide again whenever the view changes, a Lease may have expired, or a renewal
        came in (at least every retry period)."""
        while not self.stopping:
            self._wake.clear()
            await self._reconcile()
            self._gc_soon()
            delay = max(0.0, min(clock() + self._period(), self._next_expiry()) - clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _period(self) -> float:
        return self.rp * random.uniform(1.0, JITTER)

    def _timeout(self) -> float:
        """A request's deadline: never past the Lease's validity (as client-go, whose renewals
        share one renew-deadline context), so a slow API server still gets its answer in;
        outside a valid Lease, a retry period."""
        left = self.valid_until - clock()
        return max(0.2, left) if left > 0 else max(self.rp, 1.0)

    def kick(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ the member Lease

    async def _join(self) -> None:
        """Create or take this identity's member Lease."""
        now = clock()
        try:
            existing = await self.leases.get(self.member_name, self._timeout())
            if existing is None:
                lease = Lease(self.member_name, labels=self._labels(MEMBER))
                self._stamp_member(lease)
                lease.transitions = 1
                self.me = await self.leases.create(lease, self._timeout())
            else:
                seen = self.view.get(existing.name)
                expired = seen is not None and seen.lease.resource_version == existing.resource_version \
                    and now - seen.since >= max(existing.duration, 1)
                if existing.holder and existing.holder != self.holder and not expired:
                    # Another process with this identity holds it (a crashed predecessor, or a
                    # duplicate --identity): wait until it has been unchanged for its duration.
                    if not self._waiting_for_member:
                        log.warning("member Lease %s is held by %s; waiting until it expires",
                                    self.member_name, existing.holder)
                        self._waiting_for_member = True
                    if seen is None or seen.lease.resource_version != existing.resource_version:
                        self.view[existing.name] = Seen(existing, now)
                    return
                lease = _copy(existing)
                if existing.holder and existing.holder != self.holder:
                    # A crashed incarnation of this identity: its watermarks serve the takeover
                    # of its buckets, here and (kept on the Lease) by any other replica.
                    _leave_last_words(lease, existing.holder, existing.annotations.get(WATERMARK, ""))
                previous = lease.annotations.get(PREVIOUS_HOLDER, "")
                if previous and previous != self.holder:
                    self._predecessor = _last_words(lease, previous)
                lease.labels.update(self._labels(MEMBER))
                lease.transitions += 1
                self._stamp_member(lease)
                self.me = await self.leases.update(lease, self._timeout())
        except LeaseError as exc:
            log.warning("could not join lease group %r: %s", self.group, exc.message)
            return
        self._waiting_for_member = False
        self._renewed(now)
        log.info("joined lease group %r as %s (member Lease %s/%s)", self.group, self.holder,
                 self.namespace, self.member_name)

    def _stamp_member(self, lease: Lease) -> None:
        wall = micro_time(_wall())
        if lease.holder != self.holder or not lease.acquire_time:
            lease.acquire_time = wall
        lease.holder = self.holder
        lease.duration = max(1, round(self.ld))
        lease.renew_time = wall
        marks = self.ownership.watermarks()
        if marks:
            lease.annotations[WATERMARK] = format_watermarks(marks)
        else:
            lease.annotations.pop(WATERMARK, None)

    async def _renew(self) -> None:
        if self.me is None:
            await self._join()
            return
        sent = clock()
        lease = _copy(self.me)
        self._stamp_member(lease)
        try:
            self.me = await self.leases.update(lease, self._timeout())
        except Conflict:
            await self._member_conflict()
            return
        except NotFound:
            log.warning("member Lease %s was deleted; joining again", self.member_name)
            self.me = None
            return
        except LeaseError as exc:
            self.stats.renew_errors += 1
            self._renew_failed = True
            left = self.valid_until - clock()
            log.warning("could not renew member Lease %s (%s); %s", self.member_name, exc.message,
                        f"{left:.1f}s of validity left" if left > 0 else "commands are stopped")
            return
        self._renewed(sent)

    async def _member_conflict(self) -> None:
        try:
            current = await self.leases.get(self.member_name, self._timeout())
        except LeaseError as exc:
            self.stats.renew_errors += 1
            log.warning("could not read member Lease %s after a conflict: %s", self.member_name, exc.message)
            return
        if current is not None and current.holder == self.holder:
            self.me = current  # written by someone else (an annotation?), still ours: retry soon
            self.kick()
            return
        log.error("member Lease %s was taken by %s: stopping commands and joining again",
                  self.member_name, current.holder if current else "nobody")
        self.me = None
        self._fence("member Lease lost")

    def _renewed(self, sent: float) -> None:
        if self.last_renewed and (self._renew_failed or sent - self.last_renewed > self.rd):
            # Out of touch (renewals failed, or this process was paused): what others did
            # meanwhile may not have been seen here, so no one is taken for dead on the strength
            # of observations made before.
            now = clock()
            for seen in self.view.values():
                seen.since = max(seen.since, now)
            # The watches may sit in a backoff of up to 30 s after a long outage: the view of
            # the group (and the events) must not wait for it once the server answers again.
            self.watch.retry_now()
            self.on_contact()
        self._renew_failed = False
        self.last_renewed = sent
        self.valid_until = sent + self.rd
        self.ownership.extend(self.valid_until)
        self.kick()  # suspended buckets can be won back now
        self._arm_fence()

    def _arm_fence(self) -> None:
        """Call :meth:`_deadline` when the Lease's validity ends."""
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        loop = asyncio.get_running_loop()
        self._fence_timer = loop.call_at(loop.time() + max(0.0, self.valid_until - clock()),
                                         self._deadline)

    def _deadline(self) -> None:
        self._fence_timer = None
        if clock() >= self.valid_until:
            self._fence(f"member Lease not renewed for {self.rd:g}s")
        else:
            # The loop's timers may fire before the fencing clock reaches the deadline (uvloop
            # rounds them to milliseconds): try again then, or this replica never fences.
            self._arm_fence()

    def _fence(self, why: str) -> None:
        self.valid_until = min(self.valid_until, clock())
        self.ownership.extend(self.valid_until)  # the workers stop everything now, on their own too
        held = self.ownership.held()
        if not held:
            return
        told = self.ownership.suspend()
        self.stats.count("fenced")
        log.warning("fenced: %s; suspended buckets %s and stopped %d commands", why, _buckets(held), told)
        began = clock()
        self._spawn(self._measure_fencing(began), "fencing")

    async def _measure_fencing(self, began: float) -> None:
        while self.ownership.pool is not None and self.ownership.pool.in_flight(lambda ev: True):
            await asyncio.sleep(0.02)
        self.on_fencing(clock() - began)

    # ------------------------------------------------------------------ the view

    def observe(self, lease: Lease) -> None:
        seen = self.view.get(lease.name)
        if seen is not None and _before(lease.resource_version, seen.lease.resource_version):
            # The answer to this replica's own write, arriving after the watch brought a later
            # write by another replica: going back to it would show a taken bucket as free, and
            # every compare-and-swap on that stale copy fails until the Lease changes again.
            return
        if seen is None or seen.lease.resource_version != lease.resource_version:
            self.view[lease.name] = Seen(lease, clock())
            self.kick()

    def forget(self, name: str) -> None:
        if self.view.pop(name, None) is not None:
            self.kick()

    async def _settle_view(self) -> None:
        """Before the first decisions: wait (briefly) for the watch's first list."""
        for _ in range(50):
            if self._list_gen:
                return
            await asyncio.sleep(0.02)

    def _members(self) -> dict[str, Seen]:
        """Holder → member Lease, for the member Leases held by someone."""
        out: dict[str, Seen] = {}
        for seen in self.view.values():
            if seen.lease.labels.get(ROLE_LABEL) == MEMBER and seen.lease.holder:
                out[seen.lease.holder] = seen
        return out

    def _alive(self, seen: Seen, now: float) -> bool:
        return now - seen.since < max(seen.lease.duration, 1)

    def _next_expiry(self) -> float:
        now = clock()
        times = [s.since + max(s.lease.duration, 1) for s in self._members().values()
                 if self._alive(s, now) and s.lease.holder != self.holder]
        return min(times, default=now + 3600) + 0.01

    # ------------------------------------------------------------------ decisions

    async def _reconcile(self) -> None:
        if self.me is None or self.stopping or clock() >= self.valid_until:
            return
        suspended = [b for b, st in self.ownership.states.items() if st is State.SUSPENDED]
        if suspended:
            await asyncio.gather(*(self._resume(b) for b in suspended))
        now = clock()
        members = self._members()
        live = {h for h, s in members.items() if self._alive(s, now)} | {self.holder}
        held: dict[int, str] = {}
        records: dict[int, Seen | None] = {}
        for b in range(self.buckets):
            seen = self.view.get(bucket_lease_name(self.group, b, self.buckets))
            records[b] = seen
            if b in self.ownership.states:
                held[b] = self.holder
            else:
                holder = seen.lease.holder if seen else ""
                held[b] = holder if holder in live and holder != self.holder else ""
        target = membership.assign(sorted(live), held)
        if len(live) > self.buckets and not self._warned_standbys:
            log.warning("%d replicas share %d buckets: %d of them stand by", len(live), self.buckets,
                        len(live) - self.buckets)
            self._warned_standbys = True
        candidates: list[tuple[int, bool]] = []
        for b, owner in sorted(target.items()):
            state = self.ownership.states.get(b)
            if state is State.DRAINING and b not in self._drains:
                self._start_drain(b)  # a release that failed: once drained, a bucket is released
            elif state is State.OWNED and owner != self.holder and b not in self._drains \
                    and self.ownership.promises(b):
                self._start_drain(b)
            elif state is None and b not in self._drains:
                candidates.append((b, owner == self.holder))
        if candidates and clock() < self.valid_until:
            # One round trip for all of them: sequential writes on a slow server would outlast
            # the Lease's validity.
            await asyncio.gather(*(self._maybe_acquire(b, records[b], targeted, members, now)
                                   for b, targeted in candidates))

    async def _maybe_acquire(self, b: int, seen: Seen | None, targeted: bool, members: dict[str, Seen],
                             now: float) -> None:
        if seen is None:
            if targeted:
                await self._create(b)
            return
        record = seen.lease
        if not record.holder:
            if targeted or now - seen.since >= ADOPT_AFTER_DURATIONS * self.ld:
                await self._acquire(b, record, None)
            return
        if record.holder == self.holder:
            # A record naming this incarnation that it does not hold (a write that timed out but
            # was applied): take it back properly.
            await self._acquire(b, record, None)
            return
        owner = members.get(record.holder)
        if owner is not None and self._alive(owner, now):
            return
        expired_at = (owner.since + max(owner.lease.duration, 1)) if owner else seen.since
        if targeted or now - expired_at >= ADOPT_AFTER_DURATIONS * self.ld:
            await self._takeover(b, record, owner)

    async def _create(self, b: int) -> None:
        lease = Lease(bucket_lease_name(self.group, b, self.buckets), labels=self._labels(BUCKET))
        self._stamp_bucket(lease, None)
        lease.transitions = 1
        try:
            written = await self.leases.create(lease, self._timeout())
        except LeaseError as exc:
            if not isinstance(exc, Conflict):
                log.warning("could not create bucket Lease %s: %s", lease.name, exc.message)
            return
        self._won(b, written, None, "acquire")

    async def _acquire(self, b: int, record: Lease, member: Lease | None, *, takeover: bool = False) -> None:
        floor = _floor(record, member, b)
        lease = _copy(record)
        lease.transitions += 1
        self._stamp_bucket(lease, floor)
        try:
            written = await self.leases.update(lease, self._timeout())
        except LeaseError as exc:
            if not isinstance(exc, Conflict):
                log.warning("could not acquire bucket Lease %s: %s", lease.name, exc.message)
            return
        self._won(b, written, floor, "takeover" if takeover else "acquire")

    async def _takeover(self, b: int, record: Lease, owner: Seen | None) -> None:
        """The holder's member Lease has not changed for its duration (or is gone): confirm
        with a fresh read that it still has not (a watch can lag), then compare-and-swap."""
        member: Lease | None = None
        try:
            if owner is not None:
                fresh = await self.leases.get(owner.lease.name, self._timeout())
                if fresh is not None and fresh.holder == record.holder:
                    if fresh.resource_version != owner.lease.resource_version:
                        self.observe(fresh)  # it renewed after all
                        return
                    member = fresh
                elif self._predecessor is not None and self._predecessor.holder == record.holder:
                    # This process took its identity's member Lease over from that holder (the
                    # view has not caught up with that write yet): its last watermarks are
                    # those the Lease had then.
                    member = self._predecessor
                elif fresh is not None:
                    member = _last_words(fresh, record.holder)  # taken over or released since
            else:
                current = await self.leases.list(f"{GROUP_LABEL}={self.group},{ROLE_LABEL}={MEMBER}",
                                                 self._timeout())
                alive = [m for m in current if m.holder == record.holder]
                if alive:
                    self.observe(alive[0])  # not gone: the view had not seen it yet
                    return
                if self._predecessor is not None and self._predecessor.holder == record.holder:
                    member = self._predecessor
                else:
                    # Its identity restarted since, or it exited without getting this release
                    # through: its member Lease keeps its last watermarks.
                    member = next(filter(None, (_last_words(m, record.holder) for m in current)), None)
        except LeaseError as exc:
            log.warning("could not confirm that %s is gone: %s", record.holder, exc.message)
            return
        log.info("taking bucket %d over from %s (its member Lease %s)", b, record.holder,
                 f"has not changed for {owner.lease.duration}s" if owner else "is gone")
        await self._acquire(b, record, member, takeover=True)

    def _stamp_bucket(self, lease: Lease, floor: int | None) -> None:
        wall = micro_time(_wall())
        lease.holder = self.holder
        lease.duration = max(1, round(self.ld))
        lease.acquire_time = lease.renew_time = wall
        lease.labels.update(self._labels(BUCKET))
        lease.annotations[CONFIG] = self.config
        lease.annotations.pop(RELEASED_BY, None)
        if floor is not None:
            lease.annotations[WATERMARK] = str(floor)
        else:
            lease.annotations.pop(WATERMARK, None)

    def _won(self, b: int, written: Lease, floor: int | None, reason: str) -> None:
        self.records[b] = written
        self.observe(written)
        if self.settings.resync_on_start and clock() - self.started < self.ld + 2 * self.rp:
            floor = None  # --resync-on-start: what is taken at start-up runs whole
        self.ownership.acquire(b, written.transitions, floor)
        self.stats.count(reason)
        log.info("%s bucket %d (epoch %d, resuming after resourceVersion %s)", reason, b, written.transitions,
                 floor if floor is not None else "none: running all its objects",
                 extra={"bucket": b, "epoch": written.transitions})
        if clock() >= self.valid_until:
            # The write was answered after this replica's Lease ran out: others may take it for
            # dead and the bucket over before it renews again, so the bucket starts suspended
            # and is won back by a compare-and-swap after the next renewal, like the others.
            self._fence(f"bucket {b} was won after the member Lease's deadline")

    async def _resume(self, b: int) -> None:
        """Win a suspended bucket back with a compare-and-swap, or learn that it was taken."""
        record = self.records.get(b)
        if record is None:
            self.ownership.release(b)
            return
        lease = _copy(record)
        lease.transitions += 1
        lease.renew_time = micro_time(_wall())
        try:
            written = await self.leases.update(lease, self._timeout())
        except Conflict:
            log.warning("bucket %d was taken over while this replica was cut off; forgetting it", b)
            self.records.pop(b, None)
            self.ownership.release(b)
            self.stats.count("lost")
            return
        except LeaseError as exc:
            log.warning("could not resume bucket %d: %s", b, exc.message)
            return
        self.records[b] = written
        self.observe(written)
        if clock() >= self.valid_until:
            # Answered after the Lease ran out (see _won): it stays suspended; the next renewal
            # tries again from this write.
            return
        self.ownership.resume(b, written.transitions)
        self.stats.count("resume")
        log.info("resumed bucket %d (epoch %d)", b, written.transitions)

    # ------------------------------------------------------------------ handing over

    def _start_drain(self, b: int) -> None:
        task = asyncio.ensure_future(self._drain(b))
        self._drains[b] = task
        task.add_done_callback(lambda _t: self._drains.pop(b, None))
        task.add_done_callback(lambda t: self._crashed(t, f"the drain of bucket {b}"))

    async def _drain(self, b: int) -> None:
        """Finish the bucket's work received so far (nothing newer is admitted), up to
        --drain-timeout, then release it with its watermark: the next owner starts right
        after what ran here."""
        began = clock()
        self.ownership.drain(b)
        deadline = began + self.settings.drain_timeout
        while self.ownership.busy(b) and clock() < deadline:
            if self.ownership.states.get(b) is not State.DRAINING:
                return
            await asyncio.sleep(0.02)
        if self.ownership.running(b):
            told = self.ownership.kill(b)
            log.warning("bucket %d: %d commands still running after --drain-timeout; stopping them", b, told)
            while self.ownership.running(b):
                await asyncio.sleep(0.02)
        if self.ownership.states.get(b) is not State.DRAINING:
            return
        if await self._release(b, self.ownership.watermarks().get(b), self._timeout()):
            self.on_handover(clock() - began)
            self.stats.moved_out += 1

    async def _release(self, b: int, mark: int | None, deadline: float) -> bool:
        record = self.records.get(b)
        if record is None:
            self.ownership.release(b)
            return True
        lease = _copy(record)
        lease.holder, lease.duration = "", 1
        lease.renew_time = micro_time(_wall())
        lease.annotations[RELEASED_BY] = self.holder
        if mark is not None:
            lease.annotations[WATERMARK] = str(mark)
        else:
            lease.annotations.pop(WATERMARK, None)
        try:
            written = await self.leases.update(lease, deadline)
        except Conflict:
            log.warning("bucket %d changed hands before its release; forgetting it", b)
            written = None
        except LeaseError as exc:
            log.warning("could not release bucket %d: %s", b, exc.message)
            if not self.stopping:
                return False  # still draining: the next round releases it again
            written = None
        self.records.pop(b, None)
        self.ownership.release(b)
        if written is not None:
            self.observe(written)
            self.stats.count("release")
            log.info("released bucket %d (watermark %s)", b, mark, extra={"bucket": b})
        return True

    # ------------------------------------------------------------------ garbage

    def _gc_soon(self) -> None:
        now = clock()
        if not self._gc_allowed or now - self._last_gc < 60.0 or self.stopping:
            return
        self._last_gc = now
        stale = [s.lease for s in self.view.values()
                 if s.lease.labels.get(ROLE_LABEL) == MEMBER and s.lease.name != self.member_name
                 and now - s.since > STALE_MEMBER]
        if stale:
            self._spawn(self._collect(stale), "member Lease garbage collection")

    async def _collect(self, stale: list[Lease]) -> None:
        for lease in stale:
            try:
                await self.leases.delete(lease, self._timeout())
                log.info("deleted member Lease %s (unchanged for %ds)", lease.name, int(STALE_MEMBER))
            except LeaseError as exc:
                if exc.kind == "forbidden":
                    log.info("not allowed to delete stale member Leases (%s); they stay", exc.message)
                    self._gc_allowed = False
                    return

    # ------------------------------------------------------------------ reading

    def _crashed(self, task: asyncio.Task[Any], what: str) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        log.error("%s failed: %r", what, exc, exc_info=exc)
        self.on_failure(exc)

    def _labels(self, role: str) -> dict[str, str]:
        return {GROUP_LABEL: self.group, ROLE_LABEL: role}

    def role(self) -> str:
        owned = len(self.ownership.owned())
        return f"owner of {owned} of {self.buckets} buckets" if owned else "standby"

    def _live(self) -> set[str]:
        now = clock()
        live = {h for h, s in self._members().items() if self._alive(s, now)}
        if self.me is not None and clock() < self.valid_until:
            live.add(self.holder)
        return live

    def group_state(self) -> GroupState:
        own = self.ownership
        held: dict[str, int] = {}
        for state in own.states.values():
            held[state.value] = held.get(state.value, 0) + 1
        c = own.counters
        since = own.progress.oldest_hold_since(own.held())
        return GroupState(
            buckets=self.buckets, held=held, members=len(self._live()),
            lease_valid_seconds=self.valid_until - clock(), transitions=dict(self.stats.transitions),
            renew_errors=self.stats.renew_errors,
            events={"owned": c.events_owned, "foreign": c.events_foreign, "replayed": c.replay_duplicates,
                    "below_watermark": c.skipped_below_watermark},
            fenced_commands=c.fenced_commands, history_expired=c.history_expired,
            watermark_age_seconds=max(0.0, time.monotonic() - since) if since is not None else 0.0,
            server_filter=own.server_side,
        )

    def loop_healthy(self) -> bool:
        """The member loop ran recently (it runs whether or not the API server answers)."""
        return time.monotonic() - self.stats.last_loop < self.rd + 2 * self.rp + 5.0


class _ViewSink:
    """The group's Leases, as the watch delivers them, into the coordinator's view."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self._listed: set[str] = set()

    def list_begin(self, *, relist: bool) -> None:
        self._listed = set()

    def list_item(self, ev: Event) -> None:
        lease = _parse(ev)
        if lease is not None:
            self._listed.add(lease.name)
            self.c.observe(lease)

    def list_end(self) -> None:
        for name in [n for n in self.c.view if n not in self._listed]:
            self.c.forget(name)
        self.c._list_gen += 1

    def watch_event(self, ev: Event) -> None:
        if ev.type is EventType.DELETED:
            self.c.forget(ev.name)
            return
        lease = _parse(ev)
        if lease is not None:
            self.c.observe(lease)

    def watch_status(self, up: bool) -> None:
        pass

    async def wait_capacity(self) -> None:
        return None


def _parse(ev: Event) -> Lease | None:
    if not ev.obj:
        return None
    try:
        return Lease.from_json(orjson.loads(ev.obj))
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return None


def _copy(lease: Lease) -> Lease:
    return Lease.from_json(orjson.loads(orjson.dumps(lease.to_json())))


def _floor(record: Lease, member: Lease | None, b: int) -> int | None:
    """The watermark a bucket changes hands with: the larger of the one on its bucket Lease and
    the one its last owner renewed on its member Lease (fresher, after a crash)."""
    marks: list[int] = []
    text = record.annotations.get(WATERMARK, "")
    if text.isdigit():
        marks.append(int(text))
    if member is not None:
        mark = parse_watermarks(member.annotations.get(WATERMARK, "")).get(b)
        if mark is not None:
            marks.append(mark)
    return max(marks) if marks else None


def _before(a: str, b: str) -> bool:
    """Whether resourceVersion ``a`` is older than ``b`` (False when either is not an integer)."""
    return a.isdigit() and b.isdigit() and int(a) < int(b)


def _leave_last_words(lease: Lease, holder: str, watermarks: str) -> None:
    """Record on a member Lease that ``holder`` held it last, with its last watermarks."""
    lease.annotations[PREVIOUS_HOLDER] = holder
    if watermarks:
        lease.annotations[PREVIOUS_WATERMARKS] = watermarks
    else:
        lease.annotations.pop(PREVIOUS_WATERMARKS, None)


def _last_words(lease: Lease, holder: str) -> Lease | None:
    """The member Lease as ``holder`` left it, when ``lease`` (a member Lease that ``holder``
    no longer holds) says it held it last; None otherwise."""
    if not holder or lease.annotations.get(PREVIOUS_HOLDER) != holder:
        return None
    last = _copy(lease)
    last.holder = holder
    last.annotations[WATERMARK] = lease.annotations.get(PREVIOUS_WATERMARKS, "")
    return last


def _wall() -> float:
    return time.time()


def _describe(config: str) -> str:
    fields = dict(part.partition("=")[::2] for part in config.split(";") if "=" in part)
    return f"buckets={fields.get('buckets', '?')},key={fields.get('key', '?')}," \
           f"resource={fields.get('resource', '?')},scope={fields.get('scope', '?')}"


def _buckets(buckets: set[int]) -> str:
    return ",".join(str(b) for b in sorted(buckets)) or "none"



