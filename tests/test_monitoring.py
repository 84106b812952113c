"""Monitoring for real: a Prometheus server scrapes fastobs; every alert fires for its fault only.

Debian's Prometheus (``scripts/get-prometheus``) runs on loopback with a 1 s scrape and
evaluation interval and the shipped rule file scaled 60 times faster (minutes become
seconds; :func:`prometheus_run.scaled_rules` derives it from the shipped file). It scrapes
eight real fastobs processes at once, one per *scenario*, each watching its own namespace
while a thread keeps changing its objects:

* ``control``: churn, a command that fails (exit 3, retried once) on one key in 22, a slow
  (0.3 s) command on another: a healthy fastobs; nothing may fire for it;
* one scenario per alert, each running normally for a quiet phase and then given the fault
  its alert names: its command deleted (every command fails), every command slowed to
  2.5 s while its keys keep changing (a starving key: the lag alert), the only command
  slot held by a command that never ends, its worker SIGKILLed every second, its watch
  silenced by a proxy that holds every event back, the initial sync kept from finishing,
  and its API server (a separate dev cluster, so no other test loses its server) killed.

Each alert must fire for the scenario with its fault, after the fault, and for no other;
the test prints how long each took from the fault to firing. Every query of every
dashboard panel is then evaluated over the run through Prometheus's HTTP API: each must
return data, and the values must say what the run did (failures by the reasons caused,
the starving keys' lag above the threshold, the limit equal to workers x concurrency...).

Scaling caveats: what is not scaled can look 60 times bigger. The API server's watch
bookmarks (about one a minute) are not, so with the watch-silence threshold at 10 s every
scenario keeps its watch busy with churn (at full scale the bookmarks do that). Nor is a
worker's boot (a second or more with eight fastobs starting at once), which exceeds the
lag threshold scaled to 1 s: alerts active during start-up (until the alert's rate window
has moved past it) are printed, not failed, and a worker restart loop may also fire the lag
alert. Under a heavy foreign load (a load average many times the core count) the healthy
scenario itself falls behind by more than the scaled thresholds, and this test says so.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastobs_run import configmap, fastobs_argv, free_port, http_get, wait_until, worker_pids
from k8s_cluster import KubeCluster, new_run_dir, start, stop_started
from prometheus_run import (
    AlertLog,
    Episode,
    PrometheusServer,
    alert_rules,
    format_duration,
    get_tool,
    grafana_to_promql,
    panel_queries,
    parse_duration,
    scale_expr,
    scaled_rules,
)
from watch_proxy import WatchProxy

FACTOR = 60
"""The shipped rules' minutes become seconds."""
INTERVAL = "1s"
"""Scrape and rule evaluation interval."""
RATE_INTERVAL = "4s"
"""What Grafana's $__rate_interval is with a 1 s scrape interval (4 x the scrape interval)."""
QUIET = 15.0
"""Seconds each scenario runs normally before its fault."""
FIRE_WAIT = 60.0
"""Seconds after the last fault within which every alert must have fired."""
SLACK = 0.3
"""An alert polled just before its fault may show the evaluation that followed the fault."""
SLOW_ALL = 2.5
"""The lagging scenario's command time once slowed (its keys change every 0.4 s)."""

COMMAND = """#!/bin/sh
# $1 namespace, $2 name. Behaviour by object name, and by files in the scenario's directory.
d={dir}
case "$2" in
  bad) exit 3 ;;
  slow) sleep 0.3 ;;
  hang|first) while [ ! -e "$d/release" ]; do sleep 0.1; done ;;
esac
if [ -e "$d/slow-all" ]; then sleep {slow_all}; fi
exit 0
"""


@dataclass
class Scenario:
    """One fastobs process under test: its objects, its churn, its fault, and what it fires."""

    name: str
    expect: frozenset[str]
    fault: str
    keys: list[str]
    churn: list[str]
    interval: float
    flags: list[str]
    may: frozenset[str] = frozenset()
    """Alerts this fault may also fire at the test's scale only (see ``scenarios``)."""
    dir: Path = Path()
    ns: str = ""
    port: int = 0
    kube: KubeCluster | None = None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    fault_at: float | None = None
    patches: int = 0
    patch_errors: int = 0

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def command(self) -> Path:
        return self.dir / "cmd"


def scenarios() -> list[Scenario]:
    one = ["--workers=1"]
    four = [f"k{i}" for i in range(4)]
    control_keys = [f"cm{i:02}" for i in range(20)] + ["bad", "slow"]
    return [
        Scenario("control", frozenset(), "none", control_keys, control_keys, 0.2,
                 ["--workers=2", "--retry-on-exit-code=3", "--retry-count=1"]),
        Scenario("failing", frozenset({"FastobsFailureRatioHigh"}), "the command deleted",
                 four, four, 0.25, one),
        Scenario("lagging", frozenset({"FastobsLagHigh"}),
                 f"every command takes {SLOW_ALL} s while its keys keep changing", four, four, 0.1, one),
        Scenario("stuck", frozenset({"FastobsQueueStuck"}), "the only command slot held forever", four, four,
                 0.4, [*one, "--concurrency=1"]),
        # Each restart holds the keys' changes for a worker boot, a second or two under this
        # test's load: above the lag threshold scaled to 1 s (at full scale, 60 s, it is not).
        Scenario("crashloop", frozenset({"FastobsWorkerCrashLooping"}), "the worker SIGKILLed every second",
                 four, four, 0.4, one, may=frozenset({"FastobsLagHigh"})),
        Scenario("silent", frozenset({"FastobsWatchSilent"}), "every watch event held back by a proxy",
                 four, four, 0.4, one),
        # The one slot is held by the first listed object's command, so the second one is never
        # dispatched: the initial sync never ends, and that key also waits too long. The churn
        # goes to an object created after the first list: a watch event of a listed object would
        # put it before the list's backlog, and it would run first.
        Scenario("initsync", frozenset({"FastobsInitialSyncStuck", "FastobsQueueStuck"}),
                 "the initial sync kept from finishing (from its first scrape)", ["first", "second"],
                 ["later"], 0.4, [*one, "--concurrency=1"]),
        Scenario("watchdown", frozenset({"FastobsWatchDown"}), "its API server killed", four, four, 0.4, one),
    ]


@dataclass
class Run:
    prom: PrometheusServer
    scenarios: list[Scenario]
    t0: float
    ready_at: float
    """Every scenario synced (the initial-sync one excepted) and scraped."""
    t_end: float
    episodes: dict[tuple[str, str], list[Episode]]

    def scenario(self, name: str) -> Scenario:
        return next(sc for sc in self.scenarios if sc.name == name)


# ----------------------------------------------------------------------------- the run


def api_client(kube: KubeCluster) -> Any:
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(config_file=str(kube.kubeconfig)))


def prepare(sc: Scenario, kube: KubeCluster, base: Path, env: dict[str, str] | None = None) -> None:
    sc.dir = base / sc.name
    sc.dir.mkdir()
    script = sc.dir / "cmd.sh"
    script.write_text(COMMAND.format(dir=sc.dir, slow_all=SLOW_ALL))
    script.chmod(0o755)
    sc.command.symlink_to(script)  # the failing scenario's fault removes the link
    sc.kube = kube
    sc.env = env or kube.env
    sc.ns = f"mon-{sc.name}-{secrets.token_hex(3)}"
    kube.kubectl("create", "namespace", sc.ns)
    kube.apply({"apiVersion": "v1", "kind": "List",
                "items": [configmap(k, sc.ns, data={"v": "0"}) for k in sc.keys]})


def launch(sc: Scenario) -> None:
    argv = fastobs_argv("configmaps", "-n", sc.ns, f"--listen-addr=127.0.0.1:{sc.port}",
                        "--maximum-errors=-1", *sc.flags, "--", str(sc.command))
    with (sc.dir / "stdout").open("wb") as out, (sc.dir / "stderr").open("wb") as err:
        sc.proc = subprocess.Popen(argv, env=sc.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    sc.started = time.time()


def stop_fastobs(sc: Scenario) -> None:
    (sc.dir / "release").touch()
    if sc.proc is None or sc.proc.poll() is not None:
        return
    sc.proc.send_signal(signal.SIGTERM)
    try:
        sc.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        sc.proc.kill()
        sc.proc.wait()


def churn(sc: Scenario, stop: threading.Event) -> None:
    """Patch the scenario's churn keys round-robin every ``interval`` s until ``stop``; churn
    keys that are not listed objects are created first (after the first list: the scenario
    waits for its watch)."""
    assert sc.kube is not None
    api = api_client(sc.kube)
    late = [k for k in sc.churn if k not in sc.keys]
    if late:
        while gauge(sc, "fastobs_watch_up") != 1:
            if stop.wait(0.1):
                return
        for name in late:
            api.create_namespaced_config_map(sc.ns, configmap(name, sc.ns))
    i = 0
    while not stop.wait(sc.interval):
        name = sc.churn[i % len(sc.churn)]
        i += 1
        try:
            api.patch_namespaced_config_map(name, sc.ns, {"data": {"v": str(i)}}, _request_timeout=5)
            sc.patches += 1
        except Exception:  # noqa: BLE001 -- a killed API server refuses: counted, not fatal
            sc.patch_errors += 1


def gauge(sc: Scenario, name: str) -> float | None:
    """The sum of every sample of ``name`` on the scenario's /metrics; None if absent."""
    status, body = http_get(sc.port, "/metrics")
    if status != 200:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
              if line.startswith((name + " ", name + "{"))]
    return sum(values) if values else None


def alive(sc: Scenario) -> bool:
    if sc.proc is not None and sc.proc.poll() is not None:
        raise AssertionError(f"fastobs of {sc.name} exited with {sc.proc.returncode}:\n"
                             + (sc.dir / "stderr").read_text(errors="replace")[-3000:])
    return True


def ready(sc: Scenario) -> bool:
    """Started up: the watch is open, the first list handed out, and then, once, nothing queued
    or running, so every start-up command has ended and been observed (the initial-sync
    scenario's first command never ends: there, it is running)."""
    if not alive(sc) or gauge(sc, "fastobs_watch_up") != 1:
        return False
    if sc.name == "initsync":
        return gauge(sc, "fastobs_commands_running") == 1
    return (gauge(sc, "fastobs_initial_sync_done") == 1 and gauge(sc, "fastobs_workqueue_depth") == 0
            and gauge(sc, "fastobs_commands_running") == 0)


class Faults:
    """What each scenario's fault does (the crash loop's is repeated until its alert fires)."""

    def __init__(self, proxy: WatchProxy, cluster: Any) -> None:
        self.proxy = proxy
        self.cluster = cluster
        self.killed: list[int] = []
        self.last_kill = 0.0

    def inject(self, sc: Scenario) -> None:
        sc.fault_at = time.time()
        if sc.name == "failing":
            sc.command.unlink()
        elif sc.name == "lagging":
            (sc.dir / "slow-all").touch()
        elif sc.name == "stuck":
            assert sc.kube is not None
            sc.kube.apply(configmap("hang", sc.ns))
        elif sc.name == "crashloop":
            self.kill_worker(sc)
        elif sc.name == "silent":
            self.proxy.withhold()
        elif sc.name == "watchdown":
            os.kill(self.cluster.apiserver_pid, signal.SIGKILL)

    def kill_worker(self, sc: Scenario) -> None:
        """SIGKILL the worker once a second, and only a replacement that is up (a worker killed
        while it boots counts towards the boot-failure limit, which would stop fastobs)."""
        assert sc.proc is not None
        if time.monotonic() - self.last_kill < 1.0 or gauge(sc, "fastobs_workers_alive") != 1:
            return
        pids = [p for p in worker_pids(sc.proc.pid) if p not in self.killed]
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            self.killed.append(pids[0])
            self.last_kill = time.monotonic()


def own_cluster(stack: contextlib.ExitStack) -> Any:
    """A second dev cluster, for the scenario that kills its API server (no other test may
    lose its server), stopped with ``stack``; its state dir (and logs) is removed only when
    it stopped cleanly."""
    state = new_run_dir()
    try:
        cluster = start(state, die_with_parent=True)
    except Exception as exc:  # noqa: BLE001 -- any failure to start is this test's failure
        pytest.fail(f"the second test cluster did not start (logs kept in {state / 'logs'}):\n{exc}")

    def stop() -> None:
        survivors = stop_started(cluster)
        assert not survivors, f"the second cluster's servers survived (logs in {cluster.log_dir})"
        shutil.rmtree(state, ignore_errors=True)

    stack.callback(stop)
    return cluster


def prepare_all(
    scs: list[Scenario], k8s: KubeCluster, proxy: WatchProxy, base: Path, own: Callable[[], Any]
) -> Any:
    """Namespaces, objects and commands of every scenario; the shared cluster's are made in a
    thread while ``own()`` starts the second cluster (whose ports are taken before ours are
    chosen). Returns the second cluster."""
    shared = [sc for sc in scs if sc.name != "watchdown"]
    failures: list[BaseException] = []

    def on_shared() -> None:
        try:
            for sc in shared:
                via_proxy = dict(k8s.env, KUBECONFIG=str(proxy.kubeconfig(base, k8s.token)))
                prepare(sc, k8s, base, via_proxy if sc.name == "silent" else None)
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the calling thread
            failures.append(exc)

    worker = threading.Thread(target=on_shared)
    worker.start()
    try:
        cluster = own()
    finally:
        worker.join()
    if failures:
        raise failures[0]
    prepare(next(sc for sc in scs if sc.name == "watchdown"), KubeCluster.for_cluster(cluster), base)
    return cluster


def inject_and_wait(scs: list[Scenario], prom: PrometheusServer, alerts: AlertLog, faults: Faults) -> None:
    """Inject every fault, then wait until every expected alert fired (or FIRE_WAIT passed),
    killing the crash-looping worker meanwhile; the silenced watch is then ended with a 410."""
    by_name = {sc.name: sc for sc in scs}
    for sc in scs:
        if sc.fault_at is None and sc.expect:
            faults.inject(sc)
    last_fault = max(sc.fault_at or 0 for sc in scs)

    def fired(sc: Scenario, alert: str) -> bool:
        return alerts.fired_since(alert, sc.instance, (sc.fault_at or 0) - SLACK) is not None

    crashloop, silent, expired = by_name["crashloop"], by_name["silent"], False
    while time.time() < last_fault + FIRE_WAIT:
        for sc in scs:
            alive(sc)
        if not fired(crashloop, "FastobsWorkerCrashLooping"):
            faults.kill_worker(crashloop)
        if not expired and fired(silent, "FastobsWatchSilent"):
            faults.proxy.expire()  # a relist, for the dashboard's relist panel
            expired = True
        if expired and all(fired(sc, a) for sc in scs for a in sc.expect):
            break
        time.sleep(0.1)
    if expired:
        relisted = f'fastobs_relists_total{{instance="{silent.instance}"}} > 0'
        wait_until("Prometheus to see the relist after the 410",
                   lambda: bool(prom.api("query", query=relisted)["result"]), timeout=15)


@pytest.fixture(scope="module")
def run(k8s: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    binary = get_tool("prometheus")
    base = tmp_path_factory.mktemp("monitoring")
    scs = scenarios()
    with contextlib.ExitStack() as server:
        with contextlib.ExitStack() as procs:
            proxy = procs.enter_context(WatchProxy(k8s.server, k8s.ca_file))
            cluster = prepare_all(scs, k8s, proxy, base, lambda: own_cluster(procs))
            for sc in scs:
                sc.port = free_port()
            prom = PrometheusServer(binary, base / "prometheus", port=free_port(), rules=scaled_rules(FACTOR),
                                    targets=[sc.instance for sc in scs], interval=INTERVAL)
            prom.start()
            server.callback(prom.stop)
            t0 = time.time()
            alerts = AlertLog(prom).start()
            procs.callback(alerts.stop)
            stop_churn = threading.Event()
            threads = [threading.Thread(target=churn, args=(sc, stop_churn), daemon=True) for sc in scs]
            procs.callback(lambda: [t.join(timeout=10) for t in threads])
            procs.callback(stop_churn.set)
            for sc, thread in zip(scs, threads, strict=True):
                launch(sc)
                procs.callback(stop_fastobs, sc)
                thread.start()
            wait_until("every fastobs started", lambda: all([ready(sc) for sc in scs]), timeout=120)
            wait_until("every target scraped", lambda: all(
                t["health"] == "up" for t in prom.targets()) and len(prom.targets()) == len(scs), timeout=30)
            ready_at = time.time()
            # Its fault is there from the start, but visible from its first scrape on.
            initsync = next(sc for sc in scs if sc.name == "initsync")
            initsync.fault_at = prom.first_up(initsync.instance)
            time.sleep(QUIET)
            faults = Faults(proxy, cluster)
            inject_and_wait(scs, prom, alerts, faults)
            time.sleep(2)  # anything firing late beside the expected alerts shows up too
            t_end = time.time()
            alerts.stop()
            for sc in scs:
                alive(sc)
        print(f"\nchurn: {', '.join(f'{sc.name} {sc.patches} patches' for sc in scs)}; the killed API "
              f"server refused {scs[-1].patch_errors}; worker kills: {len(faults.killed)}; "
              f"run {t_end - t0:.0f} s, ready after {ready_at - t0:.0f} s")
        yield Run(prom, scs, t0, ready_at, t_end, alerts.snapshot())


# ----------------------------------------------------------------------------- scaled rules


def test_scaled_rules_divide_durations_and_seconds_thresholds_only() -> None:
    assert scale_expr(
        "histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket[5m]))) > 60", 60
    ) == "histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket[5s]))) > 1"
    assert scale_expr("x_seconds > 600 and up == 1", 60) == "x_seconds > 10 and up == 1"
    assert scale_expr("sum(rate(a_total[10m])) / sum(rate(b_total[10m])) > 0.1", 60) == (
        "sum(rate(a_total[10s])) / sum(rate(b_total[10s])) > 0.1")
    assert scale_expr("increase(r_total[15m]) > 3 or max_over_time(y_seconds[1h:1m]) >= 90", 60) == (
        "increase(r_total[15s]) > 3 or max_over_time(y_seconds[60s:1s]) >= 1.5")
    assert scale_expr("rate(process_cpu_seconds_total[5m] offset 1h) > 2", 60) == (
        "rate(process_cpu_seconds_total[5s] offset 60s) > 2")
    assert format_duration(parse_duration("1h30m") / 60) == "90s"
    assert format_duration(parse_duration("90s") / 60) == "1500ms"
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


def test_scaled_rule_file_is_the_shipped_one_faster_and_valid(tmp_path: Path) -> None:
    """Same alerts, labels and annotations; every for: divided; promtool accepts it."""
    shipped = alert_rules()
    scaled_path = tmp_path / "scaled.yaml"
    scaled_path.write_text(yaml.safe_dump(scaled_rules(FACTOR), sort_keys=False))
    scaled = alert_rules(scaled_path)
    assert scaled.keys() == shipped.keys()
    for name, rule in shipped.items():
        fast = scaled[name]
        assert parse_duration(fast["for"]) == pytest.approx(parse_duration(rule["for"]) / FACTOR), name
        assert (fast["labels"], fast["annotations"]) == (rule["labels"], rule["annotations"]), name
        assert fast["expr"] == scale_expr(rule["expr"], FACTOR)
        print(f"{name}: for {rule['for']} -> {fast['for']}; {' '.join(fast['expr'].split())}")
    proc = subprocess.run([get_tool("promtool"), "check", "rules", str(scaled_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- alerts


@pytest.mark.cluster
def test_every_rule_evaluates_without_error(run: Run) -> None:
    rules = run.prom.rules()
    assert {r["name"] for r in rules} == set(alert_rules())
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, bad


@pytest.mark.cluster
def test_every_alert_fires_for_its_fault_and_only_then(run: Run) -> None:
    """Each alert fires for the scenario with its fault, after the fault, and for no other.

    Start-up is left out of "only then" (until the alert's rate window has moved past it):
    under this test's load (eight fastobs, two API servers) a worker takes seconds to boot,
    which the 1/60 scale turns into minutes of lag.
    """
    rules = alert_rules()
    assert set(rules) == set().union(*(sc.expect for sc in run.scenarios)), "an alert has no fault scenario"
    scaled_for = {name: parse_duration(r["for"]) / FACTOR for name, r in rules.items()}
    settle = {name: run.ready_at + 2 * parse_duration(INTERVAL) + max(
        (parse_duration(w) for w in re.findall(r"\[(\w+)", scale_expr(r["expr"], FACTOR))), default=0.0)
        for name, r in rules.items()}
    rows, problems, notes = [], [], []
    for sc in run.scenarios:
        fault_at = sc.fault_at if sc.fault_at is not None else math.inf
        for alert in sorted(rules):
            for ep in run.episodes.get((alert, sc.instance), []):
                after_fault = ep.start >= fault_at - SLACK
                what = (f"{alert} {'fired' if ep.fired else 'pending'} for {sc.name} "
                        f"{ep.start - run.ready_at:+.1f} s after all were ready, "
                        f"for {ep.last_seen - ep.start:.1f} s")
                if alert in sc.expect and after_fault:
                    continue  # timed below
                if alert in sc.may and after_fault:
                    notes.append(f"{what}: allowed at the test's scale")
                elif ep.start < settle[alert]:
                    notes.append(f"start-up: {what}")
                elif alert in sc.expect:
                    problems.append(f"{what}, before its fault")
                elif ep.fired is not None:
                    problems.append(f"{what}, whose only fault is: {sc.fault}")
                else:
                    notes.append(what)
        for alert in sorted(sc.expect):
            ep = next((e for e in run.episodes.get((alert, sc.instance), [])
                       if e.start >= fault_at - SLACK and e.fired is not None), None)
            if ep is None or ep.fired is None:
                problems.append(f"{alert} never fired for {sc.name} ({sc.fault}); "
                                "ALERTS and up over the run:\n" + history(run, sc))
                continue
            if ep.fired - ep.start < scaled_for[alert] - SLACK:
                problems.append(f"{alert} fired for {sc.name} {ep.fired - ep.start:.1f} s after turning "
                                f"pending (for: {scaled_for[alert]:g} s)")
            rows.append(f"{alert:26} {rules[alert]['for']:>4} {scaled_for[alert]:4g} s "
                        f"{ep.start - fault_at:6.1f} s {ep.fired - fault_at:6.1f} s   {sc.name}: {sc.fault}")
    print("\n" + "\n".join(notes))
    print("\nalert                     shipped / scaled for  pending  firing (after the fault)\n"
          + "\n".join(rows))
    assert not problems, "\n".join(problems)


def history(run: Run, sc: Scenario) -> str:
    """The ALERTS series and the scrape health of one scenario over the run, per second."""
    lines = []
    for q in (f'ALERTS{{instance="{sc.instance}"}}', f'up{{instance="{sc.instance}"}}'):
        for series in run.prom.query_range(q, run.t0, run.t_end):
            m = series["metric"]
            lines.append(f"  {m.get('alertname', 'up')} {m.get('alertstate', '')}: "
                         + " ".join(f"{float(t) - run.t0:.0f}={v}" for t, v in series["values"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- dashboard


Series = list[dict[str, Any]]


class Panels:
    """Dashboard queries evaluated over the run, for all instances or one scenario."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.queries = {(q.panel, q.ref): q for q in panel_queries()}
        self._cache: dict[tuple[str, str, str], Series] = {}

    def get(self, panel: str, ref: str, scenario: str | None = None) -> Series:
        instance = self.run.scenario(scenario).instance if scenario else ".*"
        key = (panel, ref, instance)
        if key not in self._cache:
            expr = grafana_to_promql(self.queries[(panel, ref)].expr, rate_interval=RATE_INTERVAL,
                                     job="fastobs", instance=instance)
            self._cache[key] = self.run.prom.query_range(expr, self.run.t0, self.run.t_end)
        return self._cache[key]

    def values(self, panel: str, ref: str, scenario: str | None = None, *, after: float = 0.0,
               before: float = math.inf, **labels: str) -> list[float]:
        """Finite values of the series whose labels include ``labels``, in (after, before)."""
        out = []
        for s in self.get(panel, ref, scenario):
            if labels.items() <= s["metric"].items():
                out += [float(v) for t, v in s["values"]
                        if after < float(t) < before and math.isfinite(float(v))]
        return out

    def labels(self, panel: str, ref: str, scenario: str | None, *names: str) -> set[tuple[str, ...]]:
        return {tuple(s["metric"].get(n, "") for n in names) for s in self.get(panel, ref, scenario)
                if any(math.isfinite(float(v)) and float(v) > 0 for _, v in s["values"])}


@pytest.fixture(scope="module")
def panels(run: Run) -> Panels:
    return Panels(run)


@pytest.mark.cluster
def test_every_dashboard_query_returns_data(run: Run, panels: Panels) -> None:
    """Every panel query, over the whole run and every instance, returns finite values; the
    job and instance variables list what Prometheus scraped."""
    empty, lines = [], []
    for (panel, ref), q in panels.queries.items():
        series = panels.get(panel, ref)
        values = panels.values(panel, ref)
        # Per scenario, the largest value once start-up is out of the rate windows.
        peaks = {sc.name: max(panels.values(panel, ref, sc.name, after=settled(run)), default=math.nan)
                 for sc in run.scenarios}
        lines.append(f"{panel[:34]:34} {ref} {q.legend[:22]:22} {len(series):2} series; max: "
                     + " ".join(f"{name} {v:.3g}" for name, v in peaks.items() if v == v))
        if not values:
            empty.append(f"{panel} {ref}: {q.expr}")
    print("\n" + "\n".join(lines))
    assert not empty, "panel queries without data:\n" + "\n".join(empty)
    jobs = run.prom.api("label/job/values", **{"match[]": "fastobs_build_info"})
    instances = run.prom.api("label/instance/values", **{"match[]": 'fastobs_build_info{job=~"fastobs"}'})
    assert jobs == ["fastobs"]
    assert set(instances) == {sc.instance for sc in run.scenarios}


Check = Callable[[Panels, Run], None]
CHECKS: dict[str, Check] = {}


def check(panel: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[panel] = fn
        return fn

    return register


def settled(run: Run) -> float:
    """When the rate windows of the panels no longer reach back into the start-up (one more
    scrape interval for the scrape that saw the last of it)."""
    return run.ready_at + parse_duration(RATE_INTERVAL) + 2 * parse_duration(INTERVAL)


def fault(run: Run, name: str) -> float:
    t = run.scenario(name).fault_at
    assert t is not None
    return t


@check("Events by type")
def _events(p: Panels, run: Run) -> None:
    control = run.scenario("control")
    updated = p.values("Events by type", "A", "control", type="Updated")
    # The churn thread patched every 0.2 s (less often on a busy machine): the panel's peak is
    # near the run's mean patch rate or above, and not far above one patch per interval.
    # Both bounds have slack: rate() extrapolates over late scrapes on a loaded machine (2.06
    # patches per interval was seen), and on a quiet one the peak can sit a hair under the
    # mean (5.0 against 5.02).
    mean = control.patches / (run.t_end - run.t0)
    assert 0.9 * mean <= max(updated) <= 3 / control.interval, (max(updated), mean)
    # The Sync events of the first list came before the first scrape: a counter's first
    # sample is its start, so rate() shows them as nothing. The series is there all the same.
    assert {s["metric"]["type"] for s in p.get("Events by type", "A", "control")} >= {"Sync", "Updated"}
    assert ("Updated",) in p.labels("Events by type", "A", "control", "type")
    assert max(p.values("Events by type", "B", "lagging", after=fault(run, "lagging"))) > 0, \
        "a key that keeps changing while its command runs has its events coalesced"


@check("Commands by result and type")
def _commands(p: Panels, run: Run) -> None:
    # As for events: the first list's commands may all end before the first scrape.
    assert p.labels("Commands by result and type", "A", "control", "result", "type") >= {
        ("success", "Updated"), ("failure", "Updated")}
    assert {(s["metric"]["result"], s["metric"]["type"])
            for s in p.get("Commands by result and type", "A", "control")} >= {("success", "Sync")}
    title, failing = "Commands by result and type", fault(run, "failing")
    assert max(p.values(title, "A", "failing", before=failing, result="failure"), default=0) == 0
    assert max(p.values(title, "A", "failing", after=failing, result="failure")) > 0


@check("Start lag (event received → command started)")
def _start_lag(p: Panels, run: Run) -> None:
    title = "Start lag (event received → command started)"
    threshold = 60 / FACTOR
    # From the moment all were ready: before, the worker boots under this test's load took
    # seconds, which the 1/60 scale makes look like minutes.
    assert max(p.values(title, "C", "control", after=settled(run))) < threshold, "a healthy fastobs, late"
    lagging = fault(run, "lagging")
    assert max(p.values(title, "C", "lagging", after=settled(run), before=lagging)) < threshold
    late = max(p.values(title, "C", "lagging", after=lagging))
    assert late > threshold, f"the starving keys' p99 start lag is {late:.2f} s"
    # With every instance selected, each has its own lines, as the alert sees it.
    lines = {i for (i,) in p.labels(title, "C", None, "instance")}
    # (The initial-sync scenario may have one: an object created after the list can run first.)
    assert lines >= {sc.instance for sc in run.scenarios} - {run.scenario("initsync").instance}, lines
    own = p.values(title, "C", None, after=lagging, instance=run.scenario("lagging").instance)
    assert max(own) > threshold
    for q in ("A", "B"):
        assert min(p.values(title, q, "control")) >= 0


@check("End lag (event received → command ended)")
def _end_lag(p: Panels, run: Run) -> None:
    start, end = "Start lag (event received → command started)", "End lag (event received → command ended)"
    for ref in ("A", "B", "C"):
        s, e = p.get(start, ref, "control"), p.get(end, ref, "control")
        starts = {t: float(v) for t, v in s[0]["values"]} if s else {}
        pairs = [(starts[t], float(v)) for t, v in (e[0]["values"] if e else []) if t in starts]
        pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
        assert pairs, ref
        assert all(b >= a - 1e-9 for a, b in pairs), f"{ref}: an end lag below its start lag"


@check("Command duration")
def _duration(p: Panels, run: Run) -> None:
    assert max(p.values("Command duration", "B", "control", result="success")) >= 0.25, "the 0.3 s command"
    assert max(p.values("Command duration", "A", "lagging", after=fault(run, "lagging"))) >= 1.0


@check("Failures by reason")
def _failures(p: Panels, run: Run) -> None:
    assert p.labels("Failures by reason", "A", "control", "reason", "code") == {("exit", "3")}
    assert p.labels("Failures by reason", "A", "failing", "reason", "code") == {("spawn_error", "ENOENT")}
    everywhere = p.labels("Failures by reason", "A", None, "reason", "code")
    assert everywhere == {("exit", "3"), ("spawn_error", "ENOENT")}


@check("Failure ratio")
def _failure_ratio(p: Panels, run: Run) -> None:
    control = p.values("Failure ratio", "A", "control", after=settled(run))
    # One key in 22 fails: a 4 s window holds about 20 commands, so the ratio moves around 1/22.
    assert 0.01 < sum(control) / len(control) < 0.1, control
    broken = fault(run, "failing")
    assert max(p.values("Failure ratio", "A", "failing", after=broken)) == 1.0
    # With every instance selected, each has its own line, as the alert sees it.
    own = p.values("Failure ratio", "A", None, after=broken, instance=run.scenario("failing").instance)
    assert max(own) == 1


@check("Retries")
def _retries(p: Panels, run: Run) -> None:
    assert max(p.values("Retries", "A", "control", kind="immediate")) > 0
    assert max(p.values("Retries", "A", "control", kind="backoff")) == 0, "no --backoff-base: no requeue"


@check("Queue depth")
def _depth(p: Panels, run: Run) -> None:
    assert {w for (w,) in p.labels("Queue depth", "A", "stuck", "worker")} == {"0"}
    stuck = fault(run, "stuck")
    assert max(p.values("Queue depth", "A", "stuck", after=stuck)) >= 1
    assert {s["metric"]["worker"] for s in p.get("Queue depth", "A", "control")} == {"0", "1"}


@check("Oldest pending / longest running")
def _ages(p: Panels, run: Run) -> None:
    title, stuck = "Oldest pending / longest running", fault(run, "stuck")
    assert max(p.values(title, "A", "stuck", after=stuck)) > 600 / FACTOR
    assert max(p.values(title, "B", "stuck", after=stuck)) > 600 / FACTOR, "the command holding the slot"
    assert max(p.values(title, "A", "control", after=settled(run))) < 600 / FACTOR


@check("Running vs limit")
def _running(p: Panels, run: Run) -> None:
    assert set(p.values("Running vs limit", "B", "control")) == {2 * 16}, "--workers=2 x --concurrency=16"
    assert set(p.values("Running vs limit", "B", "stuck")) == {1}
    running = p.values("Running vs limit", "A", "stuck", after=fault(run, "stuck"))
    assert max(running) == 1


@check("Worker restarts")
def _restarts(p: Panels, run: Run) -> None:
    assert max(p.values("Worker restarts", "A", "crashloop", after=fault(run, "crashloop"))) > 0.5
    assert max(p.values("Worker restarts", "A", "control")) == 0
    assert max(p.values("Worker restarts", "B", "control", after=settled(run))) == 0
    # Its one worker is missing for a moment after each kill (a scrape may or may not see it).
    assert set(p.values("Worker restarts", "B", "crashloop", after=fault(run, "crashloop"))) <= {0, 1}


@check("Tracked objects")
def _tracked(p: Panels, run: Run) -> None:
    control = run.scenario("control")
    assert p.values("Tracked objects", "A", "control")[-1] == len(control.keys)
    assert p.values("Tracked objects", "A", "stuck")[-1] == 4 + 1, "four keys and the one holding the slot"


@check("Watch up / initial sync")
def _watch_up(p: Panels, run: Run) -> None:
    title = "Watch up / initial sync"
    assert set(p.values(title, "A", "control", after=settled(run))) == {1}
    assert set(p.values(title, "B", "control", after=settled(run))) == {1}
    assert set(p.values(title, "B", "initsync")) == {0}
    assert p.values(title, "A", "watchdown")[-1] == 0


@check("Watch silence")
def _silence(p: Panels, run: Run) -> None:
    assert max(p.values("Watch silence", "A", "silent", after=fault(run, "silent"))) > 600 / FACTOR
    assert max(p.values("Watch silence", "A", "control", after=settled(run))) < 600 / FACTOR / 2


@check("Relists and API errors")
def _api(p: Panels, run: Run) -> None:
    title, down = "Relists and API errors", fault(run, "watchdown")
    errors = p.labels(title, "B", "watchdown", "op", "kind")
    assert errors and all(kind == "connection" for _, kind in errors), errors
    assert max(p.values(title, "C", "watchdown", after=down)) > 0, "it keeps trying"
    assert max(p.values(title, "A", "watchdown")) == 0, "a lost connection resumes the watch, no relist"
    # The silenced watch was then ended with a 410 (expired): that one relists.
    assert max(p.values(title, "A", "silent")) > 0
    assert ("watch", "expired") in p.labels(title, "B", "silent", "op", "kind")
    assert not p.labels(title, "B", "control", "op", "kind"), "the healthy fastobs had API errors"
    # One list and one long watch at start-up; at most a watch resumed now and then since.
    assert max(p.values(title, "C", "control", after=settled(run))) < 1


@check("Parent memory")
def _memory(p: Panels, run: Run) -> None:
    assert 10e6 < max(p.values("Parent memory", "A", "control")) < 2e9


@check("Parent CPU")
def _cpu(p: Panels, run: Run) -> None:
    assert 0 < max(p.values("Parent CPU", "A", "control")) < 4


@pytest.mark.cluster
def test_dashboard_values_say_what_the_run_did(run: Run, panels: Panels) -> None:
    """Each panel shows what the test caused, on the scenario that caused it."""
    titles = {panel for panel, _ in panels.queries}
    assert titles == set(CHECKS), f"panels without a check: {titles - set(CHECKS)}"
    failed = []
    for title, fn in CHECKS.items():
        try:
            fn(panels, run)
        except (AssertionError, ValueError) as exc:
            failed.append(f"{title}: {exc!r}")
    assert not failed, "\n".join(failed)

