"""fastobs benchmark runner: scenarios x systems, one table, one JSON file.

Usage: ``python bench/run.py [--quick] [--json FILE] [--markdown] [--systems a,b] [--kubeconfig F]
[SCENARIO...]``

Where it sits: the top of ``bench/``. Each scenario starts a fresh replay server
(``replay.py``) with its workload, runs every system on it (``systems.py``) and
returns :class:`harness.Row` values; the limits (``xargs -P``, ``spawner.py``) run in
the same invocation so ratios compare numbers taken minutes apart on the same machine.
Out: a table on stdout and ``bench/results/<date>.json`` (rows plus a machine block).

Invariant: a scenario never leaves a process behind, and a system that is missing or
fails gets a row saying so instead of aborting the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    BENCH,
    PY,
    ROOT,
    Proc,
    Replay,
    Row,
    RssSampler,
    free_port,
    histogram_estimates,
    histogram_quantiles,
    launch,
    load_average,
    log,
    machine,
    percentile,
    read_log,
    stop,
    wait,
    wait_for,
    wait_running,
)
from loader import Loader  # noqa: E402
from systems import Workload, argv_for, available, choose_oc, main_exe, version, write_scripts  # noqa: E402

PEERS = ("oc-observe", "kopf", "kubectl-xargs")


@dataclass
class Ctx:
    quick: bool
    scripts: dict[str, Path]
    work: Path
    systems: set[str] | None
    kubeconfig: Path | None = None
    """An existing cluster for the apiserver scenario; None = start a private dev-cluster."""
    lag_rates: tuple[float, ...] = ()
    """The lag scenario at these fixed rates (events/s) instead of its maximum and the 50%
    and 90% of it: rows comparable across runs and versions whatever the maximum was."""

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def t(self, seconds: float) -> float:
        """A timeout: as given for full runs, at most 45 s with --quick (a hung or crashed
        system must not blow the quick budget)."""
        return min(seconds, 45.0) if self.quick else seconds

    def wants(self, system: str) -> bool:
        return self.systems is None or system in self.systems or system.split("[")[0] in self.systems


def _skip(scenario: str, system: str, why: str) -> Row:
    return Row(scenario, system, note=f"not measured: {why}")


def _row(scenario: str, label: str, system: str) -> Row:
    """A new row for ``system``, naming its version and the machine's load at its start."""
    return Row(scenario, label, version=version(system), load=load_average())


def run_once_system(
    ctx: Ctx,
    scenario: str,
    system: str,
    rp: Replay | None,
    w: Workload,
    events: int,
    timeout: float,
    label: str = "",
) -> Row:
    """Runs a system that exits by itself once ``events`` objects were handled."""
    name = label or system
    why = available(system)
    if why:
        return _skip(scenario, name, why)
    start_count = len(rp.requests()) if rp else 0
    row = _row(scenario, name, system)
    argv, env = argv_for(system, w)
    proc = launch(argv, env)
    with RssSampler(proc.popen.pid, main_exe=main_exe(system)) as rss:
        status, end, err = wait(proc, timeout)
    if status != 0:
        row.sampled(rss, 0)
        row.note = f"failed: exit {status}" + (
            f": {err.strip().splitlines()[-1][:100]}" if err.strip() else ""
        )
        return row
    reqs = rp.requests()[start_count:] if rp else []
    first = next((float(r["t"]) for r in reqs if r["path"].endswith("/pods")), None)
    row.sampled(rss, events, since=first)
    row.finish(events, end - (first or proc.started))
    row.extra["wall_s"] = round(end - proc.started, 3)
    return row


# ------------------------------------------------------------------ spawn


def scenario_spawn(ctx: Ctx) -> list[Row]:
    n = ctx.n(20_000, 2_000)
    peer_n = ctx.n(4_000, 300)
    conc = 16
    act = ctx.scripts["act.sh"]
    rows: list[Row] = []
    if ctx.wants("xargs-limit"):
        row = _row("spawn", f"xargs -P{conc} (limit)", "xargs-limit")
        t0 = time.time()
        seq = subprocess.Popen(
            ["awk", f'BEGIN {{ for (i = 0; i < {n}; i++) print "ns-" i, "pod-" i }}'], stdout=subprocess.PIPE
        )
        subprocess.run(["xargs", "-P", str(conc), "-n", "2", str(act)], stdin=seq.stdout, check=True)
        seq.wait()
        rows.append(row.finish(n, time.time() - t0))
    for procs in (1, 2):
        if ctx.wants("spawner-limit"):
            out = subprocess.run(
                [
                    str(PY),
                    str(BENCH / "spawner.py"),
                    "--events",
                    str(n),
                    "--procs",
                    str(procs),
                    "--concurrency",
                    str(conc // procs),
                    str(act),
                ],
                capture_output=True,
                check=True,
                timeout=300,
            )
            doc = json.loads(out.stdout)
            rows.append(
                _row("spawn", f"python spawner x{procs} (limit)", "spawner-limit").finish(n, doc["seconds"])
            )
    with Replay(objects=n) as rp:
        w = Workload(rp.kubeconfig, act, conc, expect=n)
        if ctx.wants("fastobs"):
            rows.append(run_once_system(ctx, "spawn", "fastobs", rp, w, n, ctx.t(300), "fastobs (2 workers)"))
    with Replay(objects=peer_n) as rp:
        w = Workload(rp.kubeconfig, act, conc, expect=peer_n)
        for peer in PEERS:
            if ctx.wants(peer):
                rows.append(run_once_system(ctx, "spawn", peer, rp, w, peer_n, ctx.t(300)))
    return rows


# ------------------------------------------------------------------ io


def scenario_io(ctx: Ctx) -> list[Row]:
    n = ctx.n(2_000, 400)
    oc_n = ctx.n(400, 100)
    conc = 128
    rows: list[Row] = []
    with Replay(objects=n) as rp:
        w = Workload(rp.kubeconfig, ctx.scripts["io"], conc, expect=n)
        for system in ("fastobs", "kopf", "kubectl-xargs"):
            if ctx.wants(system):
                rows.append(run_once_system(ctx, "io", system, rp, w, n, ctx.t(300)))
    if ctx.wants("oc-observe"):
        with Replay(objects=oc_n) as rp:
            w = Workload(rp.kubeconfig, ctx.scripts["io"], 1, expect=oc_n)
            rows.append(run_once_system(ctx, "io", "oc-observe", rp, w, oc_n, ctx.t(300)))
    return rows


# ------------------------------------------------------------------ churn


def _wait_quiet(proc: Proc, logf: Path, expect: int, timeout: float, quiet: float = 1.0) -> None:
    """Until the command log has ``expect`` lines (when > 0) or has not grown for ``quiet`` s."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline and proc.popen.poll() is None:
        n = len(read_log(logf))
        if expect and n >= expect:
            return
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)


def _has_rv(logf: Path, rv: int) -> Callable[[], bool]:
    return lambda: any(r == rv for r, _, _ in read_log(logf))


def scenario_churn(ctx: Ctx) -> list[Row]:
    keys = ctx.n(2_000, 500)
    updates = ctx.n(20_000, 2_000)
    rows: list[Row] = []
    for label, flags in (("fastobs (coalesce)", ()), ("fastobs --no-coalesce", ("--no-coalesce",))):
        if not ctx.wants("fastobs"):
            continue
        why = available("fastobs")
        if why:
            rows.append(_skip("churn", label, why))
            continue
        with Replay(objects=keys, watch_events=updates) as rp:
            logf = ctx.work / f"churn-{len(flags)}.log"
            logf.unlink(missing_ok=True)
            w = Workload(
                rp.kubeconfig,
                ctx.scripts["lag"],
                32,
                once=False,
                log=logf,
                fastobs_flags=flags,
                rv_arg=True,
            )
            argv, env = argv_for("fastobs", w)
            last_rv = keys + updates
            row = _row("churn", label, "fastobs")
            proc = launch(argv, env)
            with RssSampler(proc.popen.pid) as rss:
                ok = wait_running(proc, _has_rv(logf, last_rv), ctx.t(240), 0.1)
                # Keys finish out of order: other keys' commands may still be queued when
                # the last update's command has run. Wait until the log stops growing.
                if ok:
                    _wait_quiet(proc, logf, expect=(keys + updates) if flags else 0, timeout=ctx.t(60))
            stats = rp.stats()
            stop(proc)
            entries = read_log(logf)
            row.sampled(rss, len(entries), since=rp.first_list_time())
            if not ok:
                row.note = "failed: the last update's command never ran"
                rows.append(row)
                continue
            t_last = min(t for rv, _, t in entries if rv == last_rv)
            sent_last = stats["sent_at"][-1]
            t_end = max(t for _, _, t in entries)
            row.finish(len(entries), t_end - (rp.first_list_time() or proc.started))
            row.extra.update(
                commands=len(entries),
                events=keys + updates,
                last_update_to_done_ms=round((t_last - sent_last) * 1000, 1),
            )
            row.note = (
                f"{len(entries)} commands for {keys + updates} events; last update done after "
                f"{row.extra['last_update_to_done_ms']} ms"
            )
            rows.append(row)
    return rows


# ------------------------------------------------------------------ ingest


def scenario_ingest(ctx: Ctx) -> list[Row]:
    n = ctx.n(100_000, 20_000)
    peer_n = ctx.n(20_000, 5_000)
    rows: list[Row] = []
    with Replay(objects=n) as rp:
        w = Workload(rp.kubeconfig, None, 16, expect=n)
        if ctx.wants("fastobs"):
            rows.append(run_once_system(ctx, "ingest-list", "fastobs", rp, w, n, ctx.t(300)))
        if ctx.wants("oc-observe"):
            rows.append(run_once_system(ctx, "ingest-list", "oc-observe", rp, w, n, ctx.t(300)))
    with Replay(objects=peer_n) as rp:
        w = Workload(rp.kubeconfig, None, 16, expect=peer_n)
        for peer in ("kopf", "kubectl-xargs"):
            if ctx.wants(peer):
                rows.append(run_once_system(ctx, "ingest-list", peer, rp, w, peer_n, ctx.t(300)))
    # The watch path: a small list, then n MODIFIED events as fast as the client reads.
    if ctx.wants("fastobs"):
        why = available("fastobs")
        if why:
            rows.append(_skip("ingest-watch", "fastobs", why))
            return rows
        with Replay(objects=1_000, watch_events=n) as rp:
            w = Workload(rp.kubeconfig, None, 16, once=False)
            argv, env = argv_for("fastobs", w)
            row = _row("ingest-watch", "fastobs", "fastobs")
            proc = launch(argv, env)
            with RssSampler(proc.popen.pid) as rss:
                done = wait_running(proc, lambda: bool(rp.stats()["stream_done"]), ctx.t(300), 0.2)
            stats = rp.stats()
            stop(proc)
            row.sampled(rss, n, since=stats["stream_started"])
            if done:
                row.finish(n, stats["stream_done"] - stats["stream_started"])
                row.note = "time for the server to write every event (the client reads at its own pace)"
            else:
                row.note = "failed: the watch stream was not consumed"
            rows.append(row)
    return rows


# ------------------------------------------------------------------ startup


def scenario_startup(ctx: Ctx) -> list[Row]:
    reps = ctx.n(3, 1)
    rows: list[Row] = []
    for system in ("fastobs", *PEERS):
        if not ctx.wants(system):
            continue
        why = available(system)
        if why:
            rows.append(_skip("startup", system, why))
            continue
        firsts, cmds = [], []
        note = ""
        for rep in range(reps):
            with Replay(objects=100) as rp:
                logf = ctx.work / f"startup-{system}-{rep}.log"
                logf.unlink(missing_ok=True)
                w = Workload(rp.kubeconfig, ctx.scripts["lag"], 16, expect=100, log=logf, rv_arg=True)
                argv, env = argv_for(system, w)
                proc = launch(argv, env)
                status, _, err = wait(proc, ctx.t(60))
                first = rp.first_list_time()
                entries = read_log(logf)
                if status != 0 or first is None or not entries:
                    note = f"failed: exit {status} {err.strip()[-100:]}"
                    continue
                firsts.append(first - proc.started)
                cmds.append(min(t for _, _, t in entries) - proc.started)
        row = _row("startup", system, system)
        row.note = note
        if firsts:
            row.extra.update(
                first_list_ms=round(sorted(firsts)[len(firsts) // 2] * 1000, 1),
                first_command_ms=round(sorted(cmds)[len(cmds) // 2] * 1000, 1),
            )
            row.note = (
                f"first list request {row.extra['first_list_ms']} ms, first command "
                f"{row.extra['first_command_ms']} ms after launch (median of {len(firsts)})"
            )
            if system == "fastobs":
                row.extra.update(_import_costs(reps))
                row.note += (
                    f"; the parent's imports {row.extra['import_ms']} ms, of which "
                    f"{row.extra['import_first_request_ms']} ms before the first request "
                    f"(aiohttp alone {row.extra['import_aiohttp_ms']} ms, a bare interpreter "
                    f"{row.extra['interpreter_ms']} ms)"
                )
        rows.append(row)
    return rows


def _import_costs(reps: int) -> dict[str, float]:
    """Where fastobs's start-up goes: the wall time of a bare interpreter, of importing
    everything the parent imports, of what it imports before its first request (the
    prefetch, and yaml for the kubeconfig), and of aiohttp alone (medians of ``reps`` fresh
    interpreters)."""
    probes = {
        "interpreter_ms": "pass",
        "import_ms": "import fastobs.cli, fastobs.daemon",
        "import_first_request_ms": "import fastobs.cli, fastobs.prefetch, yaml",
        "import_aiohttp_ms": "import aiohttp",
    }
    out = {}
    for key, stmt in probes.items():
        times = []
        for _ in range(max(reps, 3)):
            t0 = time.monotonic()
            subprocess.run([str(PY), "-c", stmt], check=True)
            times.append((time.monotonic() - t0) * 1000)
        out[key] = round(sorted(times)[len(times) // 2], 1)
    out["import_ms"] = round(out["import_ms"] - out["interpreter_ms"], 1)
    out["import_first_request_ms"] = round(out["import_first_request_ms"] - out["interpreter_ms"], 1)
    out["import_aiohttp_ms"] = round(out["import_aiohttp_ms"] - out["interpreter_ms"], 1)
    return out


# ------------------------------------------------------------------ lag


def _lag_run(ctx: Ctx, keys: int, events: int, rate: float, tag: str) -> tuple[Row, float]:
    """fastobs --no-coalesce on a watch of ``events`` updates; returns the row and events/s.

    The watch's events are held back until every listed key's command has run, so the
    figures are the steady state at ``rate``, not the initial list's backlog; fastobs's own
    histograms are read before and after, and only the difference (the watch's events)
    counts."""
    with Replay(objects=keys, watch_events=events, watch_rate=rate, hold_watch=True) as rp:
        logf = ctx.work / f"lag-{abs(hash(tag))}.log"
        logf.unlink(missing_ok=True)
        port = free_port()
        w = Workload(
            rp.kubeconfig,
            ctx.scripts["lag"],
            32,
            once=False,
            log=logf,
            fastobs_flags=("--no-coalesce", "--listen-addr", f"127.0.0.1:{port}"),
            rv_arg=True,
        )
        argv, env = argv_for("fastobs", w)
        first_rv, last_rv = keys + 1, keys + events
        row = _row("lag", f"fastobs @ {tag}", "fastobs")
        proc = launch(argv, env)
        with RssSampler(proc.popen.pid) as rss:
            synced = wait_running(proc, lambda: len(read_log(logf)) >= keys, ctx.t(60 + keys / 100), 0.1)
            time.sleep(0.5)  # the last DONE frames reach the parent's histograms
            before = _scrape(port)
            rp.go()
            ok = synced and wait_running(proc, _has_rv(logf, last_rv), ctx.t(60 + events / 200), 0.1)
            wait_for(lambda: sum(1 for rv, _, _ in read_log(logf) if rv >= first_rv) >= events, 2, 0.1)
            time.sleep(0.2)
            after = _scrape(port)
        stats = rp.stats()
        stop(proc)
    row.sampled(rss, events, since=stats["stream_started"])
    if not ok:
        row.note = "failed: " + ("the initial list was not handled" if not synced
                                 else "the last event's command never ran")
        return row, 0.0
    runs = {rv: t for rv, _, t in sorted(read_log(logf), key=lambda x: -x[2]) if rv >= first_rv}
    lags = [
        (runs[keys + 1 + e] - sent) * 1000 for e, sent in enumerate(stats["sent_at"]) if keys + 1 + e in runs
    ]
    span = max(runs.values()) - stats["stream_started"]
    row.finish(len(runs), span)
    row.lag_p50_ms, row.lag_p99_ms = round(percentile(lags, 50), 2), round(percentile(lags, 99), 2)
    row.extra["offered_rate"] = rate
    watch_only = _delta(before, after)
    own = histogram_quantiles(watch_only, "fastobs_command_start_lag_seconds", (0.5, 0.99))
    if own[0] is not None:
        # fastobs's own histogram starts at receipt (no transport): a cross-check.
        row.extra["own_start_lag_p50_le_ms"], row.extra["own_start_lag_p99_le_ms"] = (
            None if v is None else v * 1000 for v in own
        )
        p99 = f"{own[1] * 1000:g} ms" if own[1] is not None and own[1] != float("inf") else "the top bucket"
        row.note = f"fastobs's own start-lag histogram: p50 ≤ {own[0] * 1000:g} ms, p99 ≤ {p99}"
    _breakdown(row, lags, _stages(watch_only))
    if rate and row.events_per_s < 0.98 * rate:
        # The machine gave fastobs less than this rate by then (the maximum was measured
        # at another load): events queued up, and the lag is that backlog's, not a steady state.
        row.note = f"fell behind: {row.events_per_s:.0f}/s of {rate:.0f}/s offered; {row.note}"
    return row, row.events_per_s


def _scrape(port: int) -> dict[str, float]:
    """Every sample of fastobs's /metrics (``name{labels}`` -> value); empty on failure."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def _delta(before: dict[str, float], after: dict[str, float]) -> str:
    """The samples that grew between two scrapes, as exposition text (counters and
    histograms of what happened in between)."""
    return "\n".join(f"{k} {v - before.get(k, 0.0)}" for k, v in after.items())


Stage = tuple[float, float, float | None, float | None]
"""One start-lag stage: (count, sum s, bound of the bucket holding its p99 s, p99 estimate s)."""


def _stages(text: str) -> dict[str, Stage]:
    """Per start-lag stage of fastobs (queue, handoff, spawn), from its
    fastobs_command_start_stage_seconds histogram."""
    out = {}
    for stage in ("queue", "handoff", "spawn"):
        lines = [ln for ln in text.splitlines() if f'stage="{stage}"' in ln]
        sub_text = "\n".join(lines)
        name = "fastobs_command_start_stage_seconds"
        count = next((float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(name + "_count")), 0.0)
        total = next((float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(name + "_sum")), 0.0)
        if count:
            out[stage] = (count, total, histogram_quantiles(sub_text, name, (0.99,))[0],
                          histogram_estimates(sub_text, name, (0.99,))[0])
    return out


def _breakdown(row: Row, lags_ms: list[float], stages: dict[str, Stage]) -> None:
    """The lag's breakdown, receipt → dispatch → worker → exec: the mean of each stage and,
    for fastobs's own three, its p99 (interpolated inside the histogram bucket that holds
    it, with that bucket's bound), in ms. ``receipt`` is the server's write to fastobs's
    receipt plus what follows the exec (derived: the end-to-end mean less the stages
    fastobs measures itself)."""
    if not stages or not lags_ms or len(stages) < 3:
        return
    means = {k: v[1] / v[0] * 1000 for k, v in stages.items()}
    e2e = sum(lags_ms) / len(lags_ms)
    parts = {"receipt": e2e - sum(means.values()), "dispatch": means["queue"], "worker": means["handoff"],
             "exec": means["spawn"]}
    named = (("dispatch", "queue"), ("worker", "handoff"), ("exec", "spawn"))
    row.extra["breakdown_mean_ms"] = {k: round(v, 3) for k, v in parts.items()}
    row.extra["breakdown_p99_le_ms"] = {
        name: (None if (bound := stages[k][2]) is None else bound * 1000) for name, k in named
    }
    row.extra["breakdown_p99_ms"] = {
        name: (None if (est := stages[k][3]) is None else round(est * 1000, 2)) for name, k in named
    }
    text = " → ".join(f"{k} {v:.2f}" for k, v in parts.items())
    p99 = ", ".join(
        f"{name} {est:.1f} (≤ {bound:g})"
        for name, _ in named
        if (est := row.extra["breakdown_p99_ms"][name]) is not None
        and (bound := row.extra["breakdown_p99_le_ms"][name]) is not None
    )
    row.note = f"mean ms: {text}; p99 ms (bucket): {p99}" + (f"; {row.note}" if row.note else "")


def scenario_lag(ctx: Ctx) -> list[Row]:
    if not ctx.wants("fastobs"):
        return []
    why = available("fastobs")
    if why:
        return [_skip("lag", "fastobs", why)]
    keys = ctx.n(4_000, 1_000)
    seconds = ctx.n(10, 3)
    rows: list[Row] = []
    for rate in ctx.lag_rates:
        r, _ = _lag_run(ctx, keys, int(rate * seconds), rate, f"{rate:g}/s")
        rows.append(r)
    if ctx.lag_rates:
        return rows
    row, max_rate = _lag_run(ctx, keys, ctx.n(10_000, 1_500), 0.0, "max rate")
    rows.append(row)
    if max_rate <= 0:
        return rows
    for frac in (0.5, 0.9):
        rate = max_rate * frac
        r, _ = _lag_run(ctx, keys, int(rate * seconds), rate, f"{int(frac * 100)}% ({rate:.0f}/s)")
        rows.append(r)
    return rows


# ------------------------------------------------------------------ scaling


def scenario_scaling(ctx: Ctx) -> list[Row]:
    if not ctx.wants("fastobs"):
        return []
    n = ctx.n(20_000, 3_000)
    rows: list[Row] = []
    with Replay(objects=n) as rp:
        for workers in (1, 2, 4):
            w = Workload(rp.kubeconfig, ctx.scripts["act.sh"], 8 * workers, workers=workers)
            rows.append(
                run_once_system(
                    ctx, "scaling", "fastobs", rp, w, n, ctx.t(300), f"fastobs {workers} worker(s)"
                )
            )
    return rows


# ------------------------------------------------------------------ real apiserver


class DevCluster:
    """A private ``scripts/dev-cluster`` (own state dir), or a given kubeconfig."""

    def __init__(self, ctx: Ctx) -> None:
        self.env = dict(os.environ, FASTOBS_DEV_CLUSTER_DIR=str(ctx.work / "cluster"))
        self.script = ROOT / "scripts" / "dev-cluster"
        self.owned = ctx.kubeconfig is None
        self.kubeconfig = ctx.kubeconfig

    def __enter__(self) -> DevCluster:
        if self.owned:
            if not self.script.exists():
                raise RuntimeError("scripts/dev-cluster is missing")
            error = ""
            for _ in range(2):  # a loaded machine can miss the readiness deadline once
                out = subprocess.run(
                    [str(self.script), "up"], env=self.env, capture_output=True, text=True, timeout=900
                )
                last = (out.stdout.strip().splitlines() or [""])[-1]
                if out.returncode == 0 and last.startswith("export KUBECONFIG="):
                    self.kubeconfig = Path(last.split("=", 1)[1])
                    return self
                errors = [ln for ln in out.stderr.splitlines() if "error" in ln]
                error = (errors or out.stderr.strip().splitlines() or ["no output"])[0]
                subprocess.run([str(self.script), "down"], env=self.env, capture_output=True, timeout=120)
            raise RuntimeError(f"dev-cluster up failed: {error}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            subprocess.run([str(self.script), "down"], env=self.env, capture_output=True, timeout=120)


def _live_lag(ctx: Ctx, system: str, kubeconfig: Path, ns: str, count: int, rate: float, rnd: int,
              label: str = "") -> Row:
    """Starts ``system`` on the existing Pods, then patches each once at ``rate``/s and
    measures patch response -> command start per resourceVersion."""
    why = available(system)
    if why:
        return _skip("apiserver-lag", system, why)
    logf = ctx.work / f"api-lag-{system}.log"
    logf.unlink(missing_ok=True)
    w = Workload(
        kubeconfig,
        ctx.scripts["lag"],
        32,
        expect=2 * count,
        once=False,
        log=logf,
        rv_arg=True,
        fastobs_flags=("-n", ns),
    )
    port = free_port()
    if system == "fastobs":
        w.fastobs_flags = (*w.fastobs_flags, "--listen-addr", f"127.0.0.1:{port}")
    argv, env = argv_for(system, w)
    row = _row("apiserver-lag", f"{system} @ {rate:.0f}/s{label}", system)
    proc = launch(argv, env)
    with RssSampler(proc.popen.pid, main_exe=main_exe(system)) as rss:
        synced = wait_running(proc, lambda: len(read_log(logf)) >= count, 120, 0.1)
        if not synced:
            stop(proc)
            row.note = "failed: initial list not handled"
            return row
        time.sleep(0.5)  # the last DONE frames reach the parent's histograms
        before = _scrape(port) if system == "fastobs" else {}
        writes = asyncio.run(_patch(kubeconfig, ns, count, rate, rnd))
        want = {rv for rv, _ in writes}
        done = wait_running(proc, lambda: want <= {rv for rv, _, _ in read_log(logf)}, 60 + count / 50, 0.1)
        time.sleep(0.2)
        stages = _stages(_delta(before, _scrape(port))) if system == "fastobs" else {}
    stop(proc)
    ran = {rv: t for rv, _, t in read_log(logf)}
    row.sampled(rss, len(writes), since=min((t for _, t in writes), default=None))
    lags = [(ran[rv] - t) * 1000 for rv, t in writes if rv in ran]
    if not lags:
        row.note = "failed: no patched object reached the command"
        return row
    row.finish(len(lags), max(ran[rv] for rv, _ in writes if rv in ran) - min(t for _, t in writes))
    row.lag_p50_ms, row.lag_p99_ms = round(percentile(lags, 50), 2), round(percentile(lags, 99), 2)
    if not done:
        row.note = f"only {len(lags)} of {count} patches reached the command"
    _breakdown(row, lags, stages)
    return row


async def _patch(kubeconfig: Path, ns: str, count: int, rate: float, rnd: int) -> list[tuple[int, float]]:
    async with Loader(kubeconfig, 16) as ld:
        return await ld.patch_pods(ns, count, rate, rnd)


def scenario_apiserver(ctx: Ctx) -> list[Row]:
    count = ctx.n(2_000, 300)
    rate = ctx.n(200, 100)
    rows: list[Row] = []
    ns = f"bench-{os.getpid()}"
    try:
        cluster = DevCluster(ctx).__enter__()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return [_skip("apiserver", "kube-apiserver", str(exc))]
    try:
        assert cluster.kubeconfig is not None
        t0 = time.time()
        created = asyncio.run(_create(cluster.kubeconfig, ns, count))
        rows.append(
            Row("apiserver-create", "loader (16 in flight)", note="Pods created via POST").finish(
                len(created), time.time() - t0
            )
        )
        w = Workload(cluster.kubeconfig, ctx.scripts["act.sh"], 16, expect=count, fastobs_flags=("-n", ns))
        for system in ("fastobs", *PEERS):
            if ctx.wants(system):
                rows.append(run_once_system(ctx, "apiserver-list", system, None, w, count, ctx.t(300)))
        # Two rounds, the systems in turn: the machine's load drifts, and a system measured
        # only once at a busy moment would look slower than it is.
        systems = [s for s in ("fastobs", *PEERS) if ctx.wants(s)]
        for rnd in range(ctx.n(2, 1)):
            for k, system in enumerate(systems):
                rows.append(_live_lag(ctx, system, cluster.kubeconfig, ns, count, rate,
                                      1 + k + rnd * len(systems), label=f" #{rnd + 1}" if rnd else ""))
    finally:
        cluster.__exit__()
    return rows


async def _create(kubeconfig: Path, ns: str, count: int) -> list[tuple[int, float]]:
    async with Loader(kubeconfig, 16) as ld:
        await ld.namespace(ns)
        return await ld.create_pods(ns, count)


SCENARIOS: dict[str, Callable[[Ctx], list[Row]]] = {
    "spawn": scenario_spawn,
    "io": scenario_io,
    "churn": scenario_churn,
    "ingest": scenario_ingest,
    "startup": scenario_startup,
    "lag": scenario_lag,
    "scaling": scenario_scaling,
    "apiserver": scenario_apiserver,
}


# ------------------------------------------------------------------ output


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def table(rows: list[Row]) -> str:
    head = (
        "scenario",
        "system",
        "events",
        "seconds",
        "events/s",
        "lag p50 ms",
        "lag p99 ms",
        "parent MiB",
        "worker MiB",
        "parent µs/ev",
        "workers µs/ev",
        "load",
        "version",
        "note",
    )
    lines = [head]
    for r in rows:
        lines.append(
            (
                r.scenario,
                r.system,
                str(r.events) if r.events else "-",
                _fmt(r.seconds or None, 2),
                _fmt(r.events_per_s or None, 0),
                _fmt(r.lag_p50_ms),
                _fmt(r.lag_p99_ms),
                _fmt(r.parent_rss_mib),
                _fmt(r.worker_rss_mib),
                _fmt(r.parent_cpu_us, 0),
                _fmt(r.worker_cpu_us, 0),
                _fmt(r.load),
                r.version,
                r.note,
            )
        )
    widths = [max(len(x[i]) for x in lines) for i in range(len(head) - 1)]
    out = []
    for k, x in enumerate(lines):
        out.append("  ".join(c.ljust(widths[i]) if i < len(widths) else c for i, c in enumerate(x)).rstrip())
        if k == 0:
            out.append("  ".join("-" * wd for wd in widths) + "  ----")
    return "\n".join(out)


def markdown(rows: list[Row]) -> str:
    out = [
        "| scenario | system | events | s | events/s | lag p50 ms | lag p99 ms | parent MiB | worker MiB "
        "| parent µs/ev | workers µs/ev | load | version | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.scenario} | {r.system} | {r.events or '-'} | {_fmt(r.seconds or None, 2)} | "
            f"{_fmt(r.events_per_s or None, 0)} | {_fmt(r.lag_p50_ms)} | {_fmt(r.lag_p99_ms)} | "
            f"{_fmt(r.parent_rss_mib)} | {_fmt(r.worker_rss_mib)} | {_fmt(r.parent_cpu_us, 0)} | "
            f"{_fmt(r.worker_cpu_us, 0)} | {_fmt(r.load)} | {r.version} | {r.note} |"
        )
    return "\n".join(out)


def _compile_bytecode() -> None:
    """Write fastobs's bytecode, as installing its wheel does. A checkout installed in
    editable mode otherwise compiles every module from source at each start when
    PYTHONDONTWRITEBYTECODE is set (60-100 ms of CPU measured on the 2-core machine), a
    cost no installed copy pays and the peers (a Go binary, pip-installed packages) don't."""
    import compileall

    compileall.compile_dir(str(ROOT / "fastobs"), quiet=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fastobs benchmarks")
    p.add_argument("--quick", action="store_true", help="small workloads (about 2 minutes in all)")
    p.add_argument("--json", type=Path, help="results file (default bench/results/<date>.json)")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument(
        "--systems",
        help="comma-separated subset: fastobs,oc-observe,kopf,kubectl-xargs,xargs-limit,spawner-limit",
    )
    p.add_argument(
        "--kubeconfig", type=Path, help="apiserver scenario: use this cluster instead of a private one"
    )
    p.add_argument(
        "--oc",
        type=Path,
        help="the oc binary for the oc observe peer (default: oc on PATH, else the package build "
        "in bench/.peers/oc)",
    )
    p.add_argument(
        "--lag-rate", type=float, action="append", default=[], metavar="R",
        help="lag scenario: run at R events/s (repeatable) instead of the maximum, 50%% and 90%% of it",
    )
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"default: all of {', '.join(SCENARIOS)}")
    args = p.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(unknown)}")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"fastobs-bench-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    systems = set(args.systems.split(",")) if args.systems else None
    oc = choose_oc(args.oc.resolve() if args.oc else None)
    log(f"oc observe peer: {oc} ({version('oc-observe')})")
    ctx = Ctx(args.quick, write_scripts(work), work, systems, args.kubeconfig, tuple(args.lag_rate))
    _compile_bytecode()
    started = time.time()
    rows: list[Row] = []
    # --quick leaves out the real-apiserver scenario (starting etcd + kube-apiserver alone
    # takes a good part of the budget) unless it is named.
    default = [s for s in SCENARIOS if not (args.quick and s == "apiserver")]
    for name in args.scenarios or default:
        log(f"== {name}")
        t0 = time.time()
        new = SCENARIOS[name](ctx)
        for r in new:
            log(f"   {r.system}: {_fmt(r.events_per_s or None, 0)} events/s {r.note}")
        rows.extend(new)
        log(f"   ({time.time() - t0:.1f} s)")
    print(table(rows))
    if args.markdown:
        print()
        print(markdown(rows))
    out = args.json or BENCH / "results" / f"{time.strftime('%Y-%m-%dT%H%M%S', time.gmtime(started))}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": machine(),
        "mode": "quick" if args.quick else "full",
        "started": started,
        "duration_s": round(time.time() - started, 1),
        "rows": [r.as_json() for r in rows],
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nresults: {out}  ({doc['duration_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
