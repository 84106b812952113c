"""Output: what the user sees on stdout/stderr, in oc observe's format.

Where it sits: in the parent, fed by ``daemon`` with the results ``pool`` receives. In:
header lines, command output, error lines. Out: bytes on fastobs's stdout and stderr.

Formats (oc-compatible): ``# <TS> <Type> <rv>\\t<cmdline>`` before a command's output;
``# <TS> Sync started`` when Sync events begin and ``# <TS> Sync ended`` when a non-Sync
event follows them (and at ``--once`` exit); ``-q`` drops every ``#`` line.

Invariants: output of different commands never mixes within a line. In grouped mode
(default) a command's header and all its output are written together when it ends; in
stream mode each line is written as it comes, prefixed with the object key. Writes are
buffered and flushed once per event-loop turn, not once per line.
"""

from __future__ import annotations

import asyncio
import os
import time

from .header import rfc3339_local


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

    # ------------------------------------------------------------------ oc lines

    def _marker(self, type_: str) -> None:
        if type_ == "Sync" and not self.syncing:
            self.syncing = True
            self._out += f"# {rfc3339_local(time.time())} Sync started\n".encode()
        elif type_ != "Sync" and self.syncing:
            self.syncing = False
            self._out += f"# {rfc3339_local(time.time())} Sync ended\n".encode()

    def header(self, type_: str, header: str) -> None:
        if self.quiet:
            return
        self._marker(type_)
        self._out += header.encode("utf-8", "surrogateescape") + b"\n"
        self._schedule()

    def command(self, type_: str, header: str, out: bytes, err: bytes) -> None:
        """Grouped mode: the header, then everything the command printed."""
        if not self.stream:
            self.header(type_, header)
        self._out += out
        self._err += err
        self._schedule()

    def line(self, key: str, fd: int, data: bytes) -> None:
        """Stream mode: one line of a command's output, prefixed with its object key."""
        (self._out if fd == 1 else self._err).extend(key.encode() + b": " + data)
        self._schedule()

    def error(self, message: str) -> None:
        self._err += b"error: " + message.encode("utf-8", "surrogateescape") + b"\n"
        self._schedule()

    def stderr(self, text: str) -> None:
        self._err += text.encode("utf-8", "surrogateescape")
        self._schedule()

    def stdout(self, data: bytes) -> None:
        self._out += data
        self._schedule()

    def end_sync(self) -> None:
        """At --once exit: close an open Sync block, as oc does."""
        if self.syncing and not self.quiet:
            self.syncing = False
            self._out += f"# {rfc3339_local(time.time())} Sync ended\n".encode()
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
        self._scheduled = False
        for fd, buf in ((self.out_fd, self._out), (self.err_fd, self._err)):
            if buf:
                _write_all(fd, bytes(buf))
                buf.clear()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            # A non-blocking stdout (rare: inherited from a parent that set O_NONBLOCK).
            time.sleep(0.001)
            continue
        except BrokenPipeError:
            return
        view = view[n:]
