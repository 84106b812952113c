"""What every fault scenario shares: a per-invocation recorder, the checks, a fastobs handle, figures.

Where it sits: under the scenario modules of ``tests/faults/`` (``test_faults_*.py``). A
scenario starts a real fastobs (:class:`Fastobs`) whose command is an :class:`InvocationLog`
script, injects its fault, writes the objects' final states, then checks what the commands
saw with :func:`check` and reports its figures with :func:`report`.

* :class:`InvocationLog` writes one executable that logs a ``B`` line when it starts and an
  ``E`` line when it ends: key, event type, the template output (resourceVersion and the
  object's ``v`` value by default) and ``$EPOCHREALTIME`` (bash: no fork per timestamp).
* :func:`check` compares the runs with the final state each key must have reached: a key
  whose last run did not see its final state is *lost*; two runs of one key whose
  intervals intersect *overlap*. Runs that never logged their end (killed commands) are
  counted apart, never silently dropped.
* :func:`report` prints a scenario's figures and keeps them for the suite's summary table
  (``conftest.py``); with ``FASTOBS_FAULT_FIGURES=<file>`` they are also written as JSON.

Invariant: every figure a scenario reports is measured in that run, never assumed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastobs_run import fastobs_argv, free_port, http_get

FIGURES: list[tuple[str, dict[str, Any]]] = []
"""(scenario, figures) of every scenario run in this session, in order."""

TEMPLATE = "{.metadata.resourceVersion} {.data.v}"
"""The template the recorder expects by default: ``<rv> <v>`` as one argument."""

_SCRIPT = """#!/bin/bash
# $1 namespace, $2 name, $3 the template output; FAULT_TYPE: the event type.
printf 'B %s %s/%s %s %s %s\\n' "$EPOCHREALTIME" "$1" "$2" "$$" "$FAULT_TYPE" "$3" >> {log}
{body}
code=$?
printf 'E %s %s/%s %s %s %s\\n' "$EPOCHREALTIME" "$1" "$2" "$$" "$FAULT_TYPE" "$3" >> {log}
exit $code
"""


@dataclass
class Run:
    """One command invocation as the recorder logged it."""

    key: str
    type: str
    arg: str
    pid: int
    start: float
    end: float | None = None

    @property
    def value(self) -> str:
        """The object's ``v`` as the template printed it (second word of the argument)."""
        parts = self.arg.split(" ", 1)
        return parts[1] if len(parts) > 1 else ""

    @property
    def rv(self) -> str:
        return self.arg.split(" ", 1)[0]


class InvocationLog:
    """A command for fastobs that records every invocation (and runs ``body`` in between)."""

    def __init__(self, directory: Path, body: str = "", name: str = "record",
                 template: str = TEMPLATE) -> None:
        self.template = template
        self.log = directory / f"{name}.log"
        self.path = directory / name
        self.path.write_text(_SCRIPT.format(log=self.log, body=body or ":"))
        self.path.chmod(0o755)

    @property
    def argv(self) -> list[str]:
        """The fastobs arguments that make this the command: type env var and template."""
        return ["--type-env-var", "FAULT_TYPE", "--template", self.template, "--", str(self.path)]

    def runs(self) -> list[Run]:
        if not self.log.exists():
            return []
        runs: dict[tuple[str, int], Run] = {}
        done: list[Run] = []
        for line in self.log.read_text().splitlines():
            parts = line.split(" ", 5)
            if len(parts) < 5:
                continue
            mark, ts, key, pid = parts[0], float(parts[1]), parts[2], int(parts[3])
            type_, arg = parts[4], parts[5] if len(parts) > 5 else ""
            if mark == "B":
                runs[(key, pid)] = Run(key.lstrip("/"), type_, arg, pid, ts)
            elif (key, pid) in runs:
                run = runs.pop((key, pid))
                run.end = ts
                done.append(run)
        return sorted([*done, *runs.values()], key=lambda r: r.start)

    def wait_for(self, what: str, check: Callable[[list[Run]], bool], timeout: float = 60.0) -> list[Run]:
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs()
            if check(runs):
                return runs
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what} ({len(runs)} runs)")
            time.sleep(0.1)


@dataclass
class Verdict:
    """What :func:`check` found."""

    keys: int
    runs: int
    lost: dict[str, str] = field(default_factory=dict)
    """key -> what its last run saw instead of the final state ("" = never ran)."""
    overlaps: list[tuple[Run, Run]] = field(default_factory=list)
    unfinished: list[Run] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {"keys checked": self.keys, "runs": self.runs, "final states lost": len(self.lost),
                "overlapping runs": len(self.overlaps), "unfinished runs": len(self.unfinished)}

    def assert_ok(self) -> None:
        first = dict(list(self.lost.items())[:10])
        assert not self.lost, f"{len(self.lost)} keys lost their final state, first: {first}"
        assert not self.overlaps, f"{len(self.overlaps)} overlapping runs, first: {self.overlaps[0]}"


def check(runs: Iterable[Run], final: dict[str, str]) -> Verdict:
    """Compare runs with ``final``: key -> the ``v`` its last run must see, or "Deleted"."""
    runs = list(runs)
    verdict = Verdict(keys=len(final), runs=len(runs))
    per_key: dict[str, list[Run]] = {}
    for run in runs:
        per_key.setdefault(run.key, []).append(run)
        if run.end is None:
            verdict.unfinished.append(run)
    for key, want in final.items():
        mine = [r for r in per_key.get(key, []) if r.end is not None]
        if not mine:
            verdict.lost[key] = ""
            continue
        last = max(mine, key=lambda r: r.start)
        seen = "Deleted" if last.type == "Deleted" else last.value
        if seen != want:
            verdict.lost[key] = f"{last.type} {last.value}"
    for mine in per_key.values():
        finished = sorted((r for r in mine if r.end is not None), key=lambda r: r.start)
        for a, b in zip(finished, finished[1:], strict=False):
            assert a.end is not None
            if b.start < a.end:
                verdict.overlaps.append((a, b))
    return verdict


def report(scenario: str, **figures: Any) -> None:
    """Print a scenario's figures (pytest shows them with ``-s`` or on failure) and keep them
    for the summary table at the end of the run."""
    rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
    FIGURES.append((scenario, rounded))
    print(f"[fault figures] {scenario}: " + ", ".join(f"{k}={v}" for k, v in rounded.items()))
    out = os.environ.get("FASTOBS_FAULT_FIGURES")
    if out:
        Path(out).write_text(json.dumps([{"scenario": s, **f} for s, f in FIGURES], indent=1) + "\n")


# ----------------------------------------------------------------------------- fastobs


class Fastobs:
    """A real ``python -m fastobs`` with its HTTP server on a free port; output goes to files
    (a pipe nobody reads would block it)."""

    def __init__(self, env: dict[str, str], directory: Path, *args: str) -> None:
        self.port = free_port()
        self.stdout_path = directory / "fastobs.out"
        self.stderr_path = directory / "fastobs.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(fastobs_argv("--listen-addr", f"127.0.0.1:{self.port}", *args),
                                         env=env, stdout=out, stderr=err)

    def ready(self) -> bool:
        return http_get(self.port, "/readyz")[0] == 200

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds until /readyz said 200."""
        t0 = time.monotonic()
        while not self.ready():
            assert self.proc.poll() is None, f"fastobs exited {self.proc.returncode}: {self.stderr()[-2000:]}"
            assert time.monotonic() - t0 < timeout, f"not ready after {timeout:g} s: {self.stderr()[-2000:]}"
            time.sleep(0.05)
        return time.monotonic() - t0

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = http_get(self.port, "/metrics")
        assert status == 200, status
        return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (then SIGKILL); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Fastobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Writer:
    """Changes configmaps fast: merge patches over one kept-alive HTTPS connection (a
    kubectl call costs a second; churn needs many changes per second)."""

    def __init__(self, k8s: Any) -> None:
        url = urlsplit(k8s.server)
        self._conn = http.client.HTTPSConnection(url.hostname or "127.0.0.1", url.port,
                                                 context=ssl.create_default_context(cafile=str(k8s.ca_file)),
                                                 timeout=30)
        self._headers = {"Authorization": f"Bearer {k8s.token}",
                         "Content-Type": "application/merge-patch+json"}

    def set_values(self, ns: str, names: Iterable[str], value: str) -> None:
        """``data.v = value`` on each configmap, one request each, in order."""
        for name in names:
            self.set_value(ns, name, value)

    def set_value(self, ns: str, name: str, value: str) -> None:
        body = json.dumps({"data": {"v": value}})
        self._conn.request("PATCH", f"/api/v1/namespaces/{ns}/configmaps/{name}", body, self._headers)
        resp = self._conn.getresponse()
        answer = resp.read()
        assert resp.status == 200, (resp.status, answer[:300])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def apply_values(k8s: Any, ns: str, keys: Iterable[str], value: str, **data: str) -> None:
    """Create or update configmaps ``keys`` in ``ns`` with ``v=value`` in one request."""
    items = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": k, "namespace": ns},
              "data": {"v": value, **data}} for k in keys]
    k8s.apply({"apiVersion": "v1", "kind": "List", "items": items})


def time_until(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> float:
    """Seconds until ``check()`` held; AssertionError naming ``what`` after ``timeout`` s."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(poll)
    return time.monotonic() - t0


@dataclass
class Recovery:
    """Seconds from a recovery (the path or the server back) until the watch was up again
    (``/readyz`` 200) and until an update written right after it ran."""

    up: float
    ran: float


def measure_recovery(fo: Fastobs, log: InvocationLog, key: str, value: str, write: Callable[[], object],
                     bound: float) -> Recovery:
    """Call right after the recovery: ``write()`` runs in a thread (it makes ``key`` have
    ``value``) while /readyz is polled, so neither measure waits for the other."""
    wall0 = time.time()
    with in_background(write):
        up = time_until(fo.ready, bound, "the watch up again (/readyz 200)", poll=0.02)
        log.wait_for(f"{key} to run with v={value}",
                     lambda runs: any(r.key == key and r.value == value for r in runs), bound - up)
    ran = min(r.start for r in log.runs() if r.key == key and r.value == value) - wall0
    return Recovery(up, ran)


@contextlib.contextmanager
def in_background(fn: Callable[[], object]) -> Iterator[None]:
    """Run ``fn`` in a thread for the duration of the block (joined at its end)."""
    thread = threading.Thread(target=fn)
    thread.start()
    try:
        yield
    finally:
        thread.join()
