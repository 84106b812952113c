"""Fencing in real worker processes: the Lease deadline and KILL frames stop real commands.

The parent does nothing after handing the workers a deadline (as if it were paused): the
workers alone stop every command running at the deadline (SIGTERM, then SIGKILL after the
grace, process groups included) and start none after it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from test_pool import Recorder, event

from fastobs.events import Event
from fastobs.fencing import FENCED, clock
from fastobs.pool import Pool
from fastobs.settings import RunSettings
from fastobs.sharder import Sharder

# Starts a grandchild (its pid goes to $DIR/<name>.pid), then waits; with IGNORE set, both
# ignore SIGTERM, so only SIGKILL ends them.
COMMAND = r"""
[ -n "$IGNORE" ] && trap '' TERM
echo "start $2 $(date +%s.%N)" >> "$DIR/log"
sleep 30 & echo $! > "$DIR/$2.pid"
wait
"""


class Gate:
    def __init__(self) -> None:
        self.is_open = True
        self.refused: set[str] = set()

    def open(self) -> bool:
        return self.is_open

    def admits(self, ev: Event) -> bool:
        return ev.key not in self.refused

    def stamp(self, ev: Event) -> tuple[int, int]:
        return 3, 7


class Handler(Recorder):
    dropped: list[str]

    def on_dropped(self, ev: Event) -> None:
        self.dropped.append(ev.key)  # the pool already gave the key back to its queue


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def _pool(tmp_path: Path, expected: int) -> tuple[Pool, Handler, Sharder, Gate]:
    sharder = Sharder(shards=1, coalesce=False, max_pending=1000, clock=time.monotonic)
    handler = Handler(sharder, expected)
    handler.dropped = []
    pool = Pool(run=RunSettings(command=("sh", "-c", COMMAND, "sh"), concurrency=8, kill_grace=30.0),
                queues=sharder.queues, handler=handler)
    gate = Gate()
    pool.gate = gate
    handler.pool = pool
    await pool.start()
    return pool, handler, sharder, gate


def _grandchildren(tmp_path: Path, names: list[str]) -> list[int]:
    return [int((tmp_path / f"{n}.pid").read_text()) for n in names if (tmp_path / f"{n}.pid").exists()]


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "sigkill"])
def test_workers_stop_their_commands_at_the_deadline_on_their_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ignore_term: bool) -> None:
    monkeypatch.setenv("DIR", str(tmp_path))
    if ignore_term:
        monkeypatch.setenv("IGNORE", "1")
    grace = 0.5

    async def main() -> tuple[float, list[tuple[Event, dict[str, object]]], list[int]]:
        pool, handler, sharder, _ = await _pool(tmp_path, 5)
        try:
            deadline = clock() + 1.0
            pool.set_deadline(deadline, grace)
            for i in range(4):
                pool.pump(sharder.add(event(f"ns/k{i}", i)))
            while len(_grandchildren(tmp_path, [f"k{i}" for i in range(4)])) < 4:
                await asyncio.sleep(0.02)
            kids = _grandchildren(tmp_path, [f"k{i}" for i in range(4)])
            # From here on the parent sends nothing (as if paused). A job that reaches the
            # worker after the deadline must not start.
            await asyncio.sleep(max(0.0, deadline - clock()) + 0.05)
            pool.pump(sharder.add(event("ns/late", 9)))
            await asyncio.wait_for(handler.all_done.wait(), 30)
            return clock() - deadline, handler.results, kids
        finally:
            await pool.stop(1.0)

    after, results, kids = asyncio.run(main())
    reasons = sorted((ev.key, r.get("reason"), bool(r.get("attempts"))) for ev, r in results)
    print(f"\nall 5 results {after:.2f}s after the deadline (grace {grace}s); grandchildren alive: "
          f"{[p for p in kids if _alive(p)]}; {reasons}")
    assert reasons == [("ns/k0", FENCED, True), ("ns/k1", FENCED, True), ("ns/k2", FENCED, True),
                       ("ns/k3", FENCED, True), ("ns/late", FENCED, False)]
    assert [p for p in kids if _alive(p)] == []
    assert not (tmp_path / "late.pid").exists()
    if ignore_term:
        assert after >= grace  # only SIGKILL, after the grace, ended them
    assert after < grace + 5.0


def test_kill_frames_stop_only_the_chosen_jobs_and_the_gate_holds_or_drops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIR", str(tmp_path))

    async def main() -> tuple[list[tuple[Event, dict[str, object]]], list[str], bool, int]:
        pool, handler, sharder, gate = await _pool(tmp_path, 2)
        try:
            pool.set_deadline(clock() + 3600, 0.3)
            for key in ("ns/a", "ns/b", "ns/c"):
                pool.pump(sharder.add(event(key, 1)))
            while len(_grandchildren(tmp_path, ["a", "b", "c"])) < 3:
                await asyncio.sleep(0.02)
            told = pool.fence(lambda ev: ev.key in ("ns/a", "ns/b"), 0.3)
            await asyncio.wait_for(handler.all_done.wait(), 30)
            c_alive = _alive(_grandchildren(tmp_path, ["c"])[0])
            # A closed gate sends nothing; an event it does not admit is dropped unrun.
            gate.is_open = False
            pool.pump(sharder.add(event("ns/d", 2)))
            await asyncio.sleep(0.3)
            held = sharder.queues[0].statistics().depth
            gate.refused.add("ns/d")
            gate.is_open = True
            pool.pump(0)
            pool.fence(lambda ev: True, 0.1)
            return handler.results, handler.dropped, c_alive, held + told * 10
        finally:
            await pool.stop(1.0)

    results, dropped, c_alive, held_told = asyncio.run(main())
    assert sorted((ev.key, r.get("reason")) for ev, r in results[:2]) == [("ns/a", FENCED), ("ns/b", FENCED)]
    assert c_alive
    assert held_told == 1 + 2 * 10  # "ns/d" waited in its queue; two jobs were told to stop
    assert dropped == ["ns/d"]
    assert not (tmp_path / "d.pid").exists()
