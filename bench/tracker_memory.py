"""Bytes the parent keeps per tracked object (the tracker's records), at 100,000 objects.

    python bench/tracker_memory.py [N]

Feeds N list items (realistic key, uid and resourceVersion lengths) through the real
``fastobs.tracker.Tracker`` with deletion tracking on, marks each handled, and reports the
Python heap growth per object measured with tracemalloc.
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
import uuid

from fastobs.events import Event, EventType, object_key
from fastobs.tracker import Tracker


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    tracker = Tracker(
        emit=lambda ev: None, tracking=True, namespaced=True, keep_object=False, clock=time.monotonic
    )
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracker.list_begin()
    for i in range(n):
        ns, name = f"namespace-{i % 500}", f"pod-{i:06d}-abcde"
        ev = Event(
            EventType.SYNC,
            object_key(ns, name),
            ns,
            name,
            str(uuid.uuid4()),
            str(10_000_000 + i),
            None,
            0.0,
            True,
        )
        tracker.list_item(ev)
        tracker.handled(ev, ok=True, arg=None)
    tracker.list_end()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    print(f"tracked objects: {len(tracker.records)}")
    print(f"bytes per tracked object: {grown / n:.0f}")
    print(f"total: {grown / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
