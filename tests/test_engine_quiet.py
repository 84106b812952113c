"""The engine's own path for events nothing needs to run (``-q`` and no command).

Such events complete in the parent, so the first list's bookkeeping (``--once``,
readiness) must settle them at once, and only a key with an earlier event still
waiting may hold it. The pool is never started here: a queued event stays queued.
"""

from __future__ import annotations

import asyncio

from fastobs.cli import parse_args
from fastobs.engine import Engine
from fastobs.events import Event, EventType, object_key
from fastobs.metrics import Metrics
from fastobs.output import Output


def _engine(*argv: str) -> Engine:
    settings, _ = parse_args(["pods", "-A", "-q", "--listen-addr", "", *argv])
    output = Output(quiet=True, stream=False)
    return Engine(settings, workers=2, metrics=Metrics(oc_metrics=False), output=output)


def _ev(etype: EventType, i: int, rv: int) -> Event:
    name = f"pod-{i}"
    return Event(etype, object_key("ns", name), "ns", name, f"uid-{i}", str(rv), b"{}", 1.0,
                 backlog=etype is EventType.SYNC)


def test_once_without_a_command_ends_with_the_list() -> None:
    async def scenario() -> None:
        engine = _engine("--once")
        engine.list_begin(relist=False)
        for i in range(1000):
            engine.list_item(_ev(EventType.SYNC, i, i + 1))
        print(f"before list_end: done={engine.outcome.done()} ready={engine.initial_sync_done()}")
        assert not engine.outcome.done()
        assert not engine.initial_sync_done()
        engine.list_end()
        assert engine.outcome.done() and engine.outcome.result() == 0
        assert engine.initial_sync_done()
        assert engine.emitted == 1000
        assert b'fastobs_events_total{type="Sync"} 1000\n' in engine.metrics.exposition()

    asyncio.run(scenario())


def test_a_key_with_a_queued_delete_holds_once() -> None:
    """Deletes have a command, updates none: a listed key whose delete is still queued
    keeps ``--once`` waiting; the others settle on the spot."""

    async def scenario() -> None:
        engine = _engine("--once", "--delete", "true")
        engine.list_begin(relist=False)
        engine.watch_event(_ev(EventType.DELETED, 1, 5))  # queued: no worker takes it here
        engine.list_item(_ev(EventType.SYNC, 1, 6))  # the same key again, settled on the spot
        engine.list_item(_ev(EventType.SYNC, 2, 7))
        engine.list_end()
        queued = engine.queued(lambda ev: True)
        print(f"queued {queued}, once done={engine.outcome.done()}, waiting for {engine.initial_keys}")
        assert queued == 1
        assert not engine.outcome.done()
        assert engine.initial_keys == {object_key("ns", "pod-1")}

    asyncio.run(scenario())
