"""The parent's CPU per event on the list path, without the network: ``python bench/parent_cpu.py``.

Where it sits: beside ``run.py``. The ``ingest-list`` row measures the parent's whole
per-event CPU (TLS, HTTP, parsing, bookkeeping) from ``/proc`` while a replay server and
other work share the machine, so it moves with the load (26-41 µs in runs minutes apart).
This script measures only fastobs's own Python share of it, in one process, by
``time.process_time``: N realistic Pod lines (``pods.py``) of a streamed list go through
``Source`` into a real ``Engine`` set up as ``fastobs pods -A -q --once --object-env-var OBJ``
(no command: every event completes in the parent), until ``--once`` resolves. Several
rounds; the minimum is the figure least disturbed by other load.

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

from fastobs.cli import parse_args  # noqa: E402
from fastobs.engine import Engine  # noqa: E402
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


async def main(n: int, rounds: int) -> None:
    pod = PodTemplate()
    lines = [b'{"type":"ADDED","object":' + pod.render(i, i + 1, f"ns-{i % 10}") + b"}" for i in range(n)]
    gc.freeze()  # as the daemon runs: what exists at start-up is never collected again
    gc.set_threshold(50_000, 20, 50)
    per_event = []
    for r in range(rounds):
        per_event.append(await one_round(lines) / n * 1e6)
        print(f"round {r + 1}: {per_event[-1]:.2f} µs/event", file=sys.stderr)
    print(f"{n} Pods ({len(lines[0])} bytes a line), {rounds} rounds: parent list path "
          f"min {min(per_event):.2f} µs/event, median {statistics.median(per_event):.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="Pods in the list (default 100000)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    asyncio.run(main(args.n, args.rounds))
