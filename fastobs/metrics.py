"""Metrics: every Prometheus series fastobs exposes, and their text exposition.

Where it sits: in the parent process, beside the pipeline. The stages call the hot-path
methods of :class:`Metrics` (one call per event, per command, per API request); workers'
figures arrive over their pipe and reach the same methods through the pool. At scrape
time one custom collector asks the engine for an :class:`EngineState` and turns it into
gauges. ``http`` serves :meth:`Metrics.exposition` on ``/metrics``; ``cli`` prints it
for ``--print-metrics-on-exit``.

In: calls from the engine, an :class:`EngineState` per scrape. Out: Prometheus text
format 0.0.4, written the way Go's client writes it (``observe_counts{type="Sync"} 2``),
so ``oc observe``'s series read exactly as before.

Invariants: this is the only module that imports ``prometheus_client``; every hot-path
call is O(1) (labelled children are cached); a scrape costs the same with 10 or 100k
tracked objects, because the engine hands over per-worker aggregates, never per-key data.
"""

from __future__ import annotations

import bisect
import logging
import math
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

import fastobs
from fastobs.gocompat import go_format_float

__all__ = [
    "API_ERROR_KINDS",
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "EVENT_TYPES",
    "FAILURE_REASONS",
    "LAG_BUCKETS",
    "EngineState",
    "Metrics",
    "StateProvider",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What ``/metrics`` answers with: the classic Prometheus text format, as Go's client."""

EVENT_TYPES = ("Sync", "Added", "Updated", "Deleted")
RESULTS = ("success", "failure")
FAILURE_REASONS = ("exit", "timeout", "signal", "spawn_error", "shutdown", "internal")
RETRY_KINDS = ("immediate", "backoff")
API_OPS = ("list", "watch")
INVALID_OBJECT_STAGES = ("source", "command")
API_ERROR_KINDS = (
    "expired", "forbidden", "unauthorized", "not_found", "connection", "timeout", "server", "other",
)

LAG_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
"""Event-to-command lag: 1 ms (an idle fastobs) to 10 min (a deep backlog)."""
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005) + LAG_BUCKETS
"""One stage of the start lag: from 100 us (a hand-off on an idle machine) up."""
DURATION_BUCKETS = LAG_BUCKETS + (1800.0, 3600.0)
"""Command run time: commands may legitimately run for an hour."""

# oc observe's HELP texts, verbatim: dashboards built for oc match on them.
_OC_COUNTS_HELP = "Number of changes observed to the underlying resource."
_OC_EXEC_HELP = "Item execution latency distributions."
_OC_NAMES_HELP = "Name list execution latency distributions."


@dataclass(slots=True)
class EngineState:
    """The engine's figures at scrape time: aggregates only, never per-key data."""

    queue_depth: dict[int, int]
    """Per worker index: keys waiting to be dispatched (not in flight)."""
    oldest_pending_seconds: dict[int, float]
    """Per worker index: age of the oldest waiting key; 0 when none waits."""
    running: dict[int, int]
    """Per worker index: commands running now."""
    longest_running_seconds: dict[int, float]
    """Per worker index: age of the oldest running command; 0 when none runs."""
    concurrency_limit: int
    """Commands that may run at once in total (workers x concurrency)."""
    tracked_objects: int
    """Objects the tracker knows (keys with a resourceVersion)."""
    initial_sync_done: bool
    """Every key of the first list, and the deletions found then, has been dequeued."""
    watch_up: bool
    """A watch stream is open (lists, relists and reconnect back-offs count as down)."""
    watch_last_activity: float
    """``time.monotonic()`` of the last watch byte, event or bookmark; 0 = never."""
    workers_alive: int
    workers_total: int


@dataclass(slots=True)
class GroupState:
    """A replica group member's figures at scrape time (``coordinator``, ``ownership``)."""

    buckets: int
    held: dict[str, int]
    """Buckets held, by state: owned, draining, suspended."""
    members: int
    """Live members in this replica's view, itself included."""
    lease_valid_seconds: float
    """Time left before this replica's Lease must be renewed (negative: it is not valid)."""
    transitions: dict[str, int]
    """Ownership changes by reason: acquire, takeover, release, resume, lost, fenced."""
    renew_errors: int
    events: dict[str, int]
    """Events received, by fate: owned, foreign (another replica's bucket), replayed (a
    duplicate of a replay), below_watermark (already run by the bucket's previous owner)."""
    fenced_commands: int
    history_expired: int
    watermark_age_seconds: float
    """Age of the oldest event holding a held bucket's watermark back; 0 when none does."""
    server_filter: bool


class GroupProvider(Protocol):
    def group_state(self) -> GroupState: ...


class StateProvider(Protocol):
    """What the engine implements so that gauges are read at scrape time."""

    def engine_state(self) -> EngineState: ...


_Child = TypeVar("_Child")
_K = TypeVar("_K")


class Metrics:
    """All of fastobs's series, on one registry owned by the parent process.

    >>> m = Metrics()
    >>> m.event_received("Sync")
    >>> b'observe_counts{type="Sync"} 1' in m.exposition()
    True
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        oc_metrics: bool = True,
        version: str = fastobs.__version__,
    ) -> None:
        # A fresh registry by default: tests build many Metrics, and the global default
        # registry would refuse the second one's names.
        self.registry = registry if registry is not None else CollectorRegistry()
        self._oc = oc_metrics
        self._provider: StateProvider | None = None
        self._started = time.monotonic()
        # oc's series live in plain dicts: Go's text rendering (no _total, no _created,
        # integer values) comes from the _OcCollector, and an unused series stays absent.
        self._oc_counts: dict[str, int] = {}
        self._oc_exec: dict[tuple[str, str], list[int]] = {}
        self._oc_names: dict[str, list[int]] = {}
        self._restarts: dict[int, int] = {}
        self._hangs: dict[int, int] = {}
        self._define(self.registry)
        self._preinitialise()
        self.registry.register(_EngineCollector(self))
        self._group: GroupProvider | None = None
        self.registry.register(_GroupCollector(self))
        if oc_metrics:
            self.registry.register(_OcCollector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._build_info.labels(python_version=platform.python_version(), version=version).set(1)

    def _define(self, r: CollectorRegistry) -> None:
        # Label names are declared in sorted order: the exposition lists them so, as Go's.
        self._events_total = Counter(
            "fastobs_events", "Watch and list events that passed the filter, by type.", ["type"], registry=r)
        self._coalesced_total = Counter(
            "fastobs_events_coalesced",
            "Pending events replaced by a newer event of the same object before they ran.", registry=r)
        self._start_lag = LoopHistogram(
            "fastobs_command_start_lag_seconds",
            "Time from receiving the first change a command sees (the oldest one it coalesces) "
            "to starting the command.", buckets=LAG_BUCKETS, registry=r).labels()
        self._stage = LoopHistogram(
            "fastobs_command_start_stage_seconds",
            "Where the start lag goes: queue (receipt to dispatch), handoff (dispatch to the "
            "worker reading the job), spawn (the worker reading it to the command's exec).",
            ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self._end_lag = LoopHistogram(
            "fastobs_command_end_lag_seconds",
            "Time from receiving the first change a command sees to the end of the command "
            "(all attempts).",
            buckets=LAG_BUCKETS, registry=r).labels()
        self._duration = LoopHistogram(
            "fastobs_command_duration_seconds", "Run time of a command, all attempts, by result.",
            ["result"], buckets=DURATION_BUCKETS, registry=r)
        self._commands_total = Counter(
            "fastobs_commands", "Commands that ended, by result and event type.", ["result", "type"],
            registry=r)
        self._failures_total = Counter(
            "fastobs_command_failures", "Commands that failed, by reason and code.", ["code", "reason"],
            registry=r)
        self._retries_total = Counter(
            "fastobs_workqueue_retries", "Retries: immediate (--retry-on-exit-code) or backoff (requeue).",
            ["kind"], registry=r)
        self._api_requests_total = Counter(
            "fastobs_api_requests", "List and watch requests sent to the API server.", ["op"], registry=r)
        self._api_errors_total = Counter(
            "fastobs_api_errors", "Failed list and watch requests, by kind of failure.", ["kind", "op"],
            registry=r)
        self._relists_total = Counter(
            "fastobs_relists", "Full relists after the first list (expired resourceVersion, errors).",
            registry=r)
        self._invalid_objects_total = Counter(
            "fastobs_invalid_objects",
            "Objects that could not be decoded: by the source (passed on by key) or for a command "
            "(that event failed).", ["stage"], registry=r)
        self._output_truncated_total = Counter(
            "fastobs_command_output_truncated",
            "Commands whose output went over --output-limit: the rest was dropped, and a line says so.",
            registry=r)
        self._output_dropped_total = Counter(
            "fastobs_command_output_dropped_bytes", "Bytes of command output dropped over --output-limit.",
            registry=r)
        self._build_info = Gauge(
            "fastobs_build_info", "Always 1; the labels name the fastobs and Python versions.",
            ["python_version", "version"], registry=r)

    def _preinitialise(self) -> None:
        # Series an alert divides by or takes increase() of must exist at 0 from the start,
        # or the first failure after a restart is invisible to rate().
        self._events = {t: self._events_total.labels(type=t) for t in EVENT_TYPES}
        self._stages = tuple(self._stage.labels(stage=s) for s in ("queue", "handoff", "spawn"))
        self._durations = {res: self._duration.labels(result=res) for res in RESULTS}
        self._commands = {(res, t): self._commands_total.labels(result=res, type=t)
                          for res in RESULTS for t in EVENT_TYPES}
        self._failures: dict[tuple[str, str], Counter] = {}
        self._retries = {k: self._retries_total.labels(kind=k) for k in RETRY_KINDS}
        self._api_requests = {op: self._api_requests_total.labels(op=op) for op in API_OPS}
        self._api_errors = {(op, k): self._api_errors_total.labels(kind=k, op=op)
                            for op in API_OPS for k in API_ERROR_KINDS}
        self._invalid_objects = {st: self._invalid_objects_total.labels(stage=st)
                                 for st in INVALID_OBJECT_STAGES}

    def set_group_provider(self, provider: GroupProvider) -> None:
        """In a group of replicas: read the group's series from ``provider`` at every scrape."""
        self._group = provider
        self._handover = LoopHistogram(
            "fastobs_group_handover_seconds",
            "Time to hand a bucket over: start of its drain to its release.",
            buckets=LAG_BUCKETS, registry=self.registry).labels()
        self._fencing = LoopHistogram(
            "fastobs_group_fencing_seconds",
            "Time from a lost Lease (or a drain out of time) to the end of the last stopped command.",
            buckets=LAG_BUCKETS, registry=self.registry).labels()

    def group_handover(self, seconds: float) -> None:
        self._handover.observe(seconds)

    def group_fencing(self, seconds: float) -> None:
        self._fencing.observe(seconds)

    def set_state_provider(self, provider: StateProvider) -> None:
        """Read gauges from ``provider.engine_state()`` at every scrape."""
        self._provider = provider

    # -- hot path: one call per event / command / request; each O(1) -------------------

    def event_received(self, type_: str) -> None:
        """Count one event that passed the filter (oc: before rendering, command or not)."""
        child = self._events.get(type_)  # no closure per call, as _cached would need
        if child is None:
            child = self._events[type_] = self._events_total.labels(type=type_)
        child.inc()
        if self._oc:
            self._oc_counts[type_] = self._oc_counts.get(type_, 0) + 1

    def events_coalesced(self, n: int = 1) -> None:
        self._coalesced_total.inc(n)

    def command_started(self, *, lag_seconds: float) -> None:
        """Observe the time from the receipt of the first change the command sees to its start."""
        self._start_lag.observe(lag_seconds)

    def command_stages(self, *, queue: float, handoff: float, spawn: float) -> None:
        """Observe the three stages of one command's start lag (seconds; never negative)."""
        q, h, s = self._stages
        q.observe(max(0.0, queue))
        h.observe(max(0.0, handoff))
        s.observe(max(0.0, spawn))

    def command_finished(
        self,
        *,
        type_: str,
        lag_seconds: float,
        duration_seconds: float,
        result: str,
        reason: str,
        code: str,
        attempts: Sequence[tuple[int, float]],
    ) -> None:
        """Record one finished command; ``attempts`` holds (exit code, seconds) per attempt."""
        self._end_lag.observe(lag_seconds)
        # Plain lookups first: a closure for _cached per call would cost the completion path.
        duration = self._durations.get(result)
        if duration is None:
            duration = self._durations[result] = self._duration.labels(result=result)
        duration.observe(duration_seconds)
        commands = self._commands.get((result, type_))
        if commands is None:
            commands = self._commands_total.labels(result=result, type=type_)
            self._commands[(result, type_)] = commands
        commands.inc()
        if result != "success":
            fkey = (reason, code)
            _cached(self._failures, fkey,
                    lambda: self._failures_total.labels(code=code, reason=reason)).inc()
        if self._oc:
            for exit_code, seconds in attempts:
                # oc: wall-clock milliseconds truncated to an integer, -1 for signals and spawn errors.
                # int() first: the codes come from JSON, where a float code would print "3.0".
                entry = self._oc_exec.setdefault((str(int(exit_code)), type_), [0, 0])
                entry[0] += 1
                entry[1] += int(float(seconds) * 1000)

    def names_executed(self, *, exit_code: int, seconds: float) -> None:
        """Record one attempt of the ``--names`` command (oc's name summary)."""
        if self._oc:
            entry = self._oc_names.setdefault(str(exit_code), [0, 0])
            entry[0] += 1
            entry[1] += int(seconds * 1000)

    def retried(self, kind: str) -> None:
        """Count a retry: ``immediate`` (--retry-on-exit-code) or ``backoff`` (requeued)."""
        _cached(self._retries, kind, lambda: self._retries_total.labels(kind=kind)).inc()

    def worker_restarted(self, worker: int) -> None:
        self._restarts[worker] = self._restarts.get(worker, 0) + 1

    def worker_hung(self, worker: int) -> None:
        """Count a worker killed because its heartbeat stopped (its restart counts apart)."""
        self._hangs[worker] = self._hangs.get(worker, 0) + 1

    def output_dropped(self, n: int) -> None:
        """Count one command whose output was cut at --output-limit, ``n`` bytes dropped."""
        self._output_truncated_total.inc()
        self._output_dropped_total.inc(n)

    def api_request(self, op: str) -> None:
        _cached(self._api_requests, op, lambda: self._api_requests_total.labels(op=op)).inc()

    def api_error(self, op: str, kind: str) -> None:
        key = (op, kind)
        _cached(self._api_errors, key, lambda: self._api_errors_total.labels(kind=kind, op=op)).inc()

    def relisted(self) -> None:
        self._relists_total.inc()

    def invalid_object(self, stage: str) -> None:
        """Count an object that could not be decoded: ``source`` or ``command``."""
        self._invalid_objects[stage].inc()

    # -- scrape -----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in Prometheus text format 0.0.4, rendered as Go's client renders it."""
        return render(self.registry)

    def _engine_state(self) -> EngineState | None:
        if self._provider is None:
            return None
        try:
            return self._provider.engine_state()
        except Exception:
            # A broken provider must not take /metrics down with it: the counters still tell a lot.
            log.exception("reading the engine state for /metrics failed")
            return None


class LoopHistogram:
    """A Prometheus histogram observed only on the event loop: what ``prometheus_client``'s
    ``Histogram`` exposes, for a fraction of its cost per observation.

    Each command's end feeds six histogram observations; ``Histogram.observe`` checks its
    state, takes a lock twice and walks the bucket bounds in Python, which made metrics the
    largest part of the parent's completion path. Here an observation is one ``bisect``
    and two additions on plain numbers. Every caller is on the parent's event loop (the
    scrape too), so no lock is needed. The exposition is the same family, buckets, count
    and sum, in the same order (the ``_created`` series, which ``render`` drops, is left out).
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        bounds = [float(b) for b in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        self._le = tuple(floatToGoString(b) for b in bounds)  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, ...], LoopHistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str, **labels: str) -> LoopHistogramChild:
        """The child of these label values (created on first use, then kept)."""
        key = tuple(values) if values else tuple(str(labels[n]) for n in self.labelnames)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {key}")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = LoopHistogramChild(self._bounds)
        return child

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._children.items():
            cumulative, buckets = 0, []
            for le, n in zip(self._le, child.counts, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            family.add_metric(list(key), buckets, child.sum)
        return [family]


class LoopHistogramChild:
    """One labelled series of a :class:`LoopHistogram`."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        """Observations per bucket (not cumulative): the first bound each is ``<=``."""
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left finds the first bound >= value: the bucket Histogram.observe picks.
        self.counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value


def _cached(cache: dict[_K, _Child], key: _K, make: Callable[[], _Child]) -> _Child:
    # Labelled children are looked up once per label value, then reused from a plain dict.
    child = cache.get(key)
    if child is None:
        child = cache[key] = make()
    return child


class _EngineCollector:
    """Scrape-time gauges from the engine's :class:`EngineState`, and worker restarts."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        state = self._m._engine_state()
        yield self._per_worker_counter(
            "fastobs_worker_restarts", "Worker processes that died and were replaced.",
            self._m._restarts, state)
        yield self._per_worker_counter(
            "fastobs_worker_hangs",
            "Workers killed (then replaced) because they sent no heartbeat for 10 s.", self._m._hangs, state)
        if state is None:
            return
        yield _per_worker("fastobs_workqueue_depth",
                          "Keys waiting to be dispatched (not in flight), per worker.", state.queue_depth)
        yield _per_worker("fastobs_workqueue_oldest_pending_seconds",
                          "Age of the oldest key waiting to be dispatched, per worker.",
                          state.oldest_pending_seconds)
        yield _per_worker("fastobs_commands_running", "Commands running now, per worker.", state.running)
        yield _per_worker("fastobs_workqueue_longest_running_processor_seconds",
                          "Age of the oldest running command, per worker.", state.longest_running_seconds)
        yield _gauge("fastobs_concurrency_limit", "Commands that may run at once (workers x concurrency).",
                     state.concurrency_limit)
        yield _gauge("fastobs_tracked_objects", "Objects currently known from the list and watch.",
                     state.tracked_objects)
        yield _gauge("fastobs_initial_sync_done", "1 once every key of the first list has been dequeued.",
                     float(state.initial_sync_done))
        yield _gauge("fastobs_watch_up", "1 while a watch stream is open.",
                     float(state.watch_up))
        yield _gauge("fastobs_watch_silence_seconds",
                     "Seconds since the watch last delivered a byte, event or bookmark "
                     "(since start-up if it never did).", self._silence(state))
        yield _gauge("fastobs_workers_alive", "Worker processes running and connected.", state.workers_alive)
        yield _gauge("fastobs_workers_total", "Worker processes configured (--workers).", state.workers_total)

    def _silence(self, state: EngineState) -> float:
        last = state.watch_last_activity or self._m._started
        return max(0.0, time.monotonic() - last)

    @staticmethod
    def _per_worker_counter(
        name: str, help_: str, counts: dict[int, int], state: EngineState | None
    ) -> Metric:
        counts = dict(counts)
        # Every configured worker has a series from the start, so increase() sees its first event.
        for worker in range(state.workers_total if state is not None else 0):
            counts.setdefault(worker, 0)
        family = Metric(name, help_, "counter")
        for worker, n in sorted(counts.items()):
            family.add_sample(name + "_total", {"worker": str(worker)}, n)
        return family


class _GroupCollector:
    """The series of a member of a replica group (absent when fastobs runs alone)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        provider = self._m._group
        if provider is None:
            return
        try:
            st = provider.group_state()
        except Exception:
            log.exception("reading the group state for /metrics failed")
            return
        yield _gauge("fastobs_group_buckets", "Buckets the group's objects are spread over (--buckets).",
                     st.buckets)
        held = GaugeMetricFamily("fastobs_group_buckets_held", "Buckets this replica holds, by state.",
                                 labels=["state"])
        for state in ("owned", "draining", "suspended"):
            held.add_metric([state], st.held.get(state, 0))
        yield held
        yield _gauge("fastobs_group_members", "Live members of the group in this replica's view.", st.members)
        yield _gauge("fastobs_group_lease_valid_seconds",
                     "Time left before this replica must have renewed its Lease (negative: not valid).",
                     st.lease_valid_seconds)
        yield _gauge("fastobs_group_watermark_age_seconds",
                     "Age of the oldest event holding back the watermark of a bucket held here.",
                     st.watermark_age_seconds)
        yield _gauge("fastobs_group_server_filter",
                     "1 when the API server filters the buckets (shardSelector).", float(st.server_filter))
        yield _counter("fastobs_group_transitions", "Ownership changes, by reason.", "reason",
                       st.transitions, ("acquire", "takeover", "release", "resume", "lost", "fenced"))
        yield _counter("fastobs_group_events",
                       "Events received, by fate (owned, foreign, replayed, below_watermark).", "fate",
                       st.events, ("owned", "foreign", "replayed", "below_watermark"))
        for name, help_, value in (
            ("fastobs_group_lease_renew_errors", "Failed renewals of this replica's member Lease.",
             st.renew_errors),
            ("fastobs_group_fenced_commands", "Commands stopped or not started because of fencing or a "
             "drain out of time.", st.fenced_commands),
            ("fastobs_group_history_expired", "Replays from a watermark the API server no longer had, "
             "not even as a list as of then (deletes while nobody watched may be missed).",
             st.history_expired),
        ):
            family = Metric(name, help_, "counter")
            family.add_sample(name + "_total", {}, value)
            yield family


def _counter(name: str, help_: str, label: str, values: dict[str, int], always: Iterable[str]) -> Metric:
    family = Metric(name, help_, "counter")
    for key in sorted(set(values) | set(always)):
        family.add_sample(name + "_total", {label: key}, values.get(key, 0))
    return family


class _OcCollector:
    """``oc observe``'s three series, with its names, types and HELP texts."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        counts = Metric("observe_counts", _OC_COUNTS_HELP, "counter")
        for type_, n in sorted(self._m._oc_counts.items()):
            counts.add_sample("observe_counts", {"type": type_}, n)
        yield counts
        yield _summary("observe_exec_durations_milliseconds", _OC_EXEC_HELP,
                       [({"exit_code": c, "type": t}, v) for (c, t), v in sorted(self._m._oc_exec.items())])
        yield _summary("observe_name_exec_durations_milliseconds", _OC_NAMES_HELP,
                       [({"exit_code": c}, v) for c, v in sorted(self._m._oc_names.items())])


def _summary(name: str, help_: str, series: Iterable[tuple[dict[str, str], list[int]]]) -> Metric:
    family = Metric(name, help_, "summary")
    for labels, (count, total) in series:
        family.add_sample(name + "_sum", labels, total)
        family.add_sample(name + "_count", labels, count)
    return family


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_, value=value)


def _per_worker(name: str, help_: str, values: dict[int, int] | dict[int, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_, labels=["worker"])
    for worker, value in sorted(values.items()):
        family.add_metric([str(worker)], value)
    return family


# -- text exposition, as Go's client_golang writes it ----------------------------------

_LAST_LABELS = {"le": 1, "quantile": 1}


def render(registry: CollectorRegistry) -> bytes:
    """Render ``registry`` in text format 0.0.4.

    Unlike ``prometheus_client.generate_latest``: values print as Go prints them (``2``, not
    ``2.0``), OpenMetrics-only ``_created`` series are left out, and a family without
    samples prints nothing (as an unused Go vector).
    """
    out: list[str] = []
    for family in registry.collect():
        samples = [s for s in family.samples if s.name != family.name + "_created"]
        if not samples:
            continue
        name = family.name
        mtype = family.type
        if mtype == "counter" and samples[0].name == name + "_total":
            name += "_total"
        elif mtype == "unknown":
            mtype = "untyped"
        elif mtype == "info":
            name, mtype = name + "_info", "gauge"
        elif mtype == "stateset":
            mtype = "gauge"
        help_ = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {help_}\n# TYPE {name} {mtype}\n")
        for s in samples:
            out.append(f"{s.name}{_labels(s.labels)} {go_float(s.value)}\n")
    return "".join(out).encode()


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    pairs = sorted(labels.items(), key=lambda kv: (kv[0] in _LAST_LABELS, kv[0]))
    return "{" + ",".join(f'{k}="{_escape(_le(k, v))}"' for k, v in pairs) + "}"


def _le(key: str, value: str) -> str:
    # prometheus_client writes bucket bounds Python's way ("1.0"); Go writes "1".
    if key in _LAST_LABELS:
        try:
            return go_float(float(value))
        except ValueError:
            return value
    return value


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def go_float(value: float) -> str:
    """Format ``value`` as Go's client writes a sample or an ``le`` bound (expfmt's ``writeFloat``):
    ``strconv.FormatFloat(v, 'g', -1, 64)`` (``2``, ``0.5``, ``1e+06``), except that a negative
    zero is written ``0``."""
    return "0" if value == 0 else go_format_float(float(value))
