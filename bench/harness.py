"""Harness plumbing: processes, the replay server, RSS sampling, result rows.

Where it sits: ``run`` (the scenarios) builds on it; ``systems`` uses :func:`launch`.
In: argv lists and scenario parameters. Out: :class:`Row` values and the machine block.

Invariant: every process the harness starts runs in a new process group (setsid) and is killed
(whole process group) when its scenario ends, whether it finished, failed or timed out.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = ROOT / ".venv" / "bin" / "python"


@dataclass
class Row:
    """One measurement: a system on a scenario."""

    scenario: str
    system: str
    events: int = 0
    seconds: float = 0.0
    events_per_s: float = 0.0
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    parent_rss_mib: float | None = None
    worker_rss_mib: float | None = None
    parent_cpu_us: float | None = None
    """CPU (user + system) of the system's main process per event, start-up excluded."""
    worker_cpu_us: float | None = None
    """CPU of all worker processes together per event (fastobs only; commands never count)."""
    version: str = ""
    """The version of the system measured (each row names its peer's)."""
    load: float | None = None
    """The 1-minute load average when the row started: above the CPU count, other
    processes took CPU from the system and its figures are not comparable."""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def finish(self, events: int, seconds: float) -> Row:
        self.events, self.seconds = events, seconds
        self.events_per_s = events / seconds if seconds > 0 else 0.0
        return self

    def sampled(self, s: RssSampler, events: int, since: float | None = None) -> Row:
        """Fills in RSS and per-event CPU from a sampler; CPU spent before ``since`` (the
        first list request: start-up) is left out."""
        self.parent_rss_mib = round(s.parent_max, 1)
        self.worker_rss_mib = round(s.child_max, 1) or None
        if events > 0:
            parent = s.parent_cpu() - (s.parent_cpu_at(since) if since else 0.0)
            self.parent_cpu_us = round(parent / events * 1e6, 1) if parent > 0 else None
            workers = s.worker_cpu() - (s.worker_cpu_at(since) if since else 0.0)
            self.worker_cpu_us = round(workers / events * 1e6, 1) if s.worker_pids else None
        starved = s.runqueue_share()
        if starved is not None:
            self.extra["parent_runqueue_wait_pct"] = round(starved * 100, 1)
        return self

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "system": platform.system(),
    }


# ------------------------------------------------------------------ processes


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    started: float
    """Wall-clock time just before the process was started."""
    stderr: IO[bytes]
    """An unlinked file, not a pipe: a chatty system must never block on a full pipe."""

    def stderr_tail(self, size: int = 600) -> str:
        self.stderr.seek(0, os.SEEK_END)
        end = self.stderr.tell()
        self.stderr.seek(max(0, end - size))
        return self.stderr.read().decode(errors="replace")


def launch(argv: list[str], env: dict[str, str] | None = None) -> Proc:
    err = tempfile.TemporaryFile()
    t = time.time()
    p = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
    )
    return Proc(p, t, err)


def stop(proc: Proc, grace: float = 3.0) -> None:
    """Kills the process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
    p = proc.popen
    for sig, limit in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)
        try:
            p.wait(limit)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)


def wait(proc: Proc, timeout: float) -> tuple[int | None, float, str]:
    """(exit status or None on timeout, wall-clock end time, stderr tail); the process
    group is killed afterwards either way (a system's leftover children must not skew
    the next measurement)."""
    try:
        proc.popen.wait(timeout)
        status: int | None = proc.popen.returncode
    except subprocess.TimeoutExpired:
        status = None
    end = time.time()
    stop(proc, grace=0.5)
    return status, end, proc.stderr_tail()


class RssSampler:
    """Polls VmRSS and CPU time of the system's main process and of its worker processes.

    The main process is the launched one, or with ``main_exe`` the descendant whose
    executable has that name (the kubectl of a shell pipeline); workers are direct
    children running ``python ... fastobs`` (user commands are never counted).
    CPU is user + system time from ``/proc/PID/stat`` (the process's own, never its
    children's), kept as a time series so start-up can be subtracted; the main process's
    run-queue wait (``/proc/PID/schedstat``) says how long it was ready to run but had no
    CPU: a busy machine shows there first.
    """

    def __init__(self, pid: int, interval: float = 0.05, main_exe: str = "") -> None:
        self.pid = pid
        self.main_exe = main_exe.encode()
        self.parent_max = 0.0
        self.child_max = 0.0
        self.worker_pids: set[int] = set()
        self._main: list[tuple[float, float]] = []
        """(wall time, CPU seconds) of the main process."""
        self._workers: dict[int, list[tuple[float, float]]] = {}
        self._sched: tuple[float, float] | None = None
        """(run seconds, run-queue wait seconds) of the main process, last seen."""
        self._started = time.time()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            mains = [p for p in _descendants(self.pid) if _exe_name(p) == self.main_exe] if self.main_exe \
                else [self.pid]
            for pid in mains[:1]:
                self.parent_max = max(self.parent_max, _rss_mib(pid))
                cpu = _cpu_seconds(pid)
                if cpu is not None:
                    self._main.append((now, cpu))
                self._sched = _schedstat(pid) or self._sched
            for child in _children(self.pid):
                if _is_worker(child):
                    self.worker_pids.add(child)
                    self.child_max = max(self.child_max, _rss_mib(child))
                    cpu = _cpu_seconds(child)
                    if cpu is not None:
                        self._workers.setdefault(child, []).append((now, cpu))
            self._stop.wait(self._interval)

    def parent_cpu(self) -> float:
        return self._main[-1][1] if self._main else 0.0

    def parent_cpu_at(self, t: float) -> float:
        return _at(self._main, t)

    def worker_cpu(self) -> float:
        return sum(series[-1][1] for series in self._workers.values())

    def worker_cpu_at(self, t: float) -> float:
        return sum(_at(series, t) for series in self._workers.values())

    def runqueue_share(self) -> float | None:
        """The main process's run-queue wait as a share of its lifetime (None: unknown)."""
        if self._sched is None or not self._main:
            return None
        return self._sched[1] / max(1e-9, self._main[-1][0] - self._started)


def _at(series: list[tuple[float, float]], t: float) -> float:
    """The last sample at or before wall time ``t`` (0 before the first)."""
    value = 0.0
    for when, v in series:
        if when > t:
            break
        value = v
    return value


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return None


def _schedstat(pid: int) -> tuple[float, float] | None:
    try:
        run, wait, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return None


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids.extend(int(x) for x in (task / "children").read_text().split())
    return kids


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return [b""]


def _exe_name(pid: int) -> bytes:
    return _cmdline(pid)[0].rsplit(b"/", 1)[-1]


def _is_worker(pid: int) -> bool:
    """A fastobs worker process, not a user command (nor a fork on its way to exec)."""
    cmd = _cmdline(pid)
    # A child between vfork and exec still shows its parent's command line (and RSS).
    return b"python" in cmd[0].rsplit(b"/", 1)[-1] and b"fastobs.worker" in cmd[1:4]


# ------------------------------------------------------------------ replay server


class Replay:
    """A running ``replay.py``: its kubeconfig, request log and statistics."""

    def __init__(
        self, objects: int, watch_events: int = 0, watch_rate: float = 0.0, namespaces: int = 10,
        hold_watch: bool = False,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fastobs-replay-"))
        argv = [
            str(PY),
            str(BENCH / "replay.py"),
            "--dir",
            str(self.dir),
            "--objects",
            str(objects),
            "--watch-events",
            str(watch_events),
            "--watch-rate",
            str(watch_rate),
            "--namespaces",
            str(namespaces),
            *(["--hold-watch"] if hold_watch else []),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"replay server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.kubeconfig = self.dir / "kubeconfig"
        self.objects, self.watch_events = objects, watch_events

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def requests(self) -> list[dict[str, Any]]:
        path = self.dir / "requests.ndjson"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def first_list_time(self) -> float | None:
        """Wall-clock arrival of the first LIST (or initial-events WATCH) of pods."""
        for r in self.requests():
            if r["path"].endswith("/pods"):
                return float(r["t"])
        return None

    def stats(self) -> dict[str, Any]:
        return self._get("stats")

    def go(self) -> None:
        """``hold_watch``: start replaying the watch events now."""
        self._get("go")

    def _get(self, what: str) -> dict[str, Any]:
        ctx = ssl.create_default_context(cafile=str(self.dir / "ca.crt"))
        with urllib.request.urlopen(
            f"https://127.0.0.1:{self.port}/_bench/{what}", context=ctx, timeout=10
        ) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
        return doc


# ------------------------------------------------------------------ command log


def read_log(path: Path) -> list[tuple[int, str, float]]:
    """Lines ``rv key epoch`` the lag command appended; malformed lines are skipped."""
    out: list[tuple[int, str, float]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit():
            with contextlib.suppress(ValueError):
                out.append((int(parts[0]), parts[1], float(parts[2])))
    return out


def wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_running(proc: Proc, predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Like :func:`wait_for`, but gives up as soon as ``proc`` has exited (a crashed
    system must not cost the whole timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.popen.poll() is not None:
            return predicate()
        time.sleep(interval)
    return predicate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _summed_buckets(metrics_text: str, name: str) -> dict[float, float]:
    """A Prometheus histogram's cumulative bucket counts by upper bound, label sets summed."""
    buckets: dict[float, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(name + "_bucket{"):
            labels, _, value = line.rpartition(" ")
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return buckets


def histogram_quantiles(metrics_text: str, name: str, qs: tuple[float, ...]) -> list[float | None]:
    """Upper bucket bounds holding the given quantiles of a Prometheus histogram (all
    label sets summed); None when the histogram is absent or empty."""
    buckets = _summed_buckets(metrics_text, name)
    if not buckets or not buckets.get(float("inf")):
        return [None for _ in qs]
    total = buckets[float("inf")]
    bounds = sorted(buckets)
    return [next(b for b in bounds if buckets[b] >= q * total) for q in qs]


def histogram_estimates(metrics_text: str, name: str, qs: tuple[float, ...]) -> list[float | None]:
    """Estimates of the given quantiles of a Prometheus histogram (all label sets summed),
    interpolated linearly inside the bucket that holds each, as PromQL's
    ``histogram_quantile`` does; a quantile in the +Inf bucket gets the highest finite
    bound. None when the histogram is absent or empty."""
    buckets = _summed_buckets(metrics_text, name)
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return [None for _ in qs]
    bounds = sorted(buckets)
    out: list[float | None] = []
    for q in qs:
        rank = q * total
        lower, below = 0.0, 0.0
        for b in bounds:
            if buckets[b] >= rank:
                if b == float("inf"):
                    out.append(lower)
                else:
                    inside = buckets[b] - below
                    out.append(lower + (b - lower) * ((rank - below) / inside if inside else 1.0))
                break
            lower, below = b, buckets[b]
    return out


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
