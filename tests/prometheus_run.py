"""A real Prometheus server for tests, and the shipped rules and dashboard as it sees them.

Where it sits: in tests only, beside ``fastobs_run``. ``scripts/get-prometheus`` unpacks
Debian's ``prometheus`` package into ``.tools/bin``; :class:`PrometheusServer` runs that
binary on loopback with a throw-away TSDB, scraping the fastobs processes a test starts
and evaluating a rule file; :class:`AlertLog` polls its alerts API and keeps when each
alert was first seen pending and firing.

The shipped rules speak in minutes. :func:`scaled_rules` derives a faster copy from
``deploy/prometheus/fastobs-rules.yaml`` itself (never from a second hand-written copy):
every ``for:``, range selector, subquery and offset is divided by a factor, and so is every
threshold compared with a value in seconds (a ``*_seconds`` series, or a quantile of a
``*_seconds_bucket`` histogram). Ratios and counts are left as they are.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "fastobs-rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "fastobs-dashboard.json"


def get_tool(name: str) -> str:
    """The path of ``prometheus`` or ``promtool`` (fetched on first use); skips without it,
    or fails when FASTOBS_REQUIRE_CLUSTER=1."""
    proc = subprocess.run([str(ROOT / "scripts" / "get-prometheus"), name], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        reason = f"{name} could not be obtained: {proc.stderr.strip()[-500:]}"
        if os.environ.get("FASTOBS_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return proc.stdout.strip().splitlines()[-1]


# -- durations and the scaled rules -----------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def parse_duration(text: str) -> float:
    """A Prometheus duration (``5m``, ``1h30m``, ``500ms``) in seconds."""
    if not re.fullmatch(r"(?:\d+(?:ms|s|m|h|d|w|y))+", text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ValueError(f"{seconds} s scales to no time at all")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


# Range selectors and subqueries: [5m], [5m:30s], [5m:].
_RANGE = re.compile(r"\[(\w+)(?::(\w*))?\]")
_OFFSET = re.compile(r"\boffset\s+(\w+)")
_SET_OPERATOR = re.compile(r"\s(?:and|or|unless)\s")
_COMPARISON = re.compile(r"^(?P<lhs>.*)(?P<op>>=|<=|==|!=|>|<)(?P<ws>\s*)(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)"
                         r"(?P<tail>\s*)$", re.S)
_SECONDS_SERIES = re.compile(r"\w_seconds(?:_bucket)?\b")


def _top_level_parts(expr: str) -> list[str]:
    """``expr`` split before each ``and``/``or``/``unless`` outside parentheses (separators kept)."""
    parts, start, depth = [], 0, 0
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            m = _SET_OPERATOR.match(expr, i)
            if m:
                parts.extend([expr[start:i], m.group()])
                start = i = m.end()
                continue
        i += 1
    parts.append(expr[start:])
    return parts


def _number(value: float) -> str:
    return f"{value:g}"


def scale_expr(expr: str, factor: float) -> str:
    """``expr`` with its time windows and its thresholds in seconds divided by ``factor``."""

    def scale_range(m: re.Match[str]) -> str:
        window = format_duration(parse_duration(m.group(1)) / factor)
        if m.group(2) is None:
            return f"[{window}]"
        step = format_duration(parse_duration(m.group(2)) / factor) if m.group(2) else ""
        return f"[{window}:{step}]"

    expr = _RANGE.sub(scale_range, expr)
    expr = _OFFSET.sub(lambda m: f"offset {format_duration(parse_duration(m.group(1)) / factor)}", expr)
    out = []
    for part in _top_level_parts(expr):
        m = _COMPARISON.match(part)
        if m and _SECONDS_SERIES.search(m.group("lhs")):
            part = (m.group("lhs") + m.group("op") + m.group("ws") + _number(float(m.group("num")) / factor)
                    + m.group("tail"))
        out.append(part)
    return "".join(out)


def scaled_rules(factor: float, source: Path = RULES) -> dict[str, Any]:
    """The rule file at ``source`` with every duration and seconds threshold divided by ``factor``."""
    doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        if "interval" in group:
            group["interval"] = format_duration(parse_duration(group["interval"]) / factor)
        for rule in group["rules"]:
            rule["expr"] = scale_expr(rule["expr"], factor)
            if "for" in rule:
                rule["for"] = format_duration(parse_duration(rule["for"]) / factor)
    return dict(doc)


def alert_rules(source: Path = RULES) -> dict[str, dict[str, Any]]:
    """Alert name -> rule, from a rule file."""
    doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


# -- the dashboard's queries ------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str
    legend: str


def panel_queries(path: Path = DASHBOARD) -> list[PanelQuery]:
    """Every query of every panel (rows included, nested panels too), in dashboard order."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[PanelQuery]:
        for panel in panels:
            for target in panel.get("targets", []):
                legend = target.get("legendFormat", "")
                yield PanelQuery(panel["title"], target["refId"], target["expr"], legend)
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(path.read_text(encoding="utf-8"))["panels"]))


def grafana_to_promql(expr: str, *, rate_interval: str = "1m", job: str = ".*", instance: str = ".*") -> str:
    """Replace Grafana's variables with what they expand to (job and instance are regexes)."""
    return (expr.replace("$__rate_interval", rate_interval).replace("$job", job)
            .replace("$instance", instance))


# -- the server -------------------------------------------------------------------------------------


class PrometheusServer:
    """``prometheus`` on a loopback port, its TSDB and log in ``directory``."""

    def __init__(self, binary: str, directory: Path, *, port: int, rules: dict[str, Any],
                 targets: list[str], interval: str = "1s") -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.log = directory / "prometheus.log"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        every = {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval}
        (directory / "prometheus.yml").write_text(yaml.safe_dump({
            "global": every,
            "rule_files": [str(directory / "rules.yaml")],
            "scrape_configs": [{"job_name": "fastobs", "static_configs": [{"targets": targets}]}],
        }, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.directory / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1d", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus was not ready within {timeout:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.directory / "data", ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def api(self, path: str, **params: str | float) -> Any:
        """GET ``/api/v1/<path>``; returns its ``data`` (AssertionError on an API error)."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        assert data["resultType"] == "matrix", data
        return list(data["result"])

    def first_up(self, instance: str) -> float | None:
        """The time of the first successful scrape of ``instance`` (its raw samples of ``up``)."""
        result = self.api("query", query=f'up{{instance="{instance}"}}[1h]')["result"]
        return next((float(t) for series in result for t, v in series["values"] if v == "1"), None)

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        return [r for g in self.api("rules")["groups"] for r in g["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])


def _timestamp(rfc3339: str) -> float:
    """Seconds since the epoch of Prometheus's ``2026-11-30T06:30:12.123456789Z`` (or ``+01:00``)."""
    m = re.fullmatch(r"(.*?:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert m, f"not an RFC 3339 time: {rfc3339!r}"
    return datetime.fromisoformat(m.group(1) + (m.group(2) or "")[:7] + m.group(3)).timestamp()


@dataclass
class Episode:
    """One stretch of time during which an alert was active (pending, then maybe firing)."""

    start: float
    """When the rule's evaluation first found it true (Prometheus's activeAt)."""
    last_seen: float
    fired: float | None = None
    """When a poll first saw it firing."""


@dataclass
class AlertLog:
    """Polls the alerts API; keeps every episode of every (alert, instance), with when it
    was first seen pending and first seen firing (wall-clock seconds)."""

    server: PrometheusServer
    period: float = 0.2
    episodes: dict[tuple[str, str], list[Episode]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _open: dict[tuple[str, str], Episode] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> AlertLog:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                alerts = self.server.alerts()
            except (OSError, AssertionError, ValueError) as exc:
                self.errors.append(f"{now:.1f}: {exc}")
                self._stop.wait(self.period)
                continue
            with self._lock:
                active = set()
                for alert in alerts:
                    key = (alert["labels"]["alertname"], alert["labels"].get("instance", ""))
                    active.add(key)
                    ep = self._open.get(key)
                    if ep is None:
                        # activeAt: the evaluation that first found it true (no polling delay).
                        ep = self._open[key] = Episode(_timestamp(alert["activeAt"]), now)
                        self.episodes.setdefault(key, []).append(ep)
                    ep.last_seen = now
                    if alert["state"] == "firing" and ep.fired is None:
                        ep.fired = now
                for key in set(self._open) - active:
                    del self._open[key]
            self._stop.wait(self.period)

    def fired_since(self, alert: str, instance: str, since: float) -> Episode | None:
        """The first episode that began at ``since`` or later and fired."""
        with self._lock:
            return next((ep for ep in self.episodes.get((alert, instance), [])
                         if ep.start >= since and ep.fired is not None), None)

    def snapshot(self) -> dict[tuple[str, str], list[Episode]]:
        with self._lock:
            return {k: [Episode(e.start, e.last_seen, e.fired) for e in v] for k, v in self.episodes.items()}
