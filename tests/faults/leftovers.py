"""What a fastobs run leaves behind, and how much memory it took: for the execution scenarios.

Where it sits: beside ``faultlib`` under ``tests/faults/``, used by ``test_faults_exec.py``.

* :func:`marked` gives a fastobs run an environment variable with a value of its own. Every
  process it starts inherits it (workers, commands, the daemons commands start, however they
  detach), so :func:`processes_with` finds them all in ``/proc``, even re-parented to init.
* :func:`object_files` lists what a fastobs (by its pid) left in ``/dev/shm``.
* :class:`PeakRss` samples the resident memory of a process and of its children.

Invariant: a process counts as left behind only while it runs (a zombie does not).
"""

from __future__ import annotations

import glob
import os
import secrets
import threading
import time
from pathlib import Path

from fastobs_run import children

MARK = "FASTOBS_FAULT_MARK"


def marked(env: dict[str, str]) -> tuple[dict[str, str], str]:
    """``env`` plus a marker variable with a fresh value, and that value."""
    mark = secrets.token_hex(8)
    return {**env, MARK: mark}, mark


def processes_with(mark: str) -> list[int]:
    """Pids of the running processes (not zombies) whose environment holds ``mark``."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def wait_gone(mark: str, timeout: float) -> tuple[list[int], float]:
    """Wait up to ``timeout`` s for every process marked ``mark`` to end; returns those still
    running and the seconds waited."""
    t0 = time.monotonic()
    while (left := processes_with(mark)) and time.monotonic() - t0 < timeout:
        time.sleep(0.1)
    return left, time.monotonic() - t0


def object_files(pid: int) -> list[str]:
    """Directories and files fastobs ``pid`` made in /dev/shm for ``--object-channel=file``."""
    dirs = glob.glob(f"/dev/shm/fastobs-{pid}-*")
    return dirs + [f for d in dirs for f in glob.glob(f"{d}/*")]


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss:
    """Samples, every 20 ms while the block runs, the RSS of ``pid`` and of its largest child
    (for fastobs: the parent and its biggest worker)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.parent_kib = 0
        self.child_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.parent_kib = max(self.parent_kib, rss_kib(self.pid))
            for child in children(self.pid):
                self.child_kib = max(self.child_kib, rss_kib(child))
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
