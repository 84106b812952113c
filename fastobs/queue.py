"""Queue: per-worker work queue with per-key order, coalescing and live-before-backlog.

Where it sits: in the parent, between ``tracker`` (events worth running) and ``pool``
(which sends jobs to the worker that owns the shard). In: events via :meth:`add`. Out:
one event at a time via :meth:`pop`, returned through :meth:`done`.

The shape is client-go's workqueue: a key is *ready* (waiting), *processing* (in flight)
or both (a newer event arrived while it runs: it becomes ready again on ``done``). Each
key keeps its pending events in order:

* coalescing on (default): a newer event of the same object (same uid) replaces the
  pending one; a ``Deleted`` replaces its object's pending update but is never replaced
  itself; an event of a new object (new uid) queues behind the delete of the old one.
  The replacing event takes over the receipt time of the one it replaces, so the lag
  metrics count from the first change still waiting, not from the newest one (a key
  that changes faster than its command runs would otherwise report a lag near zero).
* coalescing off (``--no-coalesce``): every event is kept, in order.

Invariants (tested in tests/test_queue.py: 1-5 by a property test, 6 case by case):

1. a key is never handed out while it is processing;
2. a key's events leave in the order they were added (coalesced ones are dropped, never
   reordered);
3. after the last ``add`` of a key, its newest event is handed out (unless it is
   processing at that moment with exactly that state);
4. a ``Deleted`` is never dropped;
5. keys with live events go before keys that only have backlog (list/resync) events;
6. a handed-out event's ``received`` is the earliest receipt among the changes it stands
   for (itself and every pending event it replaced).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .events import Event, EventType, ObjectKey


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    """A snapshot for metrics."""

    depth: int
    """Keys waiting to be handed out (not counting delayed retries)."""
    oldest_pending_seconds: float
    """Age of the oldest waiting key (since its first pending event arrived)."""


class KeyQueue:
    """The queue of one worker shard."""

    def __init__(self, *, coalesce: bool = True, clock: Callable[[], float]) -> None:
        self.coalesce = coalesce
        self.clock = clock
        self._pending: dict[ObjectKey, deque[Event]] = {}
        self._processing: dict[ObjectKey, Event] = {}
        # Ready keys and whether they are live. The deques may hold stale entries (a key
        # promoted from backlog to live, or already handed out): pop skips them.
        self._ready: dict[ObjectKey, bool] = {}
        self._since: dict[ObjectKey, float] = {}
        self._live: deque[ObjectKey] = deque()
        self._backlog: deque[ObjectKey] = deque()
        self._delayed: dict[ObjectKey, tuple[float, Event, int]] = {}
        self._timers: list[tuple[float, int, ObjectKey]] = []
        self._seq = itertools.count()
        self._attempts: dict[ObjectKey, int] = {}
        self.pending_events = 0
        self.coalesced = 0

    # ------------------------------------------------------------------ intake

    def add(self, ev: Event) -> None:
        """Queue ``ev`` behind the key's pending events (coalescing where allowed)."""
        key = ev.key
        # A newer event supersedes a pending backoff retry and resets the attempt count.
        self._delayed.pop(key, None)
        self._attempts.pop(key, None)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = deque()
        if not self._merge(pending, ev):
            pending.append(ev)
            self.pending_events += 1
        if key not in self._processing:
            self._make_ready(key, live=not ev.backlog)

    def _merge(self, pending: deque[Event], ev: Event) -> bool:
        """Coalesce ``ev`` into the last pending event when allowed; True if merged."""
        if not pending:
            return False
        last = pending[-1]
        if last.type is EventType.DELETED:
            # Two deletes of one object collapse into one (oc does the same); keep the one
            # that carries the object, which is the more informative.
            if ev.type is EventType.DELETED and _same_object(last, ev):
                if last.obj is None and ev.obj is not None:
                    pending[-1] = _replacing(ev, last)
                self.coalesced += 1
                return True
            return False
        if not self.coalesce or not _same_object(last, ev):
            return False
        pending[-1] = _replacing(ev, last)
        self.coalesced += 1
        return True

    def _make_ready(self, key: ObjectKey, *, live: bool) -> None:
        was = self._ready.get(key)
        if was is None:
            self._since[key] = self.clock()
        elif was or not live:
            return
        self._ready[key] = live
        (self._live if live else self._backlog).append(key)

    # ------------------------------------------------------------------ hand-out

    def pop(self) -> Event | None:
        """The next event to run, or None; its key becomes processing until ``done``."""
        self._fire_timers()
        key = self._next_ready()
        if key is None:
            return None
        pending = self._pending[key]
        ev = pending.popleft()
        self.pending_events -= 1
        if not pending:
            del self._pending[key]
        self._processing[key] = ev
        return ev

    def may_pop(self) -> bool:
        """False when :meth:`pop` would surely return None (nothing ready, no retry
        pending): the dispatch after each finished command mostly finds nothing to send."""
        return bool(self._ready) or bool(self._timers)

    def _next_ready(self) -> ObjectKey | None:
        for dq, live in ((self._live, True), (self._backlog, False)):
            while dq:
                key = dq.popleft()
                if self._ready.get(key) is live:
                    del self._ready[key]
                    del self._since[key]
                    return key
        return None

    def done(self, key: ObjectKey) -> Event:
        """The key's job finished; it becomes ready again if events arrived meanwhile."""
        ev = self._processing.pop(key)
        pending = self._pending.get(key)
        if pending:
            self._make_ready(key, live=any(not p.backlog for p in pending))
        return ev

    def retry_later(self, ev: Event, delay: float) -> bool:
        """Requeue a failed event after ``delay`` unless a newer event already supersedes it.

        Call after :meth:`done`. Returns False when superseded (nothing is scheduled).
        """
        key = ev.key
        if key in self._pending or key in self._processing:
            return False
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        due = self.clock() + delay
        self._delayed[key] = (due, ev, attempt)
        heapq.heappush(self._timers, (due, next(self._seq), key))
        return True

    def attempts(self, key: ObjectKey) -> int:
        """How many backoff retries the key has had since its last new event."""
        return self._attempts.get(key, 0)

    def forget(self, key: ObjectKey) -> None:
        """The key succeeded (or gave up): reset its retry count."""
        self._attempts.pop(key, None)

    def next_timer(self) -> float | None:
        """When the earliest delayed retry is due (clock time), if any."""
        while self._timers:
            due, _, key = self._timers[0]
            entry = self._delayed.get(key)
            if entry is not None and entry[0] == due:
                return due
            heapq.heappop(self._timers)
        return None

    def _fire_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            due, _, key = heapq.heappop(self._timers)
            entry = self._delayed.get(key)
            if entry is None or entry[0] != due:
                continue  # superseded by a newer event
            del self._delayed[key]
            ev = entry[1]
            self._pending.setdefault(key, deque()).append(ev)
            self.pending_events += 1
            # A retry keeps its event's class: a failing Sync must not overtake the backlog.
            self._make_ready(key, live=not ev.backlog)

    # ------------------------------------------------------------------ crashes

    def requeue_processing(self) -> list[ObjectKey]:
        """The worker died: put every in-flight event back at the front of its key.

        If a newer event is already pending, coalescing may merge them (same object), so
        the key runs once with its newest state.
        """
        keys = list(self._processing)
        for key in keys:
            ev = self._processing.pop(key)
            pending = self._pending.setdefault(key, deque())
            if pending and self._supersedes(pending[0], ev):
                # The killed command never completed: its change still waits.
                pending[0].received = min(pending[0].received, ev.received)
            else:
                pending.appendleft(ev)
                self.pending_events += 1
            self._make_ready(key, live=True)
        return keys

    def requeue(self, ev: Event) -> None:
        """Put a finished event back at the front of its key (its command was stopped before
        it could finish, and must run again), unless a newer pending event supersedes it.
        Call after :meth:`done`."""
        pending = self._pending.setdefault(ev.key, deque())
        if not (pending and self._supersedes(pending[0], ev)):
            pending.appendleft(ev)
            self.pending_events += 1
        if ev.key not in self._processing:
            self._make_ready(ev.key, live=True)

    def count(self, match: Callable[[Event], bool]) -> int:
        """Pending and delayed events ``match`` selects."""
        pending = sum(1 for events in self._pending.values() for ev in events if match(ev))
        return pending + sum(1 for _, ev, _ in self._delayed.values() if match(ev))

    def discard(self, match: Callable[[Event], bool]) -> int:
        """Drop every pending or delayed event ``match`` selects (work this process gives up);
        in-flight events stay until their ``done``. Returns how many were dropped."""
        dropped = 0
        for key in list(self._pending):
            pending = self._pending[key]
            kept = deque(ev for ev in pending if not match(ev))
            dropped += len(pending) - len(kept)
            if kept:
                self._pending[key] = kept
            else:
                del self._pending[key]
                if self._ready.pop(key, None) is not None:
                    del self._since[key]
        self.pending_events -= dropped
        for key in [k for k, (_, ev, _) in self._delayed.items() if match(ev)]:
            del self._delayed[key]
            dropped += 1
        return dropped

    def _supersedes(self, newer: Event, older: Event) -> bool:
        """Whether ``newer`` (pending) makes re-running ``older`` pointless."""
        return (
            self.coalesce
            and older.type is not EventType.DELETED
            and newer.type is not EventType.DELETED
            and _same_object(older, newer)
        )

    # ------------------------------------------------------------------ introspection

    def is_idle(self, key: ObjectKey) -> bool:
        """True when the key has nothing pending, in flight or delayed."""
        return key not in self._pending and key not in self._processing and key not in self._delayed

    def __len__(self) -> int:
        return len(self._ready)

    def statistics(self) -> QueueStatistics:
        oldest = 0.0
        now = self.clock()
        for dq, live in ((self._live, True), (self._backlog, False)):
            while dq and self._ready.get(dq[0]) is not live:
                dq.popleft()
            if dq:
                oldest = max(oldest, now - self._since[dq[0]])
        return QueueStatistics(
            depth=len(self._ready),
            oldest_pending_seconds=oldest,
        )


def _same_object(a: Event, b: Event) -> bool:
    # An empty uid (synthesized from --names) matches anything: it names the same key.
    return a.uid == b.uid or not a.uid or not b.uid


def _replacing(new: Event, old: Event) -> Event:
    """``new`` as it replaces the pending ``old``: live if either was, received when ``old`` was.

    The receipt time is what the lag metrics measure from: the replaced change has waited
    since ``old`` arrived, and the command that will see it is the one ``new`` starts.
    """
    if new.backlog and not old.backlog:
        new.backlog = False
    new.received = min(new.received, old.received)
    return new
