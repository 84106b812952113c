"""Engine: the parent's event path, from source callbacks to worker results.

Where it sits: in the parent; it is the ``source``'s sink and the ``pool``'s handler.
In: list items, watch events and list boundaries (from ``source``); DONE/BEGUN/OUTPUT
frames (from ``pool``). Out: events into the ``tracker`` → ``sharder`` queues → ``pool``;
lines to ``output``; figures to ``metrics``; the run's outcome to ``daemon``
(:attr:`outcome`, resolved once fastobs must stop).

In a group of replicas (``--lease-name``) an ``ownership`` is asked before the tracker
(events of buckets held elsewhere are dropped) and before the queues (states the bucket's
previous owner already ran are skipped), and is told which states ran.

Invariants: every event the tracker emits is counted once in ``observe_counts`` and is
either run or, when nothing needs to run (no command for its type and ``-q``), completed
on the spot; a key's result is applied before the key can be dispatched again; the
deletes a list finds run after every event of that list, in key order (oc's queue order);
with ``--maximum-errors``, no command starts that could make more failures than allowed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from . import spawn
from .errors import CommandLimitError, FastobsError, NamesError
from .events import Event, EventType, ObjectKey
from .fencing import FENCED
from .gocompat import go_process_state
from .metrics import EngineState, Metrics
from .output import Output
from .ownership import Ownership
from .pool import Pool
from .protocol import INVALID_OBJECT, Done
from .queue import KeyQueue
from .settings import Settings
from .sharder import Sharder
from .tracker import Tracker

logger = logging.getLogger(__name__)

Outcome = asyncio.Future[int]
"""Resolves to the exit code, or raises the FastobsError that stops fastobs."""


class Engine:
    """Glue between source, tracker, queues, pool, output and metrics."""

    def __init__(self, settings: Settings, *, workers: int, metrics: Metrics, output: Output,
                 ownership: Ownership | None = None) -> None:
        self.settings = settings
        self.ownership = ownership
        self.metrics = metrics
        self.output = output
        self.clock: Callable[[], float] = time.monotonic
        run = settings.run
        self.tracker = Tracker(
            emit=self._emit,
            tracking=settings.deletion_tracking,
            namespaced=run.namespaced,
            keep_object=bool(run.object_env_var) or run.object_channel != "env",
            clock=self.clock,
        )
        self.sharder = Sharder(
            shards=workers, coalesce=settings.coalesce, max_pending=settings.max_pending, clock=self.clock
        )
        self.pool = Pool(run=run, queues=self.sharder.queues, handler=self)
        self.pool.gate = ownership
        if settings.maximum_errors != -1:
            self.pool.start_gate = self._within_error_budget
        self.outcome: Outcome = asyncio.get_running_loop().create_future()
        self.errors = 0
        self.emitted = 0
        self.first_list_done = False
        self.initial_keys: set[ObjectKey] | None = set()
        """Keys of the first list not yet settled (--once waits for them to finish)."""
        self.undispatched: set[ObjectKey] | None = set()
        """Keys of the first list not yet handed to a worker (oc's 'initial sync done')."""
        self._resync_next = False
        self._names_task: asyncio.Task[None] | None = None
        self._listing = False
        self._listed: dict[ObjectKey, float] = {}
        """Keys whose list event (received at the time given) has not run yet; the list's
        deletes wait for them, and a malformed --names key's error for those deletes."""
        self._held: list[Event] = []
        self._held_error: FastobsError | None = None
        self._deferred_error: FastobsError | None = None
        self._coalesced_seen = 0
        self._retry_timers: dict[int, tuple[float, asyncio.TimerHandle]] = {}
        # Checked once: the event path must not pay for log calls nobody reads.
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self.watch_is_up = False
        self.exit_after_fired = False
        self.watch_activity: Callable[[], float] = lambda: 0.0
        self.role: Callable[[], str | None] = lambda: None
        """In a group of replicas (set by the daemon): the coordinator's role."""
        self.group_loop: Callable[[], bool] = lambda: True

    # ------------------------------------------------------------------ source sink

    def list_begin(self, *, relist: bool) -> None:
        # Deletes of a previous list still waiting go first (oc's queue is first in, first out).
        self._listed.clear()
        self._release_held()
        self._listing = True
        self.tracker.list_begin(resync=self._resync_next)
        self._resync_next = False
        if relist:
            self.metrics.relisted()

    def list_item(self, ev: Event) -> None:
        if self.ownership is not None and not self.ownership.admit(ev):
            return
        self.tracker.list_item(ev)

    def seed_item(self, ev: Event) -> None:
        """An object as it was where a replay began that the server could no longer serve:
        the tracker learns the objects of the buckets being caught up, so that the relist
        that follows finds which of them were deleted since."""
        if self.ownership is not None and self.ownership.seeds(ev):
            self.tracker.seed(ev)

    def list_end(self) -> None:
        if self.settings.names_command:
            # The names command runs before anything else is read from the API server
            # (the source awaits wait_capacity), as oc runs it inside the list.
            self._names_task = asyncio.create_task(self._list_end_with_names())
        else:
            self._finish_list(None)

    def watch_event(self, ev: Event) -> None:
        if self.ownership is not None and not self.ownership.admit(ev):
            return
        self.tracker.watch_event(ev)

    def watch_status(self, up: bool) -> None:
        self.watch_is_up = up

    async def wait_capacity(self) -> None:
        if self._names_task is not None:
            task, self._names_task = self._names_task, None
            await task
        await self.sharder.wait_capacity()

    def request_resync(self) -> None:
        """The next list is a resync: unchanged objects run again (oc's --resync-period)."""
        self._resync_next = True

    async def _list_end_with_names(self) -> None:
        try:
            keys = await self.run_names()
            self._finish_list(keys)
        except FastobsError as exc:
            self.fail(exc)

    def _finish_list(self, known: list[str] | None) -> None:
        own = self.ownership
        if own is not None and known is not None:
            known = [k for k in known if own.owns_key(k)]  # the other replicas own the rest
        deletes, error = self.tracker.list_end(known)
        self._listing = False
        self._held, self._held_error = deletes, error
        if not self.first_list_done:
            for ev in deletes:  # --once and readiness wait for them too
                if self.initial_keys is not None:
                    self.initial_keys.add(ev.key)
                if self.undispatched is not None:
                    self.undispatched.add(ev.key)
        if not self._listed or own is not None:
            # In a group a list's deletes are taken at once: each holds its bucket's watermark
            # back from where the stream was at this list (ownership.accept); taken later, the
            # watermark could pass them before they ran.
            self._release_held()
        if own is not None:
            own.list_ended()
        self.resumed()

    def resumed(self) -> None:
        """The initial state is known: a list ended, or the watch resumed where the group's
        watermarks say everything before was run."""
        if not self.first_list_done:
            self.first_list_done = True
            self._check_once()

    # ------------------------------------------------------------------ a list's deletes

    def _list_event_ran(self, ev: Event) -> None:
        """An event finished: once every event of the list has, its deletes may run."""
        received = self._listed.get(ev.key)
        if received is None or ev.received < received:
            return  # not a list event (an older one of the same key ran)
        del self._listed[ev.key]
        if self._listed or self._listing:
            return
        if self._held or self._held_error is not None:
            self._release_held()
        else:
            self._raise_deferred()

    def _release_held(self) -> None:
        """Run a list's deletes, in key order, after its own events, as oc queues them; a
        malformed --names key stops fastobs once the deletes before it have run."""
        held, self._held = self._held, []
        error, self._held_error = self._held_error, None
        if error is not None:
            self._deferred_error = error
            self._listed = {ev.key: ev.received for ev in held}
        for ev in held:
            self._emit(ev)
        self._raise_deferred()

    def _raise_deferred(self) -> None:
        if self._deferred_error is None or self._listed:
            return
        error, self._deferred_error = self._deferred_error, None
        # oc has already printed "Sync ended" for the delete that fails.
        self.output.marker(EventType.DELETED.value)
        self.fail(error)

    # ------------------------------------------------------------------ events into queues

    def _emit(self, ev: Event) -> None:
        if self.ownership is not None and not self.ownership.accept(ev):
            self.tracker.handled(ev, ok=True, arg=None)  # its bucket's previous owner ran it
            return
        self.emitted += 1
        self.metrics.event_received(ev.type.value)
        run = self.settings.run
        has_cmd = bool(run.delete_command if ev.type is EventType.DELETED else run.command)
        if not has_cmd and run.quiet:
            self._complete_on_the_spot(ev)
            return
        if self._listing:
            self._listed[ev.key] = ev.received
        if not self.first_list_done and self.initial_keys is not None:
            self.initial_keys.add(ev.key)
            if self.undispatched is not None:
                self.undispatched.add(ev.key)
        i = self.sharder.add(ev)
        coalesced = self.sharder.coalesced()
        if coalesced != self._coalesced_seen:
            self.metrics.events_coalesced(coalesced - self._coalesced_seen)
            self._coalesced_seen = coalesced
        self.pool.pump(i)

    def _complete_on_the_spot(self, ev: Event) -> None:
        """Nothing would be printed or run: the event is done here, with no round trip to
        a worker. It settles at once, so the list bookkeeping that waits for a queued event
        (the list's deletes, ``--once``, readiness) never has to hold its key; only a key
        with an earlier event still queued or running (a delete with a command, say) is
        held, as that event is. This is the whole per-event path of ``-q`` without a
        command, so it stays short."""
        self.tracker.handled(ev, ok=True, arg=None)
        key = ev.key
        if not self._listing:
            self._list_event_ran(ev)  # a live event may be the last one a list's deletes wait for
        if self.undispatched:
            self.undispatched.discard(key)
        initial = self.initial_keys
        if initial is None:
            return
        if not self.first_list_done:
            if not self.sharder.queues[self.sharder.shard(key)].is_idle(key):
                initial.add(key)
        elif key in initial:
            self._key_settled(key)

    # ------------------------------------------------------------------ pool handler

    def on_dispatch(self, ev: Event) -> None:
        if self.undispatched:
            self.undispatched.discard(ev.key)

    def on_begun(self, ev: Event, t: float, header: str | None) -> None:
        """Stream mode only: the header goes out before the command's first line."""
        if header is not None:
            self.output.header(ev.type.value, t, header)

    def on_output(self, ev: Event, fd: int, data: bytes) -> None:
        self.output.line(ev.key, fd, data)

    def on_done(self, ev: Event, result: Done, out: bytes, err: bytes) -> None:
        i = self.sharder.shard(ev.key)
        queue = self.sharder.queues[i]
        queue.done(ev.key)
        self.sharder.released()
        reason = result.get("reason")
        if reason == INVALID_OBJECT:
            self._invalid_object(ev, result, queue)
            self._list_event_ran(ev)  # a list's deletes wait for this event too
            self._key_settled(ev.key)
            self.pool.pump(i)
            self.pool.pump_held()
            return
        if result.get("dropped"):  # a fenced command's output was cut too
            self.metrics.output_dropped(int(result.get("dropped", 0)))
        if reason == FENCED and self.ownership is not None:
            if not self._fenced(ev, result, out, err):
                self._list_event_ran(ev)
            self.pool.pump(i)
            self.pool.pump_held()
            return
        type_ = ev.type.value
        started = float(result["started"])
        self.output.command(type_, started, result["header"], out, err)
        ok = bool(result["ok"])
        self.tracker.handled(ev, ok=ok, arg=result.get("arg"))
        if not result.get("nocmd"):
            self.metrics.command_started(lag_seconds=max(0.0, started - ev.received))
            rx, spawned = result.get("rx"), result.get("spawned")
            if rx is not None and spawned is not None and ev.dispatched:
                self.metrics.command_stages(
                    queue=ev.dispatched - ev.received, handoff=rx - ev.dispatched, spawn=spawned - rx
                )
            self._record(ev, type_, started, result)
        if self._debug:
            logger.debug("command %s", "succeeded" if ok else "failed", extra=_fields(ev, result))
        if ok:
            queue.forget(ev.key)
            if self.ownership is not None:
                self.ownership.ran(ev)
        else:
            self._failed(ev, result, i)
        self._list_event_ran(ev)  # first: a --names error waiting for this key beats --once
        self._key_settled(ev.key)
        self.pool.pump(i)
        self.pool.pump_held()

    def _invalid_object(self, ev: Event, result: Done, queue: KeyQueue) -> None:
        """The object could not be decoded for the command: one failed event for this key,
        logged and counted. Never retried (the same bytes fail the same way) nor counted
        against --maximum-errors (else whoever may create such objects could stop fastobs);
        the key's next change, or a relist, runs it normally."""
        self.tracker.handled(ev, ok=False, arg=None)
        queue.forget(ev.key)
        if self.ownership is not None:
            self.ownership.ran(ev)  # never retried: it must not hold its bucket's watermark back
        self.metrics.invalid_object("command")
        logger.warning("%s event of %s failed: %s", ev.type.value, ev.key, result.get("error", ""),
                       extra=_fields(ev, result))

    def _fenced(self, ev: Event, result: Done, out: bytes, err: bytes) -> bool:
        """The command was stopped (or never started) because this replica lost the Lease or
        hands the object's bucket over: not a failure; it runs again (True) if the bucket
        stays here."""
        assert self.ownership is not None
        if result.get("attempts"):
            self.output.command(ev.type.value, float(result["started"]), result["header"], out, err)
        again = self.ownership.stopped(ev)
        if again:
            self.sharder.queues[self.sharder.shard(ev.key)].requeue(ev)
        what = "stopped" if result.get("attempts") else "not started"
        logger.info("command for %s %s by fencing%s", ev.key, what,
                    "; it runs again once the Lease is renewed" if again else "", extra=_fields(ev, result))
        return again

    def on_dropped(self, ev: Event) -> None:
        """The pool dropped an event of a bucket being handed over (its next owner runs it)."""
        self.sharder.released()

    def queued(self, match: Callable[[Event], bool]) -> int:
        return sum(queue.count(match) for queue in self.sharder.queues)

    def purge(self, events: Callable[[Event], bool], records: Callable[[ObjectKey, str], bool]) -> None:
        """Forget queued events and tracker records of objects another replica looks after now."""
        for queue in self.sharder.queues:
            queue.discard(events)
        self.tracker.forget(records)
        self.sharder.released()

    def on_fatal(self, exc: BaseException, ev: Event | None = None) -> None:
        if ev is not None:
            # The event whose template failed: oc prints its Sync marker before the error.
            self.output.marker(ev.type.value)
        self.fail(exc)

    def on_restart(self, index: int) -> None:
        self.metrics.worker_restarted(index)

    def on_hung(self, index: int) -> None:
        self.metrics.worker_hung(index)

    def _record(self, ev: Event, type_: str, started: float, result: Done) -> None:
        now = self.clock()
        retries = result.get("retries")
        if retries:
            for _ in range(int(retries)):
                self.metrics.retried("immediate")
        self.metrics.command_finished(
            type_=type_,
            lag_seconds=max(0.0, now - ev.received),
            duration_seconds=float(result["ended"]) - started,
            result="success" if result["ok"] else "failure",
            reason=str(result.get("reason", "")),
            code=str(result.get("code", "")),
            attempts=result.get("attempts", ()),  # converted where they are summed
        )

    def _failed(self, ev: Event, result: Done, shard: int) -> None:
        self.output.error(str(result.get("error", "command failed")), _fields(ev, result))
        s = self.settings
        queue = self.sharder.queues[shard]
        if s.backoff_base > 0 and queue.attempts(ev.key) < s.backoff_attempts:
            delay = min(s.backoff_cap, s.backoff_base * 2 ** queue.attempts(ev.key))
            delay *= random.uniform(0.8, 1.2)  # jitter: failing keys must not retry in lockstep
            if queue.retry_later(ev, delay):
                self.metrics.retried("backoff")
                self._arm_retry_timer(shard)
            return
        queue.forget(ev.key)
        self.errors += 1
        limit = s.maximum_errors
        if limit != -1 and self.errors >= limit:
            self.fail(CommandLimitError(f"reached maximum error limit of {limit}, exiting"))

    def _within_error_budget(self, in_flight: int) -> bool:
        """Whether one more command may start: oc runs one command at a time and stops at the
        failure that reaches ``--maximum-errors``, so it never runs more failing commands
        than that. Parallel commands keep that promise by starting only while the failures
        still allowed outnumber the commands in flight (any of which may fail)."""
        allowed = max(self.settings.maximum_errors, 1)  # oc: a limit of 0 stops at the 1st failure
        return allowed - self.errors > in_flight

    def _arm_retry_timer(self, shard: int) -> None:
        """Wake the shard's dispatch when its earliest delayed retry is due."""
        due = self.sharder.queues[shard].next_timer()
        if due is None:
            return
        armed = self._retry_timers.get(shard)
        if armed is not None:
            if armed[0] <= due:
                return
            armed[1].cancel()
        loop = asyncio.get_running_loop()
        # The loop's clock and the queue's may differ by a hair: never fire before ``due``.
        delay = max(0.0, due - self.clock()) + 0.002
        self._retry_timers[shard] = (due, loop.call_later(delay, self._retry_due, shard))

    def _retry_due(self, shard: int) -> None:
        self._retry_timers.pop(shard, None)
        self.pool.pump(shard)
        self._arm_retry_timer(shard)

    # ------------------------------------------------------------------ --once and outcome

    def _key_settled(self, key: ObjectKey) -> None:
        if self.initial_keys and key in self.initial_keys:
            if self.sharder.queues[self.sharder.shard(key)].is_idle(key):
                self.initial_keys.discard(key)
                self._check_once()

    def initial_sync_done(self) -> bool:
        """oc's readiness: every key of the first list (and the deletes found then) has been
        handed to a command; a command may still be running."""
        return self.first_list_done and not self.undispatched

    def _check_once(self) -> None:
        if not self.first_list_done or self.initial_keys or self._deferred_error is not None:
            return
        self.initial_keys = None  # from now on, nothing is tracked for --once
        if self.settings.once and not self.outcome.done():
            if self.emitted == 0:
                self.output.notice("Nothing to sync, exiting immediately")
            self.finish(0)

    def fail(self, exc: BaseException) -> None:
        self.pool.stopping = True  # nothing new is dispatched once the outcome is known
        if not self.outcome.done():
            self.outcome.set_exception(exc)

    def finish(self, code: int) -> None:
        self.pool.stopping = True
        if not self.outcome.done():
            self.outcome.set_result(code)

    # ------------------------------------------------------------------ --names

    async def run_names(self) -> list[str]:
        """Run the --names command (oc's retry rule); returns its sorted non-empty lines."""
        s = self.settings
        argv = list(s.names_command)
        attempt = 0
        while True:
            t0 = self.clock()
            try:
                code, out, err = await spawn.run_capture(argv)
            except OSError as exc:
                self.metrics.names_executed(exit_code=-1, seconds=self.clock() - t0)
                raise NamesError(f"unable to list known keys: {spawn.exec_error(argv[0], exc)}") from exc
            oc_code = code if code >= 0 else -1
            self.metrics.names_executed(exit_code=oc_code, seconds=self.clock() - t0)
            if code == 0:
                break
            run = s.run
            if run.retry_on_exit_code and oc_code == run.retry_on_exit_code and attempt < run.retry_count:
                attempt += 1
                logger.debug("retrying command: %s", go_process_state(code))  # oc's klog.V(4) line
                continue
            detail = go_process_state(code)
            if err:
                detail += "\n" + err.decode("utf-8", "replace").rstrip("\n")
            raise NamesError(f"unable to list known keys: {detail}")
        lines = [line for line in out.split(b"\n") if line]
        return sorted(line.decode("utf-8", "surrogateescape") for line in lines)

    # ------------------------------------------------------------------ metrics state

    def engine_state(self) -> EngineState:
        now = self.clock()
        depth: dict[int, int] = {}
        oldest: dict[int, float] = {}
        running: dict[int, int] = {}
        longest: dict[int, float] = {}
        for i, q in enumerate(self.sharder.queues):
            st = q.statistics()
            depth[i] = st.depth
            oldest[i] = st.oldest_pending_seconds
            w = self.pool.workers[i]
            running[i] = w.running
            longest[i] = now - w.oldest_start if w.running else 0.0
        return EngineState(
            queue_depth=depth,
            oldest_pending_seconds=oldest,
            running=running,
            longest_running_seconds=longest,
            concurrency_limit=len(self.pool.workers) * self.settings.run.concurrency,
            tracked_objects=len(self.tracker.records),
            initial_sync_done=self.initial_sync_done(),
            watch_up=self.watch_is_up,
            watch_last_activity=self.watch_activity(),
            workers_alive=self.pool.alive(),
            workers_total=len(self.pool.workers),
        )

    # health provider
    def watch_up(self) -> bool:
        return self.watch_is_up

    def workers_healthy(self) -> bool:
        return self.pool.healthy()

    def group_role(self) -> str | None:
        return self.role()

    def group_healthy(self) -> bool:
        return self.group_loop()


def _fields(ev: Event, result: Done) -> dict[str, Any]:
    """Log fields of one command's result: never the object itself (it may be a Secret)."""
    return {
        "key": ev.key,
        "type": ev.type.value,
        "rv": ev.rv or None,
        "result": "success" if result.get("ok") else "failure",
        "reason": result.get("reason") or None,
        "code": result.get("code") or None,
    }

