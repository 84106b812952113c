"""Spawn: start a child process and await its exit on the event loop without forking the loop.

Where it sits: under ``runner`` (each user command) and the parent's ``--names`` call.
In: argv, environment, standard file descriptors. Out: the exit status.

Why not ``loop.subprocess_exec``: under uvloop it forks the whole interpreter (3-4x slower,
and slower still as the heap grows). Commands start through ``os.posix_spawnp``: glibc's
vfork path (the loop's thread waits only until the child has exec'd), with argv and the
environment converted in C: about 40% less CPU than ``subprocess.Popen``, whose
Python-level set-up costs about 100 us a spawn. ``os.pidfd_open`` then lets the loop wait
for the exit like any other readable fd.

Invariant: every child runs in its own process group (``setpgroup=0``), so a timeout or
shutdown can signal the command *and everything it started*; a child is always reaped; a
command inherits only its three standard descriptors (every other descriptor of ours is
close-on-exec: see :func:`no_inheritance`, which each process calls at start) and gets
SIGPIPE/SIGXFSZ back at their defaults, as Popen gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

TRACKED: set[int] = set()
"""Pids of children started here and not yet reaped: a subreaper's sweep must leave
them to their ``Child.wait`` (reaping them elsewhere would lose their exit status)."""


class Child:
    """A running child process and the pidfd the loop waits on.

    However many callers wait (the command's own wait, a timeout's ``terminate``, a
    shutdown), one reader watches the pidfd and one future carries the exit status: a
    second ``add_reader`` on the same fd would silently replace the first, leaving its
    waiter pending forever.
    """

    __slots__ = ("popen", "pid", "_pidfd", "returncode", "_exited", "_loop")

    def __init__(self, proc: subprocess.Popen[bytes] | int) -> None:
        """``proc``: a Popen (a worker process) or the pid of a child started by :func:`start`."""
        self.popen = proc if isinstance(proc, subprocess.Popen) else None
        self.pid: int = proc.pid if isinstance(proc, subprocess.Popen) else proc
        self._pidfd: int = os.pidfd_open(self.pid)
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        TRACKED.add(self.pid)

    async def wait(self) -> int:
        """Wait for the exit and reap; returns Popen's returncode (-N for signal N).

        Cancelling the caller does not cancel the wait of the others.
        """
        if self.returncode is not None:
            return self.returncode
        if self._exited is None:
            self._loop = asyncio.get_running_loop()
            self._exited = self._loop.create_future()
            self._loop.add_reader(self._pidfd, self._reap)
        return await asyncio.shield(self._exited)

    def _reap(self) -> int:
        if self.returncode is not None:
            return self.returncode
        if self.popen is not None:
            code = self.popen.wait()
        else:
            try:
                code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            except ChildProcessError:  # reaped elsewhere: its status is lost (Popen says 0 too)
                code = 0
        TRACKED.discard(self.pid)
        self.returncode = code
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(code)
        return code

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group (it may have started others).

        Not once the child is reaped: its pid, and so the group id, may belong to another
        process by then."""
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def terminate(self, grace: float) -> int:
        """SIGTERM the group, then SIGKILL it after ``grace`` seconds; returns the exit status."""
        self.signal_group(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.wait(), grace)
        except TimeoutError:
            self.signal_group(signal.SIGKILL)
            return await self.wait()

    def kill(self) -> None:
        """SIGKILL the child itself (not its group: a worker shares the parent's group)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def kill_now(self) -> int:
        """SIGKILL the child (not its group) and reap it synchronously: for the last moments
        of a process, when the loop will not run again."""
        self.kill()
        return self._reap()


def start(
    argv: Sequence[str],
    *,
    env: Mapping[bytes, bytes] | Mapping[str, str] | None,
    stdin: int,
    stdout: int,
    stderr: int,
) -> Child:
    """Start ``argv`` directly (never through a shell) in a new process group; ``argv[0]``
    is looked up in PATH when it has no slash. ``subprocess.DEVNULL`` is accepted for any
    of the three descriptors; ``env=None`` passes ours.

    Raises OSError (FileNotFoundError, PermissionError, E2BIG...) for every reason the
    command cannot start: glibc reports exec errors from the child synchronously, and an
    argument or variable it cannot pass (a NUL byte, a string it cannot encode) becomes
    EINVAL, the error Go's exec gives oc for it.
    """
    fds = [_devnull() if fd == subprocess.DEVNULL else fd for fd in (stdin, stdout, stderr)]
    dups: list[int] = []
    if any(fd < 3 and fd != target for target, fd in enumerate(fds)):
        # One of our own standard descriptors given as another's source (we run with 0-2
        # closed): the dup2s, in order, would overwrite it before it is copied.
        dups = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in fds]
        fds = dups
    try:
        pid = os.posix_spawnp(
            argv[0],
            list(argv),
            _ENVIRON if env is None else env,
            setpgroup=0,
            setsigdef=_DEFAULT_IN_CHILD,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
        )
    except ValueError as exc:  # "embedded null byte", UnicodeEncodeError
        raise OSError(errno.EINVAL, f"{os.strerror(errno.EINVAL)} ({exc})") from exc
    finally:
        for fd in dups:
            os.close(fd)
    return Child(pid)


_DEFAULT_IN_CHILD = (signal.SIGPIPE, signal.SIGXFSZ)
"""Python ignores these; a command gets their default back, as Popen's restore_signals
gives it. (glibc's spawn also leaves its two internal signals, 32 and 33, ignored in the
child, which Python cannot list here; glibc and Go programs install their own handlers
for them, so no program behaves differently.)"""
_DEVNULL: list[int] = []
_ENVIRON: Mapping[bytes, bytes] = getattr(os.environ, "_data", os.environb)
"""Our environment as the dict of bytes ``os.environ`` keeps in step with every change:
posix_spawn converts a dict in C, where ``os.environ`` and ``os.environb`` go through
Python-level mapping methods (~100 us a spawn)."""


def _devnull() -> int:
    if not _DEVNULL:
        _DEVNULL.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
    return _DEVNULL[0]


def no_inheritance() -> None:
    """Make every descriptor above 2 close-on-exec. Python opens its own that way; those we
    were given (a worker's socket, whatever fastobs's own parent left open) must be made so,
    or every command would inherit them (Popen's close_fds did this per spawn)."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2:
                with contextlib.suppress(OSError):  # the directory's own fd, closed by now
                    os.set_inheritable(fd, False)


def exec_error(exe: str, exc: OSError) -> str:
    """Go's exec error text, as oc prints it for commands that cannot start: a name without
    a slash is looked up in PATH first (``exec: "x": executable file not found in $PATH``),
    and a start failure names the path found (``fork/exec /usr/bin/x: invalid argument``)."""
    if "/" not in exe:
        found = shutil.which(exe)
        if found is None:
            return f'exec: "{exe}": executable file not found in $PATH'
        exe = found
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


def describe_exit(code: int) -> str:
    """How a process ended, in words: ``exited with status 7``, ``was killed by SIGKILL``."""
    reason, label = describe_status(code)
    return f"was killed by {label}" if reason == "signal" else f"exited with status {label}"


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


def kill_strays(keep: set[int], *, spare_tracked: bool = True, limit: float = 10.0) -> list[int]:
    """SIGKILL every other child and its process group (a dead worker's commands, a
    command's daemons), reap them, and repeat for the orphans their deaths hand us (we are
    a subreaper, so a daemon that left its group by ``setsid`` and double fork still comes
    to us once its parents are gone), until no other child is left or ``limit`` seconds
    have passed. Returns the pids killed.

    ``spare_tracked``: leave alone the commands a ``Child`` still waits for.
    """
    victims: list[int] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        pids = sorted(children() - keep - (TRACKED if spare_tracked else set()))
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        victims += pids
    return victims

