"""The deploy artifacts (alert rules, their unit tests, the Grafana dashboard) against the real exposition.

promtool checks and unit-tests the rules and parses every dashboard query. Every metric
and label a rule or panel names must be a series :class:`fastobs.metrics.Metrics` really
exposes, so renaming a metric without updating the dashboards fails here.
promtool comes from scripts/get-prometheus; without it these tests skip, unless
FASTOBS_REQUIRE_CLUSTER=1 (then they fail). tests/test_monitoring.py runs the rules and the
dashboard's queries on a real Prometheus server.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_run import DASHBOARD, ROOT, RULES, get_tool, grafana_to_promql, panel_queries

from fastobs.metrics import EngineState, Metrics

RULES_TEST = ROOT / "deploy" / "prometheus" / "fastobs-rules-test.yaml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

TARGET_LABELS = {"job", "instance"}
"""Labels Prometheus adds to every scraped series."""

REQUIRED_ALERTS = {
    "FastobsLagHigh", "FastobsFailureRatioHigh", "FastobsWatchSilent", "FastobsWatchDown",
    "FastobsWorkerCrashLooping", "FastobsInitialSyncStuck",
}


# -- promtool ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def promtool() -> str:
    return get_tool("promtool")


def run_promtool(promtool: str, *args: str) -> str:
    proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_rules_pass_promtool_check(promtool: str) -> None:
    out = run_promtool(promtool, "check", "rules", str(RULES))
    assert "SUCCESS" in out


def test_rules_unit_tests_pass(promtool: str) -> None:
    out = run_promtool(promtool, "test", "rules", str(RULES_TEST))
    assert "SUCCESS" in out


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool has no offline query parser, but it parses recording rules: one per query.
    rules = [{"record": f"dashboard:query{i}", "expr": grafana_to_promql(expr)}
             for i, expr in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run_promtool(promtool, "check", "rules", str(path))
    assert f"{len(rules)} rules found" in out


def test_promtool_rejects_a_broken_query(promtool: str, tmp_path: Path) -> None:
    # The check above means something only if promtool fails on bad PromQL.
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "bad:query", "expr": "sum by (le (rate(x[5m]))"}]}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode != 0


# -- what fastobs really exposes ------------------------------------------------------------


class FakeEngine:
    def engine_state(self) -> EngineState:
        return EngineState(
            queue_depth={0: 1}, oldest_pending_seconds={0: 0.5}, running={0: 1},
            longest_running_seconds={0: 0.1}, concurrency_limit=16, tracked_objects=10,
            initial_sync_done=True, watch_up=True, watch_last_activity=time.monotonic(),
            workers_alive=1, workers_total=1,
        )


@pytest.fixture(scope="module")
def exposed() -> dict[str, set[str]]:
    """Sample name -> label names, from one exposition after every hot-path call."""
    m = Metrics()
    m.set_state_provider(FakeEngine())
    m.event_received("Updated")
    m.events_coalesced()
    m.command_started(lag_seconds=0.01)
    m.command_finished(type_="Updated", lag_seconds=0.2, duration_seconds=0.19, result="failure",
                       reason="exit", code="1", attempts=[(1, 0.19)])
    m.names_executed(exit_code=0, seconds=0.01)
    m.retried("backoff")
    m.worker_restarted(0)
    m.api_request("watch")
    m.api_error("watch", "expired")
    m.relisted()
    text = m.exposition().decode()
    assert list(text_string_to_metric_families(text))  # parses as Prometheus text
    series: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = name.split(" ")[0]
            labels = re.findall(r'([a-zA-Z_]\w*)="', rest) if rest else []
            series.setdefault(name, set()).update(labels)
    return series


# -- PromQL: which metrics and labels an expression uses ---------------------------------------

_NOT_METRICS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan",
}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_SELECTOR = re.compile(r"(?<![\w.$:])([a-zA-Z_:][\w:]*)\s*(\{[^{}]*\})?(\s*\()?")


def metric_uses(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The (metric, matcher label names) selectors of ``expr``, and the labels it groups by."""
    grouping: set[str] = set()
    for _, labels in _GROUPING.findall(expr):
        grouping.update(label.strip() for label in labels.split(",") if label.strip())
    expr = _GROUPING.sub(" ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations
    selectors = []
    for name, matchers, call in _SELECTOR.findall(re.sub(r'"(?:[^"\\{}]|\\.)*"(?![^{}]*\})', '""', expr)):
        if call or name in _NOT_METRICS:
            continue  # a function name or a keyword
        selectors.append((name, set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers or ""))))
    return selectors, grouping


def test_metric_uses_finds_metrics_labels_and_ignores_functions() -> None:
    selectors, grouping = metric_uses(
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{x="1",y=~"b|c"}[5m])))'
        ' / on (job) group_left () b_total > 1e3 and c offset 5m'
    )
    assert selectors == [("a_bucket", {"x", "y"}), ("b_total", set()), ("c", set())]
    assert grouping == {"job", "le"}


def rule_exprs() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_exprs() -> list[str]:
    return [q.expr for q in panel_queries()]


def check_uses(where: str, expr: str, exposed: dict[str, set[str]]) -> None:
    selectors, grouping = metric_uses(expr)
    assert selectors, f"{where}: no metric found in {expr!r}"
    known_labels = set(TARGET_LABELS)
    for name, matchers in selectors:
        assert name in exposed, f"{where}: {name} is not a series fastobs exposes"
        labels = exposed[name] | TARGET_LABELS
        assert matchers <= labels, f"{where}: {name} has no label {matchers - labels}"
        known_labels |= labels
    assert grouping <= known_labels, f"{where}: grouping by unknown labels {grouping - known_labels}"


def test_every_rule_metric_is_exposed(exposed: dict[str, set[str]]) -> None:
    for name, expr in rule_exprs():
        check_uses(name, expr, exposed)


def test_every_dashboard_metric_is_exposed(exposed: dict[str, set[str]]) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 12
    for expr in exprs:
        check_uses("dashboard", grafana_to_promql(expr), exposed)


def test_a_renamed_metric_would_be_caught(exposed: dict[str, set[str]]) -> None:
    with pytest.raises(AssertionError, match="not a series"):
        check_uses("t", "rate(fastobs_event_total[5m])", exposed)
    with pytest.raises(AssertionError, match="no label"):
        check_uses("t", 'fastobs_watch_up{worker="0"}', exposed)


# -- content of the rules and the dashboard -----------------------------------------------------


def test_alerts_have_for_severity_and_annotations() -> None:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert REQUIRED_ALERTS <= {a["alert"] for a in alerts}
    for alert in alerts:
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {name for name, _ in rule_exprs()}
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts <= firing, f"no firing test for {alerts - firing}"
    assert alerts <= quiet, f"no quiet test for {alerts - quiet}"


def test_dashboard_covers_the_key_signals() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    used = {name for expr in dashboard_exprs() for name, _ in metric_uses(expr)[0]}
    for metric in [
        "fastobs_events_total", "fastobs_commands_total", "fastobs_command_start_lag_seconds_bucket",
        "fastobs_command_end_lag_seconds_bucket", "fastobs_command_failures_total", "fastobs_workqueue_depth",
        "fastobs_workqueue_oldest_pending_seconds", "fastobs_commands_running", "fastobs_concurrency_limit",
        "fastobs_worker_restarts_total", "fastobs_watch_silence_seconds", "fastobs_watch_up",
        "fastobs_relists_total", "fastobs_api_errors_total", "fastobs_tracked_objects",
    ]:
        assert metric in used, f"no panel shows {metric}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_metrics_doc_names_every_fastobs_and_oc_family(exposed: dict[str, set[str]]) -> None:
    doc = METRICS_DOC.read_text(encoding="utf-8")
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exposed}
    for family in sorted(f for f in families if f.startswith(("fastobs_", "observe_"))):
        assert f"`{family}`" in doc, f"docs/metrics.md does not describe {family}"


# -- a real fastobs against the real API server -----------------------------------------------


@pytest.mark.cluster
def test_a_real_fastobs_exposes_every_series_the_rules_and_dashboard_use(
    k8s: Any, ns: str, tmp_path: Path
) -> None:
    from fastobs_run import configmap, free_port, recorder, start_fastobs

    rec = recorder(tmp_path)
    k8s.apply(configmap("first", ns))
    port = free_port()
    # Every command exits 3, so failure series exist too (they have no value before a failure).
    proc = start_fastobs(k8s.env, "configmaps", "-n", ns, f"--listen-addr=127.0.0.1:{port}", "--",
                         str(rec.path), extra_env={"T_EXIT": "3"})
    try:
        rec.wait_for(lambda calls: any("first" in c["argv"] for c in calls))
        k8s.apply(configmap("second", ns))
        rec.wait_for(lambda calls: any("second" in c["argv"] for c in calls))
        text = scrape_until(port, 'fastobs_commands_total{result="failure",type="Added"} 1')
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    real: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            real.setdefault(name.split(" ")[0], set()).update(re.findall(r'([a-zA-Z_]\w*)="', rest))
    for name, expr in rule_exprs():
        check_uses(name, expr, real)
    for expr in dashboard_exprs():
        check_uses("dashboard", grafana_to_promql(expr), real)
    lines = text.splitlines()
    for line in ["fastobs_watch_up 1", "fastobs_initial_sync_done 1", 'observe_counts{type="Sync"} 1',
                 'observe_counts{type="Added"} 1',
                 'observe_exec_durations_milliseconds_count{exit_code="3",type="Added"} 1',
                 'fastobs_command_failures_total{code="3",reason="exit"} 2']:
        assert line in lines, f"{line!r} not in\n{text}"


def scrape_until(port: int, needle: str, timeout: float = 30.0) -> str:
    import urllib.request

    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            text = ""
        if needle in text.splitlines():
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} never appeared on /metrics; last scrape:\n{text}")
