"""Worker: one worker process; runs the jobs the parent sends, at most ``concurrency`` at once.

Where it sits: started by ``pool`` as ``python -m fastobs.worker FD``, connected to the
parent by the socket ``FD``. In: CONFIG then RUN/STOP frames. Out: HELLO, BEGUN, DONE,
OUTPUT, TICK and FATAL frames (see ``protocol``).

Threading model: one uvloop loop; a task per job, gated by a semaphore. Commands are
spawned with posix_spawn + pidfd (``spawn``), never with the loop's subprocess support.

Invariants: never more than ``concurrency`` children at once; jobs start in the order
they arrive; in a group of replicas no command starts after the deadline of the last LEASE
frame, and those still running then are stopped (``fencing``); every job it received ends in
a DONE frame (a failed one if the command could not start, was fenced, was killed at
shutdown, or the runner failed), unless the parent is gone; when the parent goes away (EOF
on the socket, even after a SIGKILL) the worker stops every running command's process group
and exits. On every exit it kills what its commands left behind, daemons included (it is
their subreaper: a daemon that left its process group still comes to it), and removes its
object files. The worker never imports the Kubernetes client, so it starts fast and stays
small.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from . import logs, protocol, spawn
from .errors import FastobsError, TemplateError
from .fencing import Fence

if TYPE_CHECKING:
    from .runner import Runner

HEARTBEAT_SECONDS = 1.0
DONE_WAIT = 10.0
"""Seconds the jobs of killed commands get to report before they are abandoned."""


class Worker:
    """The worker's state: the runner, the running jobs and the channel to the parent."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.running: set[asyncio.Task[None]] = set()
        """Tasks holding a slot: their command has started (or is about to)."""
        self.stopping = False
        self.runner: Runner | None = None
        self.stream = False
        self.kill_grace = 5.0
        self.started: dict[int, float] = {}
        """Running jobs: id -> monotonic start time (reported in heartbeats)."""
        self._background: set[asyncio.Task[None]] = set()
        """Drain and cancel tasks: the loop keeps only a weak reference to a task."""
        self.fence = Fence()
        self._outbox = bytearray()
        self._flush_scheduled = False
        loop = asyncio.get_running_loop()
        self._config: asyncio.Future[bytes] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        """Resolved when the worker may exit (drained after STOP, or the parent is gone)."""

    def send(self, data: bytes) -> None:
        """Queue a frame; all frames of one loop turn leave in a single write."""
        self._outbox += data
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._outbox and self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes(self._outbox))
        self._outbox.clear()

    async def serve(self, sock: socket.socket) -> int:
        from .runner import Runner  # imported after the handshake starts: keeps boot light

        self.transport = await protocol.connect(sock, self._on_frame, self._on_eof, self._on_pause)
        payload = await self._config
        settings = protocol.decode_config(payload)
        logs.setup(settings.log_format, settings.log_level, settings.verbosity)  # as the parent logs
        try:
            runner = Runner(settings)
        except FastobsError as exc:  # the template (checked by the parent; a template file may be gone)
            self.send(protocol.encode_fatal(exc.message))
            await self._flushed()
            return 2
        self.runner = runner
        runner.fence = self.fence
        _quiet_gc()
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.stream = settings.output_mode == "stream"
        self.kill_grace = settings.kill_grace
        self.send(protocol.encode_hello(os.getpid()))
        ticker = asyncio.create_task(self._heartbeat())
        try:
            await self.done
        finally:
            ticker.cancel()
            runner.close()
        return 0

    def _on_pause(self, paused: bool) -> None:
        """The parent is not reading: in stream mode stop reading command output until it does,
        so a flood of lines waits in the commands' pipes, not in our memory."""
        if self.runner is not None and self.stream:
            if paused:
                self.runner.pause_output()
            else:
                self.runner.resume_output()

    def _on_frame(self, kind: bytes, payload: bytes) -> None:
        if not self._config.done():
            if kind == protocol.CONFIG:
                self._config.set_result(payload)
            else:
                self._config.set_exception(protocol.ProtocolError(f"expected CONFIG, got {kind!r}"))
        elif kind == protocol.RUN:
            job, obj = protocol.decode_run(payload)
            task = asyncio.create_task(self._job(job, obj, time.monotonic()))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif kind == protocol.LEASE:
            lease = protocol.decode_lease(payload)
            self.fence.extend(float(lease["until"]), float(lease["grace"]))
        elif kind == protocol.KILL:
            kill = protocol.decode_kill(payload)
            self.fence.kill(kill["ids"], float(kill["grace"]))
        elif kind == protocol.STOP:
            stop = protocol.decode_stop(payload)
            if stop.get("now"):
                self._in_background(self._stop_now())
            elif not self.stopping:
                self._in_background(self._drain(stop["grace"]))

    def _on_eof(self) -> None:
        """The parent is gone (even SIGKILLed): stop everything we started, then exit."""
        if not self._config.done():
            self._config.set_exception(ConnectionError("the parent went away"))
        self._in_background(self._abandon())

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _job(self, job: protocol.Job, obj: bytes | None, rx: float) -> None:
        async with self.slots:
            task = asyncio.current_task()
            assert task is not None
            self.running.add(task)
            task.add_done_callback(self.running.discard)
            job_id = job["id"]

            def begun(t: float, header: str) -> None:
                self.started[job_id] = t
                if self.stream:  # the header goes out before the command's first line
                    self.send(protocol.encode_begun({"id": job_id, "t": t, "header": header}))

            def line(fd: int, data: bytes) -> None:
                self.send(protocol.encode_output(job_id, fd, data))

            assert self.runner is not None
            try:
                result, out, err = await self.runner.run(job, obj, begun, line if self.stream else None)
            except TemplateError as exc:  # strict templates: a missing key stops fastobs, as in oc
                self.send(protocol.encode_fatal(exc.message, job_id))
                return
            except Exception as exc:  # whatever failed, the job ends as a failed command, not silence
                name = type(exc).__name__
                result = self.runner.failure(job, "internal", name,
                                             f"internal error running the command: {name}: {exc}")
                out = err = b""
            finally:
                self.started.pop(job_id, None)
                self.fence.forget(job_id)
            result["rx"] = rx
            self._send_done(result, out, err)

    def _send_done(self, result: protocol.Done, out: bytes, err: bytes) -> None:
        try:
            frame = protocol.encode_done(result, out, err)
        except protocol.ProtocolError as exc:  # the header alone is too big (a giant template output)
            header = result["header"]
            small: protocol.Done = {
                "id": result["id"], "header": header[:4096] + " ..." if len(header) > 4096 else header,
                "arg": None, "ok": False, "started": result["started"], "ended": result["ended"],
                "attempts": result["attempts"], "reason": "internal", "code": "frame",
                "error": f"the result could not be reported: {exc}",
            }
            frame = protocol.encode_done(small, b"", b"")
        self.send(frame)

    async def _heartbeat(self) -> None:
        while True:
            spawn.reap_strays(keep=set())
            tick: protocol.Tick = {
                "running": len(self.started),
                "oldest": min(self.started.values(), default=0.0),
            }
            self.send(protocol.encode_tick(tick))
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _drain(self, grace: float) -> None:
        """Graceful stop: running commands get ``grace`` seconds (0: none), then their groups
        are killed (and reported as killed)."""
        self._stop_waiting()
        if self.tasks:
            pending = set(self.tasks)
            if grace > 0:
                _, pending = await asyncio.wait(pending, timeout=grace)
            if pending:
                await self._kill("was still running when the shutdown grace period ended and was killed",
                                 self.kill_grace)
        await self._finish()

    async def _stop_now(self) -> None:
        """A second signal: kill the running commands at once, report them, exit."""
        self._stop_waiting()
        await self._kill("was killed: fastobs received a second signal", 0.0)
        await self._finish()

    async def _abandon(self) -> None:
        """The parent is gone: nobody will read a result; stop the commands and exit."""
        self._stop_waiting()
        await self._kill("was killed: fastobs went away", self.kill_grace)
        if not self.done.done():
            self.done.set_result(None)

    def _stop_waiting(self) -> None:
        # Jobs still waiting for a slot never start: the parent re-dispatches nothing
        # after a stop, and oc would not have run them either.
        self.stopping = True
        for task in self.tasks - self.running:
            task.cancel()

    async def _kill(self, why: str, grace: float) -> None:
        """Kill every running command's group (SIGTERM, SIGKILL after ``grace``); their jobs
        then end as failures whose error line says ``why``."""
        if self.runner is not None:
            await self.runner.kill_all(why, grace)
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=DONE_WAIT)
            for task in pending:
                task.cancel()

    async def _finish(self) -> None:
        await self._flushed()
        if not self.done.done():
            self.done.set_result(None)

    async def _flushed(self, limit: float = 30.0) -> None:
        """Wait until every queued frame has been handed to the kernel (``limit`` s at most)."""
        self._flush()
        deadline = time.monotonic() + limit
        while self.transport is not None and not self.transport.is_closing() \
                and self.transport.get_write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)


def _quiet_gc() -> None:
    """Keep the collector off the per-job path. What is loaded by now (modules, the compiled
    template) lives as long as the worker: frozen, full collections no longer walk it. A job
    allocates a few hundred containers (the decoded object, its task and futures) that
    reference counting frees; with the default gen-0 threshold (700) the jobs in flight
    alone set off a collection every few jobs, about 30 us of CPU per job in all."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


async def _amain(fd: int) -> int:
    worker = Worker()
    try:
        return await worker.serve(socket.socket(fileno=fd))
    except (ConnectionError, protocol.ProtocolError):
        return 2
    finally:
        if worker.transport is not None:
            worker.transport.close()
        # What the commands left running (background jobs, daemons that left their group)
        # was handed to us as their subreaper: none of it outlives the worker.
        spawn.kill_strays(keep=set(), spare_tracked=False)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # The parent coordinates shutdown: a terminal's Ctrl-C reaches the whole process group,
    # and the worker must not die before its commands are dealt with.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Orphans of our commands come to us (not init): when we die they go on to the parent,
    # which stops them before the keys they belonged to run again.
    spawn.become_subreaper()
    spawn.no_inheritance()  # our socket to the parent, above all, stays out of commands
    try:
        import uvloop

        return uvloop.run(_amain(int(args[0])))
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return asyncio.run(_amain(int(args[0])))


if __name__ == "__main__":
    sys.exit(main())
