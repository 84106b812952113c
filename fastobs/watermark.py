"""Watermark: per bucket, the resourceVersion up to which every event has been run.

Where it sits: inside ``ownership``, fed by the engine's event path (an event queued, a key
settled) and read by ``coordinator`` when it writes the group's Leases. Pure bookkeeping; the
clock and the stream position come from outside.

The watermark ``W(b)`` of bucket b promises: every event of b with ``rv ≤ W(b)`` has been run,
or was superseded by a newer state of its object that has been run. It is

    W(b) = max(floor(b), min(level(b), oldest_hold(b) − 1))

* ``level(b)``: how far the stream has been read for b: the stream's position (events and
  bookmarks); while a replay (a watch restarted further back, to catch a bucket up) is under
  way, buckets not catching up are at the position the stream had reached before it;
* ``oldest_hold(b)``: the resourceVersion of the oldest event of b's keys that has not
  completed. A key holds the watermark back from its first pending event; a successful run
  of the state at rv r moves its hold past r (or ends it when nothing newer came), so
  pending, running *and failed* keys hold it back, and a key that keeps changing does not
  hold it back for ever;
* ``floor(b)``: the watermark b was acquired with (what the previous owner completed);
* while b is being handed over (drained), ``W(b)`` also stays at or below the stream position
  the drain began at: nothing newer is admitted for b any more.

Only per-bucket numbers leave this module; the per-key holds stay in this process (at most one
entry per key with pending work, which ``--max-pending`` bounds).

Resource versions are compared as integers (KEP-5504: comparable since 1.35). When one does not
parse, watermarks are switched off for good (:attr:`Progress.usable` False) and a new owner
runs its whole bucket, as a restart without watermarks does.
"""

from __future__ import annotations

from dataclasses import dataclass


def parse_rv(rv: str) -> int | None:
    """A resourceVersion as an integer, None when it is not one."""
    if rv.isdigit():
        return int(rv)
    return None


@dataclass(slots=True)
class Hold:
    bucket: int
    rv: int
    """The oldest resourceVersion of the key not known to be run."""
    last: int
    """The newest resourceVersion of the key queued so far."""
    since: float
    """When the holding event was received (monotonic), for the watermark's age."""


class Progress:
    """Holds, floors and the replay state of every bucket this process has work in."""

    def __init__(self) -> None:
        self.usable = True
        self.holds: dict[str, Hold] = {}
        self.floors: dict[int, int | None] = {}
        self.catching_up: set[int] = set()
        """Buckets acquired whose past is being replayed (or relisted) for them."""
        self.replay_until = 0
        """While a replay runs: the stream position reached before it; events of buckets not
        catching up are dropped up to it (they were received before)."""
        self.listing = False
        """A relist that catches buckets up is under way: their watermark stays at the floor."""
        self.caps: dict[int, int] = {}
        """Buckets being handed over: the stream position their drain began at."""

    # ------------------------------------------------------------------ event path

    def hold(self, key: str, bucket: int, rv: str, received: float) -> None:
        """An event of ``key`` is queued: the key holds its bucket back from its first pending rv."""
        if not rv:
            return  # a delete synthesized at a relist has no resourceVersion to hold at
        value = parse_rv(rv)
        if value is None:
            self.usable = False
            return
        held = self.holds.get(key)
        if held is None:
            self.holds[key] = Hold(bucket, value, value, received)
        elif value > held.last:
            held.last = value

    def ran(self, key: str, rv: str) -> None:
        """The state of ``key`` at ``rv`` ran successfully: everything of the key up to ``rv``
        is done (older pending states were coalesced into it or ran before)."""
        held = self.holds.get(key)
        value = parse_rv(rv)
        if held is None or value is None:
            return
        if value >= held.last:
            del self.holds[key]
        elif value >= held.rv:
            held.rv = value + 1

    def below_floor(self, bucket: int, rv: str) -> bool:
        """Whether an event of ``bucket`` at ``rv`` was already run by this bucket's previous owner."""
        floor = self.floors.get(bucket)
        if floor is None or not rv:
            return False
        value = parse_rv(rv)
        return value is not None and value <= floor

    # ------------------------------------------------------------------ replays

    def replay_started(self, position: int | None, buckets: set[int], relist: bool) -> None:
        """A watch restarts further back (or a relist starts) to catch ``buckets`` up."""
        self.catching_up |= buckets
        if relist:
            self.listing = True
            self.replay_until = 0
        elif position is not None:
            self.replay_until = max(self.replay_until, position)

    def replay_expired(self) -> None:
        """The server no longer had the replay's start: a relist follows instead."""
        self.listing = True
        self.replay_until = 0

    def replaying(self) -> bool:
        """A replay or a catching-up relist is under way."""
        return bool(self.replay_until) or self.listing or bool(self.catching_up)

    def list_ended(self) -> None:
        if self.listing:
            self.listing = False
            self.catching_up.clear()

    def replayed(self, bucket: int, rv: str) -> bool:
        """For a watch event: False when it must be dropped because this process already had it
        before the replay started (its bucket is not catching up). Ends the replay once the
        stream is past where it was."""
        if not self.replay_until:
            if not self.listing:
                # A replay begun with nothing read before it (no stream position yet) has no past
                # to skip, so no later event would end it: end it at its first live event (its
                # list as of the start came before), or its buckets stay "catching up" for good
                # and every later replay purges their pending work.
                self.catching_up.clear()
            return True
        value = parse_rv(rv)
        if value is None:
            return True
        if value > self.replay_until:
            self.replay_until = 0
            if not self.listing:
                self.catching_up.clear()
            return True
        return bucket in self.catching_up

    # ------------------------------------------------------------------ buckets

    def cap(self, bucket: int, position: int | None) -> None:
        """From now on nothing newer than ``position`` is admitted for ``bucket`` (None: lift
        the cap). With no known position the bucket promises nothing new."""
        if position is None:
            self.caps.pop(bucket, None)
        else:
            self.caps[bucket] = position

    def start_bucket(self, bucket: int, floor: int | None) -> None:
        self.floors[bucket] = floor
        self.forget_bucket(bucket, keep_floor=True)

    def forget_bucket(self, bucket: int, keep_floor: bool = False) -> None:
        for key in [k for k, h in self.holds.items() if h.bucket == bucket]:
            del self.holds[key]
        self.catching_up.discard(bucket)
        self.caps.pop(bucket, None)
        if not keep_floor:
            self.floors.pop(bucket, None)

    def watermark(self, bucket: int, position: int | None) -> int | None:
        """W(bucket) (see the module docstring), None when nothing can be promised yet."""
        return self.watermarks({bucket}, position).get(bucket)

    def watermarks(self, buckets: set[int], position: int | None) -> dict[int, int]:
        """W of each of ``buckets`` that has one. One pass over the holds."""
        if not self.usable:
            return {}
        oldest: dict[int, int] = {}
        for h in self.holds.values():
            if h.bucket in buckets and (h.bucket not in oldest or h.rv < oldest[h.bucket]):
                oldest[h.bucket] = h.rv
        out: dict[int, int] = {}
        for b in buckets:
            floor = self.floors.get(b)
            if position is None or (self.listing and b in self.catching_up):
                if floor is not None:
                    out[b] = floor
                continue
            level = position if b in self.catching_up or not self.replay_until \
                else max(position, self.replay_until)
            mark = level if b not in oldest else min(level, oldest[b] - 1)
            if b in self.caps:
                mark = min(mark, self.caps[b])
            out[b] = mark if floor is None else max(floor, mark)
        return out

    def oldest_hold_since(self, buckets: set[int]) -> float | None:
        """When the oldest event still holding one of ``buckets`` back was received."""
        return min((h.since for h in self.holds.values() if h.bucket in buckets), default=None)
