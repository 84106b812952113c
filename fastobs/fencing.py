"""Fencing: the worker-side guard that stops commands a replica may no longer run.

Where it sits: inside each ``worker``, between the RUN frames and ``runner``. The parent's
``ownership`` tells every worker, with LEASE frames, until when this replica's Lease is
valid (``until``), and with KILL frames which jobs belong to buckets it is giving up. In:
those frames, and the runner's question "may this job start a command now?". Out: SIGTERM
and, ``grace`` seconds later, SIGKILL to the process groups of the commands concerned.

Why in the worker: the parent may be paused (a long GC, SIGSTOP, a stuck loop) exactly when
its Lease runs out; the workers enforce the deadline on their own, so commands stop by
``until + grace`` whatever the parent does, and none starts after ``until``.

Invariants: no command starts once ``until`` has passed or once its job was killed; every
command running at ``until``, or of a killed job, gets SIGTERM then SIGKILL after ``grace``.
The clock is :func:`clock` (``CLOCK_BOOTTIME``: it also counts time the machine was
suspended), shared by every process on the machine, so the parent's deadline means the same
instant here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from collections.abc import Iterable

__all__ = ["FENCED", "Fence", "clock"]

FENCED = "fenced"
"""The ``reason`` of a job's result when fencing stopped or refused its command."""


def clock() -> float:
    """Seconds on the machine-wide clock that the Lease deadlines are written in."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Fence:
    """One worker's deadline and killed jobs, and the process groups of its running commands."""

    def __init__(self) -> None:
        self.until = math.inf
        """No command starts at or after this :func:`clock` time (inf: not in a group)."""
        self.grace = 0.0
        self.killed: set[int] = set()
        """Jobs whose commands were stopped (their results say ``fenced``)."""
        self.groups: dict[int, int] = {}
        """Running commands: job id -> the process group id of its command."""
        self._timer: asyncio.TimerHandle | None = None

    def may_start(self, job_id: int) -> bool:
        return job_id not in self.killed and clock() < self.until

    def fenced(self, job_id: int) -> bool:
        """Whether the job's command was (or would have been) stopped by the fence."""
        return job_id in self.killed

    def started(self, job_id: int, pgid: int) -> None:
        self.groups[job_id] = pgid
        if clock() >= self.until:
            # Started a hair before the deadline and the timer already ran: stop it too.
            self._stop([job_id])

    def ended(self, job_id: int) -> None:
        self.groups.pop(job_id, None)

    def forget(self, job_id: int) -> None:
        """The job's result went out: nothing more to remember about it."""
        self.killed.discard(job_id)

    def extend(self, until: float, grace: float) -> None:
        """A LEASE frame: commands may run until ``until``; they get ``grace`` after it."""
        self.until = until
        self.grace = grace
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if math.isinf(until):
            return
        loop = asyncio.get_running_loop()
        # call_at uses the loop's clock: convert the deadline into it.
        delay = max(0.0, until - clock())
        self._timer = loop.call_at(loop.time() + delay, self._expired)

    def kill(self, job_ids: Iterable[int], grace: float) -> None:
        """A KILL frame: these jobs' commands stop now (and never start)."""
        self.grace = grace
        self._stop(list(job_ids))

    def _expired(self) -> None:
        self._timer = None
        if clock() < self.until:  # extended meanwhile and the loop ran late: re-arm
            self.extend(self.until, self.grace)
            return
        self._stop(list(self.groups))

    def _stop(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            self.killed.add(job_id)
            pgid = self.groups.get(job_id)
            if pgid is not None:
                _signal_group(pgid, signal.SIGTERM)
                asyncio.get_running_loop().call_later(self.grace, self._escalate, job_id, pgid)

    def _escalate(self, job_id: int, pgid: int) -> None:
        if self.groups.get(job_id) == pgid:
            _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
