"""Property tests of the per-worker key queue (fastobs.queue.KeyQueue)."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from fastobs.events import Event, EventType, ObjectKey
from fastobs.queue import KeyQueue

KEYS = ["ns/a", "ns/b", "ns/c", "d"]
TYPES = [EventType.SYNC, EventType.ADDED, EventType.UPDATED, EventType.DELETED]

add_op = st.tuples(
    st.just("add"), st.sampled_from(KEYS), st.integers(0, 2), st.sampled_from(TYPES), st.booleans()
)
pop_op = st.tuples(st.just("pop"))
done_op = st.tuples(st.just("done"), st.integers(0, 10))
ops_strategy = st.lists(st.one_of(add_op, add_op, pop_op, done_op), max_size=80)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


def make_event(seq: int, key: str, uid: int, type_: EventType, backlog: bool) -> Event:
    ns, _, name = key.rpartition("/")
    return Event(
        type=type_, key=ObjectKey(key), namespace=ns, name=name, uid=f"uid-{uid}", rv=str(seq),
        obj=b"{}", received=0.0, backlog=backlog,
    )


def run_ops(ops: list[tuple[object, ...]], coalesce: bool, cap: int = 3):
    q = KeyQueue(coalesce=coalesce, clock=Clock())
    added: dict[str, list[Event]] = defaultdict(list)
    popped: dict[str, list[Event]] = defaultdict(list)
    processing: list[Event] = []
    seq = 0

    def pop() -> None:
        if len(processing) >= cap:
            return
        live_ready = {k for k, live in q._ready.items() if live}  # noqa: SLF001 - white-box check
        ev = q.pop()
        if ev is None:
            return
        assert ev.key not in {p.key for p in processing}, "a key was handed out twice"
        if ev.key not in live_ready:
            assert not live_ready, "a backlog key went before a ready live key"
        processing.append(ev)
        popped[ev.key].append(ev)
        assert len(processing) <= cap

    for op in ops:
        if op[0] == "add":
            _, key, uid, type_, backlog = op
            seq += 1
            ev = make_event(seq, str(key), int(uid), type_, bool(backlog))  # type: ignore[arg-type]
            added[ev.key].append(ev)
            q.add(ev)
        elif op[0] == "pop":
            pop()
        elif op[0] == "done" and processing:
            ev = processing.pop(int(op[1]) % len(processing))  # type: ignore[call-overload]
            q.done(ev.key)
    # Drain everything.
    while True:
        pop()
        if not processing:
            break
        ev = processing.pop(0)
        q.done(ev.key)
    return q, added, popped


@settings(max_examples=400, deadline=None)
@given(ops_strategy, st.booleans())
def test_queue_invariants(ops: list[tuple[object, ...]], coalesce: bool) -> None:
    """Per-key order, no key twice in flight, newest state last, deletes kept, live first."""
    q, added, popped = run_ops(ops, coalesce)
    assert len(q) == 0 and q.pending_events == 0
    for key, evs in added.items():
        got = [int(e.rv) for e in popped[key]]
        assert got == sorted(got), f"{key}: events left out of order: {got}"
        assert set(got) <= {int(e.rv) for e in evs}
        ran = {e.uid for e in popped[key] if e.type is EventType.DELETED}
        last = evs[-1]
        # The newest state runs; only a repeated Deleted of the same object may stand in
        # for another (oc collapses consecutive deletes too).
        assert int(last.rv) in got or (last.type is EventType.DELETED and last.uid in ran), (
            f"{key}: the newest event never ran"
        )
        if not coalesce:
            skipped = [e for e in evs if int(e.rv) not in got]
            assert all(e.type is EventType.DELETED and e.uid in ran for e in skipped), (
                "--no-coalesce must run every event but repeated deletes"
            )
        # Deletes are never lost: every object that saw a Deleted gets a Deleted run.
        deleted_uids = {e.uid for e in evs if e.type is EventType.DELETED}
        ran_deleted = {e.uid for e in popped[key] if e.type is EventType.DELETED}
        assert deleted_uids <= ran_deleted, f"{key}: a delete was dropped"


def test_delete_then_recreate_runs_both() -> None:
    """Delete of the old object, then the new object under the same name (new uid)."""
    q = KeyQueue(coalesce=True, clock=Clock())
    q.add(make_event(1, "ns/a", 1, EventType.SYNC, False))
    first = q.pop()
    assert first is not None
    q.add(make_event(2, "ns/a", 1, EventType.UPDATED, False))
    q.add(make_event(3, "ns/a", 1, EventType.DELETED, False))
    q.add(make_event(4, "ns/a", 2, EventType.ADDED, False))
    q.add(make_event(5, "ns/a", 2, EventType.UPDATED, False))
    assert q.pop() is None, "key is in flight"
    q.done(first.key)
    second = q.pop()
    assert second is not None and (second.type, second.rv) == (EventType.DELETED, "3")
    q.done(second.key)
    third = q.pop()
    assert third is not None and (third.type, third.uid, third.rv) == (EventType.UPDATED, "uid-2", "5")
    assert q.coalesced == 2


def failed_once(delay: float) -> tuple[KeyQueue, Clock, Event]:
    """A queue whose only key ran once, failed, and waits ``delay`` for its retry."""
    clock = Clock()
    q = KeyQueue(coalesce=True, clock=clock)
    q.add(make_event(1, "ns/a", 1, EventType.ADDED, False))
    ev = q.pop()
    assert ev is not None
    q.done(ev.key)
    assert q.retry_later(ev, delay)
    return q, clock, ev


def test_backoff_retry_is_superseded_by_newer_event() -> None:
    """A failed key waits for its retry, but a newer event replaces the retry."""
    q, clock, ev = failed_once(10.0)
    assert q.pop() is None and not q.is_idle(ev.key)
    q.add(make_event(2, "ns/a", 1, EventType.UPDATED, False))
    newer = q.pop()
    assert newer is not None and newer.rv == "2"
    q.done(newer.key)
    clock.t += 100
    assert q.pop() is None, "the superseded retry must not run"
    assert q.is_idle(newer.key)


def test_retry_fires_after_delay() -> None:
    q, clock, ev = failed_once(5.0)
    assert q.pop() is None
    clock.t += 5
    again = q.pop()
    assert again is not None and again.rv == "1" and q.attempts(again.key) == 1


def test_requeue_processing_after_worker_death() -> None:
    """In-flight events go back; a newer pending state of the same object wins."""
    q = KeyQueue(coalesce=True, clock=Clock())
    q.add(make_event(1, "ns/a", 1, EventType.ADDED, False))
    q.add(make_event(2, "ns/b", 1, EventType.ADDED, True))
    a, b = q.pop(), q.pop()
    assert a is not None and b is not None
    q.add(make_event(3, "ns/a", 1, EventType.UPDATED, False))
    assert sorted(q.requeue_processing()) == ["ns/a", "ns/b"]
    got = {}
    while (ev := q.pop()) is not None:
        got[ev.key] = ev.rv
        q.done(ev.key)
    assert got == {"ns/a": "3", "ns/b": "2"}


def received_at(seq: int, key: str, t: float, type_: EventType = EventType.UPDATED, uid: int = 1) -> Event:
    ev = make_event(seq, key, uid, type_, False)
    ev.received = t
    return ev


def test_a_key_busy_while_it_churns_keeps_its_first_pending_receipt() -> None:
    """The key's command runs while three changes arrive: the next run starts with the newest
    state, and its receipt time (the lag metrics' start) is the first change's, not the newest's."""
    q = KeyQueue(coalesce=True, clock=Clock())
    q.add(received_at(1, "ns/a", 1.0))
    running = q.pop()
    assert running is not None
    for seq, t in ((2, 2.0), (3, 3.0), (4, 4.0)):
        q.add(received_at(seq, "ns/a", t))
    q.done(running.key)
    nxt = q.pop()
    assert nxt is not None and nxt.rv == "4"
    assert nxt.received == 2.0, "the lag would count from the newest change and hide the wait"


def test_a_waiting_key_keeps_its_first_receipt_and_deletes_do_too() -> None:
    q = KeyQueue(coalesce=True, clock=Clock())
    q.add(received_at(1, "ns/a", 1.0))
    q.add(received_at(2, "ns/a", 5.0))
    q.add(received_at(3, "ns/a", 9.0, EventType.DELETED))
    ev = q.pop()
    assert ev is not None and (ev.type, ev.rv, ev.received) == (EventType.DELETED, "3", 1.0)


def test_without_coalescing_every_event_keeps_its_own_receipt() -> None:
    q = KeyQueue(coalesce=False, clock=Clock())
    for seq, t in ((1, 1.0), (2, 2.0), (3, 3.0)):
        q.add(received_at(seq, "ns/a", t))
    got = []
    while (ev := q.pop()) is not None:
        got.append((ev.rv, ev.received))
        q.done(ev.key)
    assert got == [("1", 1.0), ("2", 2.0), ("3", 3.0)]


def test_a_rerun_after_a_worker_death_counts_from_the_killed_commands_receipt() -> None:
    """The killed command never completed, so the newer state that replaces it has waited
    since the killed one's change arrived."""
    q = KeyQueue(coalesce=True, clock=Clock())
    q.add(received_at(1, "ns/a", 1.0))
    assert q.pop() is not None
    q.add(received_at(2, "ns/a", 7.0))
    q.requeue_processing()
    ev = q.pop()
    assert ev is not None and (ev.rv, ev.received) == ("2", 1.0)
