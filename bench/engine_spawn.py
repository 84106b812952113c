"""The execution engine alone: queued events -> real worker processes -> real commands.

    python bench/engine_spawn.py [--events N] [--workers W] [--concurrency C] [--object-env-var NAME] CMD...

No API server and no list parsing: events go straight into the real sharder queues and
the real ``fastobs.pool.Pool`` (worker processes, socket protocol, Popen + pidfd), so the
rate can be set beside ``bench/spawner.py`` (the bare spawn ceiling) with the same
command and concurrency. Each event carries a realistic ~5.7 KB Pod (``pods.py``), which
matters only with ``--object-env-var`` (kubectl's JSON encoding per command).
Prints one JSON line ``{"events": N, "seconds": S, "events_per_s": R}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import orjson
import pods

from fastobs.events import Event, EventType, ObjectKey
from fastobs.pool import Pool
from fastobs.settings import RunSettings
from fastobs.sharder import Sharder


class _Done:
    """A pool handler that completes jobs like the engine does and counts them."""

    def __init__(self, sharder: Sharder, expected: int) -> None:
        self.sharder = sharder
        self.left = expected
        self.finished = asyncio.Event()
        self.pool: Pool | None = None

    def on_done(self, ev: Event, result: dict[str, Any], out: bytes, err: bytes) -> None:
        i = self.sharder.shard(ev.key)
        self.sharder.queues[i].done(ev.key)
        self.left -= 1
        if self.left == 0:
            self.finished.set()
        assert self.pool is not None
        self.pool.pump(i)

    def on_dispatch(self, ev: Event) -> None: ...
    def on_begun(self, ev: Event, t: float, header: str | None) -> None: ...
    def on_output(self, ev: Event, fd: int, data: bytes) -> None: ...
    def on_restart(self, index: int) -> None: ...

    def on_fatal(self, exc: BaseException) -> None:
        raise exc


async def run(events: int, workers: int, concurrency: int, env_var: str, command: list[str]) -> float:
    sharder = Sharder(shards=workers, coalesce=True, max_pending=events + 1, clock=time.monotonic)
    handler = _Done(sharder, events)
    settings = RunSettings(command=tuple(command), concurrency=concurrency, object_env_var=env_var,
                           quiet=True)
    pool = Pool(run=settings, queues=sharder.queues, handler=handler)
    handler.pool = pool
    await pool.start()
    obj = orjson.dumps(pods.pod_dict())
    t0 = time.perf_counter()
    for i in range(events):
        ns, name = f"ns-{i % 20}", f"pod-{i}"
        ev = Event(EventType.SYNC, ObjectKey(f"{ns}/{name}"), ns, name, f"uid-{i}", str(i), obj,
                   time.monotonic(), backlog=True)
        pool.pump(sharder.add(ev))
    await handler.finished.wait()
    seconds = time.perf_counter() - t0
    await pool.stop(5.0)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=8, help="per worker")
    ap.add_argument("--object-env-var", default="")
    ap.add_argument("command", nargs="+")
    args = ap.parse_args()
    seconds = asyncio.run(run(args.events, args.workers, args.concurrency, args.object_env_var, args.command))
    print(json.dumps({"events": args.events, "seconds": round(seconds, 3),
                      "events_per_s": round(args.events / seconds)}))


if __name__ == "__main__":
    main()
