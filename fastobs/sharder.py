"""Sharder: route each key to one worker's queue, and push back when too much is pending.

Where it sits: in the parent, between ``tracker`` and the per-worker ``queue``s that
``pool`` drains. In: events. Out: the same events, in the queue of the shard that owns
their key.

Invariants: the shard of a key is a stable hash of the key (CRC-32), so a key always goes
to the same worker for as long as the pool has the same size; the number of pending
events (object bytes held in the parent) is bounded: past ``max_pending`` the source is
made to wait (:meth:`wait_capacity`) instead of the parent growing without limit.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

from .events import Event, ObjectKey
from .queue import KeyQueue


def shard_of(key: str, shards: int) -> int:
    """Stable shard index of ``key`` (the same in every process and every run)."""
    return zlib.crc32(key.encode()) % shards


class Sharder:
    """One :class:`KeyQueue` per worker, plus back-pressure on the event source."""

    def __init__(
        self, *, shards: int, coalesce: bool, max_pending: int, clock: Callable[[], float]
    ) -> None:
        self.queues = [KeyQueue(coalesce=coalesce, clock=clock) for _ in range(shards)]
        self.max_pending = max_pending
        self._room = asyncio.Event()
        self._room.set()

    def shard(self, key: ObjectKey) -> int:
        return shard_of(key, len(self.queues))

    def add(self, ev: Event) -> int:
        """Queue ``ev``; returns its shard so the caller can dispatch from it."""
        i = shard_of(ev.key, len(self.queues))
        self.queues[i].add(ev)
        if self.pending_events() >= self.max_pending:
            self._room.clear()
        return i

    def pending_events(self) -> int:
        return sum(q.pending_events for q in self.queues)

    def coalesced(self) -> int:
        return sum(q.coalesced for q in self.queues)

    def released(self) -> None:
        """Call after events left a queue: wakes a waiting source once there is room."""
        if not self._room.is_set() and self.pending_events() < self.max_pending * 3 // 4:
            self._room.set()

    async def wait_capacity(self) -> None:
        if not self._room.is_set():
            await self._room.wait()
