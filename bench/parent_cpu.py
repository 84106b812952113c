"""The parent's CPU per event on the list path, without the network: ``python bench/parent_cpu.py``.

Where it sits: beside ``run.py``. The ``ingest-list`` row measures the parent's whole
per-event CPU (TLS, HTTP, parsing, bookkeeping) from ``/proc`` while a replay server and
other work share the machine, so it moves with the load (26-41 µs in runs minutes apart).
This script measures only fastobs's own Python share of it, in one process, by
``time.process_time``: N realistic Pod lines (``pods.py``) of a streamed list go through
``Source`` into a real ``Engine`` set up as ``fastobs pods -A -q --once --object-env-var OBJ``
(no command: every event completes in the parent), until ``--once`` resolves. Several
rounds; the minimum is the figure least disturbed by other load.

``--completion`` measures the other half of the parent's per-event work the same way: each
event goes from a watch event through the tracker, queue and dispatch (a RUN frame written
to a worker's socket, here an object that keeps it) and back as that worker's DONE frame
through the completion path (the result's metrics, output and the next dispatch), set up
as the ``lag`` scenario runs fastobs (``-q --no-coalesce --object-env-var OBJ --template``,
32 commands in flight over 2 workers). Each event is dispatched and completed alone, as
at a low event rate; the worker, the command and the sockets are left out.

Out: one line per round and the minimum and median in µs per event.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pods import PodTemplate  # noqa: E402

from fastobs import protocol  # noqa: E402
from fastobs.cli import parse_args  # noqa: E402
from fastobs.engine import Engine  # noqa: E402
from fastobs.events import Event, EventType, ObjectKey  # noqa: E402
from fastobs.kube import KubeClient, Resource  # noqa: E402
from fastobs.metrics import Metrics  # noqa: E402
from fastobs.output import Output  # noqa: E402
from fastobs.source import Source  # noqa: E402

END = (b'{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"1",'
       b'"annotations":{"k8s.io/initial-events-end":"true"}}}}')


async def one_round(lines: list[bytes]) -> float:
    """CPU seconds for one streamed list of ``lines`` through a fresh source and engine."""
    settings, _ = parse_args(["pods", "-A", "-q", "--once", "--object-env-var", "OBJ", "--listen-addr", ""])
    engine = Engine(settings, workers=2, metrics=Metrics(oc_metrics=False),
                    output=Output(quiet=True, stream=False))
    source = Source(KubeClient.__new__(KubeClient), Resource("", "v1", "pods", "Pod", True), namespace=None,
                    label_selector="", field_selector="", sink=engine, maximum_errors=0)
    on_line = source._on_initial_line  # the streamed list's per-line path (no HTTP here)
    t0 = time.process_time()
    for line in lines:
        on_line(line, 1.0)
    on_line(END, 1.0)
    engine.list_end()
    spent = time.process_time() - t0
    if not engine.outcome.done() or engine.outcome.result() != 0:
        raise SystemExit("the engine did not finish the list")
    return spent


class _Socket:
    """A worker's socket as the pool sees it: keeps the last RUN frames written."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return False


async def completion_round(objects: list[bytes]) -> float:
    """CPU seconds to dispatch and complete one watch event per object, one at a time."""
    settings, _ = parse_args(["pods", "-A", "-q", "--no-coalesce", "--object-env-var", "OBJ",
                              "--template", "{.metadata.resourceVersion}", "--concurrency", "16",
                              "--listen-addr", "", "--", "true"])
    engine = Engine(settings, workers=2, metrics=Metrics(), output=Output(quiet=True, stream=False))
    pool = engine.pool
    sockets = []
    for w in pool.workers:
        w.ready, sock = True, _Socket()
        w.writer = sock  # type: ignore[assignment]
        sockets.append(sock)
    engine.list_begin(relist=False)
    engine.list_end()
    done_at = time.monotonic()
    t0 = time.process_time()
    for i, obj in enumerate(objects):
        key = ObjectKey(f"ns-{i % 10}/pod-{i}")
        engine.watch_event(Event(type=EventType.UPDATED, key=key, namespace=f"ns-{i % 10}", name=f"pod-{i}",
                                 uid=str(i), rv=str(i + 1), obj=obj, received=time.monotonic()))
        w = next(w for w in pool.workers if w.inflight)
        [(job_id, ev)] = w.inflight.items()
        result: protocol.Done = {
            "id": job_id, "header": f"Updated {ev.rv}\ttrue {ev.rv}", "arg": ev.rv, "ok": True,
            "started": done_at, "ended": done_at + 0.001, "attempts": [(0, 0.001)], "reason": "", "code": "0",
            "rx": done_at, "spawned": done_at,
        }
        frame = protocol.encode_done(result, b"", b"")
        pool._on_frame(w, frame[4:5], frame[5:])
        sockets[w.index].sent.clear()
    spent = time.process_time() - t0
    if pool.in_flight() or sum(q.pending_events for q in engine.sharder.queues):
        raise SystemExit("an event was not completed")
    return spent


async def main(n: int, rounds: int, completion: bool = False) -> None:
    pod = PodTemplate()
    lines = [b'{"type":"ADDED","object":' + pod.render(i, i + 1, f"ns-{i % 10}") + b"}" for i in range(n)]
    gc.freeze()  # as the daemon runs: what exists at start-up is never collected again
    gc.set_threshold(50_000, 20, 50)
    per_event = []
    objects = [pod.render(i, i + 1, f"ns-{i % 10}") for i in range(n)] if completion else []
    for r in range(rounds):
        spent = await completion_round(objects) if completion else await one_round(lines)
        per_event.append(spent / n * 1e6)
        print(f"round {r + 1}: {per_event[-1]:.2f} µs/event", file=sys.stderr)
    path = "dispatch and completion path" if completion else "list path"
    print(f"{n} Pods ({len(lines[0])} bytes a line), {rounds} rounds: parent {path} "
          f"min {min(per_event):.2f} µs/event, median {statistics.median(per_event):.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="Pods in the list (default 100000)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--completion", action="store_true",
                    help="measure the dispatch and completion path of single watch events instead")
    args = ap.parse_args()
    asyncio.run(main(args.n, args.rounds, args.completion))
