"""Ownership: which buckets this replica may act on, asked on the event path.

Where it sits: in the parent, between ``coordinator`` (which wins, gives up and loses buckets
through Leases) and the event path. The ``engine`` asks it about every event before the
``tracker`` (:meth:`Ownership.admit`: is the object's bucket ours?) and before the queues
(:meth:`Ownership.accept`: did the bucket's previous owner already run this state?); the
``pool`` asks it before every dispatch (it is the pool's ``DispatchGate``). It drives the
engine (forget a bucket's keys, stop a bucket's commands), the pool (the Lease deadline every
worker enforces) and the ``source`` (replay a bucket's past from its watermark).

In: the coordinator's decisions (acquire, drain, release, suspend, resume, the validity of
the Lease); events. Out: yes/no per event; the per-bucket watermarks (``watermark``) the
coordinator writes into the Leases.

A bucket this replica holds is in one of three states:

* ``owned``: its events are admitted, queued and dispatched;
* ``draining``: it is being handed over: what was received before the drain began still runs,
  nothing newer is admitted, and its watermark stops at the stream position of that moment;
  the coordinator releases it once that work is done (or ``--drain-timeout`` stopped it), so
  the next owner starts exactly where this one stopped and runs nothing twice;
* ``suspended``: the Lease's deadline passed (a partition, a pause): its commands were
  stopped, its queued work is kept, nothing is dispatched until the coordinator has won the
  bucket again with a compare-and-swap (then it is ``owned`` and resumes where it stopped), or
  learnt that another replica took it (then everything of it is forgotten).

Invariants: nothing is dispatched unless the replica's Lease is valid on the fencing clock and
the bucket is ``owned``; an event at or below its bucket's floor (the watermark the bucket was
acquired with) never runs; keys of buckets not held never reach the tracker, so memory is
proportional to this replica's share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from fastobs.buckets import Bucketer, shard_selector
from fastobs.events import Event, EventType, ObjectKey
from fastobs.fencing import clock
from fastobs.watermark import Progress

log = logging.getLogger(__name__)


class State(StrEnum):
    OWNED = "owned"
    DRAINING = "draining"
    SUSPENDED = "suspended"


class EngineControl(Protocol):
    def purge(self, events: Callable[[Event], bool], records: Callable[[ObjectKey, str], bool]) -> None:
        """Forget queued events and tracker records of objects no longer looked after here."""
        ...

    def queued(self, match: Callable[[Event], bool]) -> int:
        """Events waiting in the queues that ``match`` selects."""
        ...


class DispatchControl(Protocol):
    def fence(self, match: Callable[[Event], bool], grace: float) -> int: ...

    def in_flight(self, match: Callable[[Event], bool]) -> int: ...

    def set_deadline(self, until: float, grace: float) -> None: ...

    def pump_all(self) -> None: ...


class StreamControl(Protocol):
    def rewind(self, rv: str | None) -> None:
        """Deliver again what happened since ``rv`` (None: relist)."""
        ...

    def position(self) -> int | None:
        """The resourceVersion the stream has delivered everything up to, if known."""
        ...


@dataclass
class Counters:
    """What ownership saw, for metrics (monotonic counts)."""

    events_owned: int = 0
    events_foreign: int = 0
    replay_duplicates: int = 0
    skipped_below_watermark: int = 0
    fenced_commands: int = 0
    history_expired: int = 0
    """Replays whose start the API server had lost, even as a list as of then."""


class Ownership:
    """The buckets this replica holds, their states, and the Lease's validity."""

    def __init__(self, bucketer: Bucketer, *, kill_grace: float, server_side: bool = False) -> None:
        self.bucketer = bucketer
        self.kill_grace = kill_grace
        self.server_side = server_side
        self.states: dict[int, State] = {}
        self.epochs: dict[int, int] = {}
        self.valid_until = 0.0
        """Fencing-clock time until which this replica's Lease is valid (0: never was)."""
        self.progress = Progress()
        self.awaiting: set[int] = set()
        """Acquired buckets whose replay has not started yet: their events are not admitted."""
        self.replay_from: int | None = None
        """Where the replay under way started (None: a relist, or none under way)."""
        self.synthetic: dict[str, str] = {}
        """Keys with a delete found by a relist queued: the resourceVersion it holds at."""
        self.expired: str | None = None
        """The start of the last replay the watch could not serve."""
        self.unlisted = False
        """A bucket is being caught up by a replay, which brings only the objects that changed
        since its watermark, and the list of its objects as of then (``seeded``) has not
        told the tracker the others: a later relist (after a 410) could not tell which of
        them were deleted. A relist once the replay is over completes it."""
        self.counters = Counters()
        self.engine: EngineControl | None = None
        self.pool: DispatchControl | None = None
        self.stream: StreamControl | None = None

    def bind(self, *, engine: EngineControl, pool: DispatchControl, stream: StreamControl) -> None:
        self.engine, self.pool, self.stream = engine, pool, stream

    # ------------------------------------------------------------------ event path

    def bucket(self, ev: Event) -> int:
        return self.bucketer.bucket(ev.key, ev.namespace, ev.uid)

    def admit(self, ev: Event) -> bool:
        """Before the tracker: whether the event's object is looked after here."""
        b = self.bucket(ev)
        # Any live event, whoever's bucket it is, says how far the stream is: past where it was
        # before a replay, the replay is over (a quiet bucket must not keep it going for ever,
        # or later replays restart from its start and its buckets stay half known).
        fresh = ev.backlog or self.progress.replayed(b, ev.rv)
        state = self.states.get(b)
        if state is None or state is State.DRAINING or b in self.awaiting:
            self.counters.events_foreign += 1
            return False
        if not ev.backlog:
            if not fresh:
                self.counters.replay_duplicates += 1
                return False
            if self.unlisted and not self.awaiting and not self.progress.replaying():
                self.unlisted = False
                assert self.stream is not None
                self.stream.rewind(None)  # the replay is over: list to know every object
        self.counters.events_owned += 1
        return True

    def accept(self, ev: Event) -> bool:
        """Before the queues: False when the bucket's previous owner already ran this state."""
        b = self.bucket(ev)
        state = self.states.get(b)
        if state is None or state is State.DRAINING:
            # Nothing new is taken for a bucket being handed over. What reaches here for one is
            # a Deleted the tracker made up at the end of a list whose items of the bucket were
            # not admitted (the objects exist); its next owner replays what really happened.
            return False
        if self.progress.below_floor(b, ev.rv):
            self.counters.skipped_below_watermark += 1
            return False
        rv = ev.rv
        if not rv and ev.type is EventType.DELETED and self.stream is not None:
            # A delete found by a relist has no resourceVersion; it happened after what the
            # stream had delivered before the list, so it holds the watermark back there.
            position = self.stream.position()
            if position is not None:
                rv = self.synthetic[ev.key] = str(position + 1)
        self.progress.hold(ev.key, b, rv, ev.received)
        return True

    def ran(self, ev: Event) -> None:
        """``ev``'s command succeeded: its key no longer holds the watermark back at or below it."""
        rv = ev.rv
        if not rv and ev.type is EventType.DELETED:
            rv = self.synthetic.pop(ev.key, "")
        self.progress.ran(ev.key, rv)

    def stopped(self, ev: Event) -> bool:
        """``ev``'s command was stopped by fencing; True when it must run again here later."""
        self.counters.fenced_commands += 1
        return self.states.get(self.bucket(ev)) in (State.OWNED, State.SUSPENDED)

    def owns_key(self, key: str) -> bool:
        """For ``--names`` keys (shard key name or namespace: no uid is needed)."""
        ns = key.partition("/")[0] if "/" in key else ""
        return self.bucketer.bucket(key, ns, "") in self.states

    # ------------------------------------------------------------------ the pool's gate

    def open(self) -> bool:
        """Dispatch is possible at all: the Lease is valid and no bucket waits to be won back."""
        return clock() < self.valid_until and State.SUSPENDED not in self.states.values()

    def admits(self, ev: Event) -> bool:
        return self.states.get(self.bucket(ev)) in (State.OWNED, State.DRAINING)

    def stamp(self, ev: Event) -> tuple[int, int]:
        b = self.bucket(ev)
        return b, self.epochs.get(b, 0)

    # ------------------------------------------------------------------ the coordinator's side

    def extend(self, valid_until: float) -> None:
        """The Lease was renewed: commands may run until ``valid_until``."""
        was_open = self.open()
        self.valid_until = valid_until
        if self.pool is not None:
            self.pool.set_deadline(valid_until, self.kill_grace)
            if not was_open and self.open():
                self.pool.pump_all()

    def acquire(self, bucket: int, epoch: int, floor: int | None) -> None:
        """The bucket is ours from now on: catch up from ``floor`` (its previous owner's
        watermark; None: run everything of it), then follow it live."""
        self.states[bucket] = State.OWNED
        self.epochs[bucket] = epoch
        self._purge({bucket})
        self.progress.start_bucket(bucket, floor)
        assert self.stream is not None
        position = self.stream.position()
        replaying = self.progress.replaying()
        if floor is None or not self.progress.usable:
            self.awaiting.add(bucket)
            self.stream.rewind(None)
        elif self.server_side or position is None or floor < position or replaying:
            # Replay what happened to the bucket since its floor (deletes included); on the
            # server-side filter the watch must restart anyway to widen its selector. While
            # another replay runs, the stream's position is that replay's, not what this
            # process had read before: the bucket's events up to there were dropped then. And
            # a restarted replay forgets what the one under way had queued: it starts no
            # later than that one did.
            start = floor if position is None else min(floor, position)
            if replaying and self.replay_from is not None:
                start = min(start, self.replay_from)
            self.awaiting.add(bucket)
            self.unlisted = True
            self.stream.rewind(str(start))

    def rewound(self, rv: str | None, expired: bool) -> None:
        """The stream's callback: a watch from ``rv`` (None: a relist) is about to start, or
        the server said ``rv`` is too old (``expired``; a relist follows)."""
        if expired:
            self.expired = rv
            self.progress.replay_expired()
            log.info("the API server's watch no longer has the changes since resourceVersion %s; "
                     "listing the objects as they were then, to find those deleted since", rv)
            return
        buckets = self.awaiting | self.progress.catching_up
        # A replay restarted further back (another bucket was won meanwhile) keeps what the
        # one under way completed: everything of a bucket up to its watermark ran, so that
        # becomes its floor and the restarted replay skips it instead of running it again.
        marks = self.watermarks()
        for b in self.progress.catching_up - self.awaiting:
            mark = marks.get(b)
            floor = self.progress.floors.get(b)
            if mark is not None and floor is not None and mark > floor:
                self.progress.floors[b] = mark
        self.awaiting = set()
        self.replay_from = int(rv) if rv is not None and rv.isdigit() else None
        # Whatever of these buckets arrived before the replay starts comes again with it.
        self._purge(buckets)
        assert self.stream is not None
        self.progress.replay_started(self.stream.position(), buckets, relist=rv is None)

    def seeds(self, ev: Event) -> bool:
        """Whether an object as it was at the start of an expired replay belongs to a bucket
        being caught up here (the tracker forgot those buckets' objects when the replay began)."""
        b = self.bucket(ev)
        return b in self.progress.catching_up and self.states.get(b) in (State.OWNED, State.SUSPENDED)

    def seeded(self, rv: str, ok: bool) -> None:
        """The list as of ``rv`` ended (``ok``), or failed: then, when the watch could not replay
        from ``rv`` either, deletes since ``rv`` of objects this process did not know are out
        of reach."""
        if ok and not self.awaiting:
            self.unlisted = False  # every object of the buckets caught up is known now
        if not ok and rv == self.expired:
            self.counters.history_expired += 1
            log.warning("the API server no longer has the changes since resourceVersion %s: objects "
                        "deleted since then without this process knowing them get no Deleted "
                        "(use --names to catch those); changed ones run again", rv)

    def list_ended(self) -> None:
        self.progress.list_ended()

    def drain(self, bucket: int) -> None:
        """Hand the bucket over: admit nothing newer, finish what was received."""
        if self.states.get(bucket) is State.OWNED:
            self.states[bucket] = State.DRAINING
            position = self.stream.position() if self.stream is not None else None
            self.progress.cap(bucket, position)

    def promises(self, bucket: int) -> bool:
        """Whether the bucket can be handed over with a watermark now (or never will have one).
        Before its first list has ended a bucket has none; released then, its next owner would
        relist and miss the deletes of objects listed here but not run yet, so a move waits."""
        return not self.progress.usable or bucket in self.watermarks()

    def busy(self, bucket: int) -> int:
        """The bucket's events queued or running here."""
        assert self.pool is not None and self.engine is not None
        match = self._matcher(bucket)
        return self.pool.in_flight(match) + self.engine.queued(match)

    def running(self, bucket: int) -> int:
        assert self.pool is not None
        return self.pool.in_flight(self._matcher(bucket))

    def _matcher(self, bucket: int) -> Callable[[Event], bool]:
        return lambda ev: self.bucket(ev) == bucket

    def kill(self, bucket: int) -> int:
        """Stop the bucket's running commands now (a drain that ran out of time)."""
        assert self.pool is not None
        return self.pool.fence(self._matcher(bucket), self.kill_grace)

    def release(self, bucket: int) -> None:
        """The bucket is no longer ours: forget everything of it."""
        was_open = self.open()
        self.states.pop(bucket, None)
        self.epochs.pop(bucket, None)
        self.awaiting.discard(bucket)
        self._purge({bucket})
        self.progress.forget_bucket(bucket)
        position = self.stream.position() if self.stream is not None else None
        if self.server_side and position is not None:
            assert self.stream is not None
            self.stream.rewind(str(position))  # the watch restarts with the narrower selector
        if not was_open and self.open() and self.pool is not None:
            # A suspended bucket taken over meanwhile was all that closed the gate: the work of
            # the buckets resumed before it waits in the queues, and no event may come to pump it.
            self.pool.pump_all()

    def suspend(self) -> int:
        """The Lease's deadline passed: stop every command, keep the queued work, dispatch
        nothing until the buckets are won back. Returns the commands told to stop."""
        for bucket in self.states:
            self.states[bucket] = State.SUSPENDED
        assert self.pool is not None
        return self.pool.fence(lambda ev: True, self.kill_grace)

    def resume(self, bucket: int, epoch: int) -> None:
        """A suspended bucket was won back (compare-and-swap on its Lease)."""
        if bucket in self.progress.caps:
            # It was being handed over when it was suspended: what arrived since the drain
            # began was not admitted, so catch up from its watermark as a new owner would.
            self.acquire(bucket, epoch, self.watermarks().get(bucket))
        else:
            self.states[bucket] = State.OWNED
            self.epochs[bucket] = epoch
        if self.pool is not None and self.open():
            self.pool.pump_all()

    # ------------------------------------------------------------------ reading

    def held(self) -> set[int]:
        return set(self.states)

    def owned(self) -> set[int]:
        return {b for b, s in self.states.items() if s is State.OWNED}

    def watermarks(self) -> dict[int, int]:
        position = self.stream.position() if self.stream is not None else None
        marks = self.progress.watermarks(set(self.states), position)
        for b in self.awaiting:  # acquired, replay not started yet: nothing past the floor ran here
            floor = self.progress.floors.get(b)
            if floor is None:
                marks.pop(b, None)
            else:
                marks[b] = floor
        return marks

    def selector(self) -> str:
        """The server-side ``shardSelector`` of every bucket held or being caught up."""
        return shard_selector(set(self.states) | self.awaiting, self.bucketer.buckets, self.bucketer.key)

    def _purge(self, buckets: set[int]) -> None:
        if not buckets or self.engine is None:
            return
        for b in buckets:
            self.progress.forget_bucket(b, keep_floor=True)
        bucketer = self.bucketer

        def record(key: ObjectKey, uid: str) -> bool:
            ns = key.partition("/")[0] if "/" in key else ""
            return bucketer.bucket(key, ns, uid) in buckets

        self.engine.purge(lambda ev: self.bucket(ev) in buckets, record)
