"""Spawn: start a child process and await its exit on the event loop without forking the loop.

Where it sits: under ``runner`` (each user command) and the parent's ``--names`` call.
In: argv, environment, standard file descriptors. Out: the exit status.

Why not ``loop.subprocess_exec``: under uvloop it forks the whole interpreter (3-4x slower,
and slower still as the heap grows). ``subprocess.Popen`` takes CPython's vfork path;
``os.pidfd_open`` then lets the loop wait for the exit like any other readable fd.

Invariant: every child runs in its own process group (``process_group=0``), so a timeout
or shutdown can signal the command *and everything it started*; a child is always reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

TRACKED: set[int] = set()
"""Pids of children started here and not yet reaped: a subreaper's sweep must leave
them to their ``Child.wait`` (reaping them elsewhere would lose their exit status)."""


class Child:
    """A running child process and the pidfd the loop waits on."""

    __slots__ = ("popen", "pid", "_pidfd", "returncode")

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._pidfd: int = os.pidfd_open(popen.pid)
        self.returncode: int | None = None
        TRACKED.add(popen.pid)

    async def wait(self) -> int:
        """Wait for the exit and reap; returns Popen's returncode (-N for signal N)."""
        if self.returncode is not None:
            return self.returncode
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(self._pidfd, _set_done, exited)
        try:
            await exited
        finally:
            loop.remove_reader(self._pidfd)
        return self._reap()

    def _reap(self) -> int:
        code = self.popen.wait()
        TRACKED.discard(self.pid)
        self.returncode = code
        os.close(self._pidfd)
        self._pidfd = -1
        return code

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group (it may have started others)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def terminate(self, grace: float) -> int:
        """SIGTERM the group, then SIGKILL it after ``grace`` seconds; returns the exit status."""
        self.signal_group(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), grace)
        except TimeoutError:
            self.signal_group(signal.SIGKILL)
            return await self.wait()


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    stdin: int,
    stdout: int,
    stderr: int,
) -> Child:
    """Start ``argv`` directly (never through a shell) in a new process group.

    Raises OSError (FileNotFoundError, PermissionError, E2BIG...) when exec fails: CPython
    reports exec errors from the child synchronously through its error pipe.
    """
    popen = subprocess.Popen(
        argv,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=env,
        close_fds=True,
        process_group=0,
    )
    return Child(popen)


def exec_error(exe: str, exc: OSError) -> str:
    """Go's exec error text, as oc prints it for commands that cannot start."""
    if "/" not in exe and exc.errno == errno.ENOENT:
        return f'exec: "{exe}": executable file not found in $PATH'
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return f"fork/exec {exe}: {reason}"


def read_memfd(fd: int) -> bytes:
    """Everything written to a memfd (or regular file) so far, from offset 0."""
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


async def run_capture(argv: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with stdin from /dev/null; returns (status, stdout, stderr)."""
    out = os.memfd_create("fastobs-stdout", os.MFD_CLOEXEC)
    err = os.memfd_create("fastobs-stderr", os.MFD_CLOEXEC)
    try:
        child = start(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        code = await child.wait()
        return code, read_memfd(out), read_memfd(err)
    finally:
        os.close(out)
        os.close(err)


def describe_status(code: int) -> tuple[str, str]:
    """Map a Popen returncode to (reason, code label) for metrics: exit/N or signal/SIGNAME."""
    if code < 0:
        try:
            return "signal", signal.Signals(-code).name
        except ValueError:
            return "signal", str(-code)
    return "exit", str(code)


def become_subreaper() -> bool:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER), so a dead worker's commands
    come to us instead of init and can be stopped. False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def children() -> set[int]:
    """Our direct children (of any thread), from /proc."""
    pids: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
    return pids


def reap_strays(keep: set[int]) -> None:
    """Reap exited orphans re-parented to us (a subreaper): every child except ``keep`` and
    the commands a ``Child`` still waits for (reaping those would lose their exit status)."""
    for pid in children() - keep - TRACKED:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def kill_strays(keep: set[int]) -> list[int]:
    """SIGKILL the process group of every other child (a dead worker's commands), then
    reap them; returns their pids."""
    victims = sorted(children() - keep - TRACKED)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in victims:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return victims

