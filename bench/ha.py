"""A group of replicas, measured: takeover time, re-runs after a restart, moved buckets,
events per replica with client- and server-side filtering, and a long churn under faults.

usage: bench/ha.py [--quick] [--json FILE] [SCENARIO ...]

Scenarios (all by default): ``failover``, ``restart``, ``scale``, ``filtering``, ``churn``,
``steady``.
Each starts what it needs on a kube-apiserver + etcd of its own (``tests/k8s_cluster.py``,
with the ``ShardedListAndWatch`` feature gate) and real fastobs processes on loopback
(``tests/ha_harness.py``). ``--quick`` shrinks every workload (the 10,000-object restart
becomes 1,000). Figures go to stdout as a table, and with ``--json`` to a file.

Lease timing is the design study's test timing (lease 4 s, renew deadline 3 s, retry 0.5 s,
kill grace 0.5 s) unless a row says ``defaults`` (15 s / 10 s / 2 s / 2 s); the restart of
10,000 objects uses the defaults. The failover goal
is lease + 1.2 × retry + 0.5 s: 5.1 s with the test timing, 17.9 s with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import k8s_cluster as kc  # noqa: E402
from ha_harness import (  # noqa: E402
    Api,
    Group,
    Loader,
    Replica,
    Timing,
    first_start,
    free_port,
    settle,
    stop_everything,
)

Row = dict[str, Any]
DEFAULTS = Timing(15.0, 10.0, 2.0, 2.0)
"""client-go's lease timing (15 s / 10 s / 2 s) and fastobs's default kill grace."""


def _ns(api: Api, what: str) -> str:
    name = f"bench-{what}-{secrets.token_hex(3)}"
    api.namespace(name)
    return name


def _workdir(base: Path, what: str) -> Path:
    path = base / what
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ----------------------------------------------------------------------------- scenarios


def failover(api: Api, base: Path, quick: bool) -> list[Row]:
    """B=1, two replicas under churn; SIGKILL the leader, again and again: kill → the first
    command of the standby. Then once with client-go's default timing."""
    rows: list[Row] = []
    for timing, label, trials in ((Timing(), "test timing", 2 if quick else 5),
                                  (DEFAULTS, "defaults", 1)):
        ns = _ns(api, "failover")
        group = Group(api, ns, _workdir(base, f"failover-{timing.lease_duration:g}"), lease="le", buckets=1,
                      timing=timing, sleep_ms=(5, 30))
        loader = Loader(api, ns, 100, rate=30, delete_share=0.05)
        loader.create_all()
        for name in ("a", "b"):
            group.add(name)
        group.start("a")
        group.wait_owned(["a"], timeout=120)
        group.start("b")
        group.wait_joined(["b"], timeout=120)
        loader.start()
        times: list[float] = []
        leader, standby = "a", "b"
        for _ in range(trials):
            time.sleep(2.0)
            killed = group.note(f"SIGKILL {leader}", group.replicas[leader].kill())
            group.wait_owned([standby], timeout=6 * timing.lease_duration + 30)
            deadline = time.monotonic() + 10
            took = None
            while took is None and time.monotonic() < deadline:
                took = first_start(group.invocations(), killed, replica=standby)
                time.sleep(0.05)
            times.append((took or float("nan")) - killed)
            group.start(leader)
            group.wait_joined([leader], timeout=120)
            leader, standby = standby, leader
        loader.stop()
        report, _ = settle(group, {f"{ns}/{n}" for n in loader.names})
        group.stop_all()
        rows.append({"scenario": "failover", "timing": label, "trials": len(times),
                     "takeover_s": [round(t, 2) for t in times],
                     "median_s": round(statistics.median(times), 2), "max_s": round(max(times), 2),
                     "goal_s": round(timing.failover_goal, 2), "met": max(times) <= timing.failover_goal,
                     "check": report.summary()})
    return rows


def _commands(group: Group) -> int:
    total = 0
    for r in group.replicas.values():
        m = r.metrics()
        total += int(sum(v for k, v in m.items() if k.startswith("fastobs_commands_total")))
    return total


def _wait_idle(group: Group, expected: int, timeout: float, stalled: float = 120.0) -> int:
    """Until the replicas together ran ``expected`` commands and then none for 3 s (or none
    for ``stalled`` seconds short of ``expected``: the row then shows the shortfall)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = _commands(group)
        if now != last:
            last, since = now, time.monotonic()
        elif now >= expected and time.monotonic() - since > 3.0:
            return now
        elif time.monotonic() - since > stalled:
            print(f"   stalled at {now} of {expected} commands", file=sys.stderr)
            return now
        time.sleep(0.5)
    return last


def restart(api: Api, base: Path, quick: bool) -> list[Row]:
    """A settled group of N objects (3 replicas, 16 buckets): restart every replica
    (gracefully, then by SIGKILL) and count the commands that run again. A single fastobs
    without --lease-name (oc observe's behaviour) re-runs every object at each start."""
    objects = 1000 if quick else 10_000
    ns = _ns(api, "restart")
    loader = Loader(api, ns, objects)
    began = time.monotonic()
    loader.create_all(threads=16)
    created = time.monotonic() - began
    work = _workdir(base, "restart")
    extra = ["--workers", "2", "--concurrency", "32"]

    def start_group(tag: str) -> Group:
        # client-go's default timing: with the test timing's 3 s renew deadline, the API server
        # of this shared 2-core machine, busy with three lists of 10,000 objects, answers
        # renewals too late, and the replicas keep fencing themselves.
        group = Group(api, ns, work / tag, lease="restart", buckets=16, extra=extra, timing=DEFAULTS)
        for name in ("a", "b", "c"):
            group.add(name)
            group.replicas[name].argv[-1] = "true"  # the command: /bin/true, counted on /metrics
        return group

    first = start_group("first")
    first.start("a", "b", "c")
    settled = _wait_idle(first, objects, timeout=1800)
    rows: list[Row] = [{"scenario": "restart", "step": "first start", "objects": objects,
                        "commands": settled, "create_s": round(created, 1)}]
    for r in first.replicas.values():
        r.stop()
    graceful = start_group("graceful")
    graceful.start("a", "b", "c")
    graceful.wait_owned(["a", "b", "c"], timeout=180)
    reruns = _wait_idle(graceful, 0, timeout=60)
    rows.append({"scenario": "restart", "step": "graceful restart of all 3", "objects": objects,
                 "commands": reruns, "goal": 0})
    old = set(graceful.holders().values())
    for r in graceful.replicas.values():
        r.kill()
    crashed = start_group("sigkill")
    crashed.start("a", "b", "c")
    crashed.wait_owned(["a", "b", "c"], timeout=300, not_by=old)
    reruns = _wait_idle(crashed, 0, timeout=60)
    rows.append({"scenario": "restart", "step": "SIGKILL of all 3, then start", "objects": objects,
                 "commands": reruns, "goal": 0})
    crashed.stop_all()
    # The same objects, one fastobs alone (oc observe's behaviour at every start).
    solo = Replica("solo", [sys.executable, "-m", "fastobs", "configmaps", "-n", ns, "-q", "--listen-addr",
                            f"127.0.0.1:{(port := free_port())}", *extra, "--", "true"],
                   dict(crashed.replicas["a"].env), work, port)
    alone = Group(api, ns, work / "alone")
    alone.replicas["solo"] = solo.start()
    count = _wait_idle(alone, objects, timeout=1800)
    solo.stop()
    rows.append({"scenario": "restart", "step": "one fastobs without --lease-name (as oc observe), started",
                 "objects": objects, "commands": count})
    return rows


def scale(api: Api, base: Path, quick: bool) -> list[Row]:
    """B=16 under churn: 2 → 3 → 2 replicas; buckets moved at each change, against the
    minimum (the newcomer's share, then its holdings), and the drain-to-release times."""
    ns = _ns(api, "scale")
    group = Group(api, ns, _workdir(base, "scale"), lease="scale", buckets=16, sleep_ms=(10, 60))
    loader = Loader(api, ns, 400 if quick else 2000, rate=30, delete_share=0.05)
    loader.create_all(threads=16)
    for name in ("a", "b", "c"):
        group.add(name)
    group.start("a", "b")
    two = group.wait_owned(["a", "b"], timeout=180)
    loader.start()
    time.sleep(3.0)
    joined_at = time.monotonic()
    group.start("c")
    three = group.wait_owned(["a", "b", "c"], timeout=180)
    join_s = time.monotonic() - joined_at
    time.sleep(3.0)
    left_at = time.monotonic()
    group.replicas["c"].stop()
    back = group.wait_owned(["a", "b"], timeout=180)
    leave_s = time.monotonic() - left_at
    loader.stop()
    report, _ = settle(group, {f"{ns}/{n}" for n in loader.names}, timeout=300)
    handovers = []
    for r in group.replicas.values():
        m = r.metrics()
        handovers.append((m.get("fastobs_group_handover_seconds_sum", 0.0),
                          m.get("fastobs_group_handover_seconds_count", 0.0)))
    group.stop_all()
    runs = group.invocations()
    pairs = Counter((i.key, i.rv, i.type) for i in runs if i.finished)
    across = sum(1 for k, n in pairs.items() if n > 1 and len({i.replica for i in runs
                                                                if (i.key, i.rv, i.type) == k}) > 1)

    def moved(a: dict[int, str], b: dict[int, str]) -> int:
        return sum(1 for x, h in b.items() if a.get(x, "").split("@")[0] != h.split("@")[0])

    c_share = Counter(h.split("@")[0] for h in three.values())["c"]
    total_sum = sum(s for s, _ in handovers)
    total_count = sum(c for _, c in handovers)
    return [{"scenario": "scale", "step": "2 → 3", "moved": moved(two, three), "minimum": c_share,
             "balanced_after_s": round(join_s, 1)},
            {"scenario": "scale", "step": "3 → 2 (SIGTERM)", "moved": moved(three, back), "minimum": c_share,
             "balanced_after_s": round(leave_s, 1),
             "mean_drain_to_release_s": round(total_sum / total_count, 3) if total_count else None,
             "key_rv_run_by_two_replicas": across, "check": report.summary()}]


def _three_settled(group: Group, ns: str, loader: Loader, timeout: float) -> set[str]:
    """Start replicas a, b and c, wait until each owns buckets and every object has run;
    returns the objects' keys."""
    for name in ("a", "b", "c"):
        group.add(name)
    group.start("a", "b", "c")
    group.wait_owned(["a", "b", "c"], timeout=180)
    every = {f"{ns}/{n}" for n in loader.names}
    settle(group, every, timeout=timeout)
    return every


def filtering(api: Api, base: Path, quick: bool) -> list[Row]:
    """Three replicas, 16 buckets, --shard-key uid: events received per replica while every
    object changes once, with the server's shardSelector and with client-side filtering."""
    objects = 600 if quick else 3000
    rows: list[Row] = []
    for mode in ("server", "client"):
        ns = _ns(api, f"filter-{mode}")
        extra = ["--shard-key", "uid", "--shard-filter", mode, "--concurrency", "32"]
        group = Group(api, ns, _workdir(base, f"filter-{mode}"), lease=f"f{mode}", buckets=16,
                      sleep_ms=(1, 5), extra=extra)
        loader = Loader(api, ns, objects)
        loader.create_all(threads=16)
        every = _three_settled(group, ns, loader, timeout=600)
        time.sleep(2.0)
        before = {n: r.metrics() for n, r in group.replicas.items()}
        for name in loader.names:
            loader.counter += 1
            api.request("PATCH", f"/api/v1/namespaces/{ns}/configmaps/{name}",
                        {"data": {"n": str(loader.counter)}}, "application/merge-patch+json")
        report, _ = settle(group, every, timeout=600)
        after = {n: r.metrics() for n, r in group.replicas.items()}
        holders = Counter(h.split("@")[0] for h in group.holders().values())
        group.stop_all()
        for name in sorted(group.replicas):
            def delta(fate: str, n: str = name) -> int:
                key = f'fastobs_group_events_total{{fate="{fate}"}}'
                return int(after[n].get(key, 0) - before[n].get(key, 0))  # noqa: B023 - bound by n

            rows.append({"scenario": "filtering", "filter": mode, "replica": name, "buckets": holders[name],
                         "events_sent": objects, "received": delta("owned") + delta("foreign"),
                         "owned": delta("owned"), "dropped": delta("foreign"),
                         "bytes_share": round((delta("owned") + delta("foreign")) / objects, 3),
                         "check": report.summary() if name == "a" else ""})
    return rows


def churn(api: Api, base: Path, quick: bool) -> list[Row]:
    """Three replicas, 16 buckets, churn with deletes for minutes while faults follow one
    another: SIGKILL (then restart), SIGSTOP for twice the lease, a cut proxy for twice the
    lease. Counts overlaps and lost final states."""
    ns = _ns(api, "churn")
    t = Timing()
    group = Group(api, ns, _workdir(base, "churn"), lease="churn", buckets=16, sleep_ms=(10, 80))
    loader = Loader(api, ns, 300 if quick else 1000, rate=25, delete_share=0.08)
    loader.create_all(threads=16)
    group.add("a")
    group.add("b")
    group.add("c", via_proxy=True)
    group.start("a", "b", "c")
    group.wait_owned(["a", "b", "c"], timeout=180)
    group.wait_joined(["a", "b", "c"], timeout=120)
    loader.start()
    rounds = 1 if quick else 3
    faults: Counter[str] = Counter()
    for _ in range(rounds):
        for victim, fault in (("a", "kill"), ("b", "stop"), ("c", "cut")):
            time.sleep(3.0)
            others = [n for n in ("a", "b", "c") if n != victim]
            if fault == "kill":
                group.note(f"SIGKILL {victim}", group.replicas[victim].kill())
                group.wait_owned(others, timeout=120)
                group.start(victim)
            elif fault == "stop":
                began = group.note(f"SIGSTOP {victim}", group.replicas[victim].signal(19))
                group.wait_owned(others, timeout=120)
                time.sleep(max(0.0, began + 2 * t.lease_duration - time.time()))
                group.replicas[victim].signal(18)
            else:
                began = group.note(f"cut {victim}")
                group.proxies[victim].cut()
                group.wait_owned(others, timeout=120)
                time.sleep(max(0.0, began + 2 * t.lease_duration - time.time()))
                group.proxies[victim].heal()
            group.wait_owned(["a", "b", "c"], timeout=180)
            faults[fault] += 1
    loader.stop()
    report, _ = settle(group, {f"{ns}/{n}" for n in loader.names}, timeout=300)
    group.stop_all()
    return [{"scenario": "churn", "faults": dict(faults), "operations": dict(loader.ops),
             "overlaps": len(report.overlaps), "lost": len(report.lost),
             "unterminated": len(report.unterminated),
             "duplicates": report.duplicates, "stopped_by_fencing": report.killed,
             "shared_epochs": len(report.shared_epochs), "check": report.summary()}]


def steady(api: Api, base: Path, quick: bool) -> list[Row]:
    """Three replicas, 16 buckets, a constant write rate (50 patches/s over 500 objects) for
    60 s, no faults: lag from a write (its answer) to the start of the first command that saw
    it or a later state (p50, p99), each replica's share of the commands, overlaps and lost
    final states."""
    seconds, rate = (15.0 if quick else 60.0), 50.0
    ns = _ns(api, "steady")
    group = Group(api, ns, _workdir(base, "steady"), lease="steady", buckets=16, sleep_ms=(5, 20))
    loader = Loader(api, ns, 200 if quick else 500)
    loader.create_all(threads=16)
    every = _three_settled(group, ns, loader, timeout=300)
    load_before = os.getloadavg()[0]
    writes: list[tuple[str, int, float]] = []
    rng = random.Random(7)
    began = time.time()
    next_t = time.monotonic()
    end = next_t + seconds
    while time.monotonic() < end:
        name = rng.choice(loader.names)
        loader.counter += 1
        status, body = api.request("PATCH", f"/api/v1/namespaces/{ns}/configmaps/{name}",
                                   {"data": {"n": str(loader.counter)}}, "application/merge-patch+json")
        if status == 200:
            writes.append((f"{ns}/{name}", int(body["metadata"]["resourceVersion"]), time.time()))
        next_t += 1.0 / rate
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.monotonic()
    load_during = os.getloadavg()[0]
    report, _ = settle(group, every, timeout=300)
    runs = [r for r in group.invocations() if r.start >= began and r.rv.isdigit()]
    seen: dict[str, list[tuple[int, float]]] = {}
    for r in runs:
        seen.setdefault(r.key, []).append((int(r.rv), r.start))
    lags: list[float] = []
    unseen = 0
    for key, rv, at in writes:
        starts = [start for run_rv, start in seen.get(key, []) if run_rv >= rv]
        if starts:
            lags.append(min(starts) - at)
        else:
            unseen += 1
    lags.sort()
    share = Counter(r.replica for r in runs)
    holders = Counter(h.split("@")[0] for h in group.holders().values())
    group.stop_all()

    def pct(q: float) -> float:
        return round(1000 * lags[min(len(lags) - 1, int(q * len(lags)))], 1) if lags else float("nan")

    return [{"scenario": "steady", "seconds": seconds, "rate_goal": rate,
             "rate": round(len(writes) / seconds, 1),
             "writes": len(writes), "commands": len(runs), "lag_p50_ms": pct(0.50), "lag_p99_ms": pct(0.99),
             "lag_max_ms": pct(1.0), "writes_never_run": unseen,
             "share": {n: round(share[n] / max(1, len(runs)), 3) for n in sorted(share)},
             "buckets": dict(sorted(holders.items())), "overlaps": len(report.overlaps),
             "lost": len(report.lost),
             "loadavg_1m": [round(load_before, 2), round(load_during, 2)], "check": report.summary()}]


SCENARIOS: dict[str, Callable[[Api, Path, bool], list[Row]]] = {
    "failover": failover, "restart": restart, "scale": scale, "filtering": filtering, "churn": churn,
    "steady": steady,
}


def main(argv: list[str]) -> int:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop every replica
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    names = args.scenarios or list(SCENARIOS)
    state = kc.new_run_dir()
    print(f"starting a kube-apiserver with ShardedListAndWatch in {state}", file=sys.stderr)
    cluster = kc.start(state, die_with_parent=True, feature_gates={"ShardedListAndWatch": True})
    rows: list[Row] = []
    try:
        api = Api(cluster)
        for name in names:
            began = time.monotonic()
            print(f"== {name}", file=sys.stderr)
            got = SCENARIOS[name](api, state / "work", args.quick)
            for row in got:
                row["scenario_s"] = round(time.monotonic() - began, 1)
                print(json.dumps(row, ensure_ascii=False))
            rows += got
    finally:
        stop_everything()
        kc.stop_started(cluster)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"quick": args.quick, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
