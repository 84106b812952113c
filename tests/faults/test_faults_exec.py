"""Fault scenarios of the execution side: workers killed and hung, hostile commands, fastobs
itself killed or stopped while commands run.

Each scenario runs a real fastobs against the session's API server with real commands,
injects its fault, and reports its figures (``faultlib.report``): keys checked, final states
lost, overlapping runs, and what was left behind: processes (found by a marker variable
every descendant inherits, daemons included) and object files in /dev/shm.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fastobs_run import fastobs_argv, free_port, http_get, wait_until, worker_pids
from faultlib import Fastobs, InvocationLog, Writer, apply_values, check, in_background, report
from leftovers import PeakRss, marked, object_files, processes_with, wait_gone

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def wait_final(fo: Fastobs, log: InvocationLog, final: dict[str, str], timeout: float = 60) -> list[Any]:
    """The runs once every key's final state ran; on a timeout, the error says what fastobs
    was doing (running or how it exited, the keys lost, the end of its stderr)."""
    try:
        return log.wait_for("every final state", lambda runs: not check(runs, final).lost, timeout)
    except AssertionError as exc:
        lost = check(log.runs(), final).lost
        code = fo.proc.poll()
        state = f"exited {code}"
        if code is None:
            names = ("fastobs_events_total", "fastobs_commands_total", "fastobs_workqueue_depth",
                     "fastobs_worker_restarts_total", "fastobs_worker_hangs_total")
            state = "running, " + ", ".join(f"{name} {fo.metric(name):g}" for name in names)
        example = dict(list(lost.items())[:5])
        raise AssertionError(f"{exc}; fastobs {state}; {len(lost)} keys lost, e.g. {example}; "
                             f"its stderr ends:\n{fo.stderr()[-4000:]}") from None


# ----------------------------------------------------------------------------- workers SIGKILLed


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalescing", "no-coalesce"])
def test_repeated_worker_sigkills_lose_nothing(k8s: Any, ns: str, tmp_path: Path, coalesce: bool) -> None:
    """Workers are SIGKILLed again and again while every key keeps changing: each key's last
    run sees its final state, no key runs twice at once, and nothing is left running; the
    killed workers' object files (--object-channel=file) are gone too."""
    names = [f"w{i}" for i in range(30)]
    apply_values(k8s, ns, names, "0")
    log = InvocationLog(tmp_path, body="sleep 0.$((RANDOM % 3))")
    env, mark = marked(k8s.env)
    extra = [] if coalesce else ["--no-coalesce"]
    kills = 0
    with Fastobs(env, tmp_path, "configmaps", "-n", ns, "--workers", "3", "--concurrency", "4", *extra,
                 "--object-channel", "file", *log.argv) as fo, Writer(k8s) as writer:
        fo.wait_ready()
        keys = {f"{ns}/{n}" for n in names}
        log.wait_for("every key's first run", lambda runs: keys <= {r.key for r in runs if r.end})
        rng = random.Random(7)

        def churn() -> None:
            for value in range(1, 7):
                writer.set_values(ns, names, str(value))
                time.sleep(0.2)

        with in_background(churn):
            for _ in range(6):
                time.sleep(0.4)
                workers = worker_pids(fo.proc.pid)
                if workers:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    kills += 1
        final = {k: "6" for k in keys}
        runs = wait_final(fo, log, final)
        restarts = fo.metric("fastobs_worker_restarts_total")
        assert fo.stop() == 0
    left, _ = wait_gone(mark, 10)
    files_left = object_files(fo.proc.pid)
    verdict = check(runs, final)
    report(f"worker SIGKILLs under churn ({'coalescing' if coalesce else '--no-coalesce'})",
           **verdict.figures(), **{"workers killed": kills, "restarts": int(restarts),
                                   "processes left": len(left), "object files left": len(files_left)})
    verdict.assert_ok()
    assert restarts >= kills and left == [] and files_left == []


# ----------------------------------------------------------------------------- hostile commands

HOSTILE = r"""
case "$2" in
  hang) sleep 300 ;;
  flood) head -c 200000000 /dev/zero | tr '\0' x ;;
  daemon) setsid sh -c 'sleep 300 & echo $! > "$0"' "$DAEMON_PID" </dev/null >/dev/null 2>&1 & ;;
  badbytes) printf 'bad \377\376 bytes \033[31m\001\n' ;;
esac
"""


def test_hostile_commands_fail_alone_and_leave_nothing(k8s: Any, ns: str, tmp_path: Path) -> None:
    """One run with a command that hangs, one that floods 200 MB of output, one that leaves a
    daemon, one that prints bytes that are not text, one whose argument holds a NUL byte and
    one whose object is too big for the environment: each costs its own key one failure (or
    a cut output), every key ends, memory stays bounded, and nothing is left running."""
    names = ["hang", "flood", "daemon", "badbytes", "fine"]
    apply_values(k8s, ns, names, "ok")
    apply_values(k8s, ns, ["nul"], "a\u0000b")
    apply_values(k8s, ns, ["hugeenv"], "ok", blob="x" * (200 << 10))
    daemon_pid = tmp_path / "daemon.pid"
    log = InvocationLog(tmp_path, body=HOSTILE)
    env, mark = marked({**k8s.env, "DAEMON_PID": str(daemon_pid)})
    t0 = time.monotonic()
    # The flood must end well within --timeout, even on a loaded machine.
    fo = Fastobs(env, tmp_path, "configmaps", "-n", ns, "--once", "--workers", "2", "--timeout", "8s",
                 "--kill-grace", "1s", "--object-env-var", "OBJ", "--print-metrics-on-exit", *log.argv)
    with fo, PeakRss(fo.proc.pid) as rss:
        fo.proc.wait(90)
    seconds = time.monotonic() - t0
    left, _ = wait_gone(mark, 5)
    out = Path(fo.stdout_path).read_bytes()
    err = fo.stderr()
    errors = sorted(line for line in err.splitlines() if line.startswith("error: "))
    ran = {r.key.split("/")[1] for r in log.runs()}
    limit = 4 << 20
    metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in out.decode(errors="replace")
               .splitlines() if line.startswith("fastobs_command_")}
    report("hostile commands", **{"keys checked": 7, "keys that ran": len(ran), "failed": len(errors),
                                  "seconds": seconds, "parent peak RSS MiB": rss.parent_kib // 1024,
                                  "worker peak RSS MiB": rss.child_kib // 1024,
                                  "processes left": len(left), "tracebacks": err.count("Traceback")})
    assert fo.proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    sh = "/bin/bash"  # InvocationLog scripts are bash scripts, run directly
    assert errors == [
        f'error: command "{log.path}" timed out after 8s and was killed',
        f"error: fork/exec {log.path}: argument list too long",
        f"error: fork/exec {log.path}: invalid argument",
    ], (errors, sh)
    assert ran == {"hang", "flood", "daemon", "badbytes", "fine"}
    assert b"x" * limit + b"\n[fastobs: " + str(200_000_000 - limit).encode() + \
        b" more bytes of stdout dropped (--output-limit=4194304)]\n" in out
    assert b"bad \377\376 bytes \033[31m\001\n" in out
    assert metrics["fastobs_command_output_truncated_total"] == 1
    assert metrics["fastobs_command_output_dropped_bytes_total"] == 200_000_000 - limit
    failures = {k: v for k, v in metrics.items() if k.startswith("fastobs_command_failures_total") and v}
    assert failures == {'fastobs_command_failures_total{code="",reason="timeout"}': 1,
                        'fastobs_command_failures_total{code="E2BIG",reason="spawn_error"}': 1,
                        'fastobs_command_failures_total{code="EINVAL",reason="spawn_error"}': 1}, failures
    assert daemon_pid.exists(), "the daemon never started"
    assert left == [], f"left running: {left} (daemon {daemon_pid.read_text().strip()})"
    assert rss.parent_kib < 200 << 10 and rss.child_kib < 100 << 10


# ----------------------------------------------------------------------------- fastobs SIGKILLed

LINGER = r"""
case "$2" in
  group*) sleep 300 & wait ;;
  daemon*) setsid sh -c 'sleep 300 &' </dev/null >/dev/null 2>&1; sleep 300 ;;
  *) exec 3< "$FASTOBS_OBJECT_FILE"; sleep 300 ;;
esac
"""


def test_parent_sigkill_leaves_no_process_and_no_file(k8s: Any, ns: str, tmp_path: Path) -> None:
    """SIGKILL the fastobs parent while its commands run, some with a background child in
    their process group, some with a daemon that left it (setsid), all with their object file
    in /dev/shm: the workers notice, kill all of it and remove the files."""
    names = [f"{kind}{i}" for kind in ("group", "daemon", "file") for i in range(3)]
    apply_values(k8s, ns, names, "secret")
    log = InvocationLog(tmp_path, body=LINGER)
    env, mark = marked(k8s.env)
    fo = Fastobs(env, tmp_path, "configmaps", "-n", ns, "--workers", "2", "--kill-grace", "1s",
                 "--object-channel", "file", *log.argv)
    with fo:
        keys = {f"{ns}/{n}" for n in names}
        log.wait_for("every command to start", lambda runs: {r.key for r in runs} >= keys)
        # fastobs, 2 workers, 9 commands, each with one sleep, and the 3 daemons' sleeps
        wait_until("the daemons", lambda: len(processes_with(mark)) >= 1 + 2 + 9 + 9 + 3)
        running = len(processes_with(mark)) - 1  # the parent itself carries the marker
        files = object_files(fo.proc.pid)
        fo.proc.kill()
        fo.proc.wait()
        left, seconds = wait_gone(mark, 15)
        files_left = object_files(fo.proc.pid)
    report("fastobs SIGKILLed while commands run",
           **{"processes before": running, "object files before": len(files), "processes left": len(left),
              "files left": len(files_left), "seconds until clean": seconds})
    assert len(files) == 2 + 9  # a directory per worker, a file per command
    assert left == [] and files_left == []


# ----------------------------------------------------------------------------- a hung worker


def test_a_hung_worker_is_replaced_and_its_keys_run(k8s: Any, ns: str, tmp_path: Path) -> None:
    """SIGSTOP one worker while keys change: its heartbeat goes stale, it is killed and
    replaced, its keys are re-dispatched, and every final state runs."""
    names = [f"h{i}" for i in range(20)]
    apply_values(k8s, ns, names, "0")
    log = InvocationLog(tmp_path, body="sleep 0.2")
    env, mark = marked(k8s.env)
    with Fastobs(env, tmp_path, "configmaps", "-n", ns, "--workers", "2", "--concurrency", "4",
                 *log.argv) as fo:
        fo.wait_ready()
        keys = {f"{ns}/{n}" for n in names}
        log.wait_for("every key's first run", lambda runs: keys <= {r.key for r in runs if r.end})
        victim = worker_pids(fo.proc.pid)[0]
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        with Writer(k8s) as writer:
            writer.set_values(ns, names, "1")
        final = {k: "1" for k in keys}
        runs = wait_final(fo, log, final)
        recovered = time.monotonic() - stopped
        hangs = fo.metric("fastobs_worker_hangs_total")
        restarts = fo.metric("fastobs_worker_restarts_total")
        assert fo.stop() == 0
    left, _ = wait_gone(mark, 10)
    verdict = check(runs, final)
    report("a worker SIGSTOPped", **verdict.figures(),
           **{"hangs counted": int(hangs), "restarts": int(restarts),
              "all final states ran after s": recovered, "processes left": len(left)})
    verdict.assert_ok()
    assert hangs == 1 and restarts == 1 and left == []
    assert "sent no heartbeat for" in fo.stderr()


# ----------------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("second_signal", [False, True], ids=["grace-expired", "second-signal"])
def test_commands_killed_at_shutdown_are_reported(k8s: Any, ns: str, tmp_path: Path,
                                                  second_signal: bool) -> None:
    """SIGTERM while commands hang: after --shutdown-grace (or at a second signal) each is
    killed and printed like a failed command (header, its output, one error line); their
    object files (--object-channel=file) are removed on the way out."""
    names = [f"s{i}" for i in range(6)]
    apply_values(k8s, ns, names, "0")
    log = InvocationLog(tmp_path, body='echo "started $2"; sleep 300')
    env, mark = marked(k8s.env)
    grace = "5m" if second_signal else "1s"
    with Fastobs(env, tmp_path, "configmaps", "-n", ns, "--workers", "2", "--shutdown-grace", grace,
                 "--kill-grace", "1s", "--object-channel", "file", *log.argv) as fo:
        log.wait_for("every command to start", lambda runs: len(runs) >= len(names))
        files = object_files(fo.proc.pid)
        fo.proc.send_signal(signal.SIGTERM)
        if second_signal:
            time.sleep(0.5)
            fo.proc.send_signal(signal.SIGTERM)
        code = fo.proc.wait(30)
    left, _ = wait_gone(mark, 10)
    files_left = object_files(fo.proc.pid)
    why = "was killed: fastobs received a second signal" if second_signal else \
        "was still running when the shutdown grace period ended and was killed"
    killed = [line for line in fo.stderr().splitlines() if line == f'error: command "{log.path}" {why}']
    out = fo.stdout()
    report(f"commands killed at shutdown ({'second signal' if second_signal else 'grace expired'})",
           **{"commands running": len(names), "reported killed": len(killed),
              "headers": len(re.findall(r"^# .* Sync \d+\t", out, re.M)), "processes left": len(left),
              "object files before": len(files), "object files left": len(files_left)})
    assert code == (128 + signal.SIGTERM if second_signal else 0)
    assert len(killed) == len(names)
    assert len(files) == 2 + len(names) and files_left == []  # a directory per worker, a file per command
    for name in names:
        assert f"started {name}\n" in out
    assert left == []


# ----------------------------------------------------------------------------- a stuck stdout


def test_stream_flood_into_a_stuck_stdout_holds_bounded_memory(k8s: Any, ns: str, tmp_path: Path) -> None:
    """Stream mode, fastobs's stdout a pipe nobody reads, one command printing lines as fast
    as it can: the lines wait in the command's pipe, not in fastobs's memory; the parent
    stays responsive and no worker is taken for hung."""
    apply_values(k8s, ns, ["flood"], "0")
    env, mark = marked(k8s.env)
    port = free_port()
    argv = fastobs_argv("configmaps", "-n", ns, "--workers", "1", "--output-mode", "stream",
                        "--listen-addr", f"127.0.0.1:{port}", "--", "yes", "a line of a flood")
    with (tmp_path / "fastobs.err").open("wb") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err)
    try:
        with PeakRss(proc.pid) as rss:
            t0 = time.monotonic()
            slowest = 0.0
            while time.monotonic() - t0 < 12:
                asked = time.monotonic()
                status, _ = http_get(port, "/livez")
                slowest = max(slowest, time.monotonic() - asked) if status else slowest
                time.sleep(0.25)
            live = http_get(port, "/livez")[0]
            metrics = http_get(port, "/metrics")[1]
        hangs = sum(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith("fastobs_worker_hangs_total"))
        restarts = sum(float(line.split()[-1]) for line in metrics.splitlines()
                       if line.startswith("fastobs_worker_restarts_total"))
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    left, _ = wait_gone(mark, 10)
    report("stream flood into a stuck stdout (12 s)",
           **{"parent peak RSS MiB": rss.parent_kib // 1024, "worker peak RSS MiB": rss.child_kib // 1024,
              "slowest /livez s": slowest, "worker hangs": int(hangs), "restarts": int(restarts),
              "processes left": len(left)})
    assert live == 200 and hangs == 0 and restarts == 0
    assert rss.parent_kib < 150 << 10 and rss.child_kib < 100 << 10
    assert left == []
