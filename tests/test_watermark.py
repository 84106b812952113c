"""Per-bucket watermarks: what they promise, and what holds them back."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fastobs.buckets import Bucketer
from fastobs.ownership import Ownership
from fastobs.watermark import Progress


def test_nothing_pending_means_the_stream_position() -> None:
    p = Progress()
    assert p.watermark(0, None) is None  # nothing promised before the stream has a position
    assert p.watermark(0, 120) == 120


def test_pending_running_and_failed_keys_hold_their_bucket_back() -> None:
    p = Progress()
    p.hold("a", 0, "100", 0.0)
    p.hold("b", 1, "105", 0.0)
    assert p.watermarks({0, 1}, 110) == {0: 99, 1: 104}
    p.hold("a", 0, "107", 0.0)  # a newer state of a while the older one is pending: still 99
    assert p.watermark(0, 110) == 99
    p.ran("a", "100")  # the older state ran, the newer is pending: past 100, not past 107
    assert p.watermark(0, 110) == 100
    p.ran("a", "107")
    assert p.watermark(0, 110) == 110
    # A failure is simply no ran(): b keeps holding bucket 1 back until a run succeeds.
    assert p.watermark(1, 200) == 104
    p.ran("b", "105")
    assert p.watermark(1, 200) == 200


def test_the_floor_is_kept_and_below_it_nothing_runs() -> None:
    p = Progress()
    p.start_bucket(3, 500)
    assert p.below_floor(3, "500") and p.below_floor(3, "42")
    assert not p.below_floor(3, "501") and not p.below_floor(3, "")
    assert not p.below_floor(4, "1")
    assert p.watermark(3, 400) == 500  # the stream is behind the floor (replaying): the floor holds
    p.hold("k", 3, "520", 0.0)
    assert p.watermark(3, 600) == 519


def test_a_replay_drops_what_was_already_received_except_for_buckets_catching_up() -> None:
    p = Progress()
    p.start_bucket(2, 300)
    p.replay_started(1000, {2}, relist=False)  # the stream had reached 1000, goes back to 300
    assert p.replayed(2, "400")  # bucket 2 catches up
    assert not p.replayed(5, "400")  # bucket 5 had it before the rewind
    # During the replay, bucket 5 is complete up to where the stream was; bucket 2 up to the replay.
    assert p.watermarks({2, 5}, 450) == {2: 450, 5: 1000}
    assert p.replayed(5, "1001")  # past the old position: the replay is over
    assert p.replayed(5, "1002") and not p.catching_up


def test_a_relist_keeps_the_buckets_it_catches_up_at_their_floor_until_it_ends() -> None:
    p = Progress()
    p.start_bucket(1, None)
    p.replay_started(800, {1}, relist=True)
    assert p.watermark(1, 800) is None  # nothing run yet of a bucket that has no floor
    p.list_ended()
    assert p.watermark(1, 900) == 900


def test_forgetting_a_bucket_drops_its_holds_and_floor() -> None:
    p = Progress()
    p.start_bucket(1, 10)
    p.hold("x", 1, "20", 0.0)
    p.forget_bucket(1)
    assert p.holds == {} and p.watermark(1, 30) == 30


def test_a_resource_version_that_is_not_a_number_turns_watermarks_off() -> None:
    p = Progress()
    p.hold("x", 0, "a1b2", 0.0)
    assert not p.usable and p.watermarks({0}, 10) == {}


@given(st.lists(st.tuples(st.integers(0, 9), st.booleans()), min_size=1, max_size=60))
@settings(max_examples=300, deadline=None)
def test_the_watermark_never_passes_a_state_that_has_not_run(ops: list[tuple[int, bool]]) -> None:
    """Random arrivals and completions on 10 keys of one bucket, with coalescing (a completion
    runs the key's newest state) and failures: W(b) ≥ rv implies every state ≤ rv ran or was
    superseded by a newer state of its key that ran."""
    p = Progress()
    rv = 0
    newest: dict[int, int] = {}
    done_upto: dict[int, int] = {}  # key -> newest rv whose run succeeded
    first_pending: dict[int, int] = {}
    for key, complete in ops:
        if complete and key in newest:
            if rv % 3:  # most runs succeed; the rest fail and keep holding
                p.ran(str(key), str(newest[key]))
                done_upto[key] = newest[key]
                first_pending.pop(key, None)
            continue
        rv += 1
        newest[key] = rv
        first_pending.setdefault(key, rv)
        p.hold(str(key), 0, str(rv), 0.0)
        mark = p.watermark(0, rv)
        assert mark is not None
        for k, pending in first_pending.items():
            assert mark < pending, (k, pending, mark)


class _Stream:
    def __init__(self) -> None:
        self.pos: int | None = None
        self.rewinds: list[str | None] = []

    def rewind(self, rv: str | None) -> None:
        self.rewinds.append(rv)

    def position(self) -> int | None:
        return self.pos


class _Engine:
    def purge(self, events: object, records: object) -> None:
        pass

    def queued(self, match: object) -> int:
        return 0


class _Pool:
    def fence(self, match: object, grace: float) -> int:
        return 0

    def in_flight(self, match: object) -> int:
        return 0

    def set_deadline(self, until: float, grace: float) -> None:
        pass

    def pump_all(self) -> None:
        pass


def _owned() -> tuple[Ownership, Bucketer, _Stream]:
    """An ownership of 4 buckets keyed by name, bound to a stream, engine and pool that do
    nothing but record the rewinds."""
    stream = _Stream()
    bucketer = Bucketer(4, "name")
    own = Ownership(bucketer, kill_grace=0.5)
    own.bind(engine=_Engine(), pool=_Pool(), stream=stream)
    return own, bucketer, stream


def _keys_in(bucketer: Bucketer, bucket: int) -> list[str]:
    """The keys ns/k0 ... ns/k199 that fall into ``bucket``."""
    return [f"ns/k{i}" for i in range(200) if bucketer.bucket(f"ns/k{i}", "ns", "") == bucket]


def test_a_bucket_without_a_watermark_is_not_handed_over_until_its_list_has_ended() -> None:
    """Released before its first list ended, a bucket would reach its next owner without a
    watermark, and that owner's relist would miss the deletes of objects listed here."""

    own, _, stream = _owned()
    own.acquire(2, 1, None)
    assert stream.rewinds == [None]
    own.rewound(None, expired=False)  # the relist starts
    stream.pos = 700
    assert not own.promises(2)
    own.list_ended()
    assert own.promises(2) and own.watermarks() == {2: 700}
    own.acquire(3, 1, 650)  # acquired with a watermark: it can move on at once
    assert stream.rewinds == [None, "650"]
    assert own.promises(3) and own.watermarks()[3] == 650  # not the stream's 700 before the replay
    own.rewound("650", expired=False)
    stream.pos = 650  # the source watches again from there
    assert own.watermarks()[3] == 650
    stream.pos = 720
    assert own.watermarks() == {2: 720, 3: 720}


def test_a_bucket_acquired_during_a_replay_is_replayed_from_no_later_than_it() -> None:
    """A second bucket won while the first one's replay runs: the stream's position is the
    replay's, so the new bucket must be replayed too (its events were dropped before), and the
    restarted replay starts no later than the first one did (it forgets what that one queued)."""

    own, _, stream = _owned()
    stream.pos = 700
    own.acquire(3, 1, 650)
    own.rewound("650", expired=False)
    stream.pos = 660  # the replay has come this far
    own.acquire(2, 1, 680)  # above the position, but its events up to 700 were dropped before
    assert stream.rewinds == ["650", "650"] and 2 in own.awaiting
    own.rewound("650", expired=False)
    stream.pos = 665
    own.acquire(1, 1, 655)  # below the position: still no later than the replay under way
    assert stream.rewinds[-1] == "650"
    own.rewound("650", expired=False)
    assert own.progress.catching_up == {1, 2, 3}
    own.progress.replayed(0, "701")  # the replay is past where the stream was: over
    stream.pos = 701
    own.acquire(0, 1, 701)  # no replay under way, nothing to catch up: owned at once
    assert stream.rewinds[-1] == "650" and 0 not in own.awaiting


def test_once_a_replay_is_over_a_relist_lets_the_tracker_know_every_object() -> None:
    """A replay brings only what changed since the watermark; after it, one relist lets the
    tracker know the bucket's other objects, so a later relist can tell which were deleted."""
    from fastobs.events import Event, EventType, ObjectKey

    own, bucketer, stream = _owned()
    stream.pos = 700
    own.acquire(3, 1, 650)
    own.rewound("650", expired=False)
    stream.pos = 650
    key = _keys_in(bucketer, 3)[0]

    def event(rv: str) -> Event:
        return Event(EventType.UPDATED, ObjectKey(key), "ns", key[3:], "u1", rv, b"{}", 0.0)

    assert own.admit(event("680"))  # part of the replay
    assert stream.rewinds == ["650"]
    assert own.admit(event("720"))  # past where the stream was: the replay is over
    assert stream.rewinds == ["650", None]
    own.rewound(None, expired=False)
    assert own.admit(event("730")) and stream.rewinds == ["650", None]  # once only


def test_a_restarted_replay_keeps_what_the_one_under_way_completed() -> None:
    from fastobs.events import Event, EventType, ObjectKey

    own, bucketer, stream = _owned()
    stream.pos = 900
    own.acquire(3, 1, 600)
    own.rewound("600", expired=False)
    key = _keys_in(bucketer, 3)[0]
    ev = Event(EventType.UPDATED, ObjectKey(key), "ns", key[3:], "u1", "700", b"{}", 0.0)
    assert own.admit(ev) and own.accept(ev)
    own.ran(ev)
    stream.pos = 750  # the replay has delivered, and run, everything of bucket 3 up to 750
    assert own.watermarks()[3] == 750
    own.acquire(2, 1, 500)  # a bucket with an older watermark: the replay restarts at 500
    assert stream.rewinds[-1] == "500"
    own.rewound("500", expired=False)
    stream.pos = 500
    assert own.watermarks()[3] == 750  # not back to 600
    assert not own.accept(ev)  # 700 is not run again


def test_a_delete_found_by_a_relist_holds_the_watermark_back_until_it_ran() -> None:
    from fastobs.events import Event, EventType, ObjectKey

    own, bucketer, stream = _owned()
    stream.pos = 900
    own.acquire(3, 1, 900)
    key = _keys_in(bucketer, 3)[0]
    gone = Event(EventType.DELETED, ObjectKey(key), "ns", key[3:], "u1", "", None, 0.0)
    assert own.accept(gone)
    stream.pos = 950  # the relist ended further on
    assert own.watermarks()[3] == 900  # not past the delete that has not run
    own.ran(gone)
    assert own.watermarks()[3] == 950


def test_an_expired_replay_still_finds_the_deletes_since_its_start() -> None:
    """A bucket taken over with watermark 650 whose replay the server can no longer serve (it
    restarted): the objects of the bucket as they were at 650 (a list from storage) seed the
    tracker, so the relist that follows yields the Deleted of the one gone since, runs the one
    changed since, and nothing for the one unchanged. Without the seed, the relist alone knows
    nothing of the bucket's past and the delete is lost."""
    from fastobs.events import Event, EventType, ObjectKey
    from fastobs.tracker import Tracker

    own, bucketer, stream = _owned()
    emitted: list[Event] = []
    tracker = Tracker(emit=emitted.append, tracking=True, namespaced=True, keep_object=False,
                      clock=lambda: 0.0)
    stream.pos = 900
    own.acquire(3, 2, 650)
    assert stream.rewinds == ["650"]
    own.rewound("650", expired=False)  # the watch from 650 starts...
    own.rewound("650", expired=True)  # ...and gets "too old resource version"
    kept, gone, changed = _keys_in(bucketer, 3)[:3]
    other = _keys_in(bucketer, 1)[0]

    def sync(key: str, rv: str) -> Event:
        return Event(EventType.SYNC, ObjectKey(key), "ns", key[3:], "u-" + key, rv, b"{}", 0.0, backlog=True)

    for ev in (sync(kept, "600"), sync(gone, "610"), sync(changed, "620"), sync(other, "630")):
        if own.seeds(ev):  # the list as of 650
            tracker.seed(ev)
    assert set(tracker.records) == {kept, gone, changed}  # not bucket 1's: not held here
    tracker.list_begin()
    for ev in (sync(kept, "600"), sync(changed, "880")):  # the relist at 900
        if own.admit(ev):
            tracker.list_item(ev)
    deletes, _ = tracker.list_end()
    own.list_ended()
    assert [(e.key, e.rv) for e in emitted] == [(changed, "880")]
    assert [(e.key, e.type) for e in deletes] == [(gone, EventType.DELETED)]
    assert own.accept(deletes[0]) and own.accept(emitted[0])
    assert not own.accept(sync(kept, "600"))  # at or below the floor: its previous owner ran it


def test_a_replay_ends_on_any_event_past_where_the_stream_was() -> None:
    """A replay of a quiet bucket ends when the stream is past where it was before, whoever's
    bucket the event is: a bucket won later is then replayed from its own watermark, not from
    the start of that old replay."""
    from fastobs.events import Event, EventType, ObjectKey

    own, bucketer, stream = _owned()
    stream.pos = 700
    own.acquire(3, 1, 650)
    own.rewound("650", expired=False)
    foreign = _keys_in(bucketer, 1)[0]
    ev = Event(EventType.UPDATED, ObjectKey(foreign), "ns", foreign[3:], "u1", "710", b"{}", 0.0)
    assert not own.admit(ev)  # not ours, but the stream is past 700 now
    stream.pos = 710
    assert not own.progress.replaying()
    own.acquire(2, 1, 705)
    assert stream.rewinds == ["650", "705"]


def test_a_replay_begun_before_the_stream_had_a_position_ends_at_its_first_event() -> None:
    """Acquired with a watermark before anything was read: the replay has no earlier position
    to reach, so its first live event ends it (else the bucket stays catching up for good)."""
    p = Progress()
    p.start_bucket(3, 300)
    p.replay_started(None, {3}, relist=False)
    assert p.catching_up == {3} and p.replaying()
    assert p.replayed(3, "301")
    assert not p.catching_up and not p.replaying()
