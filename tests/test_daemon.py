"""The daemon's timers: --resync-period and --exit-after, on a real event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from fastobs.daemon import _start_timers
from fastobs.settings import Settings


class _Counter:
    """Stands in for the engine and the source: counts the resync requests."""

    def __init__(self) -> None:
        self.resyncs = 0
        self.relists = 0

    def request_resync(self) -> None:
        self.resyncs += 1

    def request_relist(self) -> None:
        self.relists += 1


def test_resync_timer_keeps_one_handle_and_stops_when_cancelled() -> None:
    """Each period schedules the next resync; the handles kept for cancelling must not pile
    up one per period (a week of --resync-period=1s would keep 600,000 of them)."""

    async def scenario() -> tuple[int, int, int]:
        both: Any = _Counter()
        timers = _start_timers(Settings(resync_period=0.01), both, both)
        while both.resyncs < 20:
            await asyncio.sleep(0.01)
        kept = len(timers)
        for handle in timers.values():
            handle.cancel()
        fired = both.resyncs
        await asyncio.sleep(0.1)
        return kept, fired, both.resyncs - fired

    kept, fired, after_cancel = asyncio.run(scenario())
    print(f"{fired} resyncs fired, {kept} timer handles kept, {after_cancel} after cancelling")
    assert kept == 1
    assert after_cancel == 0
