"""The coordinator's own timing and decisions, without an API server (pure logic, real loops).

The real-process scenarios are in tests/test_ha.py; these pin down single rules of
fastobs/coordinator.py that a scenario only hits by chance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from fastobs import coordinator as coord
from fastobs.buckets import Bucketer
from fastobs.fencing import clock
from fastobs.ownership import Ownership, State
from fastobs.settings import Settings


class _Pool:
    """The dispatch side ownership drives: it records the deadline and fencing calls."""

    def __init__(self) -> None:
        self.fenced = 0

    def fence(self, match: Callable[[Any], bool], grace: float) -> int:
        self.fenced += 1
        return 0

    def in_flight(self, match: Callable[[Any], bool]) -> int:
        return 0

    def set_deadline(self, until: float, grace: float) -> None:
        pass

    def pump_all(self) -> None:
        pass


def _coordinator(renew_deadline: float) -> tuple[coord.Coordinator, Ownership, _Pool]:
    settings = Settings(resource="configmaps", lease_name="g", identity="a", buckets=2,
                        lease_duration=4.0, renew_deadline=renew_deadline, retry_period=0.5)
    own = Ownership(Bucketer(2, "name"), kill_grace=0.5)
    pool = _Pool()
    own.pool = pool  # type: ignore[assignment]
    c = coord.Coordinator(object(), settings, own, namespace="ns", config="cfg")  # type: ignore[arg-type]
    own.states = {0: State.OWNED, 1: State.OWNED}
    return c, own, pool


async def _fences_at_its_deadline(renew_deadline: float, renewed: Callable[[], None] = lambda: None) -> float:
    """Renew once, then never again: returns how late after the deadline the buckets were
    suspended (raises if they never were)."""
    c, own, pool = _coordinator(renew_deadline)
    c._renewed(clock())
    renewed()
    deadline = c.valid_until
    while clock() < deadline + 0.5:
        if set(own.states.values()) == {State.SUSPENDED}:
            assert pool.fenced == 1
            return clock() - deadline
        await asyncio.sleep(0.001)
    raise AssertionError(f"not fenced 0.5 s after the deadline (renew deadline {renew_deadline:.4f}s)")


def test_a_fence_timer_that_fires_early_tries_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's timer and the fencing clock disagree by a hair (uvloop rounds timers to
    milliseconds): a timer that fires just before the deadline must not leave the replica
    unfenced for good. Deterministic: the coordinator's first reading of the clock once the
    timer fired is 5 ms early."""
    real = coord.clock
    early = {"left": 0, "reads": 0}

    def skewed() -> float:
        early["reads"] += 1
        if early["left"]:
            early["left"] -= 1
            return real() - 0.005
        return real()

    monkeypatch.setattr(coord, "clock", skewed)

    def renewed() -> None:
        early["left"], early["reads"] = 1, 0

    late = asyncio.run(_fences_at_its_deadline(0.05, renewed))
    print(f"\nfenced {late * 1000:.1f} ms after the deadline; the coordinator read the clock "
          f"{early['reads']} times after the renewal, the first one early")
    assert early["left"] == 0 and early["reads"] >= 2


def test_fencing_under_uvloop_never_misses_the_deadline() -> None:
    """The real clocks under uvloop, many deadlines that are not whole milliseconds: every
    one of them fences (before the fix, about one timer in five fired early and the replica
    stayed unfenced, its buckets never suspended)."""

    async def many() -> list[float]:
        return [await _fences_at_its_deadline(0.01 + i * 0.00037) for i in range(40)]

    lates = uvloop.run(many())
    print(f"\n40 deadlines under uvloop: all fenced, at most {max(lates) * 1000:.1f} ms late")
    assert len(lates) == 40


def test_contact_regained_ends_the_watches_backoff_at_once() -> None:
    """A partition that lasted a while leaves the watches in a backoff of up to 30 s: the
    first renewal that gets through wakes them (the group's view and the events must not wait
    for it), and only after being out of touch."""

    async def scenario() -> tuple[list[str], float]:
        c, _, _ = _coordinator(3.0)
        calls: list[str] = []
        c.on_contact = lambda: calls.append("events")
        c._renewed(clock())
        assert calls == []  # a first renewal, or a regular one, wakes nothing
        for _ in range(6):
            c.watch._backoff.delay()  # as after a few failed reconnections: the next one waits ~25 s
        sleeping = asyncio.ensure_future(c.watch._sleep(c.watch._backoff.delay()))
        await asyncio.sleep(0.05)
        c._renew_failed = True  # renewals failed meanwhile; this one got through
        began = clock()
        c._renewed(clock())
        await asyncio.wait_for(sleeping, 5)
        assert c.watch._backoff.delay() < 1.0  # the next backoff starts over
        return calls, clock() - began

    calls, woke = asyncio.run(scenario())
    print(f"\nthe lease watch's 25 s backoff ended {woke * 1000:.0f} ms after the renewal; woken: {calls}")
    assert calls == ["events"] and woke < 1.0
