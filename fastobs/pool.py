"""Pool: the worker processes, and the dispatch of queued events to them.

Where it sits: in the parent, after the ``sharder``'s queues. In: events popped from
queue *i*. Out: RUN frames to worker *i*; the frames that come back (BEGUN, DONE,
OUTPUT, TICK, FATAL) are handed to a :class:`PoolHandler`.

Life cycle: ``start`` spawns every worker and waits for its HELLO; a worker that dies
(EOF on its socket) is reaped, replaced, and every event that was in flight there goes
back to the front of its key (``KeyQueue.requeue_processing``), so nothing is lost. A
worker that dies before its HELLO is restarted the same way (its keys wait in its queue).
A worker whose heartbeat stops for ``heartbeat_stale`` seconds (hung, stopped, its loop
blocked) is killed, and so becomes a dead worker like any other. Workers that die during
start-up again and again stop fastobs with ``WorkerBootError`` instead of a restart loop.
Each death is reported by how the worker ended and the last lines of its stderr, which is
relayed to ours line by line.
``stop`` asks workers to drain within a grace period; ``stop_now`` (a second signal) has
them kill their commands at once and report them. While the output cannot take more
(``hold_results``), the workers' frames are left unread in their sockets: a worker then
stops reading its commands' output (stream mode), which waits in their pipes; heartbeats
wait too, so a held worker is never taken for hung. With ``--object-channel=file`` each
worker gets a private directory for its object files, made here and removed here once the
worker is gone, however it went.

In a group of replicas a :class:`DispatchGate` (``ownership``) is asked before each job
leaves: nothing is sent while the replica's Lease is not valid (the events wait in their
queues), and an event of a bucket this replica is giving up is dropped. The Lease's deadline
goes to every worker (:meth:`Pool.set_deadline`), which enforces it on its own.

Invariants: worker *i* has at most ``concurrency`` jobs in flight, and no job is sent
while the :attr:`Pool.start_gate` says no, so a job handed to a worker starts at once
(what is waiting is always visible in the parent's queues); an event is in exactly one
place: a queue, a worker's in-flight table, or done; a dead worker's commands are killed
(they are re-parented to us, a child subreaper) before its keys run again, so one
object's commands never overlap, not even across a crash; the loop never blocks on a
worker: exits are awaited through pidfds, and a worker whose socket closed but which does
not exit is killed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import IO, Protocol

from . import protocol, spawn
from .errors import TemplateError, WorkerBootError
from .events import Event
from .queue import KeyQueue
from .settings import RunSettings

logger = logging.getLogger(__name__)

BOOT_TIMEOUT = 30.0
MAX_BOOT_FAILURES = 5
HEARTBEAT_STALE = 10.0
"""A worker silent for this long is reported unhealthy on /livez, then killed and replaced."""
EXIT_GRACE = 2.0
"""Seconds a worker whose socket closed gets to exit before it is killed."""
QUICK_DEATH = 10.0
"""A worker that dies within this many seconds of its HELLO is restarted after a back-off."""
STDERR_TAIL = 3
"""Lines of a worker's stderr quoted when it dies."""


WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "fastobs.worker")


def launch_worker(command: tuple[str, ...] = WORKER_COMMAND) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start one worker process connected to a new socketpair; returns it and our end.
    The worker boots (its imports) on its own and then waits for its CONFIG frame."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        popen = subprocess.Popen(
            [*command, str(child_sock.fileno())],
            pass_fds=(child_sock.fileno(),),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
    except OSError:
        parent_sock.close()
        raise
    finally:
        child_sock.close()
    return popen, parent_sock


def discard_workers(prestarted: list[tuple[subprocess.Popen[bytes], socket.socket]]) -> None:
    """Stop worker processes that were started but never used (start-up failed)."""
    for popen, sock in prestarted:
        sock.close()
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        popen.wait()
        if popen.stderr is not None:
            popen.stderr.close()
    prestarted.clear()


class DispatchGate(Protocol):
    def open(self) -> bool:
        """False while nothing may be dispatched at all (the replica's Lease is not valid)."""
        ...

    def admits(self, ev: Event) -> bool:
        """False for an event that must not run here (its bucket is being given up)."""
        ...

    def stamp(self, ev: Event) -> tuple[int, int]:
        """(bucket, epoch) of an admitted event, for the command's environment."""
        ...


class PoolHandler(Protocol):
    def on_dispatch(self, ev: Event) -> None: ...
    def on_begun(self, ev: Event, t: float, header: str | None) -> None: ...
    def on_done(self, ev: Event, result: protocol.Done, out: bytes, err: bytes) -> None: ...
    def on_output(self, ev: Event, fd: int, data: bytes) -> None: ...
    def on_fatal(self, exc: BaseException, ev: Event | None = None) -> None: ...
    def on_restart(self, index: int) -> None: ...
    def on_dropped(self, ev: Event) -> None: ...
    def on_hung(self, index: int) -> None: ...


class WorkerExited(ConnectionError):
    """A worker ended before it said HELLO; the message says how and what it printed last."""


class WorkerProc:
    """The parent's view of one worker process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.popen: subprocess.Popen[bytes] | None = None
        self.child: spawn.Child | None = None
        """The process, awaited through its pidfd (never a blocking wait on the loop)."""
        self.writer: asyncio.Transport | None = None
        self.ended: asyncio.Future[None] | None = None
        """Resolved when the worker's stream ended: every frame it sent has been handled."""
        self.generation = 0
        """Bumped at every spawn: a late EOF of a previous incarnation is ignored."""
        self.serving = -1
        """The generation that completed its start: only its end is a crash to restart from
        (an end before that fails the start, which retries)."""
        self.inflight: dict[int, Event] = {}
        self.ready = False
        self.ready_at = 0.0
        self.last_tick = 0.0
        self.spawned_at = time.monotonic()
        self.running = 0
        """Commands running, from the worker's last heartbeat."""
        self.oldest_start = 0.0
        """Monotonic start of the oldest running command, from the last heartbeat."""
        self.boot_failures = 0
        self.quick_deaths = 0
        self.restarts = 0
        self.hangs = 0
        self.object_dir = ""
        self.stderr_tail: collections.deque[bytes] = collections.deque(maxlen=STDERR_TAIL)
        """The last lines the worker wrote on its stderr (relayed to ours as they come)."""
        self.stderr_relay: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen else 0


class Pool:
    """Spawns, feeds, watches and restarts the workers."""

    def __init__(
        self,
        *,
        run: RunSettings,
        queues: list[KeyQueue],
        handler: PoolHandler,
    ) -> None:
        self.run_settings = run
        self.queues = queues
        self.handler = handler
        # Never more jobs in a worker than it has slots: a queued job stays in the parent,
        # where metrics and readiness can see it; an idle slot costs one round trip.
        self.capacity = run.concurrency
        self.workers = [WorkerProc(i) for i in range(len(queues))]
        self._ids = itertools.count(1)
        self._restarts: set[asyncio.Task[None]] = set()
        self._forking = asyncio.Lock()
        """Held while a worker is started, and while a dead worker's leftovers are killed (in
        a thread): a new worker is one of our children before it is known as a worker, and
        the sweep must not take it for a leftover."""
        self.adopts_orphans = False
        """Set once this process is a child subreaper whose only other children are
        orphans of dead workers (the daemon): then strays are killed and reaped. Off when
        the pool runs inside a process with children of its own (tests)."""
        self.stopping = False
        self.may_dispatch: Callable[[], bool] = lambda: True
        """False while results cannot be printed fast enough: queued events wait (daemon
        wires it to ``output``, which calls :meth:`pump_all` when there is room again)."""
        self.start_gate: Callable[[int], bool] | None = None
        """Asked before each start with the number of jobs in flight on all workers; False
        holds further starts back until a job ends (the engine's ``--maximum-errors``
        budget: never more failing commands than the limit allows)."""
        self._held = False
        self.worker_command: tuple[str, ...] = WORKER_COMMAND
        """How a worker starts (its socket's fd is appended); tests start other programs."""
        self.heartbeat_stale = HEARTBEAT_STALE
        self.prestarted: list[tuple[subprocess.Popen[bytes], socket.socket]] = []
        """Worker processes started before the pool (during discovery), each waiting for
        its CONFIG; the first spawns take them instead of starting new ones."""
        self._stop_frame = protocol.encode_stop(0)
        self._config = protocol.encode_config(run)
        self.gate: DispatchGate | None = None
        self._lease_frame = b""
        self._watchdog: asyncio.Task[None] | None = None
        self.holding = False
        """The output is full: the workers' frames are not read (see :meth:`hold_results`)."""

    # ------------------------------------------------------------------ life cycle

    def configure(self, run: RunSettings) -> None:
        """The settings the workers get in their CONFIG frame; only before :meth:`start`."""
        self.run_settings = run
        self._config = protocol.encode_config(run)

    async def start(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch_heartbeats())
        await asyncio.gather(*(self._spawn(w) for w in self.workers))

    async def _spawn(self, w: WorkerProc) -> None:
        """Start worker ``w`` and wait for its HELLO; retries with backoff on boot failures."""
        while not self.stopping:
            try:
                await self._spawn_once(w)
                w.boot_failures = 0
                self.pump(w.index)  # events may have queued while it booted
                return
            except (OSError, TimeoutError, WorkerExited, protocol.ProtocolError) as exc:
                w.boot_failures += 1
                why = _boot_failure(exc)
                if w.boot_failures >= MAX_BOOT_FAILURES:
                    raise WorkerBootError(
                        f"worker {w.index} failed to start {w.boot_failures} times in a row; "
                        f"last error: {why}"
                    ) from exc
                logger.warning("worker %d (pid %d) %s; restarting it (attempt %d of %d)",
                               w.index, w.pid, why, w.boot_failures + 1, MAX_BOOT_FAILURES)
                # A worker that died while booting is restarted too: count it, so a crash
                # loop at start-up shows in fastobs_worker_restarts_total.
                w.restarts += 1
                self.handler.on_restart(w.index)
                await asyncio.sleep(min(5.0, 0.2 * 2**w.boot_failures))

    async def _spawn_once(self, w: WorkerProc) -> None:
        w.spawned_at = time.monotonic()
        config = self._config
        if self.run_settings.object_channel == "file":
            from .runner import object_dir  # the parent makes it, so it can remove a dead worker's

            w.object_dir = object_dir(f"fastobs-{os.getpid()}-w{w.index}-")
            config = protocol.encode_config(replace(self.run_settings, object_dir=w.object_dir))
        try:
            async with self._forking:
                if self.prestarted:  # started during discovery, waiting for its CONFIG
                    w.popen, parent_sock = self.prestarted.pop()
                else:
                    w.popen, parent_sock = launch_worker(self.worker_command)
                w.child = spawn.Child(w.popen)  # tracked from now on: never swept as a leftover
        except OSError:
            self._remove_object_dir(w)
            raise
        w.stderr_tail.clear()
        assert w.popen.stderr is not None
        w.stderr_relay = asyncio.ensure_future(_relay_stderr(w.popen.stderr, w.stderr_tail))
        w.generation += 1
        generation = w.generation
        loop = asyncio.get_running_loop()
        first: asyncio.Future[tuple[bytes, bytes]] = loop.create_future()
        ended: asyncio.Future[None] = loop.create_future()
        w.ended = ended

        def on_frame(kind: bytes, payload: bytes) -> None:
            if not first.done():
                first.set_result((kind, payload))
                return
            try:
                self._on_frame(w, kind, payload)
            except Exception as exc:  # a bug in a handler must not silently drop results
                self.handler.on_fatal(exc)

        def on_eof() -> None:
            if not ended.done():
                ended.set_result(None)
            if not first.done():
                first.set_exception(WorkerExited())
            elif generation == w.generation == w.serving:
                restart = asyncio.ensure_future(self._worker_exited(w))
                self._restarts.add(restart)  # the loop keeps only a weak reference to a task
                restart.add_done_callback(self._restarts.discard)

        writer = await protocol.connect(parent_sock, on_frame, on_eof)
        if not writer.is_closing():  # it may be gone already (uvloop raises on a closed one)
            writer.write(config)
        try:
            kind, payload = await asyncio.wait_for(first, BOOT_TIMEOUT)
        except WorkerExited:
            status = await self._refuse(w, writer, grace=EXIT_GRACE)
            raise WorkerExited(await self._how_it_ended(w, status, "before it was ready")) from None
        except BaseException:
            await self._refuse(w, writer)
            raise
        if kind == protocol.FATAL:
            await self._refuse(w, writer)
            raise TemplateError(protocol.decode_fatal(payload)["message"])
        if kind != protocol.HELLO:
            await self._refuse(w, writer)
            raise protocol.ProtocolError(f"sent {kind!r} where HELLO was expected")
        version = protocol.decode_hello(payload).get("v")
        if version != protocol.VERSION:
            await self._refuse(w, writer)
            # Not retried: another start of the same program would say the same.
            raise WorkerBootError(
                f"worker {w.index} speaks protocol version {version}, this fastobs speaks version "
                f"{protocol.VERSION}: the worker ({' '.join(self.worker_command)}) comes from another "
                "fastobs installation"
            )
        if ended.done():  # it said HELLO and ended before we got here
            status = await self._refuse(w, writer, grace=EXIT_GRACE)
            raise WorkerExited(await self._how_it_ended(w, status, "right after it said it was ready"))
        w.writer = writer
        w.serving = generation
        if self._lease_frame:
            writer.write(self._lease_frame)
        if self.holding:
            writer.pause_reading()
        if self.stopping:
            writer.write(self._stop_frame)  # stop() ran while this worker was booting
        w.ready = True
        w.ready_at = w.last_tick = time.monotonic()

    async def _refuse(self, w: WorkerProc, writer: asyncio.Transport, grace: float = 0.0) -> int:
        """Drop a worker that failed its start: the caller decides whether to retry, so the
        end of its stream must not count as a crash to restart from. Returns its status."""
        w.generation += 1
        writer.close()
        status = await self._reap(w, grace)
        self._remove_object_dir(w)
        return status

    async def _reap(self, w: WorkerProc, grace: float) -> int:
        """The worker's exit status, awaited on the loop; SIGKILLed after ``grace`` seconds."""
        child = w.child
        if child is None:
            return 0
        try:
            return await asyncio.wait_for(child.wait(), grace) if grace > 0 else await _killed(child)
        except TimeoutError:
            return await _killed(child)

    async def _how_it_ended(self, w: WorkerProc, status: int, when: str = "") -> str:
        """How a worker ended (``exited with status 7``, ``was killed by SIGKILL``), when, and
        the last lines it wrote on its stderr."""
        if w.stderr_relay is not None:  # the rest of its stderr, up to its end
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(w.stderr_relay), 1.0)
        how = f"{spawn.describe_exit(status)} {when}".rstrip()
        lines = [line.decode("utf-8", "replace").strip() for line in w.stderr_tail]
        tail = " | ".join(line for line in lines if line)
        return f"{how}; its last output: {tail}" if tail else how

    def _remove_object_dir(self, w: WorkerProc) -> None:
        """Remove the worker's object files (they may hold a Secret) and their directory."""
        if w.object_dir:
            shutil.rmtree(w.object_dir, ignore_errors=True)
            w.object_dir = ""

    async def stop(self, grace: float) -> None:
        """Drain: workers finish (or, after ``grace``, kill and report) their commands and exit."""
        self.stopping = True
        self._stop_frame = protocol.encode_stop(grace)
        self._send_stop()
        deadline = grace + self.run_settings.kill_grace + 15.0
        await asyncio.gather(*(self._wait_exit(w, deadline) for w in self.workers))
        self._end()

    async def stop_now(self, limit: float = 3.0) -> None:
        """A second signal: workers kill their commands at once and report them; whatever is
        still there after ``limit`` seconds is killed."""
        self.stopping = True
        self._read_frames(True)  # the reports of the killed commands, however full the output
        self._stop_frame = protocol.encode_stop(0, now=True)
        self._send_stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(self._ended(w) for w in self.workers)), limit)
        self.kill()

    def _send_stop(self) -> None:
        for w in self.workers:
            if w.writer is not None and not w.writer.is_closing():
                w.writer.write(self._stop_frame)
            # A worker still booting gets its STOP right after HELLO (see _spawn_once).

    async def _ended(self, w: WorkerProc) -> None:
        """Until the worker's last frame was handled and its process reaped."""
        if w.ended is not None:
            await w.ended
        if w.child is not None:
            await w.child.wait()

    async def _wait_exit(self, w: WorkerProc, limit: float) -> None:
        try:
            await asyncio.wait_for(self._ended(w), limit)
        except TimeoutError:
            logger.warning("worker %d (pid %d) did not exit %.0f s after it was asked to stop; killing it",
                           w.index, w.pid, limit)
            if w.child is not None:
                await _killed(w.child)

    def kill(self) -> None:
        """Immediate stop (a second signal, or the end of the run): SIGKILL the workers, then
        every command or leftover they had, which we adopted as their subreaper."""
        self.stopping = True
        for w in self.workers:
            if w.child is not None:
                w.child.kill_now()
        if self.adopts_orphans:
            spawn.kill_strays(keep=set(), spare_tracked=False)
        self._end()

    def _end(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for w in self.workers:
            self._remove_object_dir(w)

    # ------------------------------------------------------------------ dispatch

    def pump(self, i: int) -> None:
        """Send worker ``i`` as many queued events as its in-flight budget allows."""
        q = self.queues[i]
        if not q.may_pop():  # nothing to send (checked first: the cheapest test, the most common case)
            return
        w = self.workers[i]
        writer = w.writer
        # A closing connection gets nothing: its end re-dispatches what it had.
        if not w.ready or self.stopping or writer is None or writer.is_closing() or not self.may_dispatch():
            return
        own = self.gate
        if own is not None and not own.open():
            return
        frames: list[bytes] = []
        now = time.monotonic()
        gate = self.start_gate
        # Counted once, then kept up here: nothing else starts or ends a job during this loop
        # (summing every worker's in-flight jobs per event would cost the event path).
        busy = self.in_flight() if gate is not None else 0
        while len(w.inflight) < self.capacity:
            if gate is not None and not gate(busy):
                self._held = True
                break
            ev = q.pop()
            if ev is None:
                break
            if own is not None and not own.admits(ev):
                q.done(ev.key)
                self.handler.on_dropped(ev)
                continue
            job_id = next(self._ids)
            w.inflight[job_id] = ev
            busy += 1
            ev.dispatched = now
            self.handler.on_dispatch(ev)
            job: protocol.Job = {
                "id": job_id,
                "type": ev.type.value,
                "ns": ev.namespace,
                "name": ev.name,
                "rv": ev.rv,
                "cached_arg": ev.cached_arg,
            }
            if own is not None:
                job["bucket"], job["epoch"] = own.stamp(ev)
            frames.append(protocol.encode_run(job, ev.obj or b""))
        if len(frames) == 1:  # one event at a time at low rates: no copy of its object to join
            writer.write(frames[0])
        elif frames:
            writer.write(b"".join(frames))

    def pump_all(self) -> None:
        for w in self.workers:
            self.pump(w.index)

    def hold_results(self) -> None:
        """The output is full: leave the workers' frames unread (in their sockets) until
        :meth:`release_results`. A worker whose socket is full stops reading its commands'
        output (stream mode), so a command that floods waits on its pipe: memory stays
        bounded however long stdout is stuck."""
        self.holding = True
        self._read_frames(False)

    def release_results(self) -> None:
        """The output has room again: read the workers' frames and dispatch."""
        self.holding = False
        self._read_frames(True)
        self.pump_all()

    def _read_frames(self, read: bool) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.writer is None or w.writer.is_closing() or w.writer.is_reading() == read:
                continue
            if read:
                w.writer.resume_reading()
                # Its heartbeats waited unread: the silence starts counting again now.
                w.last_tick = max(w.last_tick, now)
            else:
                w.writer.pause_reading()

    def in_flight(self, match: Callable[[Event], bool] | None = None) -> int:
        """Jobs sent to a worker and not yet done, on all workers (those ``match`` selects)."""
        if match is None:
            return sum(len(w.inflight) for w in self.workers)
        return sum(1 for w in self.workers for ev in w.inflight.values() if match(ev))

    def pump_held(self) -> None:
        """A job ended: retry the starts the gate held back, on every worker."""
        if self._held:
            self._held = False
            self.pump_all()

    # ------------------------------------------------------------------ fencing

    def set_deadline(self, until: float, grace: float) -> None:
        """Every worker (and every worker started later) stops commands at ``until``."""
        self._lease_frame = protocol.encode_lease(until, grace)
        for w in self.workers:
            if w.ready and w.writer is not None and not w.writer.is_closing():
                w.writer.write(self._lease_frame)

    def fence(self, match: Callable[[Event], bool], grace: float) -> int:
        """Stop the running commands of the in-flight events ``match`` selects (SIGTERM, then
        SIGKILL after ``grace``); returns how many jobs were told. Their results come back as
        usual, with the reason ``fenced``."""
        told = 0
        for w in self.workers:
            ids = [job_id for job_id, ev in w.inflight.items() if match(ev)]
            if ids and w.writer is not None and not w.writer.is_closing():
                w.writer.write(protocol.encode_kill(ids, grace))
                told += len(ids)
        return told

    # ------------------------------------------------------------------ frames from a worker

    def _on_frame(self, w: WorkerProc, kind: bytes, payload: bytes) -> None:
        if kind == protocol.DONE:
            done, out, err = protocol.decode_done(payload)
            ev = w.inflight.pop(done["id"])
            self.handler.on_done(ev, done, out, err)
        elif kind == protocol.BEGUN:
            data = protocol.decode_begun(payload)
            begun = w.inflight.get(data["id"])
            if begun is not None:
                self.handler.on_begun(begun, data["t"], data.get("header"))
        elif kind == protocol.OUTPUT:
            head, line = protocol.decode_output(payload)
            running = w.inflight.get(head["id"])
            if running is not None:
                self.handler.on_output(running, head["fd"], line)
        elif kind == protocol.TICK:
            tick = protocol.decode_tick(payload)
            w.last_tick = time.monotonic()
            w.running = tick["running"]
            w.oldest_start = tick.get("oldest", 0.0)
            if w.index == 0:
                self.reap_orphans()  # once a second is plenty for stray zombies
        elif kind == protocol.FATAL:
            fatal = protocol.decode_fatal(payload)
            failed = w.inflight.get(fatal["id"]) if "id" in fatal else None
            self.handler.on_fatal(TemplateError(fatal["message"]), failed)

    async def _worker_exited(self, w: WorkerProc) -> None:
        """A worker's stream ended: replace it. Whatever fails on the way stops fastobs with
        an error; it never leaves the worker's keys waiting for a worker that never comes."""
        try:
            await self._replace(w)
        except Exception as exc:
            self.handler.on_fatal(exc)

    async def _replace(self, w: WorkerProc) -> None:
        w.ready = False
        if w.writer is not None:
            w.writer.close()
            w.writer = None
        # Its stream ended; if the process lingers (its socket was closed on it), it goes now.
        status = await self._reap(w, EXIT_GRACE)
        if self.stopping:
            return
        # Its commands outlived it (they run in their own process groups) and were
        # re-parented to us: they must be gone before their keys run again.
        if self.adopts_orphans:
            async with self._forking:
                await asyncio.to_thread(spawn.kill_strays, {x.pid for x in self.workers if x is not w})
        self._remove_object_dir(w)
        lost = len(w.inflight)
        w.inflight.clear()
        w.running = 0
        keys = self.queues[w.index].requeue_processing()
        logger.warning(
            "worker %d (pid %d) %s; restarting it and re-dispatching %d keys (%d jobs)",
            w.index, w.pid, await self._how_it_ended(w, status), len(keys), lost,
        )
        w.restarts += 1
        self.handler.on_restart(w.index)
        # A worker that dies right after its start, again and again, is restarted ever more slowly.
        w.quick_deaths = w.quick_deaths + 1 if time.monotonic() - w.ready_at < QUICK_DEATH else 0
        if w.quick_deaths > 1:
            await asyncio.sleep(min(5.0, 0.2 * 2**w.quick_deaths))
        await self._spawn(w)

    def reap_orphans(self) -> None:
        """Reap exited processes re-parented to us (we are a child subreaper)."""
        workers = {w.pid for w in self.workers}
        if self.adopts_orphans:
            spawn.reap_strays(keep=workers)

    # ------------------------------------------------------------------ health

    async def _watch_heartbeats(self) -> None:
        """Kill a worker whose heartbeat stopped: its EOF then takes the crash path (its
        commands killed, its keys re-dispatched, a new worker started)."""
        period = 1.0
        last = time.monotonic()
        while not self.stopping:
            await asyncio.sleep(period)
            now = time.monotonic()
            # Our own loop was held up: the workers' heartbeats may be waiting unread.
            late = now - last > 2 * period
            last = now
            if late or self.stopping or self.holding:  # held: its heartbeats wait unread
                continue
            for w in self.workers:
                if w.ready and now - w.last_tick >= self.heartbeat_stale:
                    self._hung(w, now - w.last_tick)

    def _hung(self, w: WorkerProc, silent: float) -> None:
        logger.warning(
            "worker %d (pid %d) sent no heartbeat for %.0f s; killing it (its commands are killed and "
            "its keys re-dispatched)", w.index, w.pid, silent,
        )
        w.ready = False
        w.hangs += 1
        self.handler.on_hung(w.index)
        if w.child is not None:
            w.child.kill()

    def alive(self) -> int:
        return sum(1 for w in self.workers if w.ready)

    def healthy(self) -> bool:
        """False when a worker stopped answering: its heartbeat is stale, or it has been
        booting (or restarting) for longer than a boot may take."""
        if self.stopping:
            return True
        now = time.monotonic()
        for w in self.workers:
            if w.ready:
                if not self.holding and now - w.last_tick >= self.heartbeat_stale:
                    return False
            elif now - w.spawned_at >= BOOT_TIMEOUT + HEARTBEAT_STALE:
                return False
        return True


async def _killed(child: spawn.Child) -> int:
    child.kill()
    return await child.wait()


def _boot_failure(exc: BaseException) -> str:
    """Why a worker failed to start, in words (never Python's internals)."""
    if isinstance(exc, TimeoutError):
        return f"did not say it was ready within {BOOT_TIMEOUT:g} s"
    if isinstance(exc, OSError) and not isinstance(exc, WorkerExited):
        return f"could not be started: {os.strerror(exc.errno) if exc.errno else exc}"
    return str(exc)


async def _relay_stderr(pipe: IO[bytes], tail: collections.deque[bytes]) -> None:
    """Copy a worker's stderr to ours line by line (so lines of different workers never mix)
    and keep its last lines, until the worker closes it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line longer than the limit: pass on what came
                line = await reader.read(1 << 20)
            if not line:
                return
            tail.append(line)
            view = memoryview(line)
            with contextlib.suppress(OSError):
                while view:
                    view = view[os.write(2, view):]
    finally:
        transport.close()
