"""The execution engine end to end: real fastobs, real API server, real processes and signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fastobs_run import (
    alive,
    configmap,
    hanging_command,
    recorder,
    run_fastobs,
    start_fastobs,
    wait_until,
    worker_sitecustomize,
)

pytestmark = pytest.mark.cluster
NO_METRICS = "--listen-addr="


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]



def test_failing_key_does_not_hold_up_others(k8s, ns, tmp_path: Path) -> None:
    """One key fails on every attempt and is requeued with backoff; the others all run once."""
    keys = [f"ok{i}" for i in range(10)] + ["bad"]
    k8s.apply({"apiVersion": "v1", "kind": "List", "items": [configmap(k, ns) for k in keys]})
    rec = recorder(tmp_path)
    script = tmp_path / "act.sh"
    script.write_text(f'#!/bin/sh\n{rec.path} "$@"\n[ "$2" = bad ] && exit 9\nexit 0\n')
    script.chmod(0o755)
    # --exit-after leaves room for a slow start on a busy machine: the retries alone need 2.1 s.
    res = run_fastobs(k8s.env, "cm", "-n", ns, NO_METRICS, "--workers", "1", "--concurrency", "2",
                      "--backoff-base", "300ms", "--backoff-attempts", "3", "--maximum-errors", "-1",
                      "--exit-after", "12s", "--", str(script))
    assert res.returncode == 0, res.stderr
    names = [argv[1] for argv in rec.argvs()]
    assert names.count("bad") == 4, names  # the first run and 3 backoff retries
    for k in keys[:-1]:
        assert names.count(k) == 1, names
    # The healthy keys did not wait for the failing key's retries (0.3 s, 0.6 s, 1.2 s apart):
    # all of them ran before its last attempt.
    last_bad = max(i for i, n in enumerate(names) if n == "bad")
    assert all(names.index(k) < last_bad for k in keys[:-1]), names
    assert res.stderr.count("exited with status code 9") == 4


def test_parent_killed_workers_and_commands_stop(k8s, ns, tmp_path: Path) -> None:
    """SIGKILL the fastobs parent: its workers exit and the running command's group is killed."""
    k8s.apply(configmap("p", ns))
    script, pidfile = hanging_command(tmp_path)
    proc = start_fastobs(k8s.env, "cm", "-n", ns, NO_METRICS, "--workers", "2", "--kill-grace", "1s",
                         "--", str(script))
    wait_until("the command to start", pidfile.exists)
    grandchild = int(pidfile.read_text())
    workers = children(proc.pid)
    assert len(workers) == 2
    proc.kill()
    proc.communicate(timeout=10)
    wait_until("workers and command to stop",
               lambda: not any(alive(p) for p in [*workers, grandchild]), timeout=20)


SITE_CRASH_WORKER = worker_sitecustomize("""
    sys.stderr.write("worker boot failure injected by the test\\n")
    os._exit(7)
""")


def test_workers_failing_at_boot_stop_fastobs_with_named_exit_code(k8s, ns, tmp_path: Path) -> None:
    """Workers that die during start-up again and again: exit 3 and a clear message, no loop."""
    k8s.apply(configmap("w", ns))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE_CRASH_WORKER)
    res = run_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--workers", "1", "--", "true",
                      extra_env={"PYTHONPATH": str(site)}, timeout=120)
    assert res.returncode == 3, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    # Why it failed, in words: how the worker exited and the end of what it printed.
    assert last == ("error: worker 0 failed to start 5 times in a row; last error: exited with status 7 "
                    "before it was ready; its last output: worker boot failure injected by the test"), last
    first = (r"worker 0 \(pid \d+\) exited with status 7 before it was ready; its last output: worker boot "
             r"failure injected by the test; restarting it \(attempt 2 of 5\)")
    assert re.search(first, res.stderr), res.stderr
    assert "Traceback" not in res.stderr and "bytes read" not in res.stderr


# The first worker to start writes its pid and stalls its boot: it can be killed before HELLO.
SITE_SLOW_FIRST_WORKER = worker_sitecustomize("""
    try:
        _fd = os.open(os.environ["T_FIRST_WORKER"], os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        pass
    else:
        os.write(_fd, str(os.getpid()).encode())
        os.close(_fd)
        time.sleep(60)
""")


def test_worker_sigkilled_before_it_was_ready_is_restarted(k8s, ns, tmp_path: Path) -> None:
    """A worker SIGKILLed while it boots (before HELLO) is restarted like any dead worker,
    with a message that says so, and the keys queued for it run once its replacement is up."""
    keys = [f"b{i}" for i in range(8)]
    k8s.apply({"apiVersion": "v1", "kind": "List", "items": [configmap(k, ns) for k in keys]})
    rec = recorder(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE_SLOW_FIRST_WORKER)
    first = tmp_path / "first-worker"
    proc = start_fastobs(k8s.env, "cm", "-n", ns, "--once", NO_METRICS, "--workers", "2", "--", str(rec.path),
                         extra_env={"PYTHONPATH": str(site), "T_FIRST_WORKER": str(first)})
    try:
        wait_until("a worker to start", lambda: first.exists() and first.read_text())
        worker = int(first.read_text())
        os.kill(worker, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(err)
    assert proc.returncode == 0, err
    assert sorted(argv[1] for argv in rec.argvs()) == sorted(keys)
    assert re.search(rf"worker \d \(pid {worker}\) was killed by SIGKILL before it was ready; restarting it "
                     r"\(attempt 2 of 5\)", err), err
    assert "Traceback" not in err and "bytes read" not in err


def test_worker_sigkill_redispatches_in_flight_keys(k8s, ns, tmp_path: Path) -> None:
    """A worker killed while its commands run: they are re-dispatched, nothing is lost.

    The worker killed is one that runs a command (the command's parent), so it has said
    HELLO and has keys in flight, however slowly the others boot."""
    keys = [f"c{i}" for i in range(8)]
    k8s.apply({"apiVersion": "v1", "kind": "List", "items": [configmap(k, ns) for k in keys]})
    rec = recorder(tmp_path)
    began = tmp_path / "began"
    script = tmp_path / "act.sh"
    script.write_text(f'#!/bin/sh\necho "$2 $PPID" >> {began}\nsleep 0.5\nexec {rec.path} "$@"\n')
    script.chmod(0o755)
    proc = start_fastobs(k8s.env, "cm", "-n", ns, NO_METRICS, "--workers", "2", "--concurrency", "4",
                         "--", str(script))
    try:
        wait_until("commands to start", lambda: began.exists() and len(began.read_text().split()) >= 2)
        worker = int(began.read_text().split()[1])
        assert worker in children(proc.pid)
        os.kill(worker, signal.SIGKILL)
        calls = rec.wait_for(lambda c: {x["argv"][1] for x in c} == set(keys), timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert {c["argv"][1] for c in calls} == set(keys)
    assert re.search(rf"worker \d \(pid {worker}\) was killed by SIGKILL; restarting it and "
                     r"re-dispatching [1-9]\d* keys", err), err


def test_second_signal_kills_commands_at_once(k8s, ns, tmp_path: Path) -> None:
    """SIGTERM starts the graceful stop; a second SIGTERM kills the commands' groups at once."""
    k8s.apply(configmap("s2", ns))
    script, pidfile = hanging_command(tmp_path)
    proc = start_fastobs(k8s.env, "cm", "-n", ns, NO_METRICS, "--shutdown-grace", "5m", "--", str(script))
    wait_until("the command to start", pidfile.exists)
    grandchild = int(pidfile.read_text())
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None, "the first signal must wait for running commands"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM
    wait_until("the command's group to die", lambda: not alive(grandchild), timeout=10)
