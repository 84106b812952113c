"""Output: what the user sees on stdout/stderr, in oc observe's format.

Where it sits: in the parent, fed by ``daemon`` with the results ``pool`` receives. In:
header lines, command output, error lines. Out: bytes on fastobs's stdout and stderr.

Formats (oc-compatible): ``# <TS> <Type> <rv>\\t<cmdline>`` before a command's output;
``# <TS> Sync started`` when Sync events begin and ``# <TS> Sync ended`` when a non-Sync
event follows them (and at ``--once`` exit); ``-q`` drops every ``#`` line.

Invariants: output of different commands never mixes within a line; the ``<TS>`` of the
``#`` lines never goes backwards. In grouped mode (default) a command's header and all its
output are written together when it ends; in stream mode each line is written as it comes,
prefixed with the object key. Writes are buffered and handed over once per event-loop turn,
not once per line.

A slow or stuck stdout never blocks the event loop (``/livez`` and ``/metrics`` keep
answering): one writer thread does the blocking writes, in order, nothing dropped. Past
:data:`HIGH_WATER` bytes waiting, :meth:`Output.has_room` turns false and ``on_full`` tells
``pool``, which stops dispatching and stops reading the workers' results (running commands
go on; their output waits in their pipes and sockets, not in our memory); below
:data:`LOW_WATER` ``on_room`` resumes both. A thread rather than a non-blocking fd:
``O_NONBLOCK`` would be set on the open file that the shell, the workers and every other
process sharing the terminal or pipe use too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from .header import Stamps
from .logs import oc_line

logger = logging.getLogger(__name__)

HIGH_WATER = 1 << 20
"""Bytes waiting for stdout/stderr from which dispatch stops."""
LOW_WATER = 1 << 18
"""Bytes waiting below which dispatch resumes."""


class Output:
    """Buffered writer for stdout and stderr with oc's Sync markers."""

    def __init__(self, *, quiet: bool, stream: bool, out_fd: int = 1, err_fd: int = 2) -> None:
        self.quiet = quiet
        self.stream = stream
        self.out_fd = out_fd
        self.err_fd = err_fd
        self._out = bytearray()
        self._err = bytearray()
        self._scheduled = False
        self.syncing = False
        self._writer = _Writer()
        self._full = False
        self.on_full: Callable[[], None] = lambda: None
        """Called (on the loop) when HIGH_WATER bytes or more wait to be written."""
        self.on_room: Callable[[], None] = lambda: None
        """Called (on the loop) when output that had reached HIGH_WATER is below LOW_WATER."""
        self._stamps = Stamps()

    # ------------------------------------------------------------------ oc lines

    def marker(self, type_: str, ts: str | None = None) -> None:
        """The ``Sync started``/``Sync ended`` line oc prints before an event of ``type_``
        (when the event changes between Sync and not Sync), stamped ``ts`` or now."""
        if self.quiet or (type_ == "Sync") == self.syncing:
            return
        self.syncing = type_ == "Sync"
        ts = ts or self._stamps.stamp(time.time())
        self._out += f"# {ts} Sync {'started' if self.syncing else 'ended'}\n".encode()
        self._schedule()

    def header(self, type_: str, started: float, body: str) -> None:
        """The ``# <TS> <body>`` line of a command that started at ``started`` (monotonic)."""
        if self.quiet:
            return
        # Stamped when it started (as oc), but never earlier than the line printed before it.
        ts = self._stamps.stamp(time.time() - time.monotonic() + started)
        self.marker(type_, ts)
        self._out += f"# {ts} ".encode() + body.encode("utf-8", "surrogateescape") + b"\n"
        self._schedule()

    def command(self, type_: str, started: float, header: str, out: bytes, err: bytes) -> None:
        """Grouped mode: the header, then everything the command printed."""
        if not self.stream:
            self.header(type_, started, header)
        if out or err:  # most commands print nothing: no flush to schedule for them (-q)
            self._out += out
            self._err += err
            self._schedule()

    def line(self, key: str, fd: int, data: bytes) -> None:
        """Stream mode: one line of a command's output, prefixed with its object key."""
        (self._out if fd == 1 else self._err).extend(key.encode() + b": " + data)
        self._schedule()

    def error(self, message: str, fields: Mapping[str, object] | None = None) -> None:
        """oc's ``error: <message>`` line (a JSON record with ``fields`` under --log-format json)."""
        self._err += oc_line(message, "error", fields).encode("utf-8", "surrogateescape")
        self._schedule()

    def notice(self, message: str) -> None:
        """One of oc's bare lines on stderr (a JSON record under --log-format json)."""
        self._err += oc_line(message, "info").encode("utf-8", "surrogateescape")
        self._schedule()

    def stderr(self, text: str) -> None:
        self._err += text.encode("utf-8", "surrogateescape")
        self._schedule()

    def stdout(self, data: bytes) -> None:
        self._out += data
        self._schedule()

    def end_sync(self) -> None:
        """At --once exit: close an open Sync block, as oc does."""
        self.marker("")
        self.flush()

    # ------------------------------------------------------------------ flushing

    def _schedule(self) -> None:
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand everything buffered to the writer thread; never waits for the write."""
        self._scheduled = False
        for fd, buf in ((self.out_fd, self._out), (self.err_fd, self._err)):
            if buf:
                self._writer.put(fd, bytes(buf))
                buf.clear()
        if self._full:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to keep responsive: write it now
            self._writer.wait_written(None)
            return
        self._full = self._writer.wake_below(HIGH_WATER, LOW_WATER, lambda: _call_soon(loop, self._room))
        if self._full:
            self.on_full()

    def has_room(self) -> bool:
        """False while too much output waits for stdout: dispatch nothing new."""
        return not self._full

    def _room(self) -> None:
        self._full = False
        self.on_room()

    async def drain(self) -> None:
        """Flush, then wait until every byte is written, keeping the loop responsive."""
        self.flush()
        while not await asyncio.to_thread(self._writer.wait_written, 0.5):
            pass

    def close(self, timeout: float | None) -> bool:
        """Flush and wait (blocking) up to ``timeout`` seconds for the writes; True if all done."""
        self.flush()
        return self._writer.wait_written(timeout)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
        loop.call_soon_threadsafe(callback)


class _Writer:
    """One thread writing queued chunks to their fds, in order; it starts with the first."""

    def __init__(self) -> None:
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._cond = threading.Condition()
        self._pending = 0
        """Bytes queued or being written."""
        self._wake: Callable[[], None] | None = None
        self._wake_at = 0
        self._broken: set[int] = set()
        self._thread: threading.Thread | None = None

    def put(self, fd: int, data: bytes) -> None:
        with self._cond:
            self._chunks.append((fd, data))
            self._pending += len(data)
            if self._thread is None:
                # A daemon thread: a stdout nobody reads must not keep fastobs from exiting
                # once it gave up waiting (a second signal).
                self._thread = threading.Thread(target=self._run, name="fastobs-output", daemon=True)
                self._thread.start()
            self._cond.notify()

    def wake_below(self, high: int, low: int, wake: Callable[[], None]) -> bool:
        """If ``high`` bytes or more wait: call ``wake`` (from the writer thread) once fewer
        than ``low`` do, and return True."""
        with self._cond:
            if self._pending < high:
                return False
            self._wake, self._wake_at = wake, low
            return True

    def wait_written(self, timeout: float | None) -> bool:
        """Block until every queued byte is written (or ``timeout``); True if all done."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._chunks:
                    self._cond.wait()
                fd, data = self._chunks.popleft()
                # Consecutive chunks for one fd go out in one write.
                parts = [data]
                while self._chunks and self._chunks[0][0] == fd:
                    parts.append(self._chunks.popleft()[1])
            written = b"".join(parts) if len(parts) > 1 else data
            if fd not in self._broken:
                self._write_all(fd, written)
            wake = None
            with self._cond:
                self._pending -= len(written)
                if self._wake is not None and self._pending < self._wake_at:
                    wake, self._wake = self._wake, None
                if self._pending == 0:
                    self._cond.notify_all()
            if wake is not None:
                wake()

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                # An fd inherited with O_NONBLOCK: wait until it takes more (no spinning).
                select.select([], [fd], [])
                continue
            except OSError as exc:
                # The reader went away (EPIPE, as `fastobs ... | head`), or the fd is unusable:
                # nothing more can be written to it; the rest of the output still is.
                self._broken.add(fd)
                if not isinstance(exc, BrokenPipeError):
                    logger.warning("cannot write to fd %d: %s; its output is dropped", fd, exc)
                return
            view = view[n:]
