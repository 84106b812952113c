"""Fault scenarios on the way to the API server: a half-open path, reset connections, an API
server restarted or paused (SIGSTOP).

Each scenario runs a real fastobs on a namespace of configmaps, keeps writing through the
session's API server while the fault lasts, and checks that every key's last command saw
its final state and that no key ran twice at once; it measures how many seconds after the
path or the server came back the watch was up again (``/readyz`` 200) and an update written
right then had run. The figures go to the suite's table (``faultlib.report``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from extra_apiserver import ExtraApiserver
from fault_proxy import FaultProxy
from faultlib import (
    Fastobs,
    InvocationLog,
    Recovery,
    Run,
    apply_values,
    check,
    in_background,
    measure_recovery,
    report,
    time_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]

KEYS = 40
FREEZE = 12.0
"""Seconds a path or a server stays frozen: longer than the stall detection (3 s) plus one
blackholed reconnect (5 s), so the reconnect in flight when it comes back must be given up
(a field report had 25 s)."""
RECOVERY_BOUND = 45.0
"""The longest wait for recovery before a scenario fails: one header deadline plus the
longest backoff (30 s + 20 % jitter), rounded up."""
FAST = ["--watch-read-timeout", "3s"]
"""A stall is noticed after 3 s (default 90 s); watches then wait 5 s for headers (the floor)."""


def keys_in(ns: str, names: list[str]) -> list[str]:
    return [f"{ns}/{n}" for n in names]


def first_runs(log: InvocationLog, ns: str, names: list[str]) -> None:
    want = set(keys_in(ns, names))
    log.wait_for("every key's first run", lambda runs: want <= {r.key for r in runs if r.end is not None})


def settle(log: InvocationLog, final: dict[str, str], timeout: float = 30.0) -> list[Run]:
    """The runs once every key's final state ran, or after ``timeout`` s (check() then
    names the keys that lost theirs)."""
    try:
        return log.wait_for("every final state", lambda runs: not check(runs, final).lost, timeout)
    except AssertionError:
        return log.runs()


@contextlib.contextmanager
def observing(k8s: Any, ns: str, tmp_path: Path, prefix: str, kubeconfig: Path,
              *flags: str) -> Iterator[tuple[Fastobs, InvocationLog, list[str]]]:
    """KEYS configmaps at v=0, and a fastobs on them through ``kubeconfig`` that has run
    each once: (fastobs, its invocation log, the names)."""
    names = [f"{prefix}{i}" for i in range(KEYS)]
    apply_values(k8s, ns, names, "0")
    log = InvocationLog(tmp_path)
    with Fastobs(k8s.env, tmp_path, "configmaps", "-n", ns, "--kubeconfig", str(kubeconfig), "--workers", "2",
                 *flags, *log.argv) as fo:
        fo.wait_ready()
        first_runs(log, ns, names)
        yield fo, log, names


def after_recovery(fo: Fastobs, log: InvocationLog, k8s: Any, ns: str,
                   names: list[str]) -> tuple[Recovery, list[Run], dict[str, str]]:
    """Right after the path or the server came back: write v=2 to the first key, measure
    the recovery, and wait for every final state (v=1 was written during the fault)."""
    first = f"{ns}/{names[0]}"
    rec = measure_recovery(fo, log, first, "2", lambda: apply_values(k8s, ns, names[:1], "2"), RECOVERY_BOUND)
    final = {k: "1" for k in keys_in(ns, names)} | {first: "2"}
    return rec, settle(log, final), final


def freeze_while_writing(fo: Fastobs, k8s: Any, ns: str, names: list[str], started: float) -> float:
    """Write v=1 to every key while polling /readyz; returns the seconds until it said the
    watch was down, and returns once FREEZE seconds have passed since ``started``."""
    with in_background(lambda: apply_values(k8s, ns, names, "1")):
        noticed = time_until(lambda: not fo.ready(), FREEZE, "the stall noticed (/readyz not 200)")
    time.sleep(max(0.0, FREEZE - (time.monotonic() - started)))
    return noticed


def test_half_open_path_recovers_and_loses_nothing(k8s: Any, ns: str, tmp_path: Path) -> None:
    """A TLS middlebox stops forwarding: the open watch goes silent, new connections finish
    their TCP and TLS handshakes and get no answer. After FREEZE seconds it recovers; the
    connections it swallowed stay dead."""
    with FaultProxy.in_front_of(k8s) as proxy:
        cfg = proxy.kubeconfig(tmp_path, k8s.token)
        with observing(k8s, ns, tmp_path, "h", cfg, *FAST) as (fo, log, names):
            proxy.freeze()
            noticed = freeze_while_writing(fo, k8s, ns, names, time.monotonic())
            proxy.recover()
            rec, runs, final = after_recovery(fo, log, k8s, ns, names)
            timeouts = fo.metric("fastobs_api_errors_total", kind="timeout")
            relists = fo.metric("fastobs_relists_total")
        stats = proxy.stats()
    verdict = check(runs, final)
    report(f"half-open path (TLS middlebox frozen {FREEZE:g} s)", **verdict.figures(),
           **{"down noticed s": noticed, "watch up after recovery s": rec.up,
              "update ran after recovery s": rec.ran, "timeouts": int(timeouts), "relists": int(relists),
              "connections frozen": stats.frozen, "connections blackholed": stats.blackholed})
    verdict.assert_ok()
    assert stats.blackholed >= 1 and stats.frozen >= 1, stats


def test_reset_connections_resume_at_once(k8s: Any, ns: str, tmp_path: Path) -> None:
    """A NAT that lost its state resets every connection (RST): the watch resumes from its
    resourceVersion at once, without a relist."""
    with FaultProxy.in_front_of(k8s) as proxy:
        cfg = proxy.kubeconfig(tmp_path, k8s.token)
        with observing(k8s, ns, tmp_path, "r", cfg) as (fo, log, names):
            reset = proxy.drop()
            rec = measure_recovery(fo, log, f"{ns}/r0", "1", lambda: apply_values(k8s, ns, names, "1"),
                                   RECOVERY_BOUND)
            final = {k: "1" for k in keys_in(ns, names)}
            runs = settle(log, final)
            relists = fo.metric("fastobs_relists_total")
            errors = fo.metric("fastobs_api_errors_total", op="watch")
    verdict = check(runs, final)
    report("connections reset (RST)", **verdict.figures(),
           **{"connections reset": reset, "watch up after reset s": rec.up,
              "update ran after reset s": rec.ran, "watch errors": int(errors), "relists": int(relists)})
    verdict.assert_ok()
    assert reset >= 1 and relists == 0


# ----------------------------------------------------------------------------- API server restart and pause


@pytest.fixture(scope="module")
def extra_apiserver(k8s_state: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtraApiserver]:
    extra = ExtraApiserver(k8s_state, tmp_path_factory.mktemp("extra-apiserver"))
    extra.start()
    try:
        yield extra
    finally:
        extra.kill()


def test_apiserver_restart_loses_nothing(k8s: Any, ns: str, tmp_path: Path,
                                         extra_apiserver: ExtraApiserver) -> None:
    """The API server fastobs watches through dies (SIGKILL) and is started again while
    objects change through another one: fastobs reconnects (relisting when its
    resourceVersion is older than the new server's watch cache) and runs every final state."""
    cfg = extra_apiserver.kubeconfig(tmp_path / "extra.kubeconfig")
    with observing(k8s, ns, tmp_path, "s", cfg) as (fo, log, names):
        t0 = time.monotonic()
        extra_apiserver.kill()
        with in_background(lambda: apply_values(k8s, ns, names, "1")):  # through the session's apiserver
            extra_apiserver.start()
        down = time.monotonic() - t0
        rec, runs, final = after_recovery(fo, log, k8s, ns, names)
        relists = fo.metric("fastobs_relists_total")
    verdict = check(runs, final)
    report("apiserver restart (SIGKILL, start)", **verdict.figures(),
           **{"apiserver down s": down, "watch up after it was ready s": rec.up,
              "update ran after it was ready s": rec.ran, "relists": int(relists)})
    verdict.assert_ok()


def test_apiserver_pause_loses_nothing(k8s: Any, ns: str, tmp_path: Path,
                                       extra_apiserver: ExtraApiserver) -> None:
    """The API server is frozen (SIGSTOP) for FREEZE seconds: the kernel still accepts
    connections, nothing answers them. fastobs notices the silence, keeps trying within its
    deadlines, and recovers when the server is continued (SIGCONT)."""
    cfg = extra_apiserver.kubeconfig(tmp_path / "extra.kubeconfig")
    with observing(k8s, ns, tmp_path, "p", cfg, *FAST) as (fo, log, names):
        extra_apiserver.pause()
        try:
            noticed = freeze_while_writing(fo, k8s, ns, names, time.monotonic())
        finally:
            extra_apiserver.resume()
        rec, runs, final = after_recovery(fo, log, k8s, ns, names)
        timeouts = fo.metric("fastobs_api_errors_total", kind="timeout")
    verdict = check(runs, final)
    report(f"apiserver paused (SIGSTOP {FREEZE:g} s)", **verdict.figures(),
           **{"down noticed s": noticed, "watch up after SIGCONT s": rec.up,
              "update ran after SIGCONT s": rec.ran, "timeouts": int(timeouts)})
    verdict.assert_ok()
