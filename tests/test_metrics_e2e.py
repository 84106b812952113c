"""End to end: the values on ``/metrics`` and the health endpoints of a real fastobs.

Each test runs ``python -m fastobs`` against the real kube-apiserver with the HTTP server on
a free loopback port, drives real objects, commands, signals and watch failures, and then
scrapes ``/metrics`` over HTTP and compares the numbers with what the commands themselves
recorded. The exposition is parsed by a small regex reader that keeps names as written
(``prometheus_client``'s parser renames ``observe_counts`` to ``observe_counts_total``).

A watch expiry cannot be forced on demand from a shared API server, so one test puts
:class:`WatchProxy` between fastobs and the server: plain HTTP in front, the server's HTTPS
behind, and on request it withholds watch events, injects an in-stream ``ERROR`` 410 or
answers the next watch with HTTP 410.

Invariant: every fastobs started here is stopped (SIGTERM, then SIGKILL) and every held
command released before its test ends, so no process outlives a test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastobs_run import (
    configmap,
    free_port,
    http_get,
    pids_alive,
    recorder,
    run_fastobs,
    start_fastobs,
    wait_until,
    worker_pids,
    worker_sitecustomize,
)
from watch_proxy import WatchProxy

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]

Labels = frozenset[tuple[str, str]]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# ----------------------------------------------------------------------------- scraping


@dataclass(frozen=True)
class Scrape:
    """One ``/metrics`` answer: sample name -> {label set -> value}."""

    samples: dict[str, dict[Labels, float]]
    text: str

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[str, dict[Labels, float]] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            assert m, f"not a Prometheus sample line: {line!r}"
            labels = frozenset(_LABEL.findall(m.group(2) or ""))
            samples.setdefault(m.group(1), {})[labels] = float(m.group(3))
        return cls(samples, text)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None when it is not exposed."""
        return self.samples.get(name, {}).get(frozenset(labels.items()))

    def total(self, name: str, **labels: str) -> float:
        """Sum of every sample of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for ls, v in self.samples.get(name, {}).items() if want <= ls)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {dict(ls)[label]: v for ls, v in self.samples.get(name, {}).items() if label in dict(ls)}



def scrape(port: int) -> Scrape:
    status, body = http_get(port, "/metrics")
    assert status == 200, f"/metrics answered {status}"
    return Scrape.parse(body)


def wait_scrape(port: int, what: str, check: Callable[[Scrape], bool], timeout: float = 20.0) -> Scrape:
    """Scrape until ``check`` holds; the failure message shows the last scrape's fastobs lines."""
    deadline = time.monotonic() + timeout
    last: Scrape | None = None
    while time.monotonic() < deadline:
        if http_get(port, "/metrics")[0] == 200:
            last = scrape(port)
            if check(last):
                return last
        time.sleep(0.05)
    shown = "" if last is None else "\n".join(
        line for line in last.text.splitlines() if line.startswith(("fastobs_", "observe_")))
    raise AssertionError(f"timed out waiting for {what}; last scrape:\n{shown}")



def settled(s: Scrape) -> bool:
    """Nothing queued and nothing running."""
    return s.total("fastobs_workqueue_depth") == 0 and s.total("fastobs_commands_running") == 0


# ----------------------------------------------------------------------------- processes


@dataclass
class Fastobs:
    proc: subprocess.Popen[str]
    port: int

    def scrape(self) -> Scrape:
        return scrape(self.port)

    def wait(self, what: str, check: Callable[[Scrape], bool], timeout: float = 20.0) -> Scrape:
        def alive_and(s: Scrape) -> bool:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"fastobs exited with {self.proc.returncode}: {err}")
            return check(s)

        return wait_scrape(self.port, what, alive_and, timeout)


def launch(env: dict[str, str], *args: str, workers: int = 2) -> Fastobs:
    port = free_port()
    proc = start_fastobs(env, f"--workers={workers}", f"--listen-addr=127.0.0.1:{port}", *args)
    return Fastobs(proc, port)


def stop(fo: Fastobs) -> tuple[str, str]:
    if fo.proc.poll() is None:
        fo.proc.send_signal(signal.SIGTERM)
    try:
        return fo.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        fo.proc.kill()
        return fo.proc.communicate()


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def make_cms(k8s: Any, ns: str, names: list[str], **kw: Any) -> None:
    k8s.apply({"apiVersion": "v1", "kind": "List", "items": [configmap(n, ns, **kw) for n in names]})


def api_client(k8s: Any) -> Any:
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(config_file=str(k8s.kubeconfig)))


# ----------------------------------------------------------------------------- 1. failures


def test_failed_commands_counted_by_reason_code_attempt_and_type(k8s: Any, ns: str, tmp_path: Path) -> None:
    """5 objects whose command exits 3: every failure series says 5, no success anywhere."""
    n = 5
    make_cms(k8s, ns, [f"cm{i}" for i in range(n)])
    rec = recorder(tmp_path)
    fo = launch(dict(k8s.env, T_EXIT="3"), "configmaps", "-n", ns, "--maximum-errors", "-1",
                "--", str(rec.path))
    try:
        s = fo.wait("5 failed commands",
                    lambda s: s.total("fastobs_commands_total") == n and settled(s))
        assert len(rec.calls()) == n
        assert fo.proc.poll() is None, "--maximum-errors -1 must never stop fastobs"
        assert s.value("fastobs_command_failures_total", reason="exit", code="3") == n
        assert s.total("fastobs_command_failures_total") == n
        assert s.value("fastobs_commands_total", result="failure", type="Sync") == n
        assert s.total("fastobs_commands_total", result="success") == 0
        assert s.value("observe_exec_durations_milliseconds_count", exit_code="3", type="Sync") == n
        assert s.total("observe_exec_durations_milliseconds_count") == n
        assert s.value("fastobs_command_duration_seconds_count", result="failure") == n
        assert s.total("fastobs_command_duration_seconds_count") == n
        assert s.value("observe_counts", type="Sync") == n
        assert s.value("fastobs_events_total", type="Sync") == n
        assert s.total("fastobs_workqueue_retries_total") == 0
    finally:
        _, err = stop(fo)
    assert err.count("exited with status code 3") == n, err


def test_immediate_retries_count_attempts_not_commands(k8s: Any, ns: str, tmp_path: Path) -> None:
    """--retry-on-exit-code: the oc summary counts attempts, fastobs_commands_total commands."""
    n, retries = 3, 2
    make_cms(k8s, ns, [f"cm{i}" for i in range(n)])
    rec = recorder(tmp_path)
    fo = launch(dict(k8s.env, T_EXIT="3"), "configmaps", "-n", ns, "--maximum-errors", "-1",
                "--retry-on-exit-code", "3", "--retry-count", str(retries), "--", str(rec.path))
    try:
        s = fo.wait("3 failed commands", lambda s: s.total("fastobs_commands_total") == n and settled(s))
        attempts = n * (1 + retries)
        assert len(rec.calls()) == attempts
        assert s.value("observe_exec_durations_milliseconds_count", exit_code="3", type="Sync") == attempts
        assert s.value("fastobs_commands_total", result="failure", type="Sync") == n
        assert s.value("fastobs_command_failures_total", reason="exit", code="3") == n
        assert s.value("fastobs_workqueue_retries_total", kind="immediate") == n * retries
        assert s.value("fastobs_workqueue_retries_total", kind="backoff") == 0
        assert s.value("fastobs_command_start_lag_seconds_count") == n
        assert s.value("fastobs_command_end_lag_seconds_count") == n
    finally:
        stop(fo)


@pytest.mark.parametrize(("how", "reason", "code"), [
    ("signal", "signal", "SIGKILL"),
    ("timeout", "timeout", ""),
    ("spawn_error", "spawn_error", None),
])
def test_failure_reasons_and_the_oc_exit_code_minus_one(
    k8s: Any, ns: str, tmp_path: Path, how: str, reason: str, code: str | None
) -> None:
    """Killed, timed out and unstartable commands: their reason label, and oc's exit_code -1."""
    n = 2
    make_cms(k8s, ns, [f"cm{i}" for i in range(n)])
    flags: list[str] = []
    if how == "signal":
        command = str(script(tmp_path / "suicide.sh", "kill -KILL $$\n"))
    elif how == "timeout":
        command = str(script(tmp_path / "hang.sh", "exec sleep 30\n"))
        flags = ["--timeout", "300ms", "--kill-grace", "100ms"]
    else:
        command = str(tmp_path / "no-such-command")
    fo = launch(k8s.env, "configmaps", "-n", ns, "--maximum-errors", "-1", *flags, "--", command)
    try:
        s = fo.wait(f"{n} failed commands", lambda s: s.total("fastobs_commands_total") == n and settled(s))
    finally:
        stop(fo)
    failures = s.by_label("fastobs_command_failures_total", "reason")
    assert failures == {reason: n}, s.samples["fastobs_command_failures_total"]
    if code is not None:
        assert s.value("fastobs_command_failures_total", reason=reason, code=code) == n
    assert s.value("fastobs_commands_total", result="failure", type="Sync") == n
    assert s.value("observe_exec_durations_milliseconds_count", exit_code="-1", type="Sync") == n
    assert s.total("observe_exec_durations_milliseconds_count") == n


# ----------------------------------------------------------------------------- 2. coalescing


def test_churn_is_coalesced_and_the_last_run_sees_the_final_state(k8s: Any, ns: str, tmp_path: Path) -> None:
    """50 quick updates while the command is slow: every event counted, few runs, newest state last."""
    updates = 50
    k8s.apply(configmap("hot", ns, data={"v": "0"}))
    rec = recorder(tmp_path)
    slow = script(tmp_path / "slow.sh", f'"{rec.path}" "$@"\nsleep 0.5\n')
    fo = launch(k8s.env, "configmaps", "-n", ns, "--template", "{.data.v}", "--type-env-var", "T_TYPE",
                "--", str(slow))
    try:
        rec.wait_for(lambda c: len(c) == 1)  # the Sync run is now running, not pending
        fo.wait("the watch", lambda s: s.value("fastobs_watch_up") == 1)
        api = api_client(k8s)
        for i in range(1, updates + 1):
            api.patch_namespaced_config_map("hot", ns, {"data": {"v": str(i)}})
        rec.wait_for(lambda c: c[-1]["argv"][-1] == str(updates), timeout=30)
        s = fo.wait("all commands ended", lambda s: settled(s) and s.total("fastobs_commands_total")
                    == len(rec.calls()))
    finally:
        stop(fo)
    calls = rec.calls()
    values = [int(c["argv"][-1]) for c in calls]
    types = [c["env"]["T_TYPE"] for c in calls]
    assert types[0] == "Sync" and set(types[1:]) == {"Updated"}, types
    assert values == sorted(set(values)), f"runs out of order or repeated: {values}"
    assert values[-1] == updates
    runs = len(calls) - 1
    assert s.value("fastobs_events_total", type="Updated") == updates
    assert s.value("observe_counts", type="Updated") == updates
    coalesced = s.value("fastobs_events_coalesced_total")
    assert coalesced is not None and coalesced > 0
    assert runs < updates
    # Every Updated event either ran or was replaced by a newer one before it ran.
    assert runs + coalesced == updates, (runs, coalesced)
    assert s.value("fastobs_commands_total", result="success", type="Updated") == runs
    assert s.value("observe_exec_durations_milliseconds_count", exit_code="0", type="Updated") == runs


# ----------------------------------------------------------------------------- 3. lag histograms


def _buckets(s: Scrape, name: str) -> dict[float, float]:
    return {float(dict(ls)["le"]): v for ls, v in s.samples.get(f"{name}_bucket", {}).items()}


def test_lag_histograms_count_every_command_once_and_include_its_run_time(
    k8s: Any, ns: str, tmp_path: Path
) -> None:
    """Start and end lag observe each ended command once, per event type; the end lag of a
    command held for a while includes that time, and no command ends before it starts."""
    names = [f"cm{i}" for i in range(4)]
    hold = 0.6
    make_cms(k8s, ns, names, data={"v": "a"})
    gate = tmp_path / "gate"
    rec = recorder(tmp_path)
    dele = recorder(tmp_path, "delete")
    gated = script(tmp_path / "gated.sh",
                   f'"{rec.path}" "$@"\nwhile [ ! -e "{gate}" ]; do sleep 0.02; done\n')
    fo = launch(k8s.env, "configmaps", "-n", ns, "--type-env-var", "T_TYPE", "--delete", str(dele.path),
                "--", str(gated))
    try:
        rec.wait_for(lambda c: len(c) == 4)
        s = fo.wait("4 running commands", lambda s: s.total("fastobs_commands_running") == 4)
        assert s.value("fastobs_command_end_lag_seconds_count") == 0
        assert s.total("fastobs_commands_total") == 0
        time.sleep(hold)
        s = fo.scrape()
        assert s.total("fastobs_workqueue_longest_running_processor_seconds") >= hold
        gate.touch()
        s = fo.wait("4 ended commands", lambda s: s.value("fastobs_command_end_lag_seconds_count") == 4)
        assert s.value("fastobs_command_start_lag_seconds_count") == 4
        assert (s.value("fastobs_command_end_lag_seconds_sum") or 0) >= 4 * hold
        assert s.value("fastobs_command_duration_seconds_count", result="success") == 4
        assert (s.value("fastobs_command_duration_seconds_sum", result="success") or 0) >= 4 * hold
        fo.wait("idle", settled)

        k8s.apply(configmap("cm0", ns, data={"v": "b"}))
        k8s.apply(configmap("cm1", ns, data={"v": "b"}))
        k8s.apply(configmap("new", ns, data={"v": "a"}))
        rec.wait_for(lambda c: len(c) == 7)
        k8s.kubectl("delete", "cm", "cm2", "-n", ns)
        dele.wait_for(lambda c: len(c) == 1)
        s = fo.wait("every command ended", lambda s: settled(s) and s.total("fastobs_commands_total") == 8)
    finally:
        gate.touch()
        stop(fo)
    calls = rec.calls() + dele.calls()
    by_type = Counter(c["env"]["T_TYPE"] for c in calls)
    assert by_type == {"Sync": 4, "Updated": 2, "Added": 1, "Deleted": 1}
    assert s.value("fastobs_command_start_lag_seconds_count") == len(calls)
    assert s.value("fastobs_command_end_lag_seconds_count") == len(calls)
    for etype, count in by_type.items():
        assert s.value("fastobs_commands_total", result="success", type=etype) == count, etype
        assert s.value("observe_exec_durations_milliseconds_count", exit_code="0", type=etype) == count
        assert s.value("fastobs_events_total", type=etype) == count
    start = _buckets(s, "fastobs_command_start_lag_seconds")
    end = _buckets(s, "fastobs_command_end_lag_seconds")
    assert start.keys() == end.keys() and start[float("inf")] == end[float("inf")] == len(calls)
    bounds = sorted(start)
    assert [start[b] for b in bounds] == sorted(start.values()), "buckets are not cumulative"
    # Each command's start lag is at most its end lag, so at every bound at least as many
    # start lags as end lags fall below it.
    assert all(start[b] >= end[b] for b in bounds), (start, end)
    assert (s.value("fastobs_command_start_lag_seconds_sum") or 0) <= (
        s.value("fastobs_command_end_lag_seconds_sum") or 0)
    # The start lag's breakdown: every command is counted once in each stage, and queue +
    # handoff (receipt to the worker reading the job) precede the start, so they sum to at
    # most the start lag; spawn ends after the start (it includes the fork and exec).
    stages = {st: s.value("fastobs_command_start_stage_seconds_count", stage=st)
              for st in ("queue", "handoff", "spawn")}
    assert stages == {"queue": len(calls), "handoff": len(calls), "spawn": len(calls)}, stages
    sums = {st: s.value("fastobs_command_start_stage_seconds_sum", stage=st) or 0.0 for st in stages}
    print(f"start-lag stages over {len(calls)} commands (s): {sums}")
    assert sums["queue"] + sums["handoff"] <= (s.value("fastobs_command_start_lag_seconds_sum") or 0) + 1e-6
    assert sums["spawn"] > 0


def test_a_key_kept_busy_by_churn_reports_the_lag_of_its_first_waiting_change(
    k8s: Any, ns: str, tmp_path: Path
) -> None:
    """One key changes every 0.1 s while its command takes 1 s: each run starts with the newest
    state, but the change it is the first to see has waited since the previous run started.
    The start lag must count from that first waiting change (coalescing must not reset it),
    or a starving key reports a lag near zero and the lag alert never fires."""
    slow, interval, churn = 1.0, 0.1, 4.5
    k8s.apply(configmap("hot", ns, data={"v": "0"}))
    log = tmp_path / "starts"
    cmd = script(tmp_path / "slow.sh", f'echo "$(date +%s.%N) $3" >> "{log}"\nsleep {slow}\n')
    fo = launch(k8s.env, "configmaps", "-n", ns, "--template", "{.data.v}", "--", str(cmd))

    def starts() -> list[tuple[float, int]]:
        text = log.read_text() if log.exists() else ""
        return [(float(t), int(v)) for t, v in (line.split() for line in text.splitlines())]

    try:
        synced = fo.wait("the Sync run ended", lambda s: s.total("fastobs_commands_total") == 1
                         and settled(s) and s.value("fastobs_watch_up") == 1)
        api = api_client(k8s)
        sent: list[float] = []
        end = time.monotonic() + churn
        while time.monotonic() < end:
            sent.append(time.time())
            api.patch_namespaced_config_map("hot", ns, {"data": {"v": str(len(sent))}})
            time.sleep(interval)
        wait_until("the last state's run", lambda: starts()[-1][1] == len(sent), timeout=20)
        s = fo.wait("every run ended", lambda s: settled(s)
                    and s.total("fastobs_commands_total") == len(starts()))
    finally:
        stop(fo)
    runs = starts()[1:]  # the Updated runs (the first line is the Sync run)
    # The test's own account: run k sees first the earliest patch sent after run k-1 started
    # (patches sent while a run runs wait for the next one).
    own = []
    previous = starts()[0][0]
    for t, _ in runs:
        first_waiting = min((p for p in sent if p > previous), default=t)
        own.append(max(0.0, t - first_waiting))
        previous = t
    # The Updated runs' share of the histogram: the end state minus the Sync run's.
    name = "fastobs_command_start_lag_seconds"
    start, before = _buckets(s, name), _buckets(synced, name)
    observed = (s.value(f"{name}_count") or 0) - (synced.value(f"{name}_count") or 0)
    total = (s.value(f"{name}_sum") or 0.0) - (synced.value(f"{name}_sum") or 0.0)
    late = (start[float("inf")] - start[0.5]) - (before[float("inf")] - before[0.5])
    print(f"\n{len(runs)} runs of a key patched every {interval} s with a {slow} s command: start lag "
          f"sum {total:.2f} s (mean {total / max(1, len(runs)):.2f} s), {late:g} runs over 0.5 s; "
          f"the test's own account: sum {sum(own):.2f} s, per run {[round(x, 2) for x in own]}")
    assert observed == len(runs)
    assert 3 <= len(runs) < len(sent), "the churn was not coalesced"
    # Every run after the first Updated one waited most of a command's run time.
    assert late >= len(runs) - 1, f"only {late:g} of {len(runs)} runs report the wait: {start}"
    assert total >= 0.5 * sum(own), (total, own)
    # A run's first waiting change came after the previous run started: no lag exceeds the time
    # between two starts (plus the spawn latency the script's clock does not see).
    assert total <= runs[-1][0] - starts()[0][0] + 0.3 * len(runs), (total, starts())


# ----------------------------------------------------------------------------- 4. worker restarts


def test_killed_workers_are_counted_per_worker_and_replaced(k8s: Any, ns: str, tmp_path: Path) -> None:
    """SIGKILL the worker running a command: restart counted, worker replaced, command run again."""
    k8s.apply(configmap("victim", ns))
    gate = tmp_path / "gate"
    log = tmp_path / "parents"
    gated = script(tmp_path / "gated.sh",
                   f'echo $PPID >> "{log}"\nwhile [ ! -e "{gate}" ]; do sleep 0.02; done\n')
    fo = launch(k8s.env, "configmaps", "-n", ns, "--", str(gated), workers=2)
    try:
        s = fo.wait("2 workers and a running command",
                    lambda s: s.value("fastobs_workers_alive") == 2
                    and s.total("fastobs_commands_running") == 1)
        assert s.value("fastobs_workers_total") == 2
        assert s.by_label("fastobs_worker_restarts_total", "worker") == {"0": 0, "1": 0}
        wait_until("the command's pid", lambda: log.exists() and log.read_text().strip())
        first = int(log.read_text().split()[0])
        workers = worker_pids(fo.proc.pid)
        assert first in workers, f"the command's parent {first} is not a worker of fastobs ({workers})"
        os.kill(first, signal.SIGKILL)

        wait_until("the command to run again", lambda: len(log.read_text().split()) == 2)
        second = int(log.read_text().split()[1])
        assert second != first and second in worker_pids(fo.proc.pid)
        s = fo.wait("one restart", lambda s: s.total("fastobs_worker_restarts_total") == 1
                    and s.value("fastobs_workers_alive") == 2)
        restarts = s.by_label("fastobs_worker_restarts_total", "worker")
        assert sorted(restarts.values()) == [0, 1], restarts
        killed_index = next(i for i, v in restarts.items() if v == 1)
        # The killed worker's command is no longer counted; the re-dispatched one is.
        fo.wait("one running command", lambda s: s.total("fastobs_commands_running") == 1)
        wait_until("/livez ok", lambda: http_get(fo.port, "/livez") == (200, "ok"))

        other = next(p for p in worker_pids(fo.proc.pid) if p != second)
        os.kill(other, signal.SIGKILL)
        s = fo.wait("two restarts", lambda s: s.total("fastobs_worker_restarts_total") == 2
                    and s.value("fastobs_workers_alive") == 2)
        assert s.by_label("fastobs_worker_restarts_total", "worker") == {"0": 1, "1": 1}, killed_index
        wait_until("/livez ok", lambda: http_get(fo.port, "/livez") == (200, "ok"))
        assert len(worker_pids(fo.proc.pid)) == 2

        gate.touch()
        s = fo.wait("the command ended", lambda s: s.total("fastobs_commands_total") == 1 and settled(s))
        assert s.value("fastobs_commands_total", result="success", type="Sync") == 1
        assert s.value("fastobs_command_end_lag_seconds_count") == 1
        assert len(log.read_text().split()) == 2, "the command ran a third time"
    finally:
        gate.touch()
        stop(fo)


# ----------------------------------------------------------------------------- 5. watch expiry


@pytest.fixture
def proxy(k8s: Any) -> Iterator[WatchProxy]:
    with WatchProxy(k8s.server, k8s.ca_file) as p:
        yield p


@pytest.mark.parametrize("how", ["in-stream-error", "http-410"])
def test_watch_expiry_relists_loses_nothing_and_skips_unchanged(
    k8s: Any, ns: str, tmp_path: Path, proxy: WatchProxy, how: str
) -> None:
    """After a 410 the relist finds what the broken watch never delivered; unchanged objects do not run."""
    make_cms(k8s, ns, ["cm0", "cm1", "cm2"], data={"v": "1"})
    rec = recorder(tmp_path)
    fo = launch(dict(k8s.env, KUBECONFIG=str(proxy.kubeconfig(tmp_path, k8s.token))), "configmaps", "-n", ns,
                "--template", "{.data.v}", "--type-env-var", "T_TYPE", "--", str(rec.path))
    try:
        rec.wait_for(lambda c: len(c) == 3)
        s = fo.wait("an open watch", lambda s: s.value("fastobs_watch_up") == 1 and settled(s))
        assert s.value("fastobs_relists_total") == 0
        assert s.total("fastobs_api_errors_total") == 0
        # A watch open for over a second that ends cleanly is resumed, not a failure.
        wait_until("a watch older than 1.5 s", lambda: proxy.oldest_watch_age() > 1.5)

        proxy.withhold()
        k8s.apply(configmap("cm0", ns, data={"v": "2"}))
        k8s.apply(configmap("late", ns, data={"v": "1"}))
        wait_until("both events withheld", lambda: sum(
            b'"name":"late"' in line or b'"v":"2"' in line for line in proxy.withheld) == 2)
        assert len(rec.calls()) == 3, "a withheld event reached fastobs"
        if how == "in-stream-error":
            proxy.expire()
        else:
            proxy.refuse_next_watch = True
            proxy.cut()

        missed = {("cm0", "2"), ("late", "1")}
        rec.wait_for(lambda c: missed <= {(x["argv"][1], x["argv"][2]) for x in c})
        s = fo.wait("the relist done and the watch back", lambda s: s.value("fastobs_relists_total") == 1
                    and s.value("fastobs_watch_up") == 1 and settled(s))
        k8s.apply(configmap("after", ns, data={"v": "1"}))
        rec.wait_for(lambda c: any(x["argv"][1] == "after" for x in c))
        s = fo.wait("idle", lambda s: settled(s) and s.total("fastobs_commands_total") == len(rec.calls()))
    finally:
        stop(fo)
    runs = [(c["argv"][1], c["argv"][2], c["env"]["T_TYPE"]) for c in rec.calls()]
    assert sorted(runs) == sorted([
        ("cm0", "1", "Sync"), ("cm1", "1", "Sync"), ("cm2", "1", "Sync"),
        ("cm0", "2", "Sync"), ("late", "1", "Sync"), ("after", "1", "Added"),
    ]), runs
    assert s.value("fastobs_api_errors_total", op="watch", kind="expired") == 1
    assert s.total("fastobs_api_errors_total") == 1, "only the expiry is an error"
    assert s.value("fastobs_relists_total") == 1
    assert s.value("fastobs_api_requests_total", op="list") == 2
    assert s.value("fastobs_api_requests_total", op="watch") == proxy.watch_requests
    assert proxy.refused == (1 if how == "http-410" else 0)
    # Relisted objects that did not change since their last good run are filtered out.
    assert s.value("fastobs_events_total", type="Sync") == 5
    assert s.value("fastobs_tracked_objects") == 5


# ----------------------------------------------------------------------------- 6. health


@dataclass
class Probe:
    t: float
    names_done: bool
    healthz: tuple[int, str]
    readyz: tuple[int, str]
    livez: tuple[int, str]
    sync_gauge: float | None


def test_health_endpoints_follow_the_initial_sync(k8s: Any, ns: str, tmp_path: Path) -> None:
    """/healthz and /readyz fail until the slow --names command and the first list are done; /livez never."""
    make_cms(k8s, ns, ["a", "b"])
    done = tmp_path / "names-done"
    names = script(tmp_path / "names.sh", f'sleep 2\ntouch "{done}"\n')
    rec = recorder(tmp_path)
    fo = launch(k8s.env, "configmaps", "-n", ns, "--names", str(names), "--delete", "true",
                "--", str(rec.path))
    probes: list[Probe] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            names_done = done.exists()  # read before asking: a 200 must come after this
            healthz = http_get(fo.port, "/healthz")
            readyz = http_get(fo.port, "/readyz")
            livez = http_get(fo.port, "/livez")
            metrics = http_get(fo.port, "/metrics")
            gauge = Scrape.parse(metrics[1]).value("fastobs_initial_sync_done") if metrics[0] == 200 else None
            # A --names run that ended during the requests leaves the probe undecided: under
            # load the whole start-up can fit between the first read and the answers.
            names_done = names_done or done.exists()
            probes.append(Probe(time.monotonic(), names_done, healthz, readyz, livez, gauge))
            if readyz[0] == 200 and len([p for p in probes if p.readyz[0] == 200]) >= 3:
                break
            time.sleep(0.05)
        assert http_get(fo.port, "/healthz/ready") == (200, "ok")
        s = fo.scrape()
    finally:
        stop(fo)
    answered = [p for p in probes if p.healthz[0] != 0]
    assert answered, "the HTTP server never answered"
    waiting = [p for p in answered if not p.names_done]
    assert len(waiting) >= 5, "the start-up was not observed while --names ran"
    for p in waiting:
        assert p.healthz == (500, "[-]ready failed: reason withheld\nhealthz check failed\n"), p
        assert p.readyz[0] == 500 and "[-]initial-sync failed" in p.readyz[1], p
        assert p.sync_gauge == 0, p
    first_ok = next(i for i, p in enumerate(answered) if p.healthz[0] == 200)
    assert all(p.healthz == (200, "ok") for p in answered[first_ok:]), "/healthz went back to failing"
    assert answered[-1].readyz == (200, "ok") and answered[-1].sync_gauge == 1
    # Liveness never waits for the API server, the sync or the workers' boot.
    assert all(p.livez == (200, "ok") for p in answered), Counter(p.livez for p in answered)
    assert s.value("observe_name_exec_durations_milliseconds_count", exit_code="0") == 1
    assert (s.value("observe_name_exec_durations_milliseconds_sum", exit_code="0") or 0) >= 2000
    assert sorted(a[1] for a in rec.argvs()) == ["a", "b"]


def _held_one_at_a_time(
    k8s: Any, ns: str, tmp_path: Path, names: list[str]
) -> tuple[Fastobs, Callable[[], list[str]]]:
    """fastobs with one worker running one command at a time; each command waits for its
    ``release-<name>`` file. Returns the process and a reader of the names started so far."""
    make_cms(k8s, ns, names)
    log = tmp_path / "started"
    held = script(tmp_path / "held.sh", f'echo "$2" >> "{log}"\n'
                  f'while [ ! -e "{tmp_path}/release-$2" ]; do sleep 0.02; done\n')
    fo = launch(k8s.env, "configmaps", "-n", ns, "--concurrency", "1", "--", str(held), workers=1)
    return fo, lambda: log.read_text().split() if log.exists() else []


def _release_all(tmp_path: Path, names: list[str]) -> None:
    for name in names:
        (tmp_path / f"release-{name}").touch()


def test_initial_sync_is_done_when_the_last_listed_object_is_handed_to_a_command(
    k8s: Any, ns: str, tmp_path: Path
) -> None:
    """One command at a time, each held until released: /healthz turns ok exactly when the
    last listed object's command starts, while it still runs (as oc)."""
    names = ["cm0", "cm1", "cm2"]
    fo, started = _held_one_at_a_time(k8s, ns, tmp_path, names)
    try:
        for step in range(len(names)):
            wait_until(f"command {step + 1} to start", lambda n=step + 1: len(started()) == n)
            s = fo.wait("it running, the previous ones ended", lambda s, n=step:
                        s.total("fastobs_commands_running") == 1
                        and s.value("fastobs_command_end_lag_seconds_count") == n)
            last = step == len(names) - 1
            assert s.value("fastobs_initial_sync_done") == (1 if last else 0), f"after {step + 1} started"
            assert http_get(fo.port, "/healthz") == ((200, "ok") if last else (
                500, "[-]ready failed: reason withheld\nhealthz check failed\n")), step
            assert http_get(fo.port, "/readyz")[0] == (200 if last else 500), step
            (tmp_path / f"release-{started()[-1]}").touch()
        s = fo.wait("all done", lambda s: settled(s) and s.total("fastobs_commands_total") == len(names))
        assert s.value("fastobs_initial_sync_done") == 1
    finally:
        _release_all(tmp_path, names)
        stop(fo)
    assert sorted(started()) == names


def test_queue_gauges_count_every_waiting_key(k8s: Any, ns: str, tmp_path: Path) -> None:
    """With one command slot, 3 listed objects: 1 running, 2 waiting, the oldest wait grows."""
    names = ["cm0", "cm1", "cm2"]
    fo, started = _held_one_at_a_time(k8s, ns, tmp_path, names)
    try:
        wait_until("the first command", lambda: len(started()) == 1)
        fo.wait("the first command on /metrics", lambda s: s.total("fastobs_commands_running") == 1)
        time.sleep(0.3)
        s = fo.scrape()
        assert s.total("fastobs_commands_running") == 1
        assert s.total("fastobs_workqueue_depth") == 2, "two keys wait for the only slot"
        assert s.total("fastobs_workqueue_oldest_pending_seconds") >= 0.3
    finally:
        _release_all(tmp_path, names)
        stop(fo)


@pytest.mark.parametrize("flags", [
    pytest.param(["--server", "https://127.0.0.1:{dead}"], id="server"),
    pytest.param(["--token", "not-a-valid-token"], id="token"),
])
def test_server_and_token_flags_reach_the_client(k8s: Any, ns: str, tmp_path: Path, flags: list[str]) -> None:
    """A dead --server or a bad --token must stop fastobs before any command runs."""
    k8s.apply(configmap("x", ns))
    rec = recorder(tmp_path)
    args = [f.format(dead=free_port()) for f in flags]
    res = run_fastobs(k8s.env, "configmaps", "-n", ns, "--once", "--listen-addr=", "--maximum-errors", "1",
                      *args, "--", str(rec.path), timeout=60)
    assert rec.calls() == [], "the command ran: the flag was ignored"
    assert res.returncode != 0


SLOW_WORKER_BOOT = worker_sitecustomize('time.sleep(float(os.environ.get("T_WORKER_BOOT_DELAY", "0")))\n')


def test_livez_is_ok_while_workers_are_still_booting(k8s: Any, ns: str, tmp_path: Path) -> None:
    """Workers that take 2 s to start (a loaded node) must not fail the liveness probe."""
    k8s.apply(configmap("a", ns))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_WORKER_BOOT)
    env = dict(k8s.env, PYTHONPATH=str(site), T_WORKER_BOOT_DELAY="2")
    rec = recorder(tmp_path)
    fo = launch(env, "configmaps", "-n", ns, "--", str(rec.path))
    seen: list[tuple[int, str]] = []
    try:
        wait_until("the HTTP server", lambda: http_get(fo.port, "/livez")[0] != 0)
        while not rec.calls():
            seen.append(http_get(fo.port, "/livez"))
            time.sleep(0.05)
        wait_scrape(fo.port, "both workers", lambda s: s.value("fastobs_workers_alive") == 2)
    finally:
        stop(fo)
    assert len(seen) >= 10, "the slow boot was not observed"
    assert set(seen) == {(200, "ok")}, Counter(seen)


def test_a_killed_workers_command_does_not_overlap_its_rerun(k8s: Any, ns: str, tmp_path: Path) -> None:
    """After a worker is SIGKILLed, its object's command runs again, but never alongside the first one."""
    k8s.apply(configmap("victim", ns))
    gate = tmp_path / "gate"
    log = tmp_path / "runs"
    gated = script(tmp_path / "gated.sh",
                   f'echo "$$ $PPID" >> "{log}"\nwhile [ ! -e "{gate}" ]; do sleep 0.02; done\n')
    fo = launch(k8s.env, "configmaps", "-n", ns, "--", str(gated), workers=2)
    try:
        wait_until("the first run", lambda: log.exists() and len(log.read_text().splitlines()) == 1)
        first_cmd, first_worker = map(int, log.read_text().split())
        os.kill(first_worker, signal.SIGKILL)
        wait_until("the second run", lambda: len(log.read_text().splitlines()) == 2)
        assert pids_alive([first_cmd]) == [], "the first run is still running beside its re-run"
    finally:
        gate.touch()
        stop(fo)
