"""Pool: the worker processes, and the dispatch of queued events to them.

Where it sits: in the parent, after the ``sharder``'s queues. In: events popped from
queue *i*. Out: RUN frames to worker *i*; the frames that come back (BEGUN, DONE,
OUTPUT, TICK, FATAL) are handed to a :class:`PoolHandler`.

Life cycle: ``start`` spawns every worker and waits for its HELLO; a worker that dies
(EOF on its socket) is reaped, replaced, and every event that was in flight there goes
back to the front of its key (``KeyQueue.requeue_processing``), so nothing is lost.
Workers that die during start-up again and again stop fastobs with ``WorkerBootError``
instead of a restart loop; each failure names how the worker ended and the last lines of
its stderr, which is relayed to ours line by line. ``stop`` asks workers to drain within a
grace period.

In a group of replicas a :class:`DispatchGate` (``ownership``) is asked before each job
leaves: nothing is sent while the replica's Lease is not valid (the events wait in their
queues), and an event of a bucket this replica is giving up is dropped. The Lease's deadline
goes to every worker (:meth:`Pool.set_deadline`), which enforces it on its own.

Invariants: worker *i* has at most ``concurrency`` jobs in flight, so a job handed to a
worker starts at once (what is waiting is always visible in the parent's queues); an event
is in exactly one place: a queue, a worker's in-flight table, or done; a dead worker's
commands are killed (they are re-parented to us, a child subreaper) before its keys run
again, so one object's commands never overlap, not even across a crash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, Protocol

from . import protocol, spawn
from .errors import TemplateError, WorkerBootError
from .events import Event
from .queue import KeyQueue
from .settings import RunSettings

logger = logging.getLogger(__name__)

BOOT_TIMEOUT = 30.0
MAX_BOOT_FAILURES = 5
STDERR_TAIL = 3
"""Lines of a worker's stderr quoted when it dies while starting."""


class WorkerExited(ConnectionError):
    """A worker ended before it said HELLO; the message says how and what it printed last."""
HEARTBEAT_STALE = 10.0
"""A worker silent for this long is reported unhealthy on /livez."""


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
    def on_fatal(self, exc: BaseException) -> None: ...
    def on_restart(self, index: int) -> None: ...
    def on_dropped(self, ev: Event) -> None: ...


class WorkerProc:
    """The parent's view of one worker process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.popen: subprocess.Popen[bytes] | None = None
        self.writer: asyncio.Transport | None = None
        self.generation = 0
        """Bumped at every spawn: a late EOF of a previous incarnation is ignored."""
        self.inflight: dict[int, Event] = {}
        self.ready = False
        self.last_tick = 0.0
        self.spawned_at = time.monotonic()
        self.running = 0
        """Commands running, from the worker's last heartbeat."""
        self.oldest_start = 0.0
        """Monotonic start of the oldest running command, from the last heartbeat."""
        self.boot_failures = 0
        self.restarts = 0
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
        self.adopts_orphans = False
        """Set once this process is a child subreaper whose only other children are
        orphans of dead workers (the daemon): then strays are killed and reaped. Off when
        the pool runs inside a process with children of its own (tests)."""
        self.stopping = False
        self.may_dispatch: Callable[[], bool] = lambda: True
        """False while results cannot be printed fast enough: queued events wait (daemon
        wires it to ``output``, which calls :meth:`pump_all` when there is room again)."""
        self.worker_command: tuple[str, ...] = (sys.executable, "-m", "fastobs.worker")
        """How a worker starts (its socket's fd is appended); tests start other programs."""
        self._stop_frame = protocol.encode_stop(0)
        self._config = protocol.encode_config(run)
        self.gate: DispatchGate | None = None
        self._lease_frame = b""

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(w) for w in self.workers))

    async def _spawn(self, w: WorkerProc) -> None:
        """Start worker ``w`` and wait for its HELLO; retries with backoff on boot failures."""
        while not self.stopping:
            try:
                await self._spawn_once(w)
                w.boot_failures = 0
                self.pump(w.index)  # events may have queued while it booted
                return
            except (OSError, TimeoutError, asyncio.IncompleteReadError, protocol.ProtocolError) as exc:
                w.boot_failures += 1
                logger.warning("worker %d failed to start (%s), attempt %d", w.index, exc, w.boot_failures)
                if w.boot_failures >= MAX_BOOT_FAILURES:
                    raise WorkerBootError(
                        f"worker {w.index} failed to start {w.boot_failures} times in a row; "
                        f"last error: {exc}"
                    ) from exc
                # A worker that died while booting is restarted too: count it, so a crash
                # loop at start-up shows in fastobs_worker_restarts_total.
                w.restarts += 1
                self.handler.on_restart(w.index)
                await asyncio.sleep(min(5.0, 0.2 * 2**w.boot_failures))

    async def _spawn_once(self, w: WorkerProc) -> None:
        w.spawned_at = time.monotonic()
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            w.popen = subprocess.Popen(
                [*self.worker_command, str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                close_fds=True,
            )
        finally:
            child_sock.close()
        w.stderr_tail.clear()
        assert w.popen.stderr is not None
        w.stderr_relay = asyncio.ensure_future(_relay_stderr(w.popen.stderr, w.stderr_tail))
        w.generation += 1
        generation = w.generation
        loop = asyncio.get_running_loop()
        first: asyncio.Future[tuple[bytes, bytes]] = loop.create_future()

        def on_frame(kind: bytes, payload: bytes) -> None:
            if not first.done():
                first.set_result((kind, payload))
                return
            try:
                self._on_frame(w, kind, payload)
            except Exception as exc:  # a bug in a handler must not silently drop results
                self.handler.on_fatal(exc)

        def on_eof() -> None:
            if not first.done():
                first.set_exception(WorkerExited())
            elif generation == w.generation:
                restart = asyncio.ensure_future(self._worker_exited(w))
                self._restarts.add(restart)  # the loop keeps only a weak reference to a task
                restart.add_done_callback(self._restarts.discard)

        writer = await protocol.connect(parent_sock, on_frame, on_eof)
        writer.write(self._config)
        try:
            kind, payload = await asyncio.wait_for(first, BOOT_TIMEOUT)
        except WorkerExited:
            raise WorkerExited(await self._how_it_ended(w, writer)) from None
        except BaseException:
            self._refuse(w, writer)
            raise
        if kind == protocol.FATAL:
            self._refuse(w, writer)
            raise TemplateError(protocol.decode_fatal(payload)["message"])
        if kind != protocol.HELLO:
            self._refuse(w, writer)
            raise protocol.ProtocolError(f"expected HELLO, got {kind!r}")
        version = protocol.decode_hello(payload).get("v")
        if version != protocol.VERSION:
            self._refuse(w, writer)
            # Not retried: another start of the same program would say the same.
            raise WorkerBootError(
                f"worker {w.index} speaks protocol version {version}, this fastobs speaks version "
                f"{protocol.VERSION}: the worker ({' '.join(self.worker_command)}) comes from another "
                "fastobs installation"
            )
        w.writer = writer
        if self._lease_frame:
            writer.write(self._lease_frame)
        if self.stopping:
            writer.write(self._stop_frame)  # stop() ran while this worker was booting
        w.ready = True
        w.last_tick = time.monotonic()

    async def _how_it_ended(self, w: WorkerProc, writer: asyncio.Transport) -> str:
        """A worker closed its socket before HELLO: its exit status and last stderr lines."""
        assert w.popen is not None
        popen, relay = w.popen, w.stderr_relay
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(popen.wait), 2.0)
        code = popen.returncode
        self._refuse(w, writer)
        if relay is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(relay), 1.0)
        if code is None:
            how = "closed its connection"
        else:
            reason, label = spawn.describe_status(code)
            how = f"exited with status {label}" if reason == "exit" else f"was killed by {label}"
        lines = [line.decode("utf-8", "replace").strip() for line in w.stderr_tail]
        tail = " | ".join(line for line in lines if line)
        return f"{how}; its last output: {tail}" if tail else how

    def _refuse(self, w: WorkerProc, writer: asyncio.Transport) -> None:
        """Drop a worker that failed its start: the caller decides whether to retry, so the
        end of its stream must not count as a crash to restart from."""
        w.generation += 1
        writer.close()
        self._reap(w)

    def _reap(self, w: WorkerProc) -> None:
        if w.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                w.popen.kill()
            w.popen.wait()

    async def stop(self, grace: float) -> None:
        """Drain: workers finish (or, after ``grace``, kill) their commands and exit."""
        self.stopping = True
        self._stop_frame = protocol.encode_stop(grace)
        for w in self.workers:
            if w.writer is not None and not w.writer.is_closing():
                w.writer.write(self._stop_frame)
            # A worker still booting gets its STOP right after HELLO (see _spawn_once).
        deadline = grace + self.run_settings.kill_grace + 5.0
        await asyncio.gather(*(self._wait_exit(w, deadline) for w in self.workers))

    async def _wait_exit(self, w: WorkerProc, limit: float) -> None:
        if w.popen is None:
            return
        popen = w.popen
        try:
            await asyncio.wait_for(asyncio.to_thread(popen.wait), limit)
        except TimeoutError:
            popen.kill()
            await asyncio.to_thread(popen.wait)

    def kill(self) -> None:
        """Immediate stop (a second signal, or the end of the run): SIGKILL the workers, then
        every command or leftover they had, which we adopted as their subreaper."""
        self.stopping = True
        for w in self.workers:
            if w.popen is not None and w.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.popen.pid, signal.SIGKILL)
                w.popen.wait()
        if self.adopts_orphans:
            spawn.kill_strays(keep=set())

    # ------------------------------------------------------------------ dispatch

    def pump(self, i: int) -> None:
        """Send worker ``i`` as many queued events as its in-flight budget allows."""
        w = self.workers[i]
        if not w.ready or self.stopping or w.writer is None or not self.may_dispatch():
            return
        gate = self.gate
        if gate is not None and not gate.open():
            return
        q = self.queues[i]
        frames: list[bytes] = []
        while len(w.inflight) < self.capacity:
            ev = q.pop()
            if ev is None:
                break
            if gate is not None and not gate.admits(ev):
                q.done(ev.key)
                self.handler.on_dropped(ev)
                continue
            job_id = next(self._ids)
            w.inflight[job_id] = ev
            self.handler.on_dispatch(ev)
            job: protocol.Job = {
                "id": job_id,
                "type": ev.type.value,
                "ns": ev.namespace,
                "name": ev.name,
                "rv": ev.rv,
                "cached_arg": ev.cached_arg,
            }
            if gate is not None:
                job["bucket"], job["epoch"] = gate.stamp(ev)
            frames.append(protocol.encode_run(job, ev.obj or b""))
        if frames:
            w.writer.write(b"".join(frames))

    def pump_all(self) -> None:
        for w in self.workers:
            self.pump(w.index)

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

    def in_flight(self, match: Callable[[Event], bool]) -> int:
        return sum(1 for w in self.workers for ev in w.inflight.values() if match(ev))

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
            self.handler.on_fatal(TemplateError(protocol.decode_fatal(payload)["message"]))

    async def _worker_exited(self, w: WorkerProc) -> None:
        w.ready = False
        if w.writer is not None:
            w.writer.close()
            w.writer = None
        status = w.popen.wait() if w.popen is not None else 0
        if self.stopping:
            return
        # Its commands outlived it (they run in their own process groups) and were
        # re-parented to us: they must be gone before their keys run again.
        if self.adopts_orphans:
            await asyncio.to_thread(spawn.kill_strays, {x.pid for x in self.workers if x is not w})
        lost = len(w.inflight)
        w.inflight.clear()
        w.running = 0
        keys = self.queues[w.index].requeue_processing()
        logger.warning(
            "worker %d (pid %d) exited with status %s; restarting it and re-dispatching %d keys (%d jobs)",
            w.index, w.pid, status, len(keys), lost,
        )
        w.restarts += 1
        self.handler.on_restart(w.index)
        try:
            await self._spawn(w)
        except BaseException as exc:
            self.handler.on_fatal(exc)

    def reap_orphans(self) -> None:
        """Reap exited processes re-parented to us (we are a child subreaper)."""
        workers = {w.pid for w in self.workers}
        if self.adopts_orphans:
            spawn.reap_strays(keep=workers)

    # ------------------------------------------------------------------ health

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
                if now - w.last_tick >= HEARTBEAT_STALE:
                    return False
            elif now - w.spawned_at >= BOOT_TIMEOUT + HEARTBEAT_STALE:
                return False
        return True


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
